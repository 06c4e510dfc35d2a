"""The FAISS search index over signatures (inner product on unit vectors = 1 - distance).

``flat`` is exhaustive and exact over the stored float16 signatures (IndexScalarQuantizer with QT_fp16:
the shards hold float16, so nothing is lost, and each query reads half the bytes of float32, which matters
because exhaustive search is memory-bound); ``hnsw`` is an approximate graph index (float16 vectors) for
large hubs. Both are wrapped in an ID map whose ids are the catalogue's model ids.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..errors import IndexError_
from .atomic import atomic_path, atomic_write_text

SEARCH_KINDS = ("flat", "hnsw")


@dataclass(frozen=True)
class SearchSpec:
    kind: str = "flat"
    hnsw_m: int = 32
    ef_search: int = 128
    ef_construction: int = 200

    def __post_init__(self) -> None:
        if self.kind not in SEARCH_KINDS:
            raise IndexError_(f"unknown search kind {self.kind!r}; expected one of {', '.join(SEARCH_KINDS)}")


def empty_index(dim: int, spec: SearchSpec) -> faiss.Index:
    if spec.kind == "flat":
        inner = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    else:
        inner = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = spec.ef_construction
        inner.hnsw.efSearch = spec.ef_search
    return faiss.IndexIDMap2(inner)


def build_index(vectors: np.ndarray, ids: np.ndarray, spec: SearchSpec) -> faiss.Index:
    index = empty_index(vectors.shape[1] if vectors.ndim == 2 else 0, spec)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product; returns (distances = 1 - ip clipped to [0, 2], ids); missing ids are -1."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if queries.shape[1] != index.d:
        raise IndexError_(f"query has dimension {queries.shape[1]}, the index holds {index.d}-dimensional "
                          "signatures")
    k = max(1, min(int(k), max(index.ntotal, 1)))
    threads = faiss.omp_get_max_threads()
    if len(queries) < threads:  # faiss parallelises over queries: extra threads only contend
        faiss.omp_set_num_threads(1)
    try:
        scores, ids = index.search(queries, k)
    finally:
        faiss.omp_set_num_threads(threads)
    return np.clip(1.0 - scores, 0.0, 2.0), ids


def save_index(index: faiss.Index, path: Path, generation: int, spec: SearchSpec) -> None:
    """Write ``search.faiss`` then its sidecar ``search.json`` (generation, kind), each atomically."""
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    atomic_write_text(path.with_suffix(".json"), json.dumps(
        {"generation": generation, "kind": spec.kind, "ntotal": int(index.ntotal), "dim": int(index.d)}))


def load_index(path: Path) -> tuple[faiss.Index, dict]:
    """Read the search index and its sidecar; IndexError_ when either is missing or corrupt."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        index = faiss.read_index(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise IndexError_(f"search index {path.name} is missing or corrupt ({' '.join(str(exc).split())[:120]}); "
                          "run `gifindex rebuild`") from None
    if int(index.ntotal) != int(meta.get("ntotal", -1)):
        raise IndexError_(f"search index {path.name} does not match its sidecar; run `gifindex rebuild`")
    return index, meta
