"""Signing throughput of gifindex against a bare PyTorch loop doing the same forward/backward passes.

Usage: python tools/bench/signing.py [--models resnet18 resnet50] [--resolution 224] [-K 16] [-T 8]
                                      [--batch-size 32] [--device cpu] [--repeats 2]
Prints, per model, the seconds per model signature for both and their ratio (bare / gifindex; 1.0 means
gifindex adds nothing). Ratios measured in one run, alternating the two, are what to compare: the
machines are shared and absolute times are noisy.
"""
from __future__ import annotations

import argparse
import json
import time

import timm
import torch

from gifindex.config import SignatureConfig
from gifindex.curves import compute_curves
from gifindex.models.spec import InputSpec, LoadedModel
from gifindex.probes import make_probes


def bare_loop(model: torch.nn.Module, images: torch.Tensor, steps: int, batch_size: int, device: str) -> None:
    """The same K*T gradient evaluations written plainly: scaled images, forward, l2 norm, backward."""
    alphas = torch.arange(1, steps + 1, dtype=torch.float32, device=device) / steps
    points = (alphas.view(1, -1, 1, 1, 1) * images.to(device).unsqueeze(1)).flatten(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    for start in range(0, points.shape[0], batch_size):
        x = points[start:start + batch_size].clone().requires_grad_(True)
        out = model((x - mean) / std)
        (grad,) = torch.autograd.grad(out.norm(dim=1).sum(), x)
        grad.cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("-K", type=int, default=16)
    parser.add_argument("-T", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    config = SignatureConfig(resolution=args.resolution, num_probes=args.K, steps=args.T)
    probes = make_probes(config)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        module = timm.create_model(name).eval().to(args.device)
        for p in module.parameters():
            p.requires_grad_(False)
        loaded = LoadedModel(module, InputSpec(size=(224, 224)), f"timm:{name}", name, "timm")
        ours, bare = [], []
        for _ in range(args.repeats):  # alternate to share the machine's noise fairly
            start = time.perf_counter()
            bare_loop(module, probes.images, args.T, args.batch_size, args.device)
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            compute_curves(loaded, probes, config, batch_size=args.batch_size, device=args.device)
            ours.append(time.perf_counter() - start)
        row = {"model": name, "points": config.points_per_model, "gifindex_s": min(ours), "bare_s": min(bare),
               "ratio_bare_over_gifindex": min(bare) / min(ours),
               "points_per_s": config.points_per_model / min(ours)}
        rows.append(row)
        if not args.json:
            print(f"{name:12s} K*T={row['points']:4d}  gifindex {row['gifindex_s']:7.2f} s  bare loop "
                  f"{row['bare_s']:7.2f} s  ratio {row['ratio_bare_over_gifindex']:.3f}  "
                  f"({row['points_per_s']:.1f} points/s)", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
