"""CUDA smoke test: sign a ResNet-50 and a ViT at 224 px on the GPU and on the CPU, time the variants, and
check that faiss-gpu serves `Index.search_index()`; one summary line.

Usage: python tools/cuda_smoke.py [--device cuda] [--models resnet50 vit_base_patch16_224] [-K 16] [-T 8]
                                  [--batch-size 32] [--tolerance 0.01] [--search-n 20000] [--search-dim 1024]
Dry run without a GPU (the same code paths, everything on the CPU, small settings):
    python tools/cuda_smoke.py --device cpu --models resnet18 test_vit -K 2 -T 2 --search-n 3000
Checks, per model (timm, random weights seeded, evaluated at its native 224 px): the signature made on
--device against the CPU signature (distance 1 - <a, b> must be < --tolerance; TF32 off), and passes per
second of gifindex's signing on --device in float32, channels_last, bf16 autocast and both (each variant's
signature distance to float32 is printed: bf16 is not a default, see README). Search: an index of
--search-n synthetic signatures per kind (flat, ivf); `Index.search_index()` must be a faiss-gpu index when
faiss has GPU support and a GPU is visible, and `nearest` must return the exact neighbours.
Exit code 0 when every check passes, 1 otherwise, 2 when --device is cuda and no GPU is visible.
Runs in about 2-3 minutes on one GPU machine (the CPU reference signatures dominate).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch

from gifindex.config import SignatureConfig
from gifindex.models.spec import InputSpec, LoadedModel
from gifindex.probes import make_probes
from gifindex.signature import signature

VARIANTS = {"fp32": (False, False), "channels_last": (True, False), "bf16": (False, True),
            "bf16+channels_last": (True, True)}


class Variant(torch.nn.Module):
    """A model run in channels_last memory format and/or under bf16 autocast, returning float32."""

    def __init__(self, inner: torch.nn.Module, channels_last: bool, bf16: bool, device: str):
        super().__init__()
        self.inner = inner.to(memory_format=torch.channels_last) if channels_last else inner
        self.channels_last, self.bf16, self.device_type = channels_last, bf16, torch.device(device).type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.inner(x).float()


def loaded(name: str, device: str, channels_last: bool = False, bf16: bool = False) -> LoadedModel:
    torch.manual_seed(0)
    module = timm.create_model(name, pretrained=False, num_classes=1000).eval().to(device)
    if channels_last or bf16:
        module = Variant(module, channels_last, bf16, device).eval()
    return LoadedModel(module, InputSpec(size=(224, 224)), f"timm:{name}", name, "timm")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.clip(1.0 - a.astype(np.float64) @ b.astype(np.float64), 0.0, 2.0))


def check_models(args, config: SignatureConfig) -> tuple[bool, list[str]]:
    ok, summary = True, []
    probes = make_probes(config)
    for name in args.models:
        reference = signature(loaded(name, "cpu"), config, probes, batch_size=args.batch_size, device="cpu")
        rates, signatures = {}, {}
        for label, (channels_last, bf16) in VARIANTS.items():
            model = loaded(name, args.device, channels_last, bf16)
            signature(model, config, probes, batch_size=args.batch_size, device=args.device)  # warm-up
            sync(args.device)
            start = time.perf_counter()
            signatures[label] = signature(model, config, probes, batch_size=args.batch_size, device=args.device)
            sync(args.device)
            rates[label] = config.points_per_model / (time.perf_counter() - start)
        gap = distance(reference, signatures["fp32"])
        good = gap < args.tolerance
        ok &= good
        print(f"{name}: {args.device} vs cpu signature distance {gap:.2e} ({'ok' if good else 'TOO LARGE'}); "
              "passes/s " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()) + "; distance to fp32 "
              + ", ".join(f"{k} {distance(signatures['fp32'], v):.4f}" for k, v in signatures.items() if k != "fp32"),
              flush=True)
        summary.append(f"{name} d={gap:.1e} fp32 {rates['fp32']:.1f}/s bf16+cl {rates['bf16+channels_last']:.1f}/s")
    return ok, summary


def check_search(args) -> tuple[bool, list[str]]:
    """`Index.search_index()` on faiss-gpu (when it can be) for flat and ivf, and `nearest` exact either way."""
    from gifindex.index import Index
    from gifindex.index.search import SearchSpec, build_index, gpu_available, index_kind, on_gpu, search
    from gifindex.ingest import SignResult

    rng = np.random.default_rng(0)
    n, dim = args.search_n, args.search_dim
    centres = rng.standard_normal((max(2, n // 50), dim)).astype(np.float32)
    vectors = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.standard_normal((n, dim)).astype(np.float32)
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)
    picks = rng.choice(n, 20, replace=False)
    exact = search(build_index(vectors, np.arange(n), SearchSpec("flat", device="cpu")),
                   vectors[picks].astype(np.float32), 11)[1]
    truth = [[f"m{i}" for i in row if i != p][:10] for row, p in zip(exact, picks)]
    want_gpu = args.device.startswith("cuda") and gpu_available()
    config = SignatureConfig(num_probes=dim // 64, steps=8, proj_dim=8, resolution=16)
    ok, summary = True, []
    for kind in ("flat", "ivf"):
        with tempfile.TemporaryDirectory() as tmp, \
                Index.create(Path(tmp) / "idx", config, search=SearchSpec(kind)) as index:
            with index.writer():
                for start in range(0, n, 5000):
                    index._commit([SignResult(name=f"m{i}", ref=f"m{i}.pt", status="added",
                                              weights_sha256=f"{i:064x}", signature=vectors[i])
                                   for i in range(start, min(n, start + 5000))])
            searcher = index.search_index()
            gpu = on_gpu(searcher)
            start = time.perf_counter()
            found = [[nb.name for nb in index.nearest(f"m{p}", k=10)] for p in picks]
            ms = 1e3 * (time.perf_counter() - start) / len(picks)
            recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
            good = gpu == want_gpu and index_kind(searcher) == kind and recall >= (1.0 if kind == "flat" else 0.95)
            ok &= good
            where = "faiss-gpu" if gpu else ("cpu (faiss has no GPU support)" if not gpu_available() else "cpu")
            print(f"search {kind}: Index.search_index() on {where}; nearest {ms:.1f} ms, recall@10 {recall:.3f} "
                  f"against exact ({'ok' if good else 'FAILED'})", flush=True)
            summary.append(f"{kind} on {'gpu' if gpu else 'cpu'} recall {recall:.2f}")
    return ok, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device checked against cpu (cpu: a dry run)")
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_base_patch16_224"])
    parser.add_argument("-K", type=int, default=16)
    parser.add_argument("-T", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--search-n", type=int, default=20000)
    parser.add_argument("--search-dim", type=int, default=1024)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("cuda_smoke: no CUDA device visible; nothing checked")
        return 2
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    start = time.perf_counter()
    config = SignatureConfig(num_probes=args.K, steps=args.T)
    models_ok, model_summary = check_models(args, config)
    search_ok, search_summary = check_search(args)
    ok = models_ok and search_ok
    print(f"cuda_smoke {'PASSED' if ok else 'FAILED'} on {args.device} in {time.perf_counter() - start:.0f} s: "
          + "; ".join(model_summary + search_summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
