"""`gifindex fit-probes`: fit an indexed owner's decision fingerprint from its own data and store it in
the index, where `suspect` finds it (gifindex.fingerprint has the method). `gifindex review-queries`: the part
of the owner's query log worth reviewing before the fit."""
from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import GifindexError
from ..fingerprint import (FitConfig, fingerprint_path, fit_fingerprint, load_owner_data, load_query_log,
                           save_fingerprint)
from ..fingerprint.conferrable import SearchConfig
from ..fingerprint.data import check_review_labels
from ..fingerprint.fit import calibration_recipes as recipes_name
from ..fingerprint.fit import default_builder, helper_key, require_classifier, train_helpers, varied_calibration
from ..fingerprint.store import helpers_path, load_helpers, save_helpers
from ..fingerprint.helpers import TrainRecipe
from ..fingerprint.queries import REVIEW_SHARE, least_sure
from ..models import load_model

if TYPE_CHECKING:
    from ..index import Index
    from ..index.catalog import ModelRecord

INDEX_ARCHS = "index"  # as a helper architecture: those the index's models of the owner's task use (task_archs)
INDEX_ARCH_COUNT = 3   # how many besides the owner's own (the evaluation zoos' families: the owner's and three)


def task_archs(records: Sequence["ModelRecord"], owner: str, own: str, outputs: int | None,
               count: int = INDEX_ARCH_COUNT) -> list[tuple[str, int]]:
    """The ``count`` architectures most used by indexed models of the owner's task (the owner's number of outputs,
    trained weights; the owner and its own architecture ``own`` left out), with how many models use each, most
    used first (ties by name): the architectures a thief of this task is likely to pick, read from the hub's
    names alone (never its models' behaviour). Only architectures that can be built untrained by name."""
    from ..fingerprint.fit import _buildable

    counts: dict[str, int] = {}
    for r in records:
        arch = r.metadata.get("arch")
        if (r.name == owner or not arch or arch == own or r.metadata.get("random_init")
                or r.metadata.get("num_outputs") != outputs or not _buildable(arch)):
            continue
        counts[arch] = counts.get(arch, 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:count]


def expand_helper_archs(helper_archs: Sequence[str], index: "Index", owner: str,
                        loaded: Any) -> tuple[tuple[str, ...], list[tuple[str, int]] | None]:
    """``helper_archs`` with INDEX_ARCHS replaced by the owner's own architecture and ``task_archs`` (duplicates
    dropped, order kept), and what the index gave (None: INDEX_ARCHS was not asked for). None named is INDEX_ARCHS:
    the evaluation's recommendation (the owner's and three common architectures of its task) where the hub can name
    them, the owner's alone where it cannot; the owner's alone gave calibration references of one architecture, and
    its verdict accused 14 % of the digits zoo's independent models and 43 % of another teacher's students
    (docs/results.md 6.2w)."""
    from ..fingerprint.fit import OWN_ARCH, own_arch

    helper_archs = tuple(helper_archs) or (INDEX_ARCHS,)
    if INDEX_ARCHS not in helper_archs:
        return tuple(helper_archs), None
    own = own_arch(loaded)
    found = task_archs(index.catalog.models(), owner, own, index.catalog.by_name(owner).metadata.get("num_outputs"))
    out: list[str] = []
    seen: set[str] = set()  # as built: OWN_ARCH is the owner's own
    for arch in helper_archs:
        for name in ((OWN_ARCH, *(a for a, _ in found)) if arch == INDEX_ARCHS else (arch,)):
            resolved = own if name == OWN_ARCH else name
            if resolved not in seen:
                seen.add(resolved)
                out.append(name)
    return tuple(out), found


WEAK_OWNER = 0.5  # the owner's share of its own data's labels below which fit-probes warns


def owner_accuracy(owner: Any, data: Any, device: str = "cpu") -> float:
    """The share of the owner's data (``OwnerData``) on which the owner answers the data's label, as indexed (its
    stored input convention): far below its real accuracy when that convention or the label order is wrong."""
    from ..fingerprint.outputs import model_logits

    return float((model_logits(owner, data.x, device).argmax(1) == data.y).float().mean())


def owner_outputs(owner: Any, data: Any, device: str = "cpu") -> int:
    """The owner's number of outputs (classes), read from its logits on one of the owner's images."""
    from ..fingerprint.outputs import model_logits

    return int(model_logits(owner, data.x[:1], device).shape[1])


MIN_CLASS_SHARE = 0.5  # owner data covering fewer of the owner's classes than this share is refused


def check_classes(data: Any, outputs: int, say: Callable[[str], None]) -> None:
    """Owner data (``OwnerData``) must hold images of at least 2 classes and of at least half of the owner's
    ``outputs`` (its helpers, trained on the data, must do the owner's task: trained on fewer classes they learn
    another one, and calibration references that never saw most of its classes make a null any independent model
    of the whole task escapes: such fingerprints accused independent models at z 7-12). Below all of them, and for
    class folders not named 0..C-1 or not one per output, a warning through ``say``. Labels past the outputs are
    an error."""
    labels = torch.unique(data.y).tolist()
    if labels and labels[-1] >= outputs:
        raise GifindexError(f"owner data has labels up to {labels[-1]} but the owner has {outputs} outputs")
    if len(labels) < 2:
        raise GifindexError(f"owner data holds images of {len(labels)} class only (label {labels[0]}): a fingerprint "
                            "is of how the owner decides between its classes; give images of its classes (it has "
                            f"{outputs} outputs)")
    if len(labels) < MIN_CLASS_SHARE * outputs:
        raise GifindexError(f"owner data covers {len(labels)} of the owner's {outputs} classes: helpers trained on so "
                            "few learn another task, and a fingerprint calibrated on them accuses independent models "
                            f"of the owner's; give images of at least {-(-outputs // 2)} of its classes (all of them "
                            "is best)")
    if data.class_names is not None:
        note = _folder_note(data.class_names, outputs)
        if note:
            say(f"warning: {note}")
    if len(labels) < outputs:
        missing = sorted(set(range(outputs)) - set(labels))
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        say(f"warning: owner data covers {len(labels)} of the owner's {outputs} classes (none of class {shown}): its "
            "helpers never learn those, so suspects are judged on part of the task; give images of every class")


def _folder_note(names: Sequence[str], outputs: int) -> str | None:
    """What is off about an owner-data folder's class sub-folders (``names``, in label order) for an owner of
    ``outputs`` classes: numbered folders that are not 0..C-1 in order (labels are the sorted order, so a missing
    number shifts every later class), or not one folder per output; None when nothing is."""
    numbered = all(n.isdigit() for n in names)
    shifted = [(n, i) for i, n in enumerate(names) if numbered and int(n) != i]
    parts = []
    if shifted:
        pairs = ", ".join(f"folder {n!r} is label {i}" for n, i in shifted[:4]) + (", ..." if len(shifted) > 4 else "")
        parts.append(f"the class folders are not numbered 0..{len(names) - 1} in order, and labels are their sorted "
                     f"order: {pairs}")
    if len(names) != outputs:
        parts.append(f"{len(names)} class folders for the owner's {outputs} outputs")
    if not parts:
        return None
    return ("; ".join(parts) + ": name one folder per class of the owner, by its class number (zero-padded: "
            "'00'..'15'), with an empty folder for a class you have no images of")


def _convention(loaded: Any) -> str:
    """A loaded model's input convention in words."""
    from ..observe import convention_words

    spec = loaded.spec
    return convention_words(spec.size, spec.mean, spec.std, spec.channels)


def fit_probes(index: "Index", owner: str, data: str, *, helper_archs: Sequence[str] = (),
               surrogates: int = FitConfig.surrogates, references: int = FitConfig.references,
               calibration: int = FitConfig.calibration_per_arch,
               calibration_recipes: str = recipes_name(),
               candidates: int = FitConfig.candidates,
               output_probes: int = FitConfig.output_probes,
               output_probes_from: str = FitConfig.output_probe_source, eps: float = SearchConfig.eps,
               epochs: int = TrainRecipe.epochs, seed: int = 0, device: str = "cpu", wait: float = 0.0,
               queries: str | None = None, max_queries: int = FitConfig.max_queries,
               keep_helpers: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit and store the fingerprint of the indexed model ``owner``; returns what was stored.
    ``calibration_recipes``: "varied" (FitConfig.varied_calibration) or "owner"; ``queries``: the owner's
    query log (an image array or folder), whose idiosyncratic answers become the fingerprint's third part;
    ``output_probes_from``: FitConfig.output_probe_source. Helper models kept in the index by an earlier fit
    (``keep_helpers``) are reused when they were trained from the same owner weights, data and helper settings
    (``helper_key``): a refit with a newly reviewed log then skips nearly all of its cost."""
    say = progress or (lambda _msg: None)
    varied = varied_calibration(calibration_recipes)
    _require_owner(index, owner)
    with index.writer(wait=wait):  # fail now, not after minutes of training, if the index cannot be written
        pass
    fitted_for = index.catalog.by_name(owner)  # the weights the fingerprint is of, whatever the index holds later
    loaded = _owner_model(index, owner, device)
    helper_archs, from_index = expand_helper_archs(helper_archs, index, owner, loaded)
    if from_index is not None:
        say("helper architectures from the index (models of the owner's task): " + (
            ", ".join(f"{arch} ({n} model{'s' * (n != 1)})" for arch, n in from_index) if from_index else
            "none buildable besides the owner's own; name the architectures common for your task with --helper-arch "
            "(or ingest models of your task first): suspects of other architectures are judged against references "
            "of the owner's alone, which accuse more independent models (docs/results.md 6.2w)"))
    config = FitConfig(helper_archs=tuple(helper_archs) or None, surrogates=surrogates, references=references,
                       calibration_per_arch=calibration, varied_calibration=varied,
                       candidates=candidates, output_probes=output_probes, output_probe_source=output_probes_from,
                       seed=seed, max_queries=max_queries,
                       recipe=TrainRecipe(epochs=epochs, surrogate_epochs=max(1, round(epochs * 2 / 3))),
                       search=SearchConfig(eps=eps))
    owner_data = load_owner_data(data, index.config.resolution)
    outputs = owner_outputs(loaded, owner_data, device)
    check_classes(owner_data, outputs, say)
    accuracy = owner_accuracy(loaded, owner_data, device)
    say(f"the owner gives your labels on {accuracy:.0%} of your {len(owner_data.y)} images (run at "
        f"{_convention(loaded)}, as indexed)")
    if accuracy < WEAK_OWNER:
        say(f"warning: the owner hardly does the task your data labels: is its input convention right "
            f"({_convention(loaded)}; a weights file carries none: ingest it again with --input-size/--mean/--std), "
            "and are your labels its class order? A fingerprint of answers that miss the task judges nothing of it")
    logged, reviewed = (None, None) if queries is None else load_query_log(queries, index.config.resolution)
    check_review_labels(reviewed, outputs, queries)
    distinct = _probe_images_available(owner_data, config, logged)
    if output_probes > distinct:
        say(f"--output-probes {output_probes}: your data{' and query log' if logged is not None else ''} hold "
            f"{distinct} distinct images to compare outputs on; using those {distinct}")
        config = dataclasses.replace(config, output_probes=distinct)
    kept_at, key = helpers_path(index.root, owner), helper_key(loaded, owner_data, config)
    helpers = None
    if kept_at.is_file():
        try:
            helpers = load_helpers(kept_at, default_builder(loaded), key)
        except GifindexError as exc:
            say(f"{exc}: training the helpers again")
        if helpers is not None:
            say(f"reusing the {helpers.count} helper models kept by an earlier fit (same owner weights, data and "
                "helper settings)")
    reused = helpers is not None
    if helpers is None:
        helpers = train_helpers(loaded, owner_data, config, device=device, progress=progress)
    fingerprint = fit_fingerprint(loaded, owner_data, config, device=device, progress=progress, queries=logged,
                                  query_labels=reviewed, helpers=helpers)
    # which indexed weights it belongs to: `suspect` refuses it for another model later indexed under this name
    fingerprint.recipe["index_weights_sha256"] = fitted_for.weights_sha256
    path = fingerprint_path(index.root, owner)
    with index.writer(wait=wait):
        _require_same_owner(index, fitted_for)
        replaced = (datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
                    if path.is_file() else None)
        save_fingerprint(fingerprint, path)
        if keep_helpers and not reused:
            save_helpers(helpers, kept_at)
    null = fingerprint.null()
    surrogate = fingerprint.recipe.get("surrogate_agreement", [])
    return {"owner": owner, "path": str(path), "replaced": replaced, "owner_accuracy": accuracy,
            "inputs": fingerprint.size,
            "candidates": fingerprint.recipe["candidates"], "eps": fingerprint.recipe["eps"],
            "seconds": fingerprint.recipe["seconds"], "helper_archs": fingerprint.recipe["helper_archs"],
            "helper_archs_from_index": None if from_index is None else
            [{"arch": arch, "models": n} for arch, n in from_index],
            "surrogate_agreement": sum(surrogate) / max(1, len(surrogate)), "null_mean": null[0],
            "null_sigma": null[1], "calibration": fingerprint.calibration,
            "output_probes": fingerprint.output_probes, "output_probe_queries": fingerprint.output_probe_queries,
            "output_null_mean": fingerprint.output_null()[0] if fingerprint.has_outputs else None,
            "output_calibration": fingerprint.output_calibration,
            "reference_clean_agreement": fingerprint.reference_clean_agreement,
            "gradient_images": 0 if fingerprint.gradient_inputs is None else len(fingerprint.gradient_inputs),
            "logged_queries": 0 if logged is None else len(logged), "queries": fingerprint.queries,
            "reviewed_queries": fingerprint.recipe.get("reviewed_queries", 0),
            "query_null_mean": fingerprint.query_null()[0] if fingerprint.has_queries else None,
            "query_calibration": fingerprint.query_calibration,
            "query_flag_rates": fingerprint.query_flag_rates() if fingerprint.has_queries else None,
            "helpers": helpers.count, "helpers_reused": reused,
            "indexed_others": index.catalog.count() - 1,  # what `suspect --budget` could rank a suspect among
            "helpers_path": str(kept_at) if reused or keep_helpers else None,
            "helpers_bytes": kept_at.stat().st_size if (reused or keep_helpers) and kept_at.is_file() else None,
            "recipe": fingerprint.recipe}


def _probe_images_available(data: Any, config: FitConfig, logged: torch.Tensor | None) -> int:
    """How many distinct images the fit can compare outputs on: the owner's images it searches (the fit takes
    each once), plus the logged queries when outputs are compared on them."""
    from ..fingerprint.fit import _rows

    own = len(_rows(data, config)[1])
    return own + (len(logged) if logged is not None and config.output_probe_source == "queries" else 0)


def review_queries(index: "Index", owner: str, queries: str, out: str, *, share: float = REVIEW_SHARE,
                   max_review: int | None = None, overwrite: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Write the ``share`` of the query log ``queries`` (at most ``max_review`` queries) the indexed ``owner``
    answered least surely to ``out`` (an .npz with x, y = -1 to fill in, or the labels the log already had, and
    index, answer, confidence), for the owner to review: `fit-probes --queries OUT` then keeps its answers known to
    be wrong."""
    import numpy as np

    from ..adapter import SharedSpaceAdapter
    from ..index.atomic import atomic_write_bytes

    target = Path(out)
    if target.suffix.lower() != ".npz":
        raise GifindexError(f"{out}: the review file is an .npz (x, y), which fit-probes --queries reads")
    if target.exists() and not overwrite:
        raise GifindexError(f"{out} exists and may hold your labels; pass --overwrite to replace it")
    if not 0 < share <= 1:
        raise GifindexError(f"review share must be in (0, 1], got {share!r}")
    if max_review is not None and max_review < 1:
        raise GifindexError(f"review budget must be at least 1 query, got {max_review!r}")
    _require_owner(index, owner)
    logged, reviewed = load_query_log(queries, index.config.resolution)
    if not len(logged):
        raise GifindexError(f"{queries}: the query log holds no images")
    owner_fn = SharedSpaceAdapter.of(_owner_model(index, owner, device)).to(device).eval().logits
    with torch.no_grad():
        check_review_labels(reviewed, int(owner_fn(logged[:1].to(device)).shape[1]), queries)
    positions, answers, sure = least_sure(owner_fn, logged, share, device, limit=max_review)
    labels = reviewed[positions] if reviewed is not None else torch.full((len(positions),), -1, dtype=torch.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=logged[positions].numpy(), y=labels.numpy(), index=positions.numpy(),
                        answer=answers.numpy(), confidence=sure.numpy())
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, buffer.getvalue())
    return {"owner": owner, "path": str(target), "logged_queries": len(logged), "to_review": len(positions),
            "share": share, "max_review": max_review, "already_reviewed": int((labels >= 0).sum()),
            "max_confidence": float(sure.max()), "resolution": index.config.resolution}


def _require_owner(index: "Index", owner: str) -> None:
    if index.catalog.by_name(owner) is None:
        close = index.similar_names(owner, 1)
        hint = f"; did you mean {close[0]!r}?" if close else "; ingest the owner's model first"
        raise GifindexError(f"no model named {owner!r} in the index{hint}")


def _require_same_owner(index: "Index", fitted_for: "ModelRecord") -> None:
    """Under the writer lock, before a fingerprint is stored: the owner's name must still hold the weights it was
    fitted for (``fitted_for``, read when the fit began). Removed, or another model indexed under the name while the
    helpers trained, the fingerprint would be stored for weights it is not of, and judge suspects of another model."""
    now = index.catalog.by_name(fitted_for.name)
    if now is None:
        raise GifindexError(f"{fitted_for.name!r} was removed from the index while its fingerprint was fitted: "
                            "nothing stored; ingest it again and fit again")
    if now.weights_sha256 != fitted_for.weights_sha256:
        raise GifindexError(f"{fitted_for.name!r} now holds other weights ({now.weights_sha256[:12]}) than those its "
                            f"fingerprint was fitted for ({fitted_for.weights_sha256[:12]}), indexed while it was "
                            "fitted: nothing stored; fit again for the model indexed now")


def _owner_model(index: "Index", owner: str, device: str):
    """The indexed owner's model, loaded as it was indexed and named as in the index."""
    entry = index.entry_for(owner)
    loaded = load_model(entry.ref, **entry.load_kwargs(), device=device)
    loaded.name = owner
    require_classifier(loaded)
    return loaded
