"""The FAISS search index over signatures (inner product on unit vectors = 1 - distance).

Kinds:

* ``flat``: exhaustive and exact over the stored float16 signatures (IndexScalarQuantizer with QT_fp16:
  the shards hold float16, so nothing is lost, and each query reads half the bytes of float32, which
  matters because exhaustive search is memory-bound). Memory: n * dim * 2 bytes.
* ``hnsw``: approximate graph index (HNSW over float16 vectors), after a PCA pre-transform to
  ``pca_dim`` dimensions when the signatures are longer (building HNSW at 16,384 dimensions is slow).
* ``ivfpq``: approximate inverted file with product quantisation (``pq_m`` bytes per model) after the
  same PCA pre-transform, re-ranked in PCA space with float16 vectors (IndexRefine): the compact one for
  hubs of millions of models.
* ``auto`` (the default): ``flat`` while the float16 vectors fit ``flat_budget_mb``, else
  ``approximate`` (``ivfpq`` by default). The index says which it chose and why (``gifindex info``,
  ``rebuild``, ``search.json``).

The approximate kinds use the L2 metric on the unit vectors (||a - b||^2 = 2 - 2 <a, b>, so the order is
the same and PCA's centring does not matter); :func:`search` converts every kind to distance = 1 - <a, b>.
All are wrapped in an ID map whose ids are the catalogue's model ids. The index (``Index.nearest``)
re-scores the returned models exactly from the shards when the search is approximate.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from ..errors import IndexError_
from ..pca import PCA_TRAIN, fit_pca
from .atomic import atomic_path, atomic_write_text

SEARCH_KINDS = ("auto", "flat", "hnsw", "ivfpq")
APPROXIMATE = ("hnsw", "ivfpq")


@dataclass(frozen=True)
class SearchSpec:
    kind: str = "auto"
    flat_budget_mb: float = 4096.0     # auto: exact while n * dim * 2 bytes fit this
    approximate: str = "ivfpq"         # auto: what to switch to above the budget
    pca_dim: int = 256                 # approximate kinds: PCA pre-transform when dim is larger (0: none)
    hnsw_m: int = 32
    ef_search: int = 128
    ef_construction: int = 200
    nlist: int = 0                     # ivfpq: inverted lists (0: about 4 sqrt(n), clamped)
    nprobe: int = 32
    pq_m: int = 64                     # ivfpq: bytes per model in the codes
    refine_factor: int = 8             # ivfpq: candidates re-ranked per result (float16, PCA space)
    train_size: int = 65536            # training sample for PCA / k-means / PQ

    def __post_init__(self) -> None:
        if self.kind not in SEARCH_KINDS:
            raise IndexError_(f"unknown search kind {self.kind!r}; expected one of {', '.join(SEARCH_KINDS)}")
        if self.approximate not in APPROXIMATE:
            raise IndexError_(f"unknown approximate search kind {self.approximate!r}; expected hnsw or ivfpq")

    @classmethod
    def from_dict(cls, data: dict | None) -> "SearchSpec":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    def resolve(self, n: int, dim: int) -> tuple[str, str]:
        """(kind actually built for n signatures of dim, a one-line reason)."""
        need = n * dim * 2 / 2**20
        if self.kind != "auto":
            return self.kind, f"{self.kind} (chosen at init)"
        if need <= self.flat_budget_mb:
            return "flat", (f"flat: exact; {n} x {dim} float16 = {need:,.0f} MiB within the "
                            f"{self.flat_budget_mb:,.0f} MiB budget")
        return self.approximate, (f"{self.approximate}: approximate; {n} x {dim} float16 = {need:,.0f} MiB exceeds "
                                  f"the {self.flat_budget_mb:,.0f} MiB exact-search budget")


def _nlist(spec: SearchSpec, n: int) -> int:
    if spec.nlist:
        return spec.nlist
    return int(min(65536, max(1, min(4 * math.sqrt(max(n, 1)), n // 39))))


def _pca(dim: int, spec: SearchSpec) -> tuple[faiss.VectorTransform | None, int]:
    if spec.pca_dim and dim > spec.pca_dim:
        return faiss.PCAMatrix(dim, spec.pca_dim, 0.0, False), spec.pca_dim
    return None, dim


def empty_index(dim: int, spec: SearchSpec, n: int = 0) -> faiss.Index:
    """An empty (possibly untrained) index of the kind ``spec`` resolves to for ``n`` signatures."""
    kind, _ = spec.resolve(n, dim)
    if kind == "flat":
        inner = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexIDMap2(inner)
    pca, d = _pca(dim, spec)
    if kind == "hnsw":
        inner = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, spec.hnsw_m, faiss.METRIC_L2)
        inner.hnsw.efConstruction = spec.ef_construction
        inner.hnsw.efSearch = spec.ef_search
    else:
        m = spec.pq_m
        while d % m:
            m //= 2
        nbits = int(min(8, max(4, math.floor(math.log2(max(n, 16) / 39)))))  # PQ k-means wants 39 points each
        quantizer = faiss.IndexFlatL2(d)
        ivf = faiss.IndexIVFPQ(quantizer, d, _nlist(spec, n), m, nbits, faiss.METRIC_L2)
        ivf.nprobe = spec.nprobe
        refine = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
        inner = faiss.IndexRefine(ivf, refine)
        inner.k_factor = float(spec.refine_factor)
    if pca is not None:
        inner = faiss.IndexPreTransform(pca, inner)
    return faiss.IndexIDMap2(inner)


def _train_sample(vectors: np.ndarray, spec: SearchSpec) -> np.ndarray:
    if len(vectors) <= spec.train_size:
        return vectors
    rows = np.sort(np.random.default_rng(0).choice(len(vectors), spec.train_size, replace=False))
    return vectors[rows]


def build_index(vectors: np.ndarray, ids: np.ndarray, spec: SearchSpec) -> faiss.Index:
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    n = len(ids)
    kind, _ = spec.resolve(n, dim)
    if kind == "ivfpq" and n < 64:  # too few to train product quantisers: exact is cheap anyway
        kind = "flat"
    index = empty_index(dim, SearchSpec.from_dict({**spec.to_dict(), "kind": kind}), n)
    if not n:
        return index
    if not index.is_trained or kind in APPROXIMATE:
        sample = np.ascontiguousarray(_train_sample(vectors, spec), dtype=np.float32)
        _silence(index)
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexPreTransform):
            # PCA first, on at most PCA_TRAIN rows (FAISS uses the n x n Gram matrix when n < dim)
            fit_pca(faiss.downcast_VectorTransform(inner.chain.at(0)), sample[:PCA_TRAIN])
        index.train(sample)
    for start in range(0, n, 65536):  # chunks: converting float16 to float32 at once would double memory
        index.add_with_ids(np.ascontiguousarray(vectors[start:start + 65536], dtype=np.float32),
                           np.asarray(ids[start:start + 65536], dtype=np.int64))
    return index


def _silence(index: faiss.Index) -> None:
    ivf = _ivf(index)
    if ivf is not None:
        ivf.verbose = False
        ivf.cp.min_points_per_centroid = 1  # small hubs: no warning, fewer points per list is fine


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def index_kind(index: faiss.Index) -> str:
    """flat / hnsw / ivfpq, read from the FAISS index itself."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) or hasattr(index, "id_map") else index
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, (faiss.IndexHNSW,)):
        return "hnsw"
    if isinstance(inner, (faiss.IndexRefine, faiss.IndexIVF)):
        return "ivfpq"
    return "flat"


def search(index: faiss.Index, queries: np.ndarray, k: int, nprobe: int | None = None,
           ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k; returns (distances = 1 - <a, b> clipped to [0, 2], ids); missing ids are -1."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if queries.shape[1] != index.d:
        raise IndexError_(f"query has dimension {queries.shape[1]}, the index holds {index.d}-dimensional "
                          "signatures")
    k = max(1, min(int(k), max(index.ntotal, 1)))
    if nprobe is not None:
        ivf = _ivf(index)
        if ivf is not None:
            ivf.nprobe = nprobe
    if ef_search is not None:
        _hnsw_ef(index, ef_search)
    threads = faiss.omp_get_max_threads()
    if len(queries) < threads:  # faiss parallelises over queries: extra threads only contend
        faiss.omp_set_num_threads(1)
    try:
        scores, ids = index.search(queries, k)
    finally:
        faiss.omp_set_num_threads(threads)
    if index.metric_type == faiss.METRIC_L2:
        distances = scores / 2.0  # squared L2 of unit vectors = 2 (1 - <a, b>)
        distances[ids < 0] = 2.0
    else:
        distances = 1.0 - scores
    return np.clip(distances, 0.0, 2.0), ids


def _hnsw_ef(index: faiss.Index, ef: int) -> None:
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = ef


def to_gpu(index: faiss.Index) -> faiss.Index:
    """The index on GPU 0 when faiss-gpu is installed and a GPU is visible (flat / ivfpq), else as is."""
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return index
    try:
        options = faiss.GpuClonerOptions()
        options.useFloat16 = True
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index, options)
    except RuntimeError:  # kinds without a GPU implementation (HNSW, refine) stay on the CPU
        return index


def save_index(index: faiss.Index, path: Path, generation: int, spec: SearchSpec, reason: str = "") -> None:
    """Write ``search.faiss`` then its sidecar ``search.json`` (generation, kind, why), each atomically."""
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    atomic_write_text(path.with_suffix(".json"), json.dumps(
        {"generation": generation, "kind": index_kind(index), "spec": spec.kind, "reason": reason,
         "ntotal": int(index.ntotal), "dim": int(index.d)}))


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
