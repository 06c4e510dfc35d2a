"""Sign a small zoo of real models offline (random seeds and noisy variants) for the search benchmark.

Usage: python tools/bench/real_signatures.py [--out tools/bench/real_signatures.npz] [--seeds 3]
                                             [--noise 0.01 0.03 0.1] [--archs ...]
Every architecture is built here with random weights (no download): timm's test_* nets, resnet18 and
mobilenetv3. Each (architecture, seed) is a "family": the seed's model plus variants whose every weight
tensor gets Gaussian noise of the given fraction of its standard deviation (what fine-tunes and
re-uploads of one model look like to a hub). Signed with gifindex's default configuration (K=16, T=8,
proj_dim=128: 16,384 dims, evaluated at 64 px). tools/bench/search.py's ``real`` generator draws hub-sized
sets from these signatures' measured structure (see ``spectrum_generator`` there).
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import timm
import torch

from gifindex.config import SignatureConfig
from gifindex.models.spec import InputSpec, LoadedModel
from gifindex.probes import make_probes
from gifindex.signature import signature

ARCHS = ("test_resnet", "test_vit", "test_efficientnet", "test_convnext", "test_byobnet", "test_nfnet",
         "resnet18", "mobilenetv3_small_100")


def noisy(module: torch.nn.Module, fraction: float, seed: int) -> torch.nn.Module:
    """A copy whose floating-point weights get N(0, (fraction * std)^2) noise, tensor by tensor."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if value.is_floating_point() and value.numel() > 1:
            scale = fraction * float(value.std()) if value.std() > 0 else fraction
            value = value + scale * torch.randn(value.shape, generator=generator)
        state[key] = value
    variant = copy.deepcopy(module)
    variant.load_state_dict(state)
    return variant.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("real_signatures.npz")))
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = SignatureConfig()
    probes = make_probes(config)
    signatures, labels = [], []
    for arch in args.archs:
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            base = timm.create_model(arch, num_classes=10).eval()
            for noise in [0.0] + list(args.noise):
                module = base if noise == 0 else noisy(base, noise, seed=1000 + seed)
                loaded = LoadedModel(module, InputSpec(size=(64, 64)), f"timm:{arch}", f"{arch}-s{seed}-n{noise}",
                                     "timm")
                start = time.perf_counter()
                signatures.append(signature(loaded, config, probes, batch_size=32).astype(np.float16))
                labels.append((arch, seed, noise))
                print(f"{arch:24s} seed {seed} noise {noise:<5} {time.perf_counter() - start:5.1f} s", flush=True)
    np.savez_compressed(args.out, signatures=np.stack(signatures), arch=np.array([x[0] for x in labels]),
                        seed=np.array([x[1] for x in labels]), noise=np.array([x[2] for x in labels]),
                        config_hash=config.hash())
    print(f"wrote {len(signatures)} signatures to {args.out}")


if __name__ == "__main__":
    main()
