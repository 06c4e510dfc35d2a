"""Latency and recall@10 of the whole `Index.nearest(name)` call, per search kind, on an index on disk.

Usage: python tools/bench/search.py --n 100000 [--dim 16384] [--kinds flat ivf auto] [--generators synthetic real]
                                    [--queries 50] [--shard-size 64] [--sweep] [--json]
The README's figures (one command each; run with OMP_NUM_THREADS=1 on a busy machine):
    python tools/bench/search.py --n 100000 --kinds flat ivf --generators synthetic real --json
    python tools/bench/search.py --n 1000000 --dim 1024 --kinds flat ivf --generators synthetic real \
        --shard-size 1000 --json
    python tools/bench/search.py --n 20000 --kinds flat --sweep --json
(10^6 x 16,384 float16 would be 32 GiB: the 10^6 case uses 1,024 dims, i.e. K*T = 128 points of 8 dims.)

For each generator and size: signatures are generated (float16, as stored), written as real shards and a
real catalogue, then for each kind the search index is built and saved as the index's ``search.faiss``
and a freshly opened ``Index`` answers ``nearest(name, k=10)`` for random indexed models. ``query_ms`` is
that whole call (catalogue lookup, the query's own row from its shard, search, re-scoring where the kind
needs it, names); ``faiss_ms`` is the FAISS search alone; ``recall_at_10`` compares the names returned
with the exact top 10 (float16 rows, inner product, the model itself excluded), counting a model whose exact
distance ties the true 10th (within 1e-5) as right (``strict_recall_at_10``: names only;
``recall_at_10_within_error``: within ``--tolerance`` of the true 10th, by default 0.006, the mean error of a
stored 16,384-dim signature's distances against exact ModelGiF distances, below which no stored ranking is
meaningful). ``load_s`` is the first
call (reads search.faiss). ``--json`` prints one JSON object per (generator, kind) line and nothing else.

Generators:
* ``synthetic``: families around random Gaussian centres with isotropic noise (most variance is noise);
* ``real``: built from real signatures (tools/bench/real_signatures.npz, made by real_signatures.py:
  random-seed and noisy variants of timm/torchvision nets signed with the default configuration).
  A signature is K*T unit blocks (one per curve point); a family's base takes each block from a randomly
  chosen real base signature, and each variant picks a noise level (1%, 3% or 10% of the weights' std) and
  adds, block by block, the same block of a randomly chosen real variant-minus-base difference of that
  level, then re-normalises each block. Distances within and between families therefore follow the real
  ones (near-orthogonal unrelated models; variants from 0.01 to beyond 1). Each block's difference is drawn
  on its own: adding one whole real difference to every variant (an earlier version) gave a third of the
  hub only 72 distinct perturbations, 72 artificial cross-family clusters of ~1,400 models each.
  Family sizes are heavy-tailed (log-normal, mean about 12).
``--sweep`` (ivf only) also reports recall and time against ``scan_mb`` (nprobe), and FAISS-level
options at the same size: exact flat scans batched 16 queries at a time, an int8 exhaustive scan, and the
distance error of a per-index PCA projection (what a PCA'd store would change).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gifindex.index.search import SearchSpec, build_index, search

REAL = Path(__file__).with_name("real_signatures.npz")
POINTS = 128  # K*T of the default configuration; block size = dim / POINTS


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def synthetic(n: int, dim: int, seed: int = 0, families: int | None = None) -> np.ndarray:
    """Clustered unit vectors as float16 (as in the shards): families of variants with varied spread."""
    rng = np.random.default_rng(seed)
    families = families or max(10, n // 50)
    centres = rng.standard_normal((families, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, 8192):
        m = min(8192, n - start)
        v = centres[rng.integers(0, families, m)]
        v += rng.uniform(0.3, 1.2, (m, 1)).astype(np.float32) * rng.standard_normal((m, dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[start:start + m] = v
    return out


def real_blocks(dim: int, path: Path = REAL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bases, differences, noise level of each difference) of the real signatures, as (models, POINTS, block)
    float32; blocks are projected to dim / POINTS dimensions (Gaussian, as the index's compression does) when
    dim is smaller."""
    data = np.load(path)
    sig = data["signatures"].astype(np.float32).reshape(len(data["signatures"]), POINTS, -1)
    family = np.array([f"{a}/{s}" for a, s in zip(data["arch"], data["seed"])])
    is_base = data["noise"] == 0
    block = dim // POINTS
    if block != sig.shape[2]:
        proj = np.random.default_rng(7).standard_normal((sig.shape[2], block)).astype(np.float32)
        sig = sig @ proj
        sig /= np.linalg.norm(sig, axis=2, keepdims=True)
    base_of = {f: i for i, f in enumerate(family) if is_base[i]}
    variants = np.flatnonzero(~is_base)
    diffs = np.stack([sig[i] - sig[base_of[family[i]]] for i in variants])
    return sig[is_base], diffs, np.asarray(data["noise"])[variants]


def spectrum_generator(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Hub-sized signatures whose per-block structure and distances come from real signatures (see doc)."""
    bases, diffs, levels = real_blocks(dim)
    pools = [np.flatnonzero(levels == level) for level in np.unique(levels)]
    pool_size = np.array([len(p) for p in pools])
    pool = np.stack([np.resize(p, pool_size.max()) for p in pools])  # (levels, largest pool)
    rng = np.random.default_rng(seed)
    sizes = np.clip(np.ceil(rng.lognormal(1.5, 1.2, n)), 1, 500).astype(int)
    sizes = sizes[:np.searchsorted(np.cumsum(sizes), n) + 1]
    family = np.repeat(np.arange(len(sizes)), sizes)[:n]
    first = np.r_[True, family[1:] != family[:-1]]
    source = rng.integers(0, len(bases), (len(sizes), POINTS))  # which real base each block comes from
    level = rng.integers(0, len(pools), n)                        # each variant's noise level
    out = np.empty((n, dim), dtype=np.float16)
    points = np.arange(POINTS)
    for start in range(0, n, 4096):
        rows = np.arange(start, min(n, start + 4096))
        v = bases[source[family[rows]], points]                      # (m, POINTS, block)
        var = rows[~first[rows]]  # each block of a variant: a real difference of the variant's noise level
        pick = (rng.random((len(var), POINTS)) * pool_size[level[var]][:, None]).astype(int)
        v[~first[rows]] += diffs[pool[level[var][:, None], pick], points]
        v /= np.linalg.norm(v, axis=2, keepdims=True) * np.sqrt(POINTS)
        out[rows] = v.reshape(len(v), dim)
    return out


GENERATORS = {"synthetic": synthetic, "real": spectrum_generator}


def write_index(root: Path, vectors: np.ndarray, shard_size: int):
    """A real index on disk holding ``vectors`` as models m0..m{n-1} (shards and catalogue; no signing)."""
    from gifindex.config import SignatureConfig
    from gifindex.index import Index
    from gifindex.index.shards import write_shard

    dim = vectors.shape[1]
    config = SignatureConfig(num_probes=POINTS // 8, steps=8, proj_dim=dim // POINTS, resolution=16)
    index = Index.create(root, config, search=SearchSpec("flat"))
    with index.writer():
        for number, start in enumerate(range(0, len(vectors), shard_size)):
            rows = range(start, min(len(vectors), start + shard_size))
            shard = f"{number + 1:05d}-bench.h5"
            sha = write_shard(root / "shards" / shard, [f"m{i}" for i in rows], vectors[start:rows.stop],
                              index.config_hash)
            index.catalog.register_shard(shard, sha, [{"name": f"m{i}", "ref": f"m{i}.pt",
                                                       "weights_sha256": f"{i:064x}"} for i in rows])
    return index


def recall(found: list[list[str]], truth: list[list[str]], k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def tie_recall(found: list[list[str]], kth: list[float], vectors: np.ndarray, queries: np.ndarray, k: int,
               tolerance: float = 1e-5) -> float:
    """recall@k counting a returned model as right when its exact distance is within ``tolerance`` of the true
    k-th distance (1e-5: a tie; unrelated models sit at nearly equal distances)."""
    hits = []
    for names, limit, q in zip(found, kth, queries):
        rows = [int(name[1:]) for name in names[:k]]
        d = 1.0 - vectors[rows].astype(np.float32) @ q
        hits.append(np.sum(d <= limit + tolerance) / k)
    return float(np.mean(hits))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_scale(generator: str, n: int, dim: int, kinds: list[str], args) -> list[dict]:
    from gifindex.index import Index

    k = args.k
    start = time.perf_counter()
    vectors = GENERATORS[generator](n, dim, seed=args.seed)
    log(f"[{generator} n={n} dim={dim} seed={args.seed}] generated in {time.perf_counter() - start:.1f} s")
    picks = np.random.default_rng(args.seed + 1).choice(n, args.queries, replace=False)
    queries = vectors[picks].astype(np.float32)
    ids = np.arange(1, n + 1, dtype=np.int64)  # catalogue ids start at 1, in insertion order
    rows, truth = [], None
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp) / "idx"
        start = time.perf_counter()
        write_index(root, vectors, args.shard_size).close()
        log(f"  shards + catalogue written in {time.perf_counter() - start:.1f} s")
        for kind in ["flat"] + [x for x in kinds if x != "flat"]:
            spec = SearchSpec(kind, **({"scan_mb": args.scan_mb} if args.scan_mb else {}))
            start = time.perf_counter()
            built = build_index(vectors, ids, spec)
            build_s = time.perf_counter() - start
            if kind == "flat":  # the exact answer: k + 1 (the model itself is excluded by nearest)
                dist, exact = search(built, queries, k + 1)
                truth = [[f"m{i - 1}" for i in row if i - 1 != p][:k] for row, p in zip(exact, picks)]
                kth = [d[[i - 1 != p for i in row]][k - 1] for d, row, p in zip(dist, exact, picks)]
            t0 = time.perf_counter()
            [search(built, q, k + 1) for q in queries[:args.faiss_queries]]
            faiss_ms = 1e3 * (time.perf_counter() - t0) / min(args.faiss_queries, len(queries))
            with Index.open(root) as index:  # save as the index's own search file, then query a fresh one
                index.search_spec = spec
                with index.writer():
                    index.save_search(built)
            del built
            size = (root / "search.faiss").stat().st_size
            with Index.open(root) as index:
                index.search_spec = spec
                t0 = time.perf_counter()
                index.nearest(f"m{picks[0]}", k=k)
                load_s = time.perf_counter() - t0
                found, times = [], []
                for p in picks:
                    t0 = time.perf_counter()
                    found.append([nb.name for nb in index.nearest(f"m{p}", k=k)])
                    times.append(1e3 * (time.perf_counter() - t0))
                query_ms = float(np.mean(times))
                active = index.search_status()
            row = {"generator": generator, "seed": args.seed, "n": n, "dim": dim, "kind": kind,
                   "active": active["active"],
                   "query_ms": round(query_ms, 2), "query_ms_p90": round(float(np.percentile(times, 90)), 2),
                   "recall_at_10": round(tie_recall(found, kth, vectors, queries, k), 4),
                   "strict_recall_at_10": round(recall(found, truth, k), 4),
                   "recall_at_10_within_error": round(tie_recall(found, kth, vectors, queries, k, args.tolerance), 4),
                   "faiss_ms": round(faiss_ms, 2), "build_s": round(build_s, 1), "load_s": round(load_s, 2),
                   "index_mib": round(size / 2**20, 1), "peak_rss_mib": round(rss_mib()),
                   "threads": os.environ.get("OMP_NUM_THREADS", "all")}
            if kind == "auto":
                row["reason"] = active["reason"]
            rows.append(row)
            print(json.dumps(row) if args.json else row, flush=True)
    if args.sweep:
        rows += sweep(generator, vectors, queries, picks, args)
    return rows


def sweep(generator: str, vectors: np.ndarray, queries: np.ndarray, picks: np.ndarray, args) -> list[dict]:
    """FAISS-level options at this size (no Index around them): see the module docstring."""
    import faiss

    from gifindex.index.search import _ivf
    from gifindex.pca import PCA_TRAIN, fit_pca

    n, dim = vectors.shape
    k = args.k
    ids = np.arange(n, dtype=np.int64)
    out = []

    def emit(row: dict) -> None:
        row = {"generator": generator, "n": n, "dim": dim, **row}
        out.append(row)
        print(json.dumps(row) if args.json else row, flush=True)

    def timed(fn, reps):
        t0 = time.perf_counter()
        for _ in range(reps):
            result = fn()
        return 1e3 * (time.perf_counter() - t0) / reps, result

    flat = build_index(vectors, ids, SearchSpec("flat"))
    dist, exact = search(flat, queries, k + 1)
    kth = [d[row != p][k - 1] for d, row, p in zip(dist, exact, picks)]

    def rec(found):
        names = [[f"m{i}" for i in row if i != p][:k] for row, p in zip(found, picks)]
        return round(tie_recall(names, kth, vectors, queries, k), 4)

    batch = 16
    ms, _ = timed(lambda: search(flat, queries[:batch], k + 1), 2)
    emit({"kind": "flat-batched", "query_ms": round(ms / batch, 2), "recall_at_10": 1.0, "batch": batch})
    del flat
    int8 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    int8.train(np.ascontiguousarray(vectors[:20000], dtype=np.float32))
    for s in range(0, n, 65536):
        int8.add(np.ascontiguousarray(vectors[s:s + 65536], dtype=np.float32))
    ms, found = timed(lambda: np.concatenate([int8.search(q[None], k + 1)[1] for q in queries]), 1)
    emit({"kind": "int8-flat", "query_ms": round(ms / len(queries), 2), "recall_at_10": rec(found)})
    del int8
    ivf_index = build_index(vectors, ids, SearchSpec("ivf"))
    ivf = _ivf(ivf_index)
    per_list = n / ivf.nlist
    for scan_mb in (8, 16, 32, 48, 96, 192):
        ivf.nprobe = int(min(ivf.nlist, max(1, np.ceil(scan_mb * 2**20 / (2 * dim) / per_list))))
        ms, found = timed(lambda: np.concatenate([search(ivf_index, q, k + 1)[1] for q in queries]), 1)
        emit({"kind": "ivf-sweep", "scan_mb": scan_mb, "nprobe": int(ivf.nprobe), "nlist": int(ivf.nlist),
              "faiss_ms": round(ms / len(queries), 2), "recall_at_10": rec(found)})
    del ivf_index
    for pca_dim in (256, 1024):  # distance error of a per-index PCA projection (a PCA'd store)
        if pca_dim >= dim:
            continue
        pca = faiss.PCAMatrix(dim, pca_dim, 0.0, False)
        sample = np.random.default_rng(3).choice(n, min(n, PCA_TRAIN), replace=False)
        fit_pca(pca, np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
        others = np.random.default_rng(4).choice(n, 2000, replace=False)
        a, b = queries, np.ascontiguousarray(vectors[others], dtype=np.float32)
        true = 1 - a @ b.T
        pa, pb = pca.apply(a), pca.apply(b)
        mean = faiss.vector_to_array(pca.mean)
        approx = 1 - (pa @ pb.T + (a @ mean)[:, None] + (b @ mean)[None] - mean @ mean)
        err = np.abs(approx - true)
        emit({"kind": f"pca{pca_dim}-distance-error", "mean_abs_error": round(float(err.mean()), 4),
              "p99_abs_error": round(float(np.percentile(err, 99)), 4),
              "variance_kept": round(float(1 - ((a - mean - pa @ faiss.vector_to_array(pca.PCAMat).reshape(
                  pca_dim, dim)) ** 2).sum() / ((a - mean) ** 2).sum()), 4)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000])
    parser.add_argument("--dim", type=int, nargs="+", default=[16 * 8 * 128],
                        help="signature dim per --n (one value: for all)")
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "auto"], help="flat ivf hnsw ivfpq auto")
    parser.add_argument("--generators", nargs="+", default=["synthetic", "real"], choices=sorted(GENERATORS))
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--faiss-queries", type=int, default=20)
    parser.add_argument("--shard-size", type=int, default=64, help="models per shard (ingest --commit-every)")
    parser.add_argument("--scan-mb", type=float, default=0.0, help="ivf scan budget (0: SearchSpec default)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0,
                        help="generator and query seed (settings were chosen on seed 0; report another)")
    parser.add_argument("--tolerance", type=float, default=0.006,
                        help="recall_at_10_within_error: a model within this of the true 10th distance counts "
                             "(default: the stored signatures' mean error against exact ModelGiF distances)")
    parser.add_argument("--sweep", action="store_true", help="also FAISS-level options (see doc)")
    parser.add_argument("--tmp", default=None, help="folder for the temporary index (default: system temp)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line, nothing else on stdout")
    args = parser.parse_args()
    dims = args.dim * len(args.n) if len(args.dim) == 1 else args.dim
    for generator in args.generators:
        for n, dim in zip(args.n, dims):
            one_scale(generator, n, dim, args.kinds, args)


if __name__ == "__main__":
    main()
