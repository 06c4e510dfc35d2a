"""Fit an owner's fingerprint: train its helper models, search conferrable inputs, record the owner's outputs
on probe images of its own, calibrate both on held-out references.

Honest by construction: only the owner's model and the owner's data are used; the models later scored
by ``suspect`` play no part, and the calibration references are trained apart from the references used
to choose the inputs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..adapter import SharedSpaceAdapter
from ..errors import ConfigError, GifindexError
from ..models import load_model
from ..models.spec import LoadedModel
from .conferrable import SearchConfig, search
from .data import OwnerData
from .fingerprint import Fingerprint, agreement, query_agreement
from .gradients import GRADIENT_IMAGES, row_bases, sketched_jacobian
from .helpers import Builder, TrainRecipe, reinitialised, train_reference, train_surrogate
from .outputs import model_logits, profile_contrast
from .queries import QUERY_WEIGHTINGS, is_reviewed, logged_answers

log = logging.getLogger(__name__)

OWN_ARCH = "owner"  # as a helper architecture: the owner's own, whatever it is (``own_arch``)
MAX_EPS = 0.3  # the widest search radius tried (pixel units); beyond it independent models follow as well
MIN_QUERIES = 8  # fewer idiosyncratic answers in the query log: the fingerprint is fitted without that part
PROBE_SOURCES = ("queries", "owner")  # FitConfig.output_probe_source
Progress = Callable[[str], None]


@dataclass(frozen=True)
class FitConfig:
    """What a fingerprint is fitted with. helper_archs: architectures of the helper models (None: the
    owner's own; name the owner's and those common for its task, as `fit-probes` does from the index by default:
    with the owner's alone the verdict accused far more independent models, docs/results.md 6.2w). Surrogates and
    references cycle through them; ``calibration_per_arch`` held-out
    references of each give the null distribution (two or more per architecture let a suspect of that
    architecture be judged against its own kind)."""

    helper_archs: tuple[str, ...] | None = None
    surrogates: int = 4
    references: int = 4
    calibration_per_arch: int = 4        # one per TrainRecipe.variant: the null holds how training choices vary
    candidates: int = 256                # owner images searched for conferrable inputs (the kept ones)
    min_inputs: int = 32                 # fewer kept (or fewer than min_kept_fraction of the candidates): the
    min_kept_fraction: float = 0.125     # search is repeated at twice the radius (up to MAX_EPS), so the radius
                                         # does not depend on how many candidates are searched
    output_probes: int = 128             # images whose outputs are compared (0: decisions only); a suspect
                                         # costs at most candidates + output_probes = 384 forward passes, as
                                         # much as 128 forward+backward passes
    output_probe_source: str = "queries"  # with a query log, the outputs are compared on a seeded sample of the
                                         # logged queries (what a thief's distilled student was taught on,
                                         # docs/results.md 6.2n); "owner": always on the owner's own images
    seed: int = 0
    varied_calibration: bool = True      # calibration reference j of each architecture is trained by
                                         # recipe.variant(j) (four common recipes), not all by the owner's
    disjoint: bool = False               # surrogates and references train on half the owner's data and the
                                         # candidates come from the other half (images no helper saw, as a
                                         # thief's student never saw the owner's)
    max_queries: int = 1024              # logged queries kept at most (a seeded sample when more qualify)
    query_reference_share: float = 0.0   # a logged query is kept when at most this share of the references
                                         # answer as the owner did (none, as for conferrable inputs: where one
                                         # independent model agrees, models trained on those very images or
                                         # students of another model of the task agree too; docs/results.md 6.2i)
    query_weighting: str = "none"        # kept answers count alike; "surprise" / "log-odds" weigh each by how
                                         # rarely the references give it too (queries.QUERY_WEIGHTINGS): both
                                         # flagged fewer students on digits (docs/results.md 6.2j), not adopted
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    search: SearchConfig = field(default_factory=SearchConfig)

    def __post_init__(self) -> None:
        for name, low in (("surrogates", 1), ("references", 1), ("calibration_per_arch", 1), ("candidates", 8),
                          ("output_probes", 0), ("min_inputs", 8), ("max_queries", 8)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low or value > 100_000:
                raise ConfigError(f"invalid {name} {value!r}: expected an integer >= {low}")
        if not 0 <= self.query_reference_share < 1:
            raise ConfigError(f"invalid query_reference_share {self.query_reference_share!r}: expected 0 <= share < 1")
        if self.output_probe_source not in PROBE_SOURCES:
            raise ConfigError(f"invalid output_probe_source {self.output_probe_source!r}: expected one of "
                              f"{', '.join(PROBE_SOURCES)}")
        if self.query_weighting not in QUERY_WEIGHTINGS:
            raise ConfigError(f"invalid query_weighting {self.query_weighting!r}: expected one of "
                              f"{', '.join(QUERY_WEIGHTINGS)}")
        if not 0 <= self.min_kept_fraction <= 1:
            raise ConfigError(f"invalid min_kept_fraction {self.min_kept_fraction!r}: expected 0..1")
        if not 0 < self.search.eps <= 0.5:
            raise ConfigError(f"invalid eps {self.search.eps!r}: expected 0 < eps <= 0.5 (pixel units in [0, 1])")
        if self.recipe.epochs < 1 or self.recipe.epochs > 1000:
            raise ConfigError(f"invalid epochs {self.recipe.epochs!r}: expected 1..1000")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CALIBRATION_RECIPES = ("varied", "owner")  # the names of FitConfig.varied_calibration True / False


def varied_calibration(recipes: str) -> bool:
    """FitConfig.varied_calibration from its name ("varied": four common recipes; "owner": the owner's alone)."""
    if recipes not in CALIBRATION_RECIPES:
        raise ConfigError(f"calibration recipes must be 'varied' or 'owner', got {recipes!r}")
    return recipes == "varied"


def calibration_recipes(config: FitConfig | type[FitConfig] = FitConfig) -> str:
    """The name of ``config``'s calibration recipes (the default's when given the class)."""
    return CALIBRATION_RECIPES[0] if config.varied_calibration else CALIBRATION_RECIPES[1]


def default_builder(owner: LoadedModel) -> Builder:
    """Untrained models of a named architecture (timm:/torchvision: references) that take the owner's
    input convention, so helpers see inputs exactly as the owner does; the owner's own architecture when it has no
    such name (``own_arch``): fresh copies of its module (``reinitialised``), with its output size."""
    size, mean, std = owner.spec.size[0], owner.spec.mean, owner.spec.std
    own = own_arch(owner)
    copies = None if _buildable(own) else own  # the name under which helpers are fresh copies of the owner

    def build(arch: str, num_classes: int) -> LoadedModel:
        if arch == copies:
            return LoadedModel(module=reinitialised(owner.module), spec=owner.spec, ref=f"{owner.ref}#fresh",
                               name=f"{owner.name}#fresh", source=owner.source, arch=own, num_outputs=num_classes,
                               meta={"random_init": True})
        return load_model(arch, random_init=True, num_classes=num_classes, input_size=size, mean=mean, std=std)

    return build


@dataclass
class Helpers:
    """The helper models a fit trains, nearly all of its cost: surrogates and references (which choose the inputs and
    the logged answers kept) and the calibration references (architecture, model; the null). ``key``
    (``helper_key``) names what they were trained from, so a refit with another query log or probe count reuses
    them only when the owner's weights, its data and every training setting are the same."""

    key: str
    archs: tuple[str, ...]  # surrogates and references cycle through them
    num_classes: int  # the owner's output size, which every helper shares
    surrogates: list[LoadedModel]
    references: list[LoadedModel]
    calibration: list[tuple[str, LoadedModel]]

    @property
    def count(self) -> int:
        return len(self.surrogates) + len(self.references) + len(self.calibration)

    def named(self) -> list[tuple[str, str, LoadedModel]]:
        """(role, architecture, model) of every helper, in training order."""
        return ([("surrogate", _nth_arch(self.archs, i), m) for i, m in enumerate(self.surrogates)]
                + [("reference", _nth_arch(self.archs, i), m) for i, m in enumerate(self.references)]
                + [("calibration", arch, m) for arch, m in self.calibration])


HELPER_SETTINGS = ("surrogates", "references", "calibration_per_arch", "varied_calibration", "disjoint", "seed",
                   "recipe")  # the FitConfig fields that decide how the helpers are trained


def helper_key(owner: LoadedModel, data: OwnerData, config: FitConfig) -> str:
    """A digest of everything the helpers are trained from: the owner's weights and input convention (surrogates learn
    its decisions; helpers take its input size, mean and std), the owner data, the helper architectures and the
    training settings (``HELPER_SETTINGS``)."""
    digest = hashlib.sha256()
    settings = {name: getattr(config, name) for name in HELPER_SETTINGS}
    settings["recipe"] = dataclasses.asdict(config.recipe)
    spec = owner.spec
    digest.update(json.dumps({"archs": list(_helper_archs(owner, config)), "settings": settings,
                              "spec": list(spec.describe().values())},
                             sort_keys=True).encode())
    if owner.weights_sha256:
        digest.update(owner.weights_sha256.encode())
    else:  # a module built in memory: its parameters and buffers themselves
        for name, tensor in sorted(owner.module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for tensor in (data.x, data.y):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _nth_arch(archs: tuple[str, ...], i: int) -> str:
    """The architecture of the i-th surrogate (or reference): they cycle through the helper architectures."""
    return archs[i % len(archs)]


def _helper_archs(owner: LoadedModel, config: FitConfig) -> tuple[str, ...]:
    """The helper architectures: those named (OWN_ARCH: the owner's own), else the owner's own."""
    named = config.helper_archs or (OWN_ARCH,)
    return tuple(own_arch(owner) if arch == OWN_ARCH else arch for arch in named)


def own_arch(owner: LoadedModel) -> str:
    """The name helpers of the owner's own architecture go by: its timm / torchvision / Taskonomy name, built anew by
    that name; else its class name (a model saved whole or built in memory), and they are fresh copies of its module
    (``helpers.reinitialised``). Suspects of that class are then calibrated against them."""
    return owner.arch if owner.arch and _buildable(owner.arch) else (owner.arch or "owner-module")


def _buildable(arch: str) -> bool:
    """Whether ``arch`` names an architecture a source builds untrained (timm:, torchvision:, taskonomy:)."""
    from ..errors import GifindexError
    from ..refs import parse_ref

    try:
        return parse_ref(arch).kind in ("timm", "torchvision", "taskonomy")
    except GifindexError:
        return False


def _rows(data: OwnerData, config: FitConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows the helpers train on, rows the candidates and probe images come from), in a seeded order."""
    order = torch.randperm(len(data.y), generator=torch.Generator().manual_seed(config.seed * 10_000 + 7))
    if config.disjoint:
        return order[len(order) // 2:], order[:len(order) // 2]
    return torch.arange(len(data.y)), order


def train_helpers(owner: LoadedModel, data: OwnerData, config: FitConfig = FitConfig(), *,
                  build: Builder | None = None, device: str = "cpu", progress: Progress | None = None) -> Helpers:
    """Train the owner's helpers on ``data`` as ``fit_fingerprint`` does (each seeded on its own, so the same
    models whether trained here or inside a fit)."""
    say = progress or (lambda _msg: None)
    require_classifier(owner)
    archs = _helper_archs(owner, config)
    if config.calibration_per_arch * len(archs) < 2:
        raise GifindexError(f"{config.calibration_per_arch} calibration reference per architecture for "
                            f"{len(archs)} architecture gives one: a null's spread, the outputs' contrast and the "
                            "task gate each need at least two (--calibration 2, or name another --helper-arch)")
    build = build or default_builder(owner)
    owner_fn = SharedSpaceAdapter.of(owner).to(device).eval().logits
    num_classes = _owner_classes(owner_fn, data, device)
    check_helper_archs(archs, build, num_classes, data.x[:1], device)
    seed = config.seed * 10_000
    helper_rows, _ = _rows(data, config)
    train_x, train_y = data.x[helper_rows], data.y[helper_rows]
    surrogate_recipe = dataclasses.replace(config.recipe, epochs=config.recipe.surrogate_epochs)
    plan: list[tuple[str, str, TrainRecipe, int]] = (  # (role, architecture, recipe, seed) in training order
        [("surrogate", _nth_arch(archs, i), surrogate_recipe, seed + 100 + i) for i in range(config.surrogates)]
        + [("reference", _nth_arch(archs, i), config.recipe, seed + 200 + i) for i in range(config.references)]
        + [("calibration", arch, config.recipe.variant(j) if config.varied_calibration else config.recipe,
            seed + 300 + 10 * a + j) for a, arch in enumerate(archs) for j in range(config.calibration_per_arch)])
    work = [len(train_x) * recipe.epochs * (1 + recipe.augment_copies if role == "surrogate" else 1)
            for role, _, recipe, _ in plan]  # images pushed through training: what a helper's time scales with
    counts = {role: sum(1 for r, *_ in plan if r == role) for role in ("surrogate", "reference", "calibration")}
    surrogates, references, calibration = [], [], []
    started, done, numbered = time.perf_counter(), 0, dict.fromkeys(counts, 0)
    for n, (role, arch, recipe, helper_seed) in enumerate(plan):
        numbered[role] += 1
        eta = "" if not done else f" (about {_minutes((time.perf_counter() - started) / done * sum(work[n:]))} left)"
        say(f"{role} {numbered[role]}/{counts[role]}: {arch}{eta}")
        if role == "surrogate":
            surrogates.append(train_surrogate(build, arch, owner_fn, train_x, num_classes, config.recipe,
                                              helper_seed, device))
        elif role == "reference":
            references.append(train_reference(build, arch, train_x, train_y, num_classes, recipe, helper_seed,
                                              device))
        else:
            calibration.append((arch, train_reference(build, arch, train_x, train_y, num_classes, recipe,
                                                      helper_seed, device)))
        done += work[n]
    return Helpers(helper_key(owner, data, config), archs, num_classes, surrogates, references, calibration)


def check_helper_archs(archs: Sequence[str], build: Builder, num_classes: int, image: torch.Tensor,
                       device: str = "cpu") -> None:
    """Every helper architecture builds and is a classifier of the owner's ``num_classes`` classes (its output on
    one owner ``image`` is (1, num_classes)), checked before any helper is trained: a misspelled name or a model of
    another kind (a dense-prediction network) would otherwise fail only after the others had trained, with an error
    of the training loop's."""
    for arch in dict.fromkeys(archs):
        try:
            helper = build(arch, num_classes)
        except GifindexError as exc:
            raise GifindexError(f"helper architecture {arch!r} cannot be built: {exc}") from None
        try:
            with torch.no_grad():
                shape = tuple(SharedSpaceAdapter.of(helper).to(device).eval().logits(image.to(device)).shape)
        except Exception as exc:  # noqa: BLE001 - whatever a foreign model raises on an image, the user's answer
            raise GifindexError(f"helper architecture {arch!r} fails on one of the owner's images: {exc}") from None
        if shape != (1, num_classes):
            raise GifindexError(f"helper architecture {arch!r} is not a classifier of the owner's {num_classes} "
                                f"classes: its output on one image is {shape}, not (1, {num_classes}); name "
                                "classification architectures (--helper-arch)")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else \
        f"{seconds / 3600:.1f} h"


def require_classifier(owner: LoadedModel) -> None:
    """A fingerprint is of a classifier's decisions and class outputs: a backbone saved without its classifier
    (``headless``) has features, not classes, to fingerprint."""
    if owner.meta.get("headless"):
        raise GifindexError(f"{owner.name or owner.ref} is a backbone without a classifier (its output is features, "
                            "not classes): a fingerprint needs the owner's classifier; fit it for the model you "
                            "serve, with its head (suspect still compares signatures)")


def _owner_classes(owner_fn: Callable[[torch.Tensor], torch.Tensor], data: OwnerData, device: str) -> int:
    with torch.no_grad():
        num_classes = int(owner_fn(data.x[:2].to(device)).shape[1])
    if data.num_classes > num_classes:
        raise GifindexError(f"owner data has labels up to {data.num_classes - 1} but the owner has "
                            f"{num_classes} outputs")
    return num_classes


def fit_fingerprint(owner: LoadedModel, data: OwnerData, config: FitConfig = FitConfig(), *,
                    build: Builder | None = None, device: str = "cpu", progress: Progress | None = None,
                    on_calibration: Callable[[str, LoadedModel], None] | None = None,
                    queries: torch.Tensor | None = None, query_labels: torch.Tensor | None = None,
                    helpers: Helpers | None = None) -> Fingerprint:
    """Train the owner's helpers on ``data`` (or take ``helpers`` trained earlier from the same owner, data and
    settings: ``train_helpers``), search conferrable inputs, and calibrate on held-out references
    (each also handed to ``on_calibration(arch, model)``, for evaluations that score them in other ways).
    ``queries``: inputs the owner's API answered (N, 3, R, R) in [0, 1], its query log (``queries``);
    ``query_labels`` (N,): their true labels where the owner reviewed them (-1 elsewhere): then only the
    answers known to be wrong are kept."""
    say = progress or (lambda _msg: None)
    require_classifier(owner)
    archs = _helper_archs(owner, config)
    started = time.perf_counter()
    owner_fn = SharedSpaceAdapter.of(owner).to(device).eval().logits
    num_classes = _owner_classes(owner_fn, data, device)
    if queries is not None and tuple(queries.shape[1:]) != tuple(data.x.shape[1:]):
        raise GifindexError(f"logged queries of shape {tuple(queries.shape[1:])} do not match the owner's images "
                            f"{tuple(data.x.shape[1:])}")
    reused = helpers is not None
    if helpers is None:
        helpers = train_helpers(owner, data, config, build=build, device=device, progress=progress)
    elif helpers.key != helper_key(owner, data, config):
        raise GifindexError("the helper models given were trained from another owner, owner data or helper settings "
                            "(architectures, counts, recipe, seed): train them again")
    seed = config.seed * 10_000
    _, candidate_rows = _rows(data, config)
    surrogates, references = helpers.surrogates, helpers.references
    pick = candidate_rows[:config.candidates]
    as_fn = [SharedSpaceAdapter.of(m).to(device).eval().logits for m in surrogates + references]
    search_config, tried = config.search, []
    enough = max(min(config.min_inputs, len(pick)), math.ceil(config.min_kept_fraction * len(pick)))
    while True:  # a radius too small to move the owner and its surrogates keeps too few: double it
        say(f"searching {len(pick)} conferrable inputs (eps {search_config.eps:g})")
        inputs, targets, kept = search(owner_fn, as_fn[:len(surrogates)], as_fn[len(surrogates):],
                                       data.x[pick].to(device), data.y[pick].to(device), search_config)
        tried.append((search_config.eps, int(kept.sum())))
        wider = min(MAX_EPS, 2 * search_config.eps)
        if int(kept.sum()) >= enough or wider <= search_config.eps:
            break
        search_config = dataclasses.replace(search_config, eps=wider)
    if int(kept.sum()) < 8:
        raise GifindexError(f"only {int(kept.sum())} of {len(pick)} inputs were conferrable (eps "
                            f"{', '.join(f'{e:g}' for e, _ in tried)}); try more --candidates or --surrogates")
    probe_inputs = probe_logits = map_inputs = map_labels = map_logits = gradient_inputs = None
    probe_queries = 0
    if config.output_probes:
        # each image once (the rows not searched first): at most the data's images, however many were asked for
        own = data.x[torch.cat([candidate_rows[len(pick):], candidate_rows[:len(pick)]])[:config.output_probes]]
        own = own.contiguous()
        probe_inputs, probe_queries = _probe_images(own, queries, config, seed)
        probe_logits = model_logits(owner, probe_inputs, device)
        gradient_inputs = own[:GRADIENT_IMAGES]  # where another label set's gradients meet the owner's span
        if probe_queries:  # a suspect's class map is read on the owner's own images, where it errs least
            map_inputs, map_logits = own, model_logits(owner, own, device)
            map_labels = map_logits.argmax(1)
    query_inputs = query_answers = query_weights = found = None
    if queries is not None and len(queries):
        if query_labels is not None and tuple(query_labels.shape) != (len(queries),):
            raise GifindexError(f"{len(queries)} logged queries but review labels of shape "
                                f"{tuple(query_labels.shape)}")
        reviewed = is_reviewed(query_labels)
        say(f"choosing the owner's {'wrong' if reviewed else 'idiosyncratic'} answers among {len(queries)} logged "
            "queries")
        query_inputs, query_answers, query_weights = logged_answers(
            owner_fn, as_fn[len(surrogates):], queries, query_labels, config.query_reference_share,
            config.max_queries, config.query_weighting, seed + 11, device)
        found = len(query_answers)
        if len(query_answers) < MIN_QUERIES:
            kind = "wrong answers among the reviewed" if reviewed else "idiosyncratic answers among the"
            say(f"only {len(query_answers)} {kind} logged queries (fewer than {MIN_QUERIES}): the fingerprint is "
                "fitted without the query log")
            query_inputs = query_answers = query_weights = None
    fingerprint = Fingerprint(owner=owner.name, owner_sha256=owner.weights_sha256, inputs=inputs[kept].cpu(),
                              labels=targets[kept].cpu(), num_classes=num_classes, calibration={},
                              probe_inputs=probe_inputs, probe_logits=probe_logits,
                              query_inputs=query_inputs, query_labels=query_answers,
                              query_weights=query_weights, map_inputs=map_inputs, map_labels=map_labels,
                              map_logits=map_logits, gradient_inputs=gradient_inputs,
                              gradient_bases=None if gradient_inputs is None else
                              row_bases(sketched_jacobian(owner, gradient_inputs, device)))
    reference_logits: list[tuple[str, torch.Tensor]] = []
    map_reference_logits: list[torch.Tensor] = []
    reference_gradient_bases: list[torch.Tensor] = []
    reference_decisions: list[torch.Tensor] = []
    for arch, model in helpers.calibration:
        decided = model_logits(model, fingerprint.inputs, device).argmax(1)  # once: its rate and, stored, its map
        reference_decisions.append(decided)
        fingerprint.calibration.setdefault(arch, []).append(int((decided == fingerprint.labels).sum())
                                                            / fingerprint.size)
        if query_answers is not None:
            fingerprint.query_calibration.setdefault(arch, []).append(query_agreement(fingerprint, model, device))
        if probe_inputs is not None:
            reference_logits.append((arch, model_logits(model, probe_inputs, device)))
        if map_inputs is not None:  # where another label set's outputs are fitted when the probes are queries
            map_reference_logits.append(model_logits(model, map_inputs, device))
        if gradient_inputs is not None:
            reference_gradient_bases.append(row_bases(sketched_jacobian(model, gradient_inputs, device)))
        if on_calibration is not None:
            on_calibration(arch, model)
    fingerprint.reference_decisions = torch.stack(reference_decisions)  # for suspects of another label set
    if reference_gradient_bases:
        fingerprint.reference_gradient_bases = torch.stack(reference_gradient_bases)
    if len(reference_logits) >= 2:  # each reference's contrast against the others is the outputs' null
        fingerprint.reference_logits = torch.stack([logits for _, logits in reference_logits])
        if map_reference_logits:
            fingerprint.map_reference_logits = torch.stack(map_reference_logits)
        for i, (arch, logits) in enumerate(reference_logits):
            contrast = profile_contrast(probe_logits, fingerprint.reference_logits, logits, skip=i)
            fingerprint.output_calibration.setdefault(arch, []).append(contrast)
    fingerprint.recipe = {"config": config.to_dict(), "helper_archs": list(archs), "owner_data": len(data.y),
                          "candidates": len(pick), "kept": fingerprint.size, "eps": search_config.eps,
                          "search": [{"eps": e, "kept": k} for e, k in tried],
                          "output_probes": fingerprint.output_probes, "output_probe_queries": probe_queries,
                          "logged_queries": 0 if queries is None else len(queries), "queries": fingerprint.queries,
                          "reviewed_queries": 0 if query_labels is None else int((query_labels >= 0).sum()),
                          "query_answers_found": found,  # before a log with too few (MIN_QUERIES) is left out
                          "seconds": round(time.perf_counter() - started, 1), "helpers_reused": reused,
                          "surrogate_agreement": [agreement(fingerprint, m, device) for m in surrogates]}
    log.info("fingerprint of %s: %d inputs, calibration %s", owner.name, fingerprint.size, fingerprint.calibration)
    return fingerprint


def _probe_images(own: torch.Tensor, queries: torch.Tensor | None, config: FitConfig,
                  seed: int) -> tuple[torch.Tensor, int]:
    """(images, how many of them are logged queries) on which outputs are compared: with a query log and
    ``output_probe_source`` "queries", a seeded sample of up to ``output_probes`` logged queries (a student
    distilled through the owner's API learnt the owner's outputs on exactly those: docs/results.md 6.2n), then, to
    make up ``output_probes`` from a shorter log, the owner's images ``own`` (those not searched for conferrable
    inputs first)."""
    logged = torch.empty(0, *own.shape[1:])
    if config.output_probe_source == "queries" and queries is not None and len(queries):
        order = torch.randperm(len(queries), generator=torch.Generator().manual_seed(seed + 13))
        logged = queries[order[:config.output_probes]].to(own.dtype)
    return torch.cat([logged, own[:config.output_probes - len(logged)]]).contiguous(), len(logged)
