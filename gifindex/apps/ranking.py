"""The verdict by rank among the indexed models: how many of the hub's other models score as high as the suspect.

``suspect``'s z >= 3 verdict calibrates a suspect's evidence on the owner's own calibration references, a handful of
models trained by a few recipes. Models trained in other ways spread wider than they do (docs/results.md 6.2r), so
the bar must sit high, and it flags few distilled students. An index of the owner's task holds many models that
other people trained their own ways: ranked among them, a suspect's evidence gets an empirical p-value,
``(1 + #others scoring at least as high) / (1 + n)``, which is valid whenever an innocent suspect is like the
indexed models (exchangeable with them), whatever the evidence's distribution; a false-positive budget B then
flags at most a share B of such models (docs/results.md 6.2u). The ranking is only as fair as the index: copies
of the owner in it raise the bar for every suspect, so the rank verdict then flags fewer models, never more; name
known copies with ``--exclude``. Models the z verdict calls derived are *not* left out automatically: an
independent model can reach z 3 (models trained by other recipes, 6.2r), and leaving it out lowers the bar for
the rest, which broke the budget on one zoo (5.7 % false positives at a 5 % budget).

Ranking costs one fingerprint check per indexed model, so each model's evidence is kept beside the fingerprint
(``EvidenceCache``), keyed by the fingerprint file's content and the model's weights: a second ranking, or
``suspect --all`` after it, loads only models it has not seen.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GifindexError
from ..index.atomic import atomic_write_text
from ..index.layout import evidence_cache_path, fingerprint_path
from ..index.shards import file_sha256

CACHE_FORMAT = "gifindex-evidence-cache-2"  # 2: evidence says whether the model does the owner's task (off_task)
MAX_CACHE_BYTES = 64 << 20


def smallest_population(budget: float) -> int:
    """The fewest other models a rank verdict at ``budget`` needs: with n of them the p-value cannot go below
    1 / (n + 1)."""
    return max(1, math.ceil(1.0 / budget - 1.0 - 1e-9))


def require_population(n: int, budget: float) -> None:
    """A budget outside (0, 1), or fewer than :func:`smallest_population` other models, is an error (checked before
    any model is loaded for a ranking)."""
    if not 0.0 < budget < 1.0:
        raise GifindexError(f"a false-positive budget lies strictly between 0 and 1 (got {budget:g})")
    needed = smallest_population(budget)
    if n < needed:
        raise GifindexError(f"a verdict at a false-positive budget of {budget:g} ranks the suspect among at least "
                            f"{needed} other indexed models (found {n}): ingest more unrelated models of the "
                            "owner's task, or drop --budget")


def _evidence(values: Sequence[float]) -> np.ndarray:
    """As float64, with a missing (NaN) score ranked below every other (it is never evidence of derivation)."""
    out = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(out), -np.inf, out)


def _allowed(n: int, budget: float) -> int:
    """The most models that may score at or above a suspect judged derived: p = (1 + k) / (1 + n) <= budget."""
    return int(math.floor(budget * (n + 1) - 1 + 1e-9))


def _verdict(z: float, at_or_above: int, n: int, bar: float, budget: float) -> dict[str, Any]:
    p = (1 + at_or_above) / (1 + n)
    return {"p_value": p, "n": n, "at_or_above": at_or_above, "budget": budget, "bar_z": bar,
            "verdict": "derived" if p <= budget + 1e-12 else "unrelated"}


def rank_verdict(z: float, population: Sequence[float], budget: float, z_threshold: float = 3.0) -> dict[str, Any]:
    """Rank ``z`` among ``population`` (the other models' evidence): p-value, verdict at ``budget``, the bar (the
    population's evidence a suspect must exceed to be judged derived) and how many of the population z >=
    ``z_threshold`` already judges derived (likely copies, raising the bar)."""
    pop = np.sort(_evidence(population))[::-1]
    require_population(int(pop.size), budget)
    z = float(_evidence([z])[0])
    out = _verdict(z, int(np.sum(pop >= z)), int(pop.size), float(pop[_allowed(pop.size, budget)]), budget)
    out["at_or_above_z_threshold"] = int(np.sum(pop >= z_threshold))
    return out


def rank_all(zs: Sequence[float], budget: float, z_threshold: float = 3.0) -> list[dict[str, Any]]:
    """:func:`rank_verdict` for each of ``zs`` against all the others, in O(n log n) (a hub-wide ``--all``)."""
    values = _evidence(zs)
    n = int(values.size) - 1
    require_population(n, budget)
    ascending = np.sort(values)
    at_or_above = values.size - np.searchsorted(ascending, values, side="left") - 1  # itself not counted
    descending = ascending[::-1]
    allowed = _allowed(n, budget)
    # the others' (allowed)-th largest: one further down the whole list when the model itself sits above it
    own_rank = values.size - np.searchsorted(ascending, values, side="right")  # models strictly above it
    bars = np.where(own_rank <= allowed, descending[min(allowed + 1, n)], descending[allowed])
    by_z = int(np.sum(values >= z_threshold))  # the others z judges derived: these less the model itself
    return [{**_verdict(float(z), int(k), n, float(bar), budget),
             "at_or_above_z_threshold": by_z - int(z >= z_threshold)} for z, k, bar in zip(values, at_or_above, bars)]


class EvidenceCache:
    """Each indexed model's fingerprint evidence against one owner, kept beside the owner's fingerprint. Entries
    hold for the fingerprint file they were computed with (its sha256) and the model's weights; anything else, a
    missing or unreadable file included, is simply not cached (the evidence is computed again, never trusted
    stale). Writing is best effort: a read-only index still ranks, only without keeping what it computed."""

    def __init__(self, index_root: str | Path, owner: str):
        self.path = evidence_cache_path(index_root, owner)
        fingerprint = fingerprint_path(index_root, owner)
        self.fingerprint_sha256 = file_sha256(fingerprint) if fingerprint.is_file() else None
        self.entries: dict[str, dict[str, Any]] = {}
        self.changed = False
        if self.fingerprint_sha256 is None:
            return
        try:
            if self.path.stat().st_size > MAX_CACHE_BYTES:
                return
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if (isinstance(data, dict) and data.get("format") == CACHE_FORMAT
                and data.get("fingerprint_sha256") == self.fingerprint_sha256
                and isinstance(data.get("models"), dict)):
            self.entries = {k: v for k, v in data["models"].items()
                            if isinstance(v, dict) and isinstance(v.get("evidence"), dict)}

    def get(self, name: str, weights_sha256: str) -> dict[str, Any] | None:
        entry = self.entries.get(name)
        if entry is None or entry.get("weights_sha256") != weights_sha256:
            return None
        return dict(entry["evidence"])

    def put(self, name: str, weights_sha256: str, evidence: dict[str, Any]) -> None:
        if self.fingerprint_sha256 is None:
            return
        self.entries[name] = {"weights_sha256": weights_sha256, "evidence": dict(evidence)}
        self.changed = True

    def save(self) -> bool:
        """Write what was added (atomically); False when nothing was written (nothing new, or not writable)."""
        if not self.changed or self.fingerprint_sha256 is None:
            return False
        text = json.dumps({"format": CACHE_FORMAT, "fingerprint_sha256": self.fingerprint_sha256,
                           "models": self.entries}, allow_nan=True)
        try:
            atomic_write_text(self.path, text)
        except OSError:
            return False
        self.changed = False
        return True
