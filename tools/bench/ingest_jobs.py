"""Models per minute of `gifindex ingest` with -j 1 against -j 2 (local executor), on two zoos, in one run.

Usage: python tools/bench/ingest_jobs.py [--zoos demo 224px] [--jobs 1 2] [--repeats 1] [--work DIR] [--json]
Zoos:
* ``demo``: the demo zoo (`gifindex demo`'s 15 small digit models, built or reused under --work/demo);
* ``224px``: 8 ImageNet-sized architectures (torchvision / timm) with random weights saved as state-dict
  .pt files and ingested at their native 224 px through a manifest-like list of entries.
Each (zoo, jobs) ingests the whole zoo into a fresh index with gifindex's default configuration and the
local executor (``jobs`` worker processes, each pinned to cores // jobs threads; -j 1 keeps all cores in
one worker). Settings alternate (-j 1, -j 2, -j 1, ...) over --repeats so drift in the machine's load
hits both. Also checks that the signatures do not depend on -j (largest distance between the two runs'
signatures of each model; bit-identical when the thread counts match, within float rounding otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gifindex.config import SignatureConfig
from gifindex.executors import LocalExecutor
from gifindex.index import Index
from gifindex.manifest import FIELDS, ModelEntry

ARCHS_224 = ("torchvision:resnet18", "torchvision:mobilenet_v3_small", "torchvision:resnet34",
             "torchvision:shufflenet_v2_x1_0", "timm:vit_tiny_patch16_224", "timm:efficientnet_b0",
             "timm:convnext_atto", "timm:regnetx_002")


def demo_zoo(work: Path) -> list[ModelEntry]:
    from gifindex.demo import build_demo_zoo

    entries = build_demo_zoo(work / "demo", progress=lambda msg: print(msg, file=sys.stderr))
    out = []
    for item in entries:
        data = {k: v for k, v in item.items() if k in FIELDS}
        for key in ("mean", "std"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        out.append(ModelEntry(**data))
    return out


def zoo_224(work: Path) -> list[ModelEntry]:
    """State-dict files of randomly initialised 224 px models (made once under work/224px)."""
    import timm
    import torchvision

    folder = work / "224px"
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for number, arch in enumerate(ARCHS_224):
        source, name = arch.split(":")
        path = folder / f"{name}.pt"
        if not path.exists():
            torch.manual_seed(number)
            module = (torchvision.models.get_model(name, weights=None) if source == "torchvision"
                      else timm.create_model(name, pretrained=False))
            torch.save(module.state_dict(), path)
        entries.append(ModelEntry(ref=str(path), name=name, arch=arch, input_size=224))
    return entries


def run(entries: list[ModelEntry], jobs: int, work: Path, timeout: float) -> tuple[float, dict[str, np.ndarray]]:
    with tempfile.TemporaryDirectory(dir=work) as tmp, Index.create(Path(tmp) / "idx", SignatureConfig()) as index:
        start = time.perf_counter()
        report = index.ingest(entries, executor=LocalExecutor(timeout=timeout, jobs=jobs))
        seconds = time.perf_counter() - start
        failed = [r for r in report.results if r.status != "added"]
        if failed:
            raise SystemExit(f"ingest failed for {failed[0].name}: {failed[0].error}")
        records, vectors = index.vectors()
        return seconds, {r.name: v for r, v in zip(records, vectors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoos", nargs="+", default=["demo", "224px"], choices=["demo", "224px"])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "gifindex-bench"),
                        help="folder for the zoos (kept, reused) and the temporary indexes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for zoo in args.zoos:
        entries = demo_zoo(work) if zoo == "demo" else zoo_224(work)
        rates: dict[int, list[float]] = {j: [] for j in args.jobs}
        signatures: dict[int, dict[str, np.ndarray]] = {}
        for _ in range(args.repeats):
            for jobs in args.jobs:
                seconds, signatures[jobs] = run(entries, jobs, work, args.timeout)
                rates[jobs].append(60.0 * len(entries) / seconds)
                row = {"zoo": zoo, "models": len(entries), "jobs": jobs, "seconds": round(seconds, 1),
                       "models_per_min": round(rates[jobs][-1], 2), "load_avg_1m": round(os.getloadavg()[0], 2),
                       "cores": os.cpu_count()}
                print(json.dumps(row) if args.json else row, flush=True)
        first, *others = args.jobs
        for jobs in others:
            gap = max(float(np.clip(1 - signatures[first][n].astype(np.float64) @ signatures[jobs][n], 0, 2))
                      for n in signatures[first])
            row = {"zoo": zoo, "ratio": f"-j {jobs} / -j {first}",
                   "speedup": round(float(np.median(rates[jobs]) / np.median(rates[first])), 3),
                   "max_signature_distance": gap}
            print(json.dumps(row) if args.json else row, flush=True)


if __name__ == "__main__":
    main()
