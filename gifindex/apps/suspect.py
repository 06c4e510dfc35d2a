"""IP protection: is SUSPECT derived from OWNER? Its distance to the owner, calibrated against the owner's
distances to the rest of the index (the population of models that are, for the most part, unrelated).

Scores: ``p_value`` = (1 + #population at or below d) / (1 + n), the empirical chance that an indexed
model sits at least as close to the owner; ``z`` = (median - d) / (1.4826 MAD), a robust z-score (robust so
that the owner's own derivatives in the index, if any, do not drag the population towards the owner).
Verdict ``derived`` when z >= z_threshold (default 3), ``unrelated`` otherwise; the threshold used is
also reported as a distance. With n models in the population the p-value cannot go below 1/(n + 1)
(``p_value_floor``): a suspect closer than every indexed model gets exactly that, so a small population
cannot give a small p-value; index more unrelated models for a finer one. Models with random (untrained)
weights among the suspect, the owner and the population are listed in ``random_init``. With a false-positive
``budget`` the verdict is instead the suspect's rank among the other indexed models' evidence (``ranking``).
"""
from __future__ import annotations

import math
from numbers import Real
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..distance import signature_distance, signature_distances
from ..errors import ConfigError, GifindexError
from ..fingerprint import Fingerprint, fingerprint_path, judge, load_fingerprint
from ..fingerprint.store import current_fingerprints
from ..fingerprint.fingerprint import combine, flag_share, single_look_z
from ..index.layout import fingerprinted
from ..models import load_model
from .ranking import EvidenceCache, rank_all, rank_verdict, require_population, smallest_population

if TYPE_CHECKING:
    from ..index import Index
    from ..index.catalog import ModelRecord
    from ..manifest import ModelEntry

MIN_POPULATION = 3
MIN_SPREAD = 1e-4  # distances lie in [0, 2]: a population spread below this is degenerate
MAD_SCALE = 1.4826  # MAD of a normal distribution -> its standard deviation


def check_threshold(z_threshold: float, budget: float | None = None) -> None:
    """A z threshold must be a finite number and a false-positive budget one in (0, 1): NaN or infinity would
    make every verdict the same and print as such ("derived when z >= nan")."""
    if isinstance(z_threshold, bool) or not isinstance(z_threshold, Real) or not math.isfinite(z_threshold):
        raise ConfigError(f"the z threshold must be a finite number, got {z_threshold!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, Real) or not 0 < budget < 1):
        raise ConfigError(f"the false-positive budget must be a number between 0 and 1 (exclusive), got {budget!r}")


def suspect_from_distances(d: float, population: Sequence[float], z_threshold: float = 3.0) -> dict[str, Any]:
    """Calibrate one suspect-owner distance against the owner's distances to a reference population."""
    check_threshold(z_threshold)
    pop = np.asarray(population, dtype=np.float64)
    return _verdict(float(d), population_statistics(pop), int(np.sum(pop <= d)), z_threshold)


def population_statistics(pop: np.ndarray) -> dict[str, Any]:
    """The population's size, median, robust sigma (MAD, or the std when the MAD is degenerate) and range; a
    population too small or without spread is an error."""
    if pop.size < MIN_POPULATION:
        raise GifindexError(f"suspect needs at least {MIN_POPULATION} other indexed models to calibrate "
                            f"against (found {pop.size}); ingest unrelated models trained on the same task")
    median = float(np.median(pop))
    mad = float(np.median(np.abs(pop - median))) * MAD_SCALE
    scale = mad if mad > MIN_SPREAD else float(pop.std())
    if scale <= MIN_SPREAD:
        raise GifindexError(f"suspect cannot calibrate: the owner's distances to the {pop.size} other models have no "
                            f"spread (all near {median:.4f}; MAD and std below {MIN_SPREAD}), so any z-score would be "
                            "meaningless (degenerate models in the index?); ingest varied unrelated models")
    return {"n": int(pop.size), "median": median, "mad_sigma": float(scale), "min": float(pop.min()),
            "max": float(pop.max()), "mean": float(pop.mean()), "std": float(pop.std())}


def _signature_or_none(d: float, population: np.ndarray, z_threshold: float) -> dict[str, Any]:
    """:func:`suspect_from_distances`, or, where the population gives no null (too few other indexed models, or no
    spread among them) and the owner's fingerprint, calibrated on the owner's own references, judges instead: the
    distance alone, z None, and why (``signature_note``)."""
    try:
        return suspect_from_distances(d, population, z_threshold)
    except GifindexError as exc:
        return {"distance": d, "z": None, "p_value": None, "p_value_floor": None, "verdict": "unrelated",
                "threshold": None, "population": {"n": len(population)}, "signature_note": str(exc)}


def _verdict(d: float, population: dict[str, Any], at_or_below: int, z_threshold: float) -> dict[str, Any]:
    """The verdict on distance ``d`` against ``population`` (its statistics), ``at_or_below`` of whose
    ``population["n"]`` models sit at most ``d`` from the owner."""
    median, scale, n = population["median"], population["mad_sigma"], population["n"]
    z = (median - d) / scale
    return {
        "distance": d, "z": float(z), "p_value": (1 + at_or_below) / (1 + n), "p_value_floor": 1.0 / (1 + n),
        "verdict": "derived" if z >= z_threshold else "unrelated",
        "threshold": {"z": float(z_threshold), "distance": float(median - z_threshold * scale)},
        "population": population,
    }


def suspect(index: "Index", suspect_ref: "str | ModelEntry", owner: "str | ModelEntry", z_threshold: float = 3.0,
            exclude: Sequence[str] = (), device: str = "cpu", batch_size: int | None = 32,
            use_fingerprint: bool = True, budget: float | None = None,
            on_model: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Calibrated verdict on whether ``suspect_ref`` is derived from ``owner`` (names or references).
    ``exclude`` names indexed models to leave out of the population; a name not in the index is an error.
    When the owner has a fingerprint in the index (``gifindex fit-probes``) and ``use_fingerprint``, the
    suspect's decisions and outputs on it are judged against the owner's independent calibration models, and
    that z decides the verdict (``combine``); a suspect with the owner's classes renamed is scored in full after
    naming them back; one of another label set (transfer) by the decisions through its class map and its outputs'
    within-class fit from the owner's (``mapped_decisions``), or by the signature's z when the fingerprint predates
    the references' stored decisions. With a false-positive ``budget`` every other indexed model is judged too,
    exactly as :func:`scan` judges it (``on_model`` reports progress), and the verdict is the suspect's rank among
    them (``ranking.rank_verdict``; ``z_verdict`` keeps the z-score's)."""
    check_threshold(z_threshold, budget)
    _check_exclude(index, exclude)
    owner_q = index.resolve(owner, device=device, batch_size=batch_size)
    sus_q = index.resolve(suspect_ref, device=device, batch_size=batch_size, fallback=owners_convention(owner_q))
    # how the suspect loads (a file signed on the fly: as it was loaded), asked only where a fingerprint judges it:
    # an indexed name's entry checks its file, which a verdict from stored signatures alone does not need
    entry = _once(lambda: sus_q.entry or index.loading_entry(suspect_ref))
    identities = indexed_as(index, owner_q), indexed_as(index, sus_q)
    fingerprint = owner_fingerprint(index, identities[0].name) if use_fingerprint and identities[0] else None
    return _suspect_resolved(index, sus_q, owner_q, fingerprint, entry, _once(lambda: _loaded(sus_q, entry(), device)),
                             z_threshold, exclude, device, budget, on_model, identities=identities)


def indexed_as(index: "Index", query: Any) -> "ModelRecord | None":
    """The indexed model (its catalogue record) a resolved query is: an indexed name's record; for a model signed on
    the fly, the indexed model holding the same weights in the same input convention (its content hash, as ingest
    computes it), else None. A fingerprint belongs to a record, and a verdict's population leaves out the owner and
    the suspect by record: never by a name taken from a file, which may be any indexed model's name."""
    if query.record is not None:
        return query.record
    if query.model is None:
        return None
    from ..ingest import content_hashes

    output = (query.entry.output if query.entry is not None else None) or index.config.output
    current, older = content_hashes(query.model, output)
    return next((record for sha in (current, *older) if (record := index.catalog.by_sha(sha)) is not None), None)


def query_name(index: "Index", query: Any) -> str:
    """How a verdict names a resolved query: an indexed model by its name; a model signed on the fly by its file
    name, or by its reference as given where that file name is an indexed model's (which it is not)."""
    if query.record is not None or index.catalog.by_name(query.name) is None:
        return query.name
    return query.entry.ref if query.entry is not None else f"{query.name} (not indexed)"


def owners_convention(owner_q: Any) -> tuple[dict[str, Any], str] | None:
    """The owner's input convention as loading options, and where they come from: what a suspect weights file
    given none is loaded with (``Index.resolve``'s ``fallback``). A weights file (a state dict, safetensors,
    TorchScript, or ``--weights`` for a named architecture) carries no input convention: the architecture's
    default is the one its ImageNet weights were trained with, not this model's. A copy keeps the owner's, and run
    at another size a copy of a 32 px owner would not do the owner's task at all (it would not be judged). A model
    trained otherwise does the owner's task worse this way: its answers move away from the owner's, and far enough
    off it falls below the fingerprint's task gate (not judged). None when the owner's convention is not known."""
    meta = owner_q.record.metadata if owner_q.record is not None else owner_q.signed
    size, mean, std = meta.get("input_size"), meta.get("mean"), meta.get("std")
    if not (size and mean and std):
        return None
    side = int(size[0]) if isinstance(size, (list, tuple)) else int(size)
    return ({"input_size": side, "mean": tuple(mean), "std": tuple(std)},
            f"the owner's, {owner_q.name!r}: a weights file carries none; give --input-size/--mean/--std if the "
            "suspect takes images otherwise")


def _once(make: Callable[[], Any]) -> Callable[[], Any]:
    """``make``, called at most once: later calls return its first result."""
    made: list[Any] = []

    def once() -> Any:
        if not made:
            made.append(make())
        return made[0]
    return once


def _loaded(query: Any, entry: "ModelEntry", device: str) -> Any:
    """The suspect's model: as signed on the fly, else loaded from ``entry``."""
    return query.model if query.model is not None else load_model(entry.ref, **entry.load_kwargs(), device=device)


def _suspect_resolved(index: "Index", sus_q: Any, owner_q: Any, fingerprint: Fingerprint | None,
                      entry: "Callable[[], ModelEntry]", suspect_model: Callable[[], Any], z_threshold: float,
                      exclude: Sequence[str], device: str, budget: float | None,
                      on_model: Callable[[str, int, int], None] | None,
                      cache: EvidenceCache | None = None,
                      indexed: tuple[list[Any], np.ndarray] | None = None,
                      identities: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """:func:`suspect` on a resolved suspect and owner; ``suspect_model()`` gives the suspect's model (as loaded
    from ``entry()``, how it loads) when the owner's ``fingerprint`` (None: none, or not used) must judge it;
    ``cache``: the owner's evidence cache when already open (a ranking's); ``indexed``: ``index.vectors()``, when
    already read;
    ``identities``: the owner's and the suspect's :func:`indexed_as`, when already known."""
    owner_rec, sus_rec = identities or (indexed_as(index, owner_q), indexed_as(index, sus_q))
    owner_vec, owner_name = owner_q.vector, query_name(index, owner_q)
    sus_vec, sus_name = sus_q.vector, query_name(index, sus_q)
    records, vectors = indexed or index.vectors()
    keep = _others(records, exclude, owner_rec, sus_rec)
    if budget is not None:  # before any model is loaded for the ranking
        require_population(len(keep), budget)
    population = signature_distances(vectors[keep], owner_vec)
    d = signature_distance(sus_vec, owner_vec)
    # the fingerprint has a null of its own; without one, the signature's missing null is the answer
    out = (suspect_from_distances(d, population, z_threshold) if fingerprint is None else
           _signature_or_none(d, population, z_threshold))
    closest = sorted(zip(population.tolist(), [records[i].name for i in keep]))[:5]
    random = [name for q, name in ((sus_q, sus_name), (owner_q, owner_name))
              if (q.record.metadata if q.record else q.signed).get("random_init")]
    random += [records[i].name for i in keep if records[i].metadata.get("random_init")]
    out.update({"suspect": sus_name, "owner": owner_name, "method": index.config.method,
                "closest_population": [{"name": n, "distance": v} for v, n in closest], "random_init": random})
    if budget is None or fingerprint is None:
        cache = None
    elif cache is None:
        cache = EvidenceCache(index.root, owner_rec.name)
    record = sus_rec  # None: a model signed on the fly that no indexed model holds
    evidence = None if cache is None or record is None else cache.get(record.name, record.weights_sha256)
    if evidence is None and fingerprint is not None:
        evidence = fingerprint_evidence(fingerprint, entry(), device, loaded=suspect_model())
        if cache is not None and record is not None:  # the ranking need not load it again
            cache.put(record.name, record.weights_sha256, evidence)
    _judge(out, evidence, z_threshold, entry)
    if budget is not None:  # every other model's verdict as `--all` gives it (the suspect among them, if indexed)
        keep = _others(records, exclude, owner_rec)
        if len(keep) < MIN_POPULATION + 1:
            raise GifindexError(f"a verdict by rank judges every indexed model against the others: it needs at least "
                                f"{MIN_POPULATION + 1} besides the owner (found {len(keep)})")
        judged = _judge_all(index, owner_q, keep, records, vectors, cache, fingerprint, z_threshold, device,
                            on_model)
        population = [r["z"] for r in judged if sus_rec is None or r["suspect"] != sus_rec.name]
        rank = rank_verdict(out["z"], population, budget, z_threshold)
        out.update({"rank": rank, "z_verdict": out["verdict"], "verdict": rank["verdict"]})
    return out


def protected_owners(index: "Index") -> list[str]:
    """The indexed models whose owners fitted a fingerprint for them (``gifindex fit-probes``), in the catalogue's
    order: the models a hub protects. A fingerprint fitted for other weights than those indexed under its name now
    (kept when its model was removed, another then indexed under the name) protects nothing
    (``fingerprint.store.current_fingerprints``)."""
    return current_fingerprints(index.root, index.catalog.models())


def stale_owners(index: "Index") -> list[str]:
    """Indexed names whose stored fingerprint was fitted for other weights than those indexed under the name now:
    not protected (:func:`protected_owners`), and reported so where the protected models are judged."""
    current = set(protected_owners(index))
    return [name for name in fingerprinted(index.root, (r.name for r in index.catalog.models()))
            if name not in current]


def _stale_reason(index: "Index", name: str) -> str:
    """Why the stale fingerprint of ``name`` is not used (:func:`owner_fingerprint`'s error)."""
    try:
        owner_fingerprint(index, name)
    except GifindexError as exc:
        return str(exc)
    return f"the fingerprint of {name!r} was fitted for other weights than the model indexed under that name now"


def family_budget(budget: float, looks: int) -> float:
    """The false-positive budget each of ``looks`` rank verdicts gets so that the chance any of them flags an
    innocent suspect stays ``budget`` (Sidak: 1 - (1 - B)^(1 / looks))."""
    return -math.expm1(math.log1p(-budget) / looks)


def screen(index: "Index", suspect_ref: "str | ModelEntry", z_threshold: float = 3.0, exclude: Sequence[str] = (),
           device: str = "cpu", batch_size: int | None = 32, budget: float | None = None,
           on_owner: Callable[[str, int, int], None] | None = None,
           on_model: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Is ``suspect_ref`` derived from any protected model in the index (each indexed model with a fingerprint,
    :func:`protected_owners`)? The hub's question when a model arrives: it is judged against each such owner as
    :func:`suspect` judges it, the suspect signed and loaded once. Looking at M owners gives an innocent suspect M
    chances to be accused, so the bar is raised to keep the family's false-positive rate that of one verdict at
    ``z_threshold``: each owner's z must reach ``single_look_z(z_threshold, M)`` (Sidak), or, with a ``budget``,
    each rank p-value must be at most ``family_budget(budget, M)``. An owner whose check fails (a fingerprint
    fitted for other weights, say) is reported with its error, the others are still judged. Owners come back
    strongest evidence first; ``on_owner(name, done, total)`` reports progress. A fingerprint fitted for other
    weights than those indexed under its name now is listed as not judged and not counted among the M."""
    check_threshold(z_threshold, budget)
    _check_exclude(index, exclude)
    from ..manifest import ModelEntry

    indexed_name = isinstance(suspect_ref, str) and index.catalog.by_name(suspect_ref) is not None
    entry_ref = ModelEntry(ref=suspect_ref) if isinstance(suspect_ref, str) and not indexed_name else suspect_ref
    signed_later = isinstance(entry_ref, ModelEntry)
    if signed_later:  # signed once per input convention its owners need (owners_convention), when first needed
        shown = entry_ref.display_name()
        named: Any = SimpleNamespace(record=None, name=entry_ref.ref if index.catalog.by_name(shown) else shown)
    else:
        named = index.resolve(suspect_ref, device=device, batch_size=batch_size)
    protected = protected_owners(index)
    owners = [name for name in protected if named.record is None or name != named.record.name]
    if not owners and named.record is not None and named.record.name in protected:
        raise GifindexError(f"{named.name!r} is the only protected model in the index (the only one with a "
                            "fingerprint), and a model is not screened against itself: name --owner to judge it "
                            "against another model, or fit fingerprints for the other models you protect")
    stale = [name for name in stale_owners(index) if named.record is None or name != named.record.name]
    records = index.records()
    # the others a ranking puts the suspect among: all but it and the owner
    bar, each_budget = _family_bars(owners, z_threshold, budget, len(_others(records, exclude, named.record)) - 1,
                                    "screen the suspect against", "the suspect", stale)
    indexed = records, index.load_vectors(records)  # read once for every owner
    variants: dict[Any, tuple[Any, Callable[[], "ModelEntry"], Callable[[], Any], Any]] = {}

    def as_owner_needs(owner_q: Any) -> tuple[Any, Callable[[], "ModelEntry"], Callable[[], Any], Any]:
        """The suspect signed, its loading entry, its model (loaded once) in the convention this owner needs, and
        the indexed model it is (:func:`indexed_as`)."""
        fallback = owners_convention(owner_q) if signed_later and entry_ref.convention_unknown() else None
        key = None if fallback is None else tuple(fallback[0].values())
        if key not in variants:
            query = index.resolve(entry_ref, device=device, batch_size=batch_size,
                                  fallback=fallback) if signed_later else named
            entry = _once(lambda: query.entry or index.loading_entry(suspect_ref))   # asked only by a fingerprint
            variants[key] = query, entry, _once(lambda: _loaded(query, entry(), device)), indexed_as(index, query)
        return variants[key]

    # a ranking judges every indexed model against each owner: each is loaded once for all the fingerprints
    caches = {} if budget is None else _fill_caches(index, owners, exclude, device, on_model)
    results = []
    for k, name in enumerate(owners):
        try:
            owner_q = index.resolve(name, device=device, batch_size=batch_size)
        except GifindexError as exc:
            results.append({"owner": name, "suspect": named.name, "verdict": "not judged", "z": None,
                            "error": str(exc)})
        else:
            sus_q, entry, suspect_model, sus_rec = as_owner_needs(owner_q)  # unsignable: the command's error
            try:
                results.append(_suspect_resolved(index, sus_q, owner_q, owner_fingerprint(index, name), entry,
                                                 suspect_model, bar, exclude, device, each_budget, None,
                                                 caches.get(name), indexed, (owner_q.record, sus_rec)))
            except GifindexError as exc:
                results.append({"owner": name, "suspect": named.name, "verdict": "not judged", "z": None,
                                "error": str(exc)})
        if on_owner is not None:
            on_owner(name, k + 1, len(owners))
    results += [{"owner": name, "suspect": named.name, "verdict": "not judged", "z": None,
                 "error": _stale_reason(index, name)} for name in stale]
    results.sort(key=_strongest_first)
    return {"suspect": named.name, "owners_checked": len(owners), "z_threshold": z_threshold,
            "owner_z_threshold": bar, "budget": budget, "owner_budget": each_budget, "owners": results,
            "derived_from": [r["owner"] for r in results if r["verdict"] == "derived"],
            "errors": [r["owner"] for r in results if "error" in r]}


def audit(index: "Index", z_threshold: float = 3.0, exclude: Sequence[str] = (), device: str = "cpu",
          batch_size: int | None = 32, budget: float | None = None,
          on_owner: Callable[[str, int, int], None] | None = None,
          on_model: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Which indexed models derive from any protected model (each indexed model with a fingerprint)? :func:`scan`
    for each protected owner, every model judged against the M owners at the bar :func:`screen` uses for M
    (a protected model is judged against the M - 1 others at the same bar: the stricter one). Each owner's evidence
    cache serves later audits, so only models not seen before are loaded. An owner whose scan fails is reported
    with its error and the others are still scanned. ``derived`` lists every (model, owner) pair flagged, strongest
    evidence first. A fingerprint fitted for other weights than those indexed under its name now is reported with
    its error and not counted among the M."""
    check_threshold(z_threshold, budget)
    _check_exclude(index, exclude)
    owners, stale = protected_owners(index), stale_owners(index)
    records = index.records()
    # the others a ranking puts a model among: all but it and the owner
    bar, each_budget = _family_bars(owners, z_threshold, budget, len(_others(records, exclude)) - 2,
                                    "audit the index against", "each model", stale)
    indexed = records, index.load_vectors(records)  # read once for every owner's scan
    caches = _fill_caches(index, owners, exclude, device, on_model)
    scans = []
    for k, name in enumerate(owners):
        try:
            scans.append(scan(index, name, z_threshold=bar, exclude=exclude, device=device, batch_size=batch_size,
                              budget=each_budget, cache=caches.get(name), indexed=indexed))
        except GifindexError as exc:
            scans.append({"owner": name, "error": str(exc), "models": [], "derived": []})
        if on_owner is not None:
            on_owner(name, k + 1, len(owners))
    scans += [{"owner": name, "error": _stale_reason(index, name), "models": [], "derived": []} for name in stale]
    derived = sorted(({"model": r["suspect"], "owner": s["owner"], "z": r["z"], "evidence": r.get("evidence"),
                       "query_z": (r.get("fingerprint") or {}).get("query_z"),
                       **({"rank": r["rank"]} if "rank" in r else {})}
                      for s in scans for r in s["models"] if r["verdict"] == "derived"), key=lambda d: -d["z"])
    return {"owners_checked": len(owners), "z_threshold": z_threshold, "owner_z_threshold": bar, "budget": budget,
            "owner_budget": each_budget, "scans": scans, "derived": derived,
            "errors": [s["owner"] for s in scans if "error" in s]}


def _family_bars(owners: Sequence[str], z_threshold: float, budget: float | None, population: int, purpose: str,
                 judged: str, stale: Sequence[str] = ()) -> tuple[float, float | None]:
    """The z bar and the rank budget each of the protected ``owners`` gets (:func:`screen`, :func:`audit`); no
    protected model, or too few other models (``population``) for each owner's share of ``budget``, is an error
    (before any model is loaded). ``stale``: names whose fingerprint was fitted for other weights (not counted)."""
    if not owners:
        why = ("" if not stale else f" ({len(stale)} stored fingerprint{'s' * (len(stale) != 1)}, of "
               f"{', '.join(repr(n) for n in stale[:5])}, {'were' if len(stale) != 1 else 'was'} fitted for other "
               "weights than those indexed under the name now: fit again)")
        raise GifindexError(f"no indexed model has a fingerprint to {purpose}{why}: fit one for each model you "
                            "protect (`gifindex fit-probes OWNER --data OWNER_DATA.npz`), or name --owner")
    if budget is None:
        return single_look_z(z_threshold, len(owners)), None
    each_budget = family_budget(budget, len(owners))
    needed = smallest_population(each_budget)
    if population < needed:
        raise GifindexError(f"a verdict at a false-positive budget of {budget:g} over {len(owners)} protected models "
                            f"gives each {each_budget:.4g} and ranks {judged} among at least {needed} other indexed "
                            f"models (found {population}): ingest more unrelated models, name --owner, or drop "
                            "--budget")
    return single_look_z(z_threshold, len(owners)), each_budget


def _strongest_first(result: dict[str, Any]) -> float:
    """Sort key of verdicts: strongest evidence first, those without a z (not judged) last."""
    return math.inf if result["z"] is None else -result["z"]


def _fill_caches(index: "Index", owners: Sequence[str], exclude: Sequence[str], device: str,
                 on_model: Callable[[str, int, int], None] | None) -> dict[str, EvidenceCache]:
    """Each protected owner's evidence cache, holding every indexed model's evidence against its fingerprint: a model
    missing from any of them is loaded once and checked against all the fingerprints it is missing from (scanning
    owner by owner would load it once per owner). Owners whose fingerprint cannot be read, and models that cannot
    be loaded, are left for :func:`scan` to report. ``on_model(name, done, total)`` after each model."""
    fingerprints: dict[str, Fingerprint] = {}
    for name in owners:
        try:
            fingerprint = owner_fingerprint(index, name)
        except GifindexError:
            continue
        if fingerprint is not None:
            fingerprints[name] = fingerprint
    caches = {name: EvidenceCache(index.root, name) for name in fingerprints}
    left_out = set(exclude)
    records = [r for r in index.catalog.models() if r.name not in left_out]
    try:
        for k, record in enumerate(records):
            missing = [name for name in fingerprints
                       if name != record.name and caches[name].get(record.name, record.weights_sha256) is None]
            if missing:
                try:
                    entry = index.entry_for(record.name)
                    loaded = load_model(entry.ref, **entry.load_kwargs(), device=device)
                    for name in missing:
                        caches[name].put(record.name, record.weights_sha256,
                                         fingerprint_evidence(fingerprints[name], entry, device, loaded=loaded))
                except GifindexError:
                    pass  # its scans try again and report why, model by model
            if on_model is not None:
                on_model(record.name, k + 1, len(records))
    finally:  # what was computed is kept, even when the audit is interrupted
        for cache in caches.values():
            cache.save()
    return caches


def _check_exclude(index: "Index", exclude: Sequence[str]) -> None:
    """A name in ``exclude`` that is not indexed is an error (with a "did you mean")."""
    unknown = [name for name in exclude if index.catalog.by_name(name) is None]
    if unknown:
        hints = [f"{n!r}" + (f" (did you mean {close[0]!r}?)" if (close := index.similar_names(n, 1)) else "")
                 for n in unknown]
        raise GifindexError(f"--exclude names no indexed model: {', '.join(hints)}; see `gifindex list`")


def _others(records: Sequence[Any], exclude: Sequence[str], *identities: "ModelRecord | None") -> list[int]:
    """Rows of the index's records that are none of the indexed models ``identities`` (records, None for a model no
    indexed one holds: :func:`indexed_as`) and not excluded by name (``exclude`` names indexed models): the
    population a verdict is calibrated against."""
    ids = {record.id for record in identities if record is not None}
    names = set(exclude)
    return [i for i, r in enumerate(records) if r.id not in ids and r.name not in names]


def owner_fingerprint(index: "Index", owner_name: str) -> Fingerprint | None:
    """The owner's fingerprint stored in the index (``gifindex fit-probes``), or None. A fingerprint fitted for
    other weights than those now indexed under the owner's name (the model was removed and another added under
    its name) is an error: judging by it would judge against another model."""
    path = fingerprint_path(index.root, owner_name)
    if not path.is_file():
        return None
    fingerprint = load_fingerprint(path)
    fitted_for = fingerprint.recipe.get("index_weights_sha256") if isinstance(fingerprint.recipe, dict) else None
    record = index.catalog.by_name(owner_name)
    if fitted_for and record is not None and record.weights_sha256 != fitted_for:
        raise GifindexError(f"the fingerprint of {owner_name!r} ({path.name}) was fitted for other weights "
                            f"({fitted_for[:12]}) than the model indexed under that name now "
                            f"({record.weights_sha256[:12]}): fit it again (`gifindex fit-probes`) or pass "
                            "--no-fingerprint")
    return fingerprint


DEFAULT_CONVENTION_NOTE = ("; it ran at its architecture's default input convention, none having been given for its "
                           "weights file: if it takes the owner's images as the owner does, give --input-size/--mean/"
                           "--std (for an indexed model: remove it and ingest it again with them)")


def _convention_unknown(entry: "Callable[[], ModelEntry]") -> bool:
    """Whether the suspect ``entry()`` describes was given no input convention for its weights file (False when its
    loading options cannot be had: a moved file is not this note's business)."""
    try:
        return entry().convention_unknown()
    except GifindexError:
        return False


def _judge(out: dict[str, Any], evidence: dict[str, Any] | None, z_threshold: float,
           entry: "Callable[[], ModelEntry] | None" = None) -> dict[str, Any]:
    """Add the fingerprint's ``evidence`` (:func:`fingerprint_evidence`; None: the owner has none) to a signature
    verdict ``out`` and decide. ``entry()``: how the suspect was loaded, asked only of one not judged for not doing
    the owner's task, whose weights file may simply have run at a convention not its own (``default_convention``)."""
    out["signature_z"] = out["z"]
    out["fingerprint"] = None
    if evidence is not None and out["z"] is None and evidence["z"] is None and not evidence.get("off_task"):
        raise GifindexError(f"{out['signature_note']} (the fingerprint cannot judge this suspect either: "
                            f"{evidence.get('note', 'not comparable')})")
    if evidence is not None:
        out["fingerprint"] = evidence
        if evidence.get("query_z") is not None:  # the share of the kept answers that flags it on them alone
            evidence["query_flag_rate"] = flag_share(evidence["query_null_mean"], evidence["query_null_sigma"],
                                                     z_threshold)
        if evidence.get("off_task") and entry is not None and _convention_unknown(entry):
            evidence = out["fingerprint"] = {**evidence, "default_convention": True,
                                             "task_note": evidence["task_note"] + DEFAULT_CONVENTION_NOTE}
        combined, out["evidence"] = combine(out["z"], evidence["z"], bool(evidence.get("off_task")))
        out["z"] = None if combined is None else float(combined)
        out["verdict"] = "derived" if combined is not None and combined >= z_threshold else "unrelated"
    return out


def scan(index: "Index", owner: "str | ModelEntry", z_threshold: float = 3.0, exclude: Sequence[str] = (),
         device: str = "cpu", batch_size: int | None = 32, use_fingerprint: bool = True,
         on_model: Callable[[str, int, int], None] | None = None, budget: float | None = None,
         cache: EvidenceCache | None = None, indexed: tuple[list[Any], np.ndarray] | None = None) -> dict[str, Any]:
    """Judge every indexed model (but the owner and ``exclude``) as a suspect of ``owner``: "which models in
    this hub are derived from mine?". Each verdict is the one :func:`suspect` gives for that model alone (its
    population: the other models, leave-one-out; above LOO_EXACT_MAX models the population statistics are shared,
    see :func:`leave_one_out`); models come back strongest evidence first. A model whose
    fingerprint check fails (its file moved, say) keeps its signature verdict, with the error in ``error``.
    ``on_model(name, done, total)`` is called after each model is judged (progress). With a false-positive
    ``budget`` each verdict is the model's rank among the others (``ranking.rank_all``; ``z_verdict`` keeps the
    z-score's). ``cache``: the owner's evidence cache, when already open (else it is read from the index);
    ``indexed``: ``index.vectors()``, when already read."""
    check_threshold(z_threshold, budget)
    _check_exclude(index, exclude)
    owner_q = index.resolve(owner, device=device, batch_size=batch_size)
    owner_rec = indexed_as(index, owner_q)
    records, vectors = indexed or index.vectors()
    keep = _others(records, exclude, owner_rec)
    excluded = len(_others(records, (), owner_rec)) - len(keep)
    left_out = "" if not excluded else f", {excluded} more excluded (--exclude)"
    if budget is not None:
        require_population(len(keep) - 1, budget)
    fingerprint = owner_fingerprint(index, owner_rec.name) if use_fingerprint and owner_rec is not None else None
    if fingerprint is None and len(keep) < MIN_POPULATION + 1:
        raise GifindexError(f"a scan needs at least {MIN_POPULATION + 1} indexed models besides the owner (found "
                            f"{len(keep)}{left_out}): each is judged against the others (a fingerprint of the owner, "
                            "`gifindex fit-probes`, needs none)")
    if not keep:
        raise GifindexError("a scan judges the other indexed models, and the index holds none besides the owner"
                            if not excluded else f"a scan judges the other indexed models, and all {excluded} of "
                            "them are excluded (--exclude): leave some in")
    if fingerprint is None:
        cache = None
    elif cache is None:
        cache = EvidenceCache(index.root, owner_rec.name)
    judged = _judge_all(index, owner_q, keep, records, vectors, cache, fingerprint, z_threshold, device, on_model)
    if budget is not None:
        for out, rank in zip(judged, rank_all([r["z"] for r in judged], budget, z_threshold)):
            out.update({"rank": rank, "z_verdict": out["verdict"], "verdict": rank["verdict"]})
    judged.sort(key=_strongest_first)
    return {"owner": query_name(index, owner_q), "method": index.config.method, "z_threshold": z_threshold,
            "budget": budget,
            "fingerprint": fingerprint is not None, "models": judged,
            "derived": [r["suspect"] for r in judged if r["verdict"] == "derived"]}


def _judge_all(index: "Index", owner_q: Any, keep: Sequence[int], records: Sequence[Any], vectors: np.ndarray,
               cache: EvidenceCache | None, fingerprint: Fingerprint | None, z_threshold: float, device: str,
               on_model: Callable[[str, int, int], None] | None) -> list[dict[str, Any]]:
    """The verdict on each indexed model ``keep`` (rows of ``records``) against the others among them; their
    fingerprint evidence is read from, and added to, the owner's ``cache`` (None: the owner has no fingerprint)."""
    distances = signature_distances(vectors[keep], owner_q.vector)
    try:
        signature = leave_one_out(distances, z_threshold)
    except GifindexError:  # too few, or no spread: the fingerprint judges where the signature cannot
        signature = [_signature_or_none(float(distances[k]), np.delete(distances, k), z_threshold)
                     for k in range(len(distances))]
    judged = []
    try:
        for k, (i, out) in enumerate(zip(keep, signature)):
            record = records[i]
            out.update({"suspect": record.name, "random_init": bool(record.metadata.get("random_init")),
                        "signature_z": out["z"], "fingerprint": None})
            if cache is not None:  # without a fingerprint the signature's verdict stands: nothing to load
                try:
                    evidence = cache.get(record.name, record.weights_sha256)
                    if evidence is None:
                        evidence = fingerprint_evidence(fingerprint, index.entry_for(record.name), device)
                        cache.put(record.name, record.weights_sha256, evidence)
                    _judge(out, evidence, z_threshold, lambda: index.entry_for(record.name))
                except GifindexError as exc:
                    out["error"] = f"fingerprint not checked: {exc}"
            judged.append(out)
            if on_model is not None:
                on_model(record.name, k + 1, len(keep))
    finally:  # what was computed is kept, even when the scan is interrupted
        if cache is not None:
            cache.save()
    return judged


LOO_EXACT_MAX = 2000  # up to this many models, each one's population statistics leave it out exactly


def leave_one_out(distances: np.ndarray, z_threshold: float = 3.0, exact_max: int = LOO_EXACT_MAX) -> list[dict]:
    """:func:`suspect_from_distances` for each distance against all the others. Up to ``exact_max`` models
    exactly; above, in O(n log n) rather than O(n^2): the median, MAD and spread are those of all n models
    (leaving one out moves them by O(1/n)), while p-values stay exact (ranks). ``population["leave_one_out"]``
    says which."""
    d = np.asarray(distances, dtype=np.float64)
    if d.size <= exact_max:
        outs = [suspect_from_distances(float(d[k]), np.delete(d, k), z_threshold) for k in range(d.size)]
        for out in outs:
            out["population"]["leave_one_out"] = "exact"
        return outs
    shared = {**population_statistics(d), "n": int(d.size - 1), "leave_one_out": "shared (all models' statistics)"}
    others_at_or_below = np.searchsorted(np.sort(d), d, side="right") - 1
    return [_verdict(value, dict(shared), int(below), z_threshold)
            for value, below in zip(d.tolist(), others_at_or_below.tolist())]


def fingerprint_evidence(fingerprint: Fingerprint, entry: "ModelEntry", device: str = "cpu",
                         loaded: Any = None) -> dict[str, Any]:
    """The suspect's agreement with the owner's decisions on the owner's fingerprint, as a z-score against the
    owner's calibration references (of the suspect's own architecture when the fingerprint has them).
    ``loaded``: the suspect as already loaded from ``entry`` (when it was signed on the fly), else it is loaded."""
    if loaded is None:
        loaded = load_model(entry.ref, **entry.load_kwargs(), device=device)
    arch = loaded.arch if loaded.arch in fingerprint.calibration else entry.arch
    score = judge(fingerprint, loaded, arch, device)
    out = score.to_dict()
    out.update({"inputs": score.mapped_inputs or fingerprint.size, "owner_classes": fingerprint.num_classes,
                "output_probes": fingerprint.output_probes, "output_probe_queries": fingerprint.output_probe_queries,
                "queries": fingerprint.queries,
                "queries_reviewed": bool(fingerprint.recipe.get("reviewed_queries")) if fingerprint.queries else None,
                "query_effective_count": fingerprint.query_effective_count if fingerprint.queries else None,
                "comparable": score.agreement is not None})
    if score.off_task:
        references = fingerprint.reference_clean_agreement
        out["task_note"] = (f"it gives the owner's answer on {score.clean_agreement:.0%} of the owner's "
                            f"{fingerprint.output_probes} probe images, below {score.task_gate:.0%} (halfway from a "
                            f"constant answer to the calibration references' {sum(references) / len(references):.0%}):"
                            " not a model of the owner's task, so neither the fingerprint nor the signature judges it "
                            "(their nulls hold models of the task; both accused such models, docs/results.md 6.2v)")
    if score.agreement is None:
        why = ("a fingerprint fitted by this version relabels them: run `gifindex fit-probes` again"
               if fingerprint.reference_decisions is None else
               "it holds no probe images to read the suspect's class map on: fitted with --output-probes 0")
        out["note"] = (f"the suspect's output size differs from the owner's {fingerprint.num_classes} classes: "
                       f"its decisions are about other classes, only the signature can judge it ({why})")
    elif score.renamed:
        out["note"] = ("the owner's classes under other names (its output units permuted): scored after naming them "
                       "back")
    elif score.class_map is not None:
        covered = len(set(c for c in score.class_map if c >= 0))
        out["note"] = (f"another labelling ({covered} of the suspect's classes cover the owner's "
                       f"{fingerprint.num_classes}): the owner's decisions are relabelled as the suspect labels the "
                       "owner's probe images, its outputs are fitted from the owner's within each class, and its input "
                       "gradients are compared with the span of the owner's")
    return out
