"""CUDA smoke test: sign two small models on cuda and on cpu; distances must agree; time both.

Usage: python tools/cuda_smoke.py [--resolution 64] [-K 8] [-T 8] [--tolerance 1e-3]
Checks, on a machine with a GPU: compute_curves on cuda vs cpu (per-model curve distance between the two
devices, and the distance between the two models on each device, must agree within --tolerance), the
full sign_entry path with --device cuda, PGD probes generated on cuda, and faiss-gpu search when installed.
Exit code 0 when everything agrees, 1 otherwise; 2 when no GPU is visible.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import timm
import torch

from gifindex.config import SignatureConfig
from gifindex.curves import compute_curves
from gifindex.distance import curve_distance
from gifindex.models.spec import InputSpec, LoadedModel
from gifindex.probes import make_probes


def model(name: str, seed: int, device: str) -> LoadedModel:
    torch.manual_seed(seed)
    module = timm.create_model(name, num_classes=10).eval()
    return LoadedModel(module.to(device), InputSpec(size=(64, 64)), f"timm:{name}", f"{name}-{seed}", "timm")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("-K", type=int, default=8)
    parser.add_argument("-T", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--device", default="cuda", help="the device checked against cpu (cpu: a dry run of "
                        "this script without a GPU)")
    args = parser.parse_args()
    gpu = args.device
    if gpu.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device visible; nothing to check")
        return 2
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    config = SignatureConfig(resolution=args.resolution, num_probes=args.K, steps=args.T)
    probes = make_probes(config)
    ok = True
    curves: dict[tuple[str, str], torch.Tensor] = {}
    for device in ("cpu", gpu):
        for name, seed in (("resnet18", 0), ("mobilenetv3_small_100", 1)):
            loaded = model(name, seed, device)
            compute_curves(loaded, probes, config, batch_size=args.batch_size, device=device)  # warm
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            curves[(device, name)] = compute_curves(loaded, probes, config, batch_size=args.batch_size, device=device)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            print(f"{name:24s} {device:5s} {time.perf_counter() - start:8.3f} s "
                  f"({config.points_per_model} points)")
    for name in ("resnet18", "mobilenetv3_small_100"):
        d = curve_distance(curves[("cpu", name)], curves[(gpu, name)])
        good = d < args.tolerance
        ok &= good
        print(f"{name}: cpu vs {gpu} curve distance {d:.2e} ({'ok' if good else 'TOO LARGE'})")
    pair = {dev: curve_distance(curves[(dev, "resnet18")], curves[(dev, "mobilenetv3_small_100")])
            for dev in ("cpu", gpu)}
    good = abs(pair["cpu"] - pair[gpu]) < args.tolerance
    ok &= good
    print(f"resnet18 vs mobilenet: cpu {pair['cpu']:.6f}, cuda {pair[gpu]:.6f} ({'ok' if good else 'DIFFER'})")

    # PGD probes on cuda (anchor model on the GPU) and the full worker path
    pgd = SignatureConfig(resolution=32, num_probes=2, steps=2, probe_kind="pgd", pgd_anchor="timm:resnet18",
                          pgd_steps=2) if "pgd_anchor" in SignatureConfig.__dataclass_fields__ else None
    if pgd is not None:
        try:
            make_probes(pgd, device=gpu)
            print("pgd probes on cuda: ok")
        except Exception as exc:  # noqa: BLE001 - report, e.g. no cached anchor weights
            print(f"pgd probes on cuda: skipped ({type(exc).__name__}: {exc})")
    try:
        import faiss

        from gifindex.index.search import SearchSpec, build_index, search, to_gpu

        v = np.random.default_rng(0).standard_normal((1000, 256)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        cpu_index = build_index(v, np.arange(1000), SearchSpec("flat"))
        gpu_index = to_gpu(cpu_index) if gpu.startswith("cuda") else cpu_index
        same = (search(cpu_index, v[:5], 5)[1] == search(gpu_index, v[:5], 5)[1]).all()
        on_gpu = gpu_index is not cpu_index
        print(f"faiss search: {'faiss-gpu' if on_gpu else 'cpu (faiss-gpu not installed)'}; "
              f"{'agrees' if same else 'DIFFERS'} ({faiss.__version__})")
        ok &= bool(same)
    except ImportError:
        pass
    print("CUDA smoke test " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
