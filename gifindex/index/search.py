"""The FAISS search index over signatures (inner product on unit vectors = 1 - distance).

Kinds:

* ``flat``: exhaustive and exact over the stored float16 signatures (IndexScalarQuantizer with QT_fp16:
  the shards hold float16, so nothing is lost, and each query reads half the bytes of float32, which
  matters because exhaustive search is memory-bound). Memory: n * dim * 2 bytes.
* ``ivf``: inverted file whose lists hold the same float16 vectors (exact distances, nothing re-ranked),
  with a flat coarse level over a PCA projection to ``coarse_dim`` dimensions (k-means there is cheap);
  each query scans about ``scan_mb`` MiB of lists (that sets nprobe). Probing a few lists instead of all is
  what makes 10^5 models at 16,384 dims fast for close relatives. What the lists miss (the neighbours of a
  query without close relatives, spread over every list; relatives k-means put in far lists) a *screen*
  finds: an uncentred PCA projection of every signature to ``screen_dim`` dimensions (float16), scanned
  exhaustively, whose ``screen_factor`` * k best and the lists' answer are scored exactly in the lists. Stored
  as FAISS's IndexRefine(screen, ivf), approximate base and exact refinement, though :func:`search` runs
  the two stages itself. Memory: as ``flat`` plus the screen (``screen_dim`` * 2 bytes per model).
* ``hnsw``: approximate graph index (HNSW over float16 vectors), after a PCA pre-transform to
  ``pca_dim`` dimensions when the signatures are longer (building HNSW at 16,384 dimensions is slow).
* ``ivfpq``: approximate inverted file with product quantisation (``pq_m`` bytes per model) after the
  same PCA pre-transform, re-ranked in PCA space with float16 vectors (IndexRefine): the compact one for
  hubs of millions of models.
* ``auto`` (the default): ``flat`` while an exhaustive scan reads at most ``exact_mb``, ``ivf`` while the
  float16 vectors fit ``flat_budget_mb``, else ``approximate`` (``ivfpq`` by default). The index says which it
  chose and why (``gifindex info``, ``rebuild``, ``search.json``).

The approximate kinds use the L2 metric on the unit vectors (||a - b||^2 = 2 - 2 <a, b>, so the order is
the same and PCA's centring does not matter); :func:`search` converts every kind to distance = 1 - <a, b>.
All are wrapped in an ID map whose ids are the catalogue's model ids. The index (``Index.nearest``)
re-scores the returned models exactly from the shards when the search is approximate.
"""
from __future__ import annotations

import json
import math
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from ..errors import IndexError_
from ..pca import PCA_TRAIN, fit_pca
from ..safefs import read_bytes
from .atomic import atomic_path, atomic_write_text

MAX_SIDECAR_BYTES = 1 << 20   # search.json and search.sha256: small JSON records

SEARCH_KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
APPROXIMATE = ("hnsw", "ivfpq")   # kinds whose distances are not exact (Index.nearest re-scores them)
IVF_MIN = 1024                    # fewer models: ivf is built as flat (too few to cluster usefully)
TRAIN_MIN = 64                    # fewer models: ivf or ivfpq chosen at init is built as flat (cannot train)
KMEANS_POINTS = 64                # ivf: k-means training points per list (at most)


@dataclass(frozen=True)
class SearchSpec:
    kind: str = "auto"
    flat_budget_mb: float = 4096.0     # auto: float16 vectors in memory (flat / ivf) while n * dim * 2 fit this
    exact_mb: float = 128.0            # auto: exhaustive scan while it reads at most this, then ivf
    coarse_dim: int = 256              # ivf: PCA dimensions of the coarse level (0: none)
    scan_mb: float = 48.0              # ivf: float16 vectors each query scans (sets nprobe)
    screen_dim: int = 768              # ivf: PCA dims of the screen, at most dim / 4 (0: none; then a query
                                       #      without close relatives scans every list)
    screen_factor: int = 300           # ivf: screened models scored exactly per neighbour asked for (at least n/100)
    device: str = "auto"               # auto: faiss-gpu when installed and a GPU is visible; cpu: never
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
        if self.device not in ("auto", "cpu"):
            raise IndexError_(f"unknown search device {self.device!r}; expected auto or cpu")
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
        if self.kind in ("ivf", "ivfpq") and n < TRAIN_MIN:
            return "flat", (f"flat: exact; {self.kind} was chosen at init, but its quantisers need at least "
                            f"{TRAIN_MIN} models to train ({n} now)")
        if self.kind != "auto":
            return self.kind, f"{self.kind} (chosen at init)"
        if need <= min(self.exact_mb, self.flat_budget_mb) or (need <= self.flat_budget_mb and n < IVF_MIN):
            return "flat", (f"flat: exact; {n} x {dim} float16 = {need:,.0f} MiB, an exhaustive scan within "
                            f"{min(self.exact_mb, self.flat_budget_mb):,.0f} MiB or under {IVF_MIN} models")
        if need <= self.flat_budget_mb:
            return "ivf", (f"ivf: exact distances over the probed lists and the screen's candidates; {n} x {dim} "
                           f"float16 = {need:,.0f} MiB "
                           f"within the {self.flat_budget_mb:,.0f} MiB budget, above the {self.exact_mb:,.0f} MiB "
                           "exhaustive-scan limit")
        return self.approximate, (f"{self.approximate}: approximate; {n} x {dim} float16 = {need:,.0f} MiB exceeds "
                                  f"the {self.flat_budget_mb:,.0f} MiB exact-search budget")


def _nlist(spec: SearchSpec, n: int) -> int:
    if spec.nlist:
        return spec.nlist
    return int(min(65536, max(1, min(4 * math.sqrt(max(n, 1)), n // 39))))


def _pca(dim: int, pca_dim: int) -> tuple[faiss.VectorTransform | None, int]:
    if pca_dim and dim > pca_dim:
        return faiss.PCAMatrix(dim, pca_dim, 0.0, False), pca_dim
    return None, dim


def _scan_nprobe(spec: SearchSpec, n: int, dim: int, nlist: int) -> int:
    """Lists to probe so that a query scans about ``scan_mb`` MiB of float16 vectors."""
    per_list = max(n / max(nlist, 1), 1.0)
    scanned = spec.scan_mb * 2**20 / (2 * max(dim, 1))
    return int(min(nlist, max(1, math.ceil(scanned / per_list))))


def _screen_dim(spec: SearchSpec, dim: int) -> int:
    """The screen's PCA dims: ``spec.screen_dim``, at most a quarter of the signature (0: no screen)."""
    return min(spec.screen_dim, dim // 4) if spec.screen_dim > 0 and dim >= 64 else 0


def empty_index(dim: int, spec: SearchSpec, n: int = 0) -> faiss.Index:
    """An empty (possibly untrained) index of the kind ``spec`` resolves to for ``n`` signatures."""
    kind, _ = spec.resolve(n, dim)
    if kind == "flat":
        inner = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexIDMap2(inner)
    if kind == "ivf":
        coarse_pca, d = _pca(dim, spec.coarse_dim)
        flat = faiss.IndexFlatIP(d)  # unit centroids: the list whose direction is nearest
        quantizer = faiss.IndexPreTransform(coarse_pca, flat) if coarse_pca is not None else flat
        nlist = _nlist(spec, n)
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                            faiss.METRIC_INNER_PRODUCT, False)  # no residual: codes = fp16 rows
        ivf.nprobe = _scan_nprobe(spec, n, dim, nlist)
        ivf.set_direct_map_type(faiss.DirectMap.Array)  # reconstruct by id (verify); removal rebuilds
        screen_dim = _screen_dim(spec, dim)
        if not screen_dim:
            return faiss.IndexIDMap2(ivf)
        screen = faiss.IndexPreTransform(faiss.PCAMatrix(dim, screen_dim, 0.0, False), faiss.IndexScalarQuantizer(
            screen_dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT))  # uncentred: <Pa, Pb> ~ <a, b>
        container = faiss.IndexRefine(screen, ivf)
        container.k_factor = float(spec.screen_factor)  # kept in search.faiss: search() reads it from there
        return faiss.IndexIDMap2(container)
    pca, d = _pca(dim, spec.pca_dim)
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
    index = empty_index(dim, SearchSpec.from_dict({**spec.to_dict(), "kind": kind}), n)
    if not n:
        return index
    if kind == "ivf":
        order = np.random.default_rng(0).permutation(n)
        pca_sample = np.concatenate(list(_rows(vectors, np.sort(order[:PCA_TRAIN]))))  # coarse level and screen
        _train_ivf(_ivf(index), vectors, order, pca_sample)
        container = _container(index)
        if container is not None:
            screen = faiss.downcast_index(container.base_index)
            fit_pca(faiss.downcast_VectorTransform(screen.chain.at(0)), pca_sample, centre=False)
            screen.is_trained = container.is_trained = True
    elif not index.is_trained or kind in APPROXIMATE:
        sample = np.ascontiguousarray(_train_sample(vectors, spec), dtype=np.float32)
        _silence(index)
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexPreTransform):
            # PCA first, on at most PCA_TRAIN rows (FAISS uses the n x n Gram matrix when n < dim)
            fit_pca(faiss.downcast_VectorTransform(inner.chain.at(0)), sample[:PCA_TRAIN])
        index.train(sample)
    step = max(1, 2**27 // max(dim, 1))  # 512 MiB of float32 at a time: a whole float32 copy would double memory
    for start in range(0, n, step):
        index.add_with_ids(np.ascontiguousarray(vectors[start:start + step], dtype=np.float32),
                           np.asarray(ids[start:start + step], dtype=np.int64))
    return index


def _rows(vectors: np.ndarray, rows: np.ndarray, chunk: int = 4096):
    """float32 copies of ``vectors[rows]`` (rows sorted), chunk by chunk."""
    for start in range(0, len(rows), chunk):
        yield np.ascontiguousarray(vectors[rows[start:start + chunk]], dtype=np.float32)


def _train_ivf(ivf: faiss.IndexIVF, vectors: np.ndarray, order: np.ndarray, pca_sample: np.ndarray) -> None:
    """Coarse level: PCA (randomised SVD, on ``pca_sample``), then spherical k-means in the projected space, at
    most KMEANS_POINTS rows per list (the first of ``order``); the lists store the float16 rows themselves, so
    nothing else is learnt."""
    quantizer = faiss.downcast_index(ivf.quantizer)
    flat = quantizer
    rows = np.sort(order[:KMEANS_POINTS * ivf.nlist])
    if isinstance(quantizer, faiss.IndexPreTransform):
        pca = faiss.downcast_VectorTransform(quantizer.chain.at(0))
        fit_pca(pca, pca_sample)
        points = np.concatenate([pca.apply(x) for x in _rows(vectors, rows)])
        flat = faiss.downcast_index(quantizer.index)
    else:
        points = np.concatenate(list(_rows(vectors, rows)))
    # spherical: a model's projection shrinks towards the centre as its own noise grows (a family lies on a
    # ray), and L2 k-means then makes a few giant central lists; directions keep the lists balanced
    points /= np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    kmeans = faiss.Kmeans(points.shape[1], ivf.nlist, niter=10, seed=1, verbose=False, min_points_per_centroid=1,
                          max_points_per_centroid=KMEANS_POINTS, spherical=True)
    kmeans.train(points)
    flat.add(kmeans.centroids)
    quantizer.ntotal, quantizer.is_trained = flat.ntotal, True  # a PreTransform does not see its inner adds
    ivf.train(next(_rows(vectors, np.sort(order[:256]))))  # the coarse level is trained: only the fp16 codec


def _silence(index: faiss.Index) -> None:
    ivf = _ivfpq(index) or _ivf(index)
    if ivf is not None:
        ivf.verbose = False
        ivf.cp.min_points_per_centroid = 1  # small hubs: no warning, fewer points per list is fine
        if isinstance(ivf, faiss.IndexIVFPQ):
            ivf.pq.cp.min_points_per_centroid = 1  # and one warning per sub-quantiser from the PQ's k-means


def _ivfpq(index: faiss.Index):
    """The IndexIVFPQ of an ``ivfpq`` index (IDMap2, PCA, IndexRefine around it), else None."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexRefine):
        inner = faiss.downcast_index(inner.base_index)
    return inner if isinstance(inner, faiss.IndexIVFPQ) else None


def _container(index: faiss.Index):
    """The IndexRefine(screen, ivf) inside an ``ivf`` index that has a screen, else None."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if isinstance(inner, faiss.IndexRefine) and isinstance(faiss.downcast_index(inner.refine_index), faiss.IndexIVF):
        return inner
    return None


def _ivf(index: faiss.Index):
    """The IndexIVF inside ``index`` (also the exact half of an ivf screen container), else None."""
    container = _container(index)
    if container is not None:
        return faiss.downcast_index(container.refine_index)
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _screen(index: faiss.Index):
    """The screen (PCA + float16 codes) of an ``ivf`` index that has one, else None."""
    container = _container(index)
    return faiss.downcast_index(container.base_index) if container is not None else None


def index_kind(index: faiss.Index) -> str:
    """flat / ivf / hnsw / ivfpq, read from the FAISS index itself."""
    if isinstance(index, DeviceLists) or _container(index) is not None:
        return "ivf"
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) or hasattr(index, "id_map") else index
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, (faiss.IndexHNSW,)):
        return "hnsw"
    gpu = type(inner).__name__
    if isinstance(inner, faiss.IndexIVFScalarQuantizer) or gpu.startswith("GpuIndexIVFScalarQuantizer"):
        return "ivf"
    if gpu.startswith("GpuIndexIVF"):
        return "ivfpq"
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
    if isinstance(index, DeviceLists):  # every list on the device: exact
        scores, ids = index.search(queries, k)
        return np.clip(1.0 - scores, 0.0, 2.0), ids
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
        if _screen(index) is not None:  # ivf with a screen: search() runs both stages itself (FAISS's
            scores, ids = _screened_search(index, queries, k, widen=nprobe is None)  # IndexRefine cannot)
        else:
            scores, ids = index.search(queries, k)
            if nprobe is None and index_kind(index) == "ivf" and not on_gpu(index):
                scores, ids = _scan_all_lists(index, queries, k, scores, ids)
    finally:
        faiss.omp_set_num_threads(threads)
    if index.metric_type == faiss.METRIC_L2:
        distances = scores / 2.0  # squared L2 of unit vectors = 2 (1 - <a, b>)
        distances[ids < 0] = 2.0
    else:
        distances = 1.0 - scores
    return np.clip(distances, 0.0, 2.0), ids


SAMPLE_ROWS = 256
WIDEN_Z = 1.5  # safety factor on that extreme-value estimate (1.0 missed 8% of the real generator's top 10)


_CACHE: "weakref.WeakKeyDictionary[faiss.Index, dict]" = weakref.WeakKeyDictionary()


def _cached(index: faiss.Index, name: str, make):
    """``make()`` computed once per index object and size (dropped with the index object)."""
    held = _CACHE.setdefault(index, {})
    if name not in held or held[name][0] != index.ntotal:
        held[name] = (int(index.ntotal), make())
    return held[name][1]


def _id_map(index: faiss.Index) -> np.ndarray:
    """Catalogue ids by internal row of an ID-mapped index."""
    return _cached(index, "_gif_id_map", lambda: faiss.vector_to_array(index.id_map))


def _sample(index: faiss.Index) -> np.ndarray:
    """SAMPLE_ROWS stored signatures spread over the index (cached while its size is unchanged)."""
    def make() -> np.ndarray:
        held = _id_map(index)
        picks = held[np.linspace(0, len(held) - 1, min(SAMPLE_ROWS, len(held))).astype(int)]
        return np.stack([index.reconstruct(int(i)) for i in picks]).astype(np.float32)
    return _cached(index, "_gif_sample", make)


def _unrelated(index: faiss.Index, queries: np.ndarray, kth_distance: np.ndarray) -> np.ndarray:
    """Rows of ``queries`` whose k-th neighbour is no closer than unrelated models can be.

    A model with close relatives has its top k inside the probed lists. One without them has unrelated
    models as neighbours, spread over all lists; its k-th found distance then lies within the range the
    closest of n unrelated models reaches, estimated from its distances to a sample of the index (mean -
    sqrt(2 ln n) standard deviations, the extreme of n Gaussian draws, times a safety factor)."""
    if index.ntotal < 2:
        return np.zeros(0, dtype=int)
    sample = 1.0 - queries @ _sample(index).T
    floor = sample.mean(1) - WIDEN_Z * math.sqrt(2 * math.log(index.ntotal)) * sample.std(1)
    return np.flatnonzero(kth_distance >= floor)


def screen_candidates(factor: float, k: int, n: int) -> int:
    """Screened models scored exactly for a query without close relatives: ``factor`` per neighbour, at
    least 1% of the index."""
    return int(min(n, max(factor * k, n // 100)))


def _screened_search(index: faiss.Index, queries: np.ndarray, k: int, widen: bool) -> tuple[np.ndarray, np.ndarray]:
    """ivf with a screen: two sources of candidates, scored exactly in the lists. The probed lists hold a
    query's close relatives; the screen's best catch what the lists miss: relatives that k-means put in lists
    far from the query (they rank high in the screen: 1% of the index, at least 10 k, suffices), and the
    neighbours of a query without close relatives (see :func:`_unrelated`), spread over every list at nearly
    equal distances, which need the screen's ``k_factor`` * k best. Scoring goes through an IDSelector over
    every list: only the selected rows are decoded. ``widen=False`` (an explicit nprobe): the lists alone."""
    ivf, screen = _ivf(index), _screen(index)
    scores, internal = ivf.search(queries, k)
    if widen and ivf.nprobe < ivf.nlist:
        n = int(index.ntotal)
        deep = screen_candidates(_container(index).k_factor, k, n)
        shallow = min(deep, max(10 * k, n // 100))
        wide = np.zeros(len(queries), dtype=bool)
        wide[_unrelated(index, queries, 1.0 - scores[:, -1])] = True
        _, screened = screen.search(queries, deep if wide.any() else shallow)
        for row, found in enumerate(screened):
            found = found[:deep if wide[row] else shallow]
            rows = np.unique(np.concatenate([found, internal[row]]))
            selector = faiss.IDSelectorBatch(rows[rows >= 0].astype(np.int64))
            params = faiss.SearchParametersIVF(nprobe=ivf.nlist, sel=selector)
            scores[row], internal[row] = ivf.search(queries[row:row + 1], k, params=params)
    held = _id_map(index)
    return scores, np.where(internal >= 0, held[np.maximum(internal, 0)], -1)


def _scan_all_lists(index: faiss.Index, queries: np.ndarray, k: int, scores: np.ndarray,
                    ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ivf without a screen (indexes built before it): a query without close relatives scans every list."""
    ivf = _ivf(index)
    if ivf is None or ivf.nprobe >= ivf.nlist:
        return scores, ids
    wide = _unrelated(index, queries, 1.0 - scores[:, -1])
    if len(wide):
        probes = ivf.nprobe
        ivf.nprobe = ivf.nlist
        try:
            scores[wide], ids[wide] = index.search(queries[wide], k)
        finally:
            ivf.nprobe = probes
    return scores, ids


def _hnsw_ef(index: faiss.Index, ef: int) -> None:
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = ef


def _pretransform(index: faiss.Index):
    """The IndexPreTransform (PCA) inside an ID-mapped approximate index, else None."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    return inner if isinstance(inner, faiss.IndexPreTransform) else None


def needs_rebuild(index: faiss.Index, spec: SearchSpec, n: int, dim: int) -> bool:
    """Whether ``index`` should be rebuilt (not extended) to hold ``n`` models: it is untrained (an empty
    approximate index: nothing to train its PCA or quantisers on yet), ``auto`` resolves to another kind, an
    ``ivf`` or ``ivfpq`` index has four times the models its lists were made for, or an approximate index's
    PCA was trained on fewer than half of them (rebuilt at each doubling until PCA_TRAIN rows: amortised
    linear, and the projection always reflects the hub)."""
    kind = index_kind(index)
    if spec.resolve(n, dim)[0] != kind or (kind in APPROXIMATE and not index.is_trained):
        return True
    if kind in APPROXIMATE and _pretransform(index) is not None:
        held = int(index.ntotal)
        if held < PCA_TRAIN and held.bit_length() != max(n, held).bit_length():
            return True
    ivf = _ivf(index) if kind in ("ivf", "ivfpq") else None
    return ivf is not None and not spec.nlist and _nlist(spec, n) >= 2 * ivf.nlist


def comparable_rows(index: faiss.Index, vectors: np.ndarray, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(what ``index`` should hold for ``vectors``, what it holds under ``ids``), in the space it stores: the
    signatures themselves, or their PCA projection for an approximate kind with a pre-transform (reconstructing
    through a PCA back to the signatures' space is lossy, so the comparison is made after the projection)."""
    pre = _pretransform(index)
    if pre is None:
        held = np.stack([index.reconstruct(int(i)) for i in ids]) if len(ids) else vectors
        return np.asarray(vectors, dtype=np.float32), np.asarray(held, dtype=np.float32)
    expected = np.ascontiguousarray(vectors, dtype=np.float32)
    for step in range(pre.chain.size()):
        expected = faiss.downcast_VectorTransform(pre.chain.at(step)).apply(expected)
    rows = {int(i): row for row, i in enumerate(faiss.vector_to_array(index.id_map))}
    inner = faiss.downcast_index(pre.index)
    held = np.stack([inner.reconstruct(rows[int(i)]) for i in ids]) if len(ids) else expected
    return np.asarray(expected, dtype=np.float32), np.asarray(held, dtype=np.float32)


def add(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, spec: SearchSpec) -> None:
    """Add rows; an ``ivf`` index re-tunes nprobe so that a query still scans about ``scan_mb``."""
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    ivf = _ivf(index)
    if ivf is not None and index_kind(index) == "ivf":
        ivf.nprobe = _scan_nprobe(spec, int(index.ntotal), int(index.d), ivf.nlist)


def gpu_available() -> bool:
    """faiss was built with GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_GPU_RESOURCES: list = []


GPU_MAX_PROBES = 2048  # faiss-gpu's largest k-selection: the most lists one GPU query can probe


class DeviceLists:
    """The inverted lists of an ``ivf`` index on a device, with their catalogue ids. faiss-gpu cannot clone
    the screen container, and needs no screen: it probes every list (up to GPU_MAX_PROBES), an exact answer
    that a GPU reads in about the time a CPU probes a few lists. Quacks like the ID-mapped index for
    :func:`search`, :func:`index_kind` and :func:`on_gpu`."""

    def __init__(self, lists: faiss.Index, ids: np.ndarray) -> None:
        self.lists, self.ids = lists, np.asarray(ids, dtype=np.int64)
        self.d, self.ntotal, self.metric_type = int(lists.d), int(lists.ntotal), lists.metric_type

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, internal = self.lists.search(queries, k)
        return scores, np.where(internal >= 0, self.ids[np.maximum(internal, 0)], -1)


def to_gpu(index: faiss.Index):
    """A copy of the index on GPU 0 (flat / ivf / ivfpq) when faiss-gpu is installed and a GPU is visible,
    else the index itself. The copy is for searching: adds and saves go to the CPU index."""
    if not gpu_available():
        return index
    try:
        options = faiss.GpuClonerOptions()
        options.useFloat16 = True
        if hasattr(options, "allowCpuCoarseQuantizer"):  # ivf's coarse level is a PCA + flat: kept on the CPU
            options.allowCpuCoarseQuantizer = True
        if not _GPU_RESOURCES:
            _GPU_RESOURCES.append(faiss.StandardGpuResources())
        if _screen(index) is not None:
            ivf = _ivf(index)
            lists = faiss.index_cpu_to_gpu(_GPU_RESOURCES[0], 0, ivf, options)
            faiss.GpuParameterSpace().set_index_parameter(lists, "nprobe", min(int(ivf.nlist), GPU_MAX_PROBES))
            return DeviceLists(lists, _id_map(index).copy())
        return faiss.index_cpu_to_gpu(_GPU_RESOURCES[0], 0, index, options)
    except RuntimeError:  # kinds without a GPU implementation (HNSW, refine) stay on the CPU
        return index


def for_search(index: faiss.Index, spec: SearchSpec) -> faiss.Index:
    """The index queries should use: its GPU copy when ``spec.device`` allows it and one can be made."""
    if spec.device == "cpu" or index.ntotal == 0 or index_kind(index) not in ("flat", "ivf"):
        return index  # hnsw and the refined ivfpq have no GPU implementation
    return to_gpu(index)


def on_gpu(index: faiss.Index) -> bool:
    """Whether ``index`` (or the index inside its ID map / pre-transform) is a faiss-gpu index."""
    if isinstance(index, DeviceLists):
        index = index.lists
    while True:
        index = faiss.downcast_index(index)
        if "Gpu" in type(index).__name__:
            return True
        if not hasattr(index, "index") or isinstance(index, faiss.IndexRefine):
            return False
        index = index.index


# what faiss raises reading a damaged file: RuntimeError for a malformed one, MemoryError (std::bad_alloc) when a
# damaged length field asks for an impossible allocation
FAISS_READ_ERRORS = (RuntimeError, MemoryError)


def save_index(index: faiss.Index, path: Path, generation: int, spec: SearchSpec, reason: str = "") -> None:
    """Write ``search.faiss`` then its sidecar ``search.json`` (generation, kind, why), each atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:   # through Python: a failed write or close raises (faiss only prints it)
            writer = faiss.PyCallbackIOWriter(handle.write)
            faiss.write_index(index, writer)
            del writer
    atomic_write_text(path.with_suffix(".json"), json.dumps(
        {"generation": generation, "kind": index_kind(index), "spec": spec.kind, "reason": reason,
         "ntotal": int(index.ntotal), "dim": int(index.d)}))


def load_index(path: Path) -> tuple[faiss.Index, dict]:
    """Read the search index and its sidecar; IndexError_ when either is missing or corrupt."""
    meta = read_sidecar(path)
    try:
        index = faiss.read_index(str(path))
    except (OSError, ValueError, *FAISS_READ_ERRORS) as exc:
        raise IndexError_(f"search index {path.name} is missing or corrupt ({' '.join(str(exc).split())[:120]}); "
                          "run `gifindex rebuild`") from None
    if int(index.ntotal) != meta["ntotal"]:
        raise IndexError_(f"search index {path.name} does not match its sidecar; run `gifindex rebuild`")
    return index, meta


def read_sidecar(path: Path) -> dict:
    """``search.json`` beside the search file at ``path``: a JSON object with an integer generation and ntotal;
    IndexError_ naming it when missing or damaged."""
    sidecar = path.with_suffix(".json")
    try:   # a regular file of bounded size only: a FIFO or device put there must not hang a reader
        meta = json.loads(read_bytes(sidecar, "search sidecar", MAX_SIDECAR_BYTES, IndexError_))
        ok = isinstance(meta, dict) and all(isinstance(meta.get(k), int) and not isinstance(meta.get(k), bool)
                                            for k in ("generation", "ntotal"))
        reason = "" if ok else "not a search sidecar"
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, IndexError_) as exc:
        meta, reason = None, " ".join(str(exc).split())[:120] or type(exc).__name__
    if reason:
        raise IndexError_(f"{sidecar.name}, the record of which catalogue generation {path.name} holds, is missing "
                          f"or damaged ({reason}); run `gifindex rebuild`")
    return meta
