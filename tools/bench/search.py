"""Latency of `nearest` over synthetic signatures: FAISS exact / HNSW against numpy brute force.

Usage: python tools/bench/search.py [--n 10000] [--dim 16384] [--queries 50] [--hnsw] [--index-api]
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


def synthetic(n: int, dim: int, seed: int = 0, families: int = 500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((families, dim), dtype=np.float32)
    vectors = centres[rng.integers(0, families, n)] + 0.7 * rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float16).astype(np.float32)


def timed(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=16 * 8 * 128)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--hnsw", action="store_true")
    parser.add_argument("--index-api", action="store_true", help="also time Index.nearest on a real index")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    vectors = synthetic(args.n, args.dim)
    ids = np.arange(args.n, dtype=np.int64)
    queries = vectors[np.random.default_rng(1).integers(0, args.n, args.queries)]
    out = {"n": args.n, "dim": args.dim, "k": args.k}

    def brute(q):
        scores = vectors @ q
        top = np.argpartition(-scores, args.k)[:args.k]
        return top[np.argsort(-scores[top])]

    out["numpy_ms"] = 1e3 * timed(lambda: [brute(q) for q in queries], 1) / args.queries
    start = time.perf_counter()
    flat = build_index(vectors, ids, SearchSpec("flat"))
    out["flat_build_s"] = time.perf_counter() - start
    out["flat_ms"] = 1e3 * timed(lambda: [search(flat, q, args.k) for q in queries], 1) / args.queries
    out["flat_batched_ms"] = 1e3 * timed(lambda: search(flat, queries, args.k), 1) / args.queries
    exact = search(flat, queries, args.k)[1]
    assert all(set(brute(q)) == set(e) for q, e in zip(queries[:5], exact[:5]))
    if args.hnsw:
        start = time.perf_counter()
        hnsw = build_index(vectors, ids, SearchSpec("hnsw"))
        out["hnsw_build_s"] = time.perf_counter() - start
        out["hnsw_ms"] = 1e3 * timed(lambda: [search(hnsw, q, args.k) for q in queries], 1) / args.queries
        approx = search(hnsw, queries, args.k)[1]
        out["hnsw_recall_at_k"] = float(np.mean([len(set(a) & set(e)) / args.k for a, e in zip(approx, exact)]))
    if args.index_api:
        out.update(index_api(vectors, args))
    out["speedup_flat_vs_numpy"] = out["numpy_ms"] / out["flat_ms"]
    print(json.dumps(out, indent=2) if args.json else
          "\n".join(f"{k:24s} {v:.4g}" if isinstance(v, float) else f"{k:24s} {v}" for k, v in out.items()))


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
