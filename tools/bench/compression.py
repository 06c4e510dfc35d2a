"""Error of compressed signature distances against exact ModelGiF distances, per proj_dim.

Usage: python tools/bench/compression.py [--zoo DIR] [--dims 32 64 128 256 512 1024] [--seeds 5]
                                         [-K 16] [-T 8] [--resolution 64] [--json]
Signs every model of the demo zoo (trained on scikit-learn's digits; built and cached in --zoo) with the
exact (uncompressed) curves, then compresses them with --seeds different projection seeds per proj_dim,
stores them as float16 like the index does, and compares all pairwise distances. Reports the mean, 95th
percentile and max absolute error, and the bytes each model takes in a shard.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from gifindex.compress import Projection, compress
from gifindex.config import SignatureConfig
from gifindex.curves import compute_curves
from gifindex.demo import build_demo_zoo
from gifindex.distance import curve_distance
from gifindex.manifest import ModelEntry
from gifindex.models import load_model
from gifindex.probes import make_probes


def exact_curves(zoo_dir: Path, config: SignatureConfig) -> tuple[list[str], list]:
    stamp = zoo_dir / "demo_zoo.json"
    if stamp.is_file():  # an existing zoo, whatever configuration it was built with
        entries = [{**e, "ref": str(zoo_dir / e["ref"])} for e in json.loads(stamp.read_text())["entries"]]
    else:
        entries = build_demo_zoo(zoo_dir)
    probes = make_probes(config)
    names, curves = [], []
    for item in entries:
        entry = ModelEntry(ref=item["ref"], name=item["name"], arch=item.get("arch"),
                           num_classes=item.get("num_classes"), input_size=item.get("input_size"),
                           mean=tuple(item["mean"]) if item.get("mean") else None,
                           std=tuple(item["std"]) if item.get("std") else None)
        loaded = load_model(entry.ref, **entry.load_kwargs())
        names.append(entry.name)
        curves.append(compute_curves(loaded, probes, config, batch_size=64))
    return names, curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=Path.home() / ".cache" / "gifindex" / "demo-zoo")
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("-K", type=int, default=None)
    parser.add_argument("-T", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    defaults = SignatureConfig()
    config = defaults.replace(num_probes=args.K or defaults.num_probes, steps=args.T or defaults.steps,
                              resolution=args.resolution or defaults.resolution)
    start = time.perf_counter()
    names, curves = exact_curves(args.zoo, config)
    pairs = list(itertools.combinations(range(len(names)), 2))
    exact = np.array([curve_distance(curves[i], curves[j]) for i, j in pairs])
    rows = []
    for dim in args.dims:
        errors = []
        for seed in range(args.seeds):
            projection = Projection(config.input_dim, dim, seed)
            sigs = np.stack([compress(c, projection) for c in curves]).astype(np.float16).astype(np.float64)
            approx = np.clip(1.0 - np.array([sigs[i] @ sigs[j] for i, j in pairs]), 0.0, 2.0)
            errors.append(np.abs(approx - exact))
        err = np.concatenate(errors)
        rows.append({"proj_dim": dim, "bytes_per_model": config.points_per_model * dim * 2,
                     "mean_abs_error": float(err.mean()), "p95_abs_error": float(np.quantile(err, 0.95)),
                     "max_abs_error": float(err.max())})
    result = {"models": len(names), "pairs": len(pairs), "config": config.to_dict(),
              "exact_distance_range": [float(exact.min()), float(exact.max())], "rows": rows,
              "seconds": round(time.perf_counter() - start, 1)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{len(names)} demo-zoo models, {len(pairs)} pairs, K={config.num_probes} T={config.steps} "
          f"R={config.resolution}; exact distances {exact.min():.3f}..{exact.max():.3f}; {args.seeds} seeds")
    print("| proj_dim | bytes/model | mean abs error | p95 abs error | max abs error |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['proj_dim']} | {row['bytes_per_model']:,} | {row['mean_abs_error']:.4f} | "
              f"{row['p95_abs_error']:.4f} | {row['max_abs_error']:.4f} |")


if __name__ == "__main__":
    main()
