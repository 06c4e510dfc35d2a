"""Signing throughput of gifindex against a bare PyTorch loop doing the same forward/backward passes.

Usage: python tools/bench/signing.py [--models resnet18 resnet50 mobilenetv3 efficientnet_b0 vit_tiny convnext]
        [--resolutions 64 112 224] [-K 16] [-T 8] [--batch-size 32] [--device cpu] [--repeats 2]
        [--variants] [--authors] [--memory]
Per model and resolution: seconds per signature for gifindex's compute_curves and for the bare loop
(alternating, best of --repeats), their ratio (bare / gifindex; 1.0 = gifindex adds nothing), path points
per second and achieved GFLOP/s (FLOPs of one forward+backward counted by torch.utils.flop_counter) against
the measured float32 matmul peak. --variants times channels_last and bf16 autocast in the bare loop and
reports the mean cosine distance they introduce; --authors compares with the authors' approach (one
reference image at a time, 50 steps, float32 fields kept); --memory measures peak RSS of one signing per
batch size (resnet50, in fresh processes). Ratios are what to compare: the machines are shared.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import timm
import torch

from gifindex.config import SignatureConfig
from gifindex.curves import compute_curves
from gifindex.models.spec import InputSpec, LoadedModel
from gifindex.probes import make_probes

MODELS = {"resnet18": "resnet18", "resnet50": "resnet50", "mobilenetv3": "mobilenetv3_large_100",
          "efficientnet_b0": "efficientnet_b0", "vit_tiny": "vit_tiny_patch16_224", "convnext": "convnext_tiny"}


def bare_loop(model, images, steps, batch_size, device, channels_last=False, bf16=False, keep=False):
    """The same K*T gradient evaluations written plainly: scaled images, forward, l2 norm, backward."""
    alphas = torch.arange(1, steps + 1, dtype=torch.float32, device=device) / steps
    points = (alphas.view(1, -1, 1, 1, 1) * images.to(device).unsqueeze(1)).flatten(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))[1:] if hasattr(model, "pretrained_cfg") else None
    out_grads = []
    for start in range(0, points.shape[0], batch_size):
        x = points[start:start + batch_size].clone().requires_grad_(True)
        y = x
        if size and tuple(y.shape[-2:]) != tuple(size):
            y = torch.nn.functional.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False,
                                                antialias=size[0] < y.shape[-2])
        y = (y - mean) / std
        if channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            out = model(y)
        (grad,) = torch.autograd.grad(out.float().norm(dim=1).sum(), x)
        grad = grad.cpu()
        if keep:
            out_grads.append(grad)
    return torch.cat(out_grads) if keep else None


def matmul_peak(device: str, n: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def flops_per_point(model, resolution: int, device: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, resolution, resolution, device=device)
    with FlopCounterMode(display=False) as counter:
        bare_loop(model, x, 1, 1, device)
    return float(counter.get_total_flops())


def load(name: str, device: str):
    torch.manual_seed(0)
    module = timm.create_model(MODELS.get(name, name)).eval().to(device)
    for p in module.parameters():
        p.requires_grad_(False)
    size = tuple(module.pretrained_cfg.get("input_size", (3, 224, 224))[1:])
    return module, LoadedModel(module, InputSpec(size=size), f"timm:{name}", name, "timm")


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((1 - torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--resolutions", nargs="+", type=int, default=[64, 112, 224])
    parser.add_argument("-K", type=int, default=16)
    parser.add_argument("-T", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--authors", action="store_true")
    parser.add_argument("--memory", nargs="*", type=int, default=None, metavar="BATCH",
                        help="peak memory of resnet50 at R=224 per batch size (default 4 8 16 32)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--_memory_child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_child:
        return memory_child(*args._memory_child)

    peak = matmul_peak(args.device)
    print(json.dumps({"matmul_peak_gflops": round(peak, 1), "threads": torch.get_num_threads()}), flush=True)
    rows = []
    for resolution in args.resolutions:
        config = SignatureConfig(resolution=resolution, num_probes=args.K, steps=args.T)
        probes = make_probes(config)
        for name in args.models:
            module, loaded = load(name, args.device)
            flops = flops_per_point(module, resolution, args.device) * config.points_per_model
            ours, bare = [], []
            # warm both once (oneDNN primitives, allocator): otherwise the first timed loop pays for it
            bare_loop(module, probes.images[:1], 1, args.batch_size, args.device)
            compute_curves(loaded, probes, config, batch_size=args.batch_size, device=args.device)
            for _ in range(args.repeats):  # alternate to share the machine's noise fairly
                start = time.perf_counter()
                bare_loop(module, probes.images, args.T, args.batch_size, args.device)
                bare.append(time.perf_counter() - start)
                start = time.perf_counter()
                compute_curves(loaded, probes, config, batch_size=args.batch_size, device=args.device)
                ours.append(time.perf_counter() - start)
            row = {"model": name, "R": resolution, "points": config.points_per_model,
                   "gifindex_s": round(min(ours), 3), "bare_s": round(min(bare), 3),
                   "ratio_bare_over_gifindex": round(min(bare) / min(ours), 3),
                   "points_per_s": round(config.points_per_model / min(ours), 2),
                   "gflops": round(flops / min(ours) / 1e9, 1), "of_peak": round(flops / min(ours) / 1e9 / peak, 3)}
            if args.variants:
                reference = bare_loop(module, probes.images, args.T, args.batch_size, args.device, keep=True)
                for label, kw in (("channels_last", {"channels_last": True}), ("bf16", {"bf16": True})):
                    times = []
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        grads = bare_loop(module, probes.images, args.T, args.batch_size, args.device, keep=True, **kw)
                        times.append(time.perf_counter() - start)
                    row[f"{label}_speedup"] = round(min(bare) / min(times), 3)
                    row[f"{label}_point_distance"] = distance(reference, grads)
            if args.authors:
                row.update(authors(module, loaded, probes, config, args, min(ours)))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.memory is not None:
        for batch in args.memory or [4, 8, 16, 32]:
            out = subprocess.run([sys.executable, __file__, "--_memory_child", str(batch), str(args.K), str(args.T), "224"],
                                 capture_output=True, text=True, check=True)
            print(out.stdout.strip(), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


def authors(module, loaded, probes, config, args, ours_s: float) -> dict:
    """The authors' approach: per reference image, 50 steps at batch 1, float32 fields kept (timed on one
    reference image and scaled by K); gifindex keeps K*T*proj_dim float16 numbers."""
    steps = 50
    start = time.perf_counter()
    fields = bare_loop(module, probes.images[:1], steps, 1, args.device, keep=True)
    one = time.perf_counter() - start
    authors_s = one * config.num_probes
    authors_bytes = config.num_probes * steps * fields[0].numel() * 4
    ours_bytes = config.points_per_model * config.proj_dim * 2
    return {"authors_s": round(authors_s, 2), "authors_over_gifindex_time": round(authors_s / ours_s, 2),
            "authors_bytes": authors_bytes, "gifindex_bytes": ours_bytes,
            "authors_over_gifindex_bytes": round(authors_bytes / ours_bytes, 1)}


def memory_child(batch: int, k: int, t: int, resolution: int) -> None:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    config = SignatureConfig(resolution=resolution, num_probes=k, steps=t)
    probes = make_probes(config)
    _, loaded = load("resnet50", "cpu")
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    compute_curves(loaded, probes, config, batch_size=batch)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    curves_mb = k * t * 3 * resolution * resolution * 4 / 2**20
    print(json.dumps({"batch_size": batch, "K": k, "T": t, "R": resolution, "seconds": round(seconds, 1),
                      "peak_rss_mb": round(peak / 1024), "after_load_mb": round(loaded_rss / 1024),
                      "signing_extra_mb": round((peak - loaded_rss) / 1024), "curves_mb": round(curves_mb),
                      "start_mb": round(base / 1024)}))


if __name__ == "__main__":
    main()
