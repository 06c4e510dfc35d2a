"""`gifindex fit-probes`: fit an indexed owner's decision fingerprint from its own data and store it in
the index, where `suspect` finds it (gifindex.fingerprint has the method)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import GifindexError
from ..fingerprint import (FitConfig, fingerprint_path, fit_fingerprint, load_owner_data, load_query_log,
                           save_fingerprint)
from ..fingerprint.conferrable import SearchConfig
from ..fingerprint.fit import calibration_recipes as recipes_name
from ..fingerprint.fit import varied_calibration
from ..fingerprint.helpers import TrainRecipe
from ..models import load_model

if TYPE_CHECKING:
    from ..index import Index


def fit_probes(index: "Index", owner: str, data: str, *, helper_archs: Sequence[str] = (),
               surrogates: int = FitConfig.surrogates, references: int = FitConfig.references,
               calibration: int = FitConfig.calibration_per_arch,
               calibration_recipes: str = recipes_name(),
               candidates: int = FitConfig.candidates,
               output_probes: int = FitConfig.output_probes, eps: float = SearchConfig.eps,
               epochs: int = TrainRecipe.epochs, seed: int = 0, device: str = "cpu", wait: float = 0.0,
               queries: str | None = None, max_queries: int = FitConfig.max_queries,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit and store the fingerprint of the indexed model ``owner``; returns what was stored.
    ``calibration_recipes``: "varied" (FitConfig.varied_calibration) or "owner"; ``queries``: the owner's
    query log (an image array or folder), whose idiosyncratic answers become the fingerprint's third part."""
    varied = varied_calibration(calibration_recipes)
    if index.catalog.by_name(owner) is None:
        close = index.similar_names(owner, 1)
        hint = f"; did you mean {close[0]!r}?" if close else "; ingest the owner's model first"
        raise GifindexError(f"no model named {owner!r} in the index{hint}")
    with index.writer(wait=wait):  # fail now, not after minutes of training, if the index cannot be written
        pass
    config = FitConfig(helper_archs=tuple(helper_archs) or None, surrogates=surrogates, references=references,
                       calibration_per_arch=calibration, varied_calibration=varied,
                       candidates=candidates, output_probes=output_probes, seed=seed, max_queries=max_queries,
                       recipe=TrainRecipe(epochs=epochs, surrogate_epochs=max(1, round(epochs * 2 / 3))),
                       search=SearchConfig(eps=eps))
    owner_data = load_owner_data(data, index.config.resolution)
    logged, reviewed = (None, None) if queries is None else load_query_log(queries, index.config.resolution)
    entry = index.entry_for(owner)
    loaded = load_model(entry.ref, **entry.load_kwargs(), device=device)
    loaded.name = owner
    fingerprint = fit_fingerprint(loaded, owner_data, config, device=device, progress=progress, queries=logged,
                                  query_labels=reviewed)
    path = fingerprint_path(index.root, owner)
    with index.writer(wait=wait):
        save_fingerprint(fingerprint, path)
    null = fingerprint.null()
    surrogate = fingerprint.recipe.get("surrogate_agreement", [])
    return {"owner": owner, "path": str(path), "inputs": fingerprint.size,
            "candidates": fingerprint.recipe["candidates"], "eps": fingerprint.recipe["eps"],
            "seconds": fingerprint.recipe["seconds"], "helper_archs": fingerprint.recipe["helper_archs"],
            "surrogate_agreement": sum(surrogate) / max(1, len(surrogate)), "null_mean": null[0],
            "null_sigma": null[1], "calibration": fingerprint.calibration,
            "output_probes": fingerprint.output_probes,
            "output_null_mean": fingerprint.output_null()[0] if fingerprint.has_outputs else None,
            "output_calibration": fingerprint.output_calibration,
            "logged_queries": 0 if logged is None else len(logged), "queries": fingerprint.queries,
            "reviewed_queries": fingerprint.recipe.get("reviewed_queries", 0),
            "query_null_mean": fingerprint.query_null()[0] if fingerprint.has_queries else None,
            "query_calibration": fingerprint.query_calibration, "recipe": fingerprint.recipe}
