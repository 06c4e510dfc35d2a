"""Latency and recall@10 of `nearest` over synthetic signatures: flat (exact) / HNSW / IVF-PQ.

Usage: python tools/bench/search.py [--n 10000 100000 1000000] [--dim 16384 16384 1024]
                                    [--kinds flat hnsw ivfpq] [--queries 50] [--numpy] [--index-api]
The issue's figure (one command): python tools/bench/search.py --n 10000 100000 1000000
    --dim 16384 16384 1024 --kinds flat hnsw ivfpq --queries 20
(10^6 x 16,384 float16 would be 32 GiB: the 10^6 case uses 1,024 dims to fit this machine's 24 GiB).
Synthetic signatures are clustered unit vectors (families around random centres), float16-rounded as
in the shards. Reports per-query latency of numpy brute force (float32 matrix-vector product + argpartition),
of the FAISS flat index, optionally of HNSW with its recall@10 against exact, and optionally of the whole
`Index.nearest(name)` call (catalogue lookup, shard read of the query, search) on a real index on disk.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from gifindex.index.search import SearchSpec, build_index, search

RERANK = 4  # as Index.nearest for approximate kinds


def synthetic(n: int, dim: int, seed: int = 0, families: int | None = None) -> np.ndarray:
    """Clustered unit vectors as float16 (as in the shards): families of variants with varied spread.

    Generated in chunks so that 10^5 x 16,384 fits (float16, 3.3 GB) without a float32 copy.
    """
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


def timed(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def recall(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact)]))


def one_scale(n: int, dim: int, kinds: list[str], queries: int, k: int, pca_dim: int) -> list[dict]:
    import faiss

    from gifindex.index.search import index_kind

    vectors = synthetic(n, dim)
    ids = np.arange(n, dtype=np.int64)
    q = vectors[np.random.default_rng(1).integers(0, n, queries)].astype(np.float32)
    rows, exact = [], None
    for kind in ["flat"] + [x for x in kinds if x != "flat"]:
        spec = SearchSpec(kind, pca_dim=pca_dim)
        start = time.perf_counter()
        index = build_index(vectors, ids, spec)
        build = time.perf_counter() - start
        assert index_kind(index) == kind
        search(index, q[:1], k)  # warm
        per_query = timed(lambda: [search(index, x, k) for x in q], 1) / queries
        found = search(index, q, k)[1]
        if kind == "flat":
            exact = found
        with tempfile.NamedTemporaryFile(suffix=".faiss") as tmp:
            faiss.write_index(index, tmp.name)
            size = Path(tmp.name).stat().st_size
        row = {"n": n, "dim": dim, "kind": kind, "build_s": round(build, 2), "query_ms": round(1e3 * per_query, 3),
               f"recall@{k}": round(recall(found, exact, k), 4), "index_mb": round(size / 2**20, 1)}
        if kind != "flat":  # what Index.nearest does: RERANK * k candidates re-scored exactly from the stored rows
            def reranked(x):
                cand = search(index, x, RERANK * k)[1][0]
                cand = cand[cand >= 0]
                return cand[np.argsort(-(vectors[cand].astype(np.float32) @ x))[:k]]

            row["rerank_query_ms"] = round(1e3 * timed(lambda: [reranked(x) for x in q], 1) / queries, 3)
            row[f"rerank_recall@{k}"] = round(recall(np.array([reranked(x) for x in q]), exact, k), 4)
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
        del index
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000])
    parser.add_argument("--dim", type=int, nargs="+", default=[16 * 8 * 128],
                        help="signature dim per --n (one value: for all)")
    parser.add_argument("--kinds", nargs="+", default=["flat"], help="flat hnsw ivfpq")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--pca-dim", type=int, default=256)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--hnsw", action="store_true", help="same as --kinds flat hnsw")
    parser.add_argument("--numpy", action="store_true", help="also numpy brute force (first --n only)")
    parser.add_argument("--index-api", action="store_true", help="also time Index.nearest on a real index")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kinds = args.kinds + (["hnsw"] if args.hnsw else [])
    dims = args.dim * len(args.n) if len(args.dim) == 1 else args.dim
    rows = []
    for n, dim in zip(args.n, dims):
        rows += one_scale(n, dim, kinds, args.queries, args.k, args.pca_dim)
    if args.numpy or args.index_api:
        vectors = synthetic(args.n[0], dims[0]).astype(np.float32)
        args.dim = dims[0]
        extra = {}
        if args.numpy:
            qs = vectors[np.random.default_rng(1).integers(0, len(vectors), args.queries)]

            def brute(q):
                scores = vectors @ q
                top = np.argpartition(-scores, args.k)[:args.k]
                return top[np.argsort(-scores[top])]

            extra["numpy_ms"] = 1e3 * timed(lambda: [brute(q) for q in qs], 1) / args.queries
        if args.index_api:
            extra.update(index_api(vectors, args))
        print(json.dumps(extra))
        rows.append(extra)
    if args.json:
        print(json.dumps(rows, indent=2))


def index_api(vectors: np.ndarray, args) -> dict:
    """Build a real index on disk with these signatures (bypassing signing) and time nearest(name)."""
    from gifindex.config import SignatureConfig
    from gifindex.index import Index
    from gifindex.ingest import SignResult

    k_t = args.dim // 128
    config = SignatureConfig(num_probes=k_t // 8 if k_t % 8 == 0 else k_t, steps=8 if k_t % 8 == 0 else 1,
                             proj_dim=128, resolution=16)
    with tempfile.TemporaryDirectory() as tmp:
        index = Index.create(Path(tmp) / "idx", config)
        start = time.perf_counter()
        with index.writer():
            for chunk in range(0, len(vectors), 1000):
                index._commit([SignResult(name=f"m{i}", ref=f"m{i}.pt", status="added", weights_sha256=f"{i:064x}",
                                          signature=vectors[i]) for i in range(chunk, min(chunk + 1000, len(vectors)))])
        build = time.perf_counter() - start
        names = [f"m{i}" for i in np.random.default_rng(2).integers(0, len(vectors), args.queries)]
        index.nearest(names[0], k=args.k)  # warm: loads search.faiss
        per_query = timed(lambda: [index.nearest(n, k=args.k) for n in names], 1) / args.queries
        index.close()
    return {"index_ingest_s": build, "index_nearest_ms": 1e3 * per_query}


if __name__ == "__main__":
    main()
