"""Tree at scale: time and peak memory of the k-means tree (gifindex.tree.build_tree_scalable).

Usage: python tools/bench/tree.py [--n 10000 100000 1000000] [--dim 1024] [--dense-check 3000]
Synthetic signatures (families of variants, unit vectors); each size runs in a fresh process so the peak
RSS is its own. --dense-check N also builds the dense tree on N models and reports the cophenetic
correlation of both trees with the true distances.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def synthetic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(10, n // 100), dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        v = centres[rng.integers(0, len(centres), m)]
        v += rng.uniform(0.3, 1.0, (m, 1)).astype(np.float32) * rng.standard_normal((m, dim), dtype=np.float32)
        out[s:s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def child(n: int, dim: int) -> None:
    from gifindex.tree import build_tree_scalable, to_newick

    v = synthetic(n, dim)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    tree = build_tree_scalable([f"m{i}" for i in range(n)], v)
    seconds = time.perf_counter() - start
    newick = to_newick(tree)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n, "dim": dim, "seconds": round(seconds, 1), "peak_rss_mb": round(peak / 1024),
                      "signatures_mb": round(v.nbytes / 2**20), "rss_before_tree_mb": round(before / 1024),
                      "newick_mb": round(len(newick) / 2**20, 1),
                      "dense_matrix_would_need_gb": round(n * n * 8 / 2**30, 1)}), flush=True)


def dense_check(n: int, dim: int) -> None:
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform

    from gifindex.tree import build_tree, build_tree_scalable

    v = synthetic(n, dim)
    d = np.clip(1 - v.astype(np.float64) @ v.T.astype(np.float64), 0, 2)
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    names = [f"m{i}" for i in range(n)]
    condensed = squareform(d, checks=False)
    out = {"n": n}
    for label, tree in (("dense", build_tree(names, d)), ("kmeans", build_tree_scalable(names, v))):
        out[f"{label}_cophenetic_corr"] = round(float(np.corrcoef(hierarchy.cophenet(tree.linkage_matrix),
                                                                  condensed)[0, 1]), 4)
    print(json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--dense-check", type=int, default=0)
    parser.add_argument("--_child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        return child(args._child, args.dim)
    if args.dense_check:
        dense_check(args.dense_check, args.dim)
    for n in args.n:
        out = subprocess.run([sys.executable, __file__, "--_child", str(n), "--dim", str(args.dim)],
                             capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip()[-500:], flush=True)


if __name__ == "__main__":
    main()
