"""Task relatedness: does the index's distance matrix rank source tasks like a ground-truth transfer affinity?

For every target task (column j), Spearman's rho between column j of the distance matrix and column j of
the affinity matrix (affinity[i][j]: how well source i transfers to target j, higher is better), then the
mean over columns. Distances and affinities should be anti-correlated, so ``agreement`` = -rho is
reported too (the paper's 0.83 for ModelGiF on Taskonomy is an agreement). Computed with the diagonal
(what the authors' script does; a model is trivially at distance 0 from itself and its own task is
usually the best source, which inflates the score) and without it; the stricter, diagonal-free score
leads.
"""
from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import GifindexError

if TYPE_CHECKING:
    from ..index import Index


def load_affinity(path: str | Path) -> tuple[list[str], np.ndarray, list[list[str]]]:
    """Read an affinity file: ``{"names": [...], "matrix": [[...]]}`` or gifindex/data/taskonomy_affinity.json.

    Returns (names, matrix, aliases): aliases[i] lists every accepted name of task i (for Taskonomy:
    the pickle key, the visualpriors name and the paper's display name).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise GifindexError(f"cannot read affinity file {path}: {exc}") from None
    if not isinstance(data, dict) or "matrix" not in data:
        raise GifindexError(f"{path}: expected a JSON object with 'matrix' and 'names' (or the Taskonomy "
                            "format of gifindex/data/taskonomy_affinity.json)")
    matrix = _matrix(data["matrix"], path)
    if "names" in data:
        names = _names(data["names"], path, "names")
        aliases = [[n] for n in names]
    elif "task_keys_pickle" in data:
        names = _names(data["task_keys_pickle"], path, "task_keys_pickle")
        others = [_names(data.get(k), path, k) if data.get(k) else names
                  for k in ("task_names_visualpriors", "task_display_names_paper")]
        if any(len(o) != len(names) for o in others):
            raise GifindexError(f"{path}: every list of task names must have one name per task ({len(names)})")
        aliases = [[names[i]] + [str(o[i]) for o in others] for i in range(len(names))]
    else:
        raise GifindexError(f"{path}: no 'names' list to match the matrix rows to indexed models")
    if matrix.ndim != 2 or matrix.shape != (len(names), len(names)):
        raise GifindexError(f"{path}: matrix must be square with one row per name ({len(names)}), "
                            f"got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise GifindexError(f"{path}: matrix holds NaN or Inf")
    return names, matrix, aliases


def _matrix(value: Any, path: str | Path) -> np.ndarray:
    """The affinity matrix of a truth file: a list of equally long rows of numbers, else one clear error."""
    rows = value if isinstance(value, list) else None
    if not rows or not all(isinstance(r, list) for r in rows):
        raise GifindexError(f"{path}: 'matrix' must be a list of rows, each a list of numbers")
    if len({len(r) for r in rows}) > 1:
        raise GifindexError(f"{path}: 'matrix' rows differ in length ({', '.join(str(len(r)) for r in rows[:8])}"
                            f"{', ...' if len(rows) > 8 else ''}): it must be square, one row and column per name")
    bad = next(((i, j, v) for i, r in enumerate(rows) for j, v in enumerate(r)
                if isinstance(v, bool) or not isinstance(v, (int, float))), None)
    if bad is not None:
        raise GifindexError(f"{path}: 'matrix' holds {bad[2]!r} at row {bad[0]}, column {bad[1]}: every affinity "
                            "must be a number")
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)


def _names(value: Any, path: str | Path, key: str) -> list[str]:
    """A truth file's list of task names (strings or numbers), else one clear error (a string is not split)."""
    if not isinstance(value, list) or not all(isinstance(n, (str, int, float)) and not isinstance(n, bool)
                                              for n in value):
        raise GifindexError(f"{path}: {key!r} must be a list of task names, got {type(value).__name__}"
                            + (f" {value!r}" if isinstance(value, str) else ""))
    names = [str(n) for n in value]
    repeated = sorted({n for n in names if names.count(n) > 1}) if key in ("names", "task_keys_pickle") else []
    if repeated:
        raise GifindexError(f"{path}: {key!r} names {', '.join(repr(n) for n in repeated[:5])} more than once: one "
                            "row and column per task")
    return names


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


# A model as the matching stages see it: (its name, its name without case and punctuation).
Model = tuple[str, str]


def _primary_hits(names: Sequence[str], models: Sequence[Model], free: set[int]) -> set[int]:
    """The free model named exactly as the task's own name (its first)."""
    return {i for i in free if models[i][0] == names[0]}


def _alias_hits(names: Sequence[str], models: Sequence[Model], free: set[int]) -> set[int]:
    """The free model named exactly as the task's first other name (alias) that names one."""
    for name in names[1:]:
        hits = {i for i in free if models[i][0] == name}
        if hits:
            return hits
    return set()


def _loose_hits(names: Sequence[str], models: Sequence[Model], free: set[int]) -> set[int]:
    """Free models whose name equals one of the task's names but for case and punctuation."""
    wanted = {_norm(n) for n in names} - {""}
    return {i for i in free if models[i][1] in wanted}


def _affix_hits(names: Sequence[str], models: Sequence[Model], free: set[int]) -> set[int]:
    """Free models whose loose name starts or ends with one of the task's (``taskonomy-NAME``, ``NAME-v2``)."""
    wanted = tuple({_norm(n) for n in names} - {""})   # "" would fit every model
    if not wanted:
        return set()
    return {i for i in free if models[i][1].startswith(wanted) or models[i][1].endswith(wanted)}


MATCH_STAGES = (_primary_hits, _alias_hits, _loose_hits, _affix_hits)


def match_names(aliases: Sequence[Sequence[str]], indexed: Sequence[str]) -> list[int | None]:
    """For every task, the position of the indexed model that bears one of its names; None if absent.

    Stages, strictest first: the task's own name exactly, another of its names exactly, a case/punctuation-
    insensitive name, a ``taskonomy-NAME``/``NAME-...`` style prefix or suffix. Each stage looks only among
    models no earlier stage matched, so a model serves one task at most; a task that fits several free models
    at a stage is matched by none there, nor is a model that is the one fit of several tasks (a guess would pair
    rows wrongly); a task with one fit is not blocked by another task that fits it among others.
    """
    models = [(name, _norm(name)) for name in indexed]
    out: list[int | None] = [None] * len(aliases)
    for stage in MATCH_STAGES:
        free = set(range(len(models))) - {p for p in out if p is not None}
        wanted = {t: stage(names, models, free) for t, names in enumerate(aliases) if out[t] is None}
        claims = Counter(min(hits) for hits in wanted.values() if len(hits) == 1)   # a task's one candidate
        for task, hits in wanted.items():
            if len(hits) == 1 and claims[min(hits)] == 1:
                out[task] = min(hits)
    return out


def spearman_columns(distances: np.ndarray, affinity: np.ndarray, diagonal: bool) -> np.ndarray:
    """Spearman's rho per column j between distances[:, j] and affinity[:, j] (optionally without row j); NaN
    where it is undefined (a column whose distances or affinities are all equal), without scipy's warning."""
    from scipy.stats import spearmanr

    n = distances.shape[0]
    rhos = []
    for j in range(n):
        rows = np.arange(n) if diagonal else np.array([i for i in range(n) if i != j])
        a, b = distances[rows, j], affinity[rows, j]
        if len(rows) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
            rhos.append(np.nan)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = spearmanr(a, b)[0]
        rhos.append(np.nan if rho is None else rho)
    return np.asarray(rhos, dtype=np.float64)


def _mean(values: np.ndarray) -> float | None:
    """The mean of the defined (finite) values, None when none is."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _defined(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def score(distances: np.ndarray, affinity: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Column-wise Spearman with and without the diagonal, for matched square matrices."""
    strict = spearman_columns(distances, affinity, diagonal=False)
    loose = spearman_columns(distances, affinity, diagonal=True)
    without, with_ = _mean(strict), _mean(loose)
    undefined = [t for t, a, b in zip(names, strict, loose) if not (np.isfinite(a) and np.isfinite(b))]
    notes = [] if not undefined else [
        f"Spearman is undefined for {len(undefined)} of {len(names)} target columns, whose distances or affinities "
        f"are all equal ({', '.join(undefined[:5])}{', ...' if len(undefined) > 5 else ''}): null there, and left out "
        "of the means" + ("" if without is not None and with_ is not None else "; no column is defined, so neither "
                          "is the score")]
    return {
        "spearman_without_diagonal": without,
        "spearman_with_diagonal": with_,
        "agreement_without_diagonal": None if without is None else -without,
        "agreement_with_diagonal": None if with_ is None else -with_,
        "per_column": [{"task": t, "without_diagonal": _defined(a), "with_diagonal": _defined(b)}
                       for t, a, b in zip(names, strict, loose)],
        "undefined_columns": undefined,
        "notes": notes,
    }


def relatedness(index: "Index", truth: str | Path) -> dict[str, Any]:
    """Spearman between the index's distance matrix and the ground-truth affinity in ``truth``."""
    names, affinity, aliases = load_affinity(truth)
    indexed, dist = index.matrix()
    positions = match_names(aliases, indexed)
    used = [i for i, p in enumerate(positions) if p is not None]
    missing = [names[i] for i, p in enumerate(positions) if p is None]
    if len(used) < 3:
        raise GifindexError(f"only {len(used)} of the {len(names)} tasks in {truth} match indexed model names "
                            f"(need >= 3); missing e.g. {', '.join(missing[:5])}")
    sub_dist = dist[np.ix_([positions[i] for i in used], [positions[i] for i in used])]
    sub_aff = affinity[np.ix_(used, used)]
    out = score(sub_dist, sub_aff, [names[i] for i in used])
    matched = {names[i]: indexed[positions[i]] for i in used}
    random = sorted(r.name for r in index.records() if r.metadata.get("random_init") and r.name in matched.values())
    out.update({"tasks": len(used), "matched": matched, "missing": missing, "method": index.config.method,
                "random_init": random})   # models with untrained weights: their agreement means nothing
    return out
