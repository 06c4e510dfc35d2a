"""Shared pieces of the evaluation harness: cache, digits data, training, signing with every method.

Everything is cached under $GIFINDEX_EVAL_CACHE (default ~/.cache/gifindex/eval): trained models as
state dicts keyed by a hash of how they were made, so reruns only re-sign and re-score.
Distances are exact (uncompressed features, gifindex.methods.feature_distance); the index's compressed
signatures approximate them (tools/bench/compression.py measures how well).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gifindex.config import SignatureConfig  # noqa: E402
from gifindex.demo import (DIGITS_MEAN, DIGITS_STD, DemoZooConfig, build_arch, digits_to_rgb,  # noqa: E402,F401
                           load_digit_data, normalise, train, accuracy, prune_global, make_permanent)
from gifindex.methods import feature_distance, features, get_method, method_names  # noqa: E402
from gifindex.models.spec import InputSpec, LoadedModel  # noqa: E402
from gifindex.probes import Probes, _cutmix, make_baseline  # noqa: E402

METHODS = method_names()
CACHE = Path(os.environ.get("GIFINDEX_EVAL_CACHE", Path.home() / ".cache" / "gifindex" / "eval"))
IMAGE_SIZE = 16
SPEC = InputSpec(size=(IMAGE_SIZE, IMAGE_SIZE), mean=DIGITS_MEAN, std=DIGITS_STD)


def setup_threads() -> None:
    torch.set_num_threads(int(os.environ.get("GIFINDEX_EVAL_THREADS", "1")))


def key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached_model(folder: str, name: str, make: Callable[[], nn.Module], recipe: Any,
                 template: Callable[[], nn.Module]) -> nn.Module:
    """Train with ``make`` once; afterwards load the state dict into ``template()``."""
    path = CACHE / folder / f"{name}-{key(recipe)}.pt"
    if path.is_file():
        model = template()
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model = make().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)
    return model


def digits(seed: int = 0):
    """Digits at IMAGE_SIZE px: train/test split (stratified, seeded) as normalised tensors + raw test."""
    return load_digit_data(DemoZooConfig(seed=seed, image_size=IMAGE_SIZE))


def as_rgb(raw: np.ndarray, size: int) -> torch.Tensor:
    """Held-out images as the models see them before normalisation: (N, 3, size, size) RGB in [0, 1].

    ``raw``: grey (N, H, W) (the digit zoos: bilinear upscaling, grey replicated, exactly digits_to_rgb) or RGB
    (N, H, W, 3) in [0, 1] (the textures zoo: channels first, resized bilinearly only when H or W differs)."""
    if raw.ndim == 3:
        return digits_to_rgb(raw, size)
    if raw.ndim != 4 or raw.shape[-1] != 3:
        raise ValueError(f"held-out images: expected (N, H, W) grey or (N, H, W, 3) RGB, got {raw.shape}")
    x = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)).permute(0, 3, 1, 2)
    if tuple(x.shape[2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return x.contiguous()


def probe_set(raw: np.ndarray, k: int, seed: int, kind: str = "random", resolution: int = IMAGE_SIZE) -> Probes:
    """K probes drawn from held-out images (never from a scored model; ``raw`` as as_rgb takes them); ``cutmix``
    mixes pairs of them."""
    rng = np.random.default_rng(seed)
    images = as_rgb(raw, resolution)
    pick = rng.permutation(len(images))
    x = images[pick[:k]].clone()
    if kind == "cutmix":
        x = _cutmix(x, images[pick[k:2 * k]] if len(images) >= 2 * k else images[rng.integers(0, len(images), k)], rng)
    config = SignatureConfig(resolution=resolution, num_probes=k)
    return Probes(images=x.contiguous(), baseline=make_baseline(config))


def wrap(module: nn.Module, spec: InputSpec = SPEC) -> LoadedModel:
    module = module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(module=module, spec=spec, ref="eval", name="eval", source="eval")


def sign_all(models: dict[str, nn.Module], raw_probes: np.ndarray, k: int = 16, steps: int = 8, seed: int = 0,
             methods: tuple[str, ...] = METHODS, spec: InputSpec = SPEC, resolution: int = IMAGE_SIZE,
             output: str = "norm") -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """features[method][model] for every model, and the mean signing seconds per model per method.

    Probes: each method's default kind (gifindex.methods): ``random`` held-out images for modelgif /
    saliency / ig / rsa, CutMix of them for sac (SAC's own definition)."""
    probes = {"random": probe_set(raw_probes, k, seed, "random", resolution),
              "cutmix": probe_set(raw_probes, k, seed, "cutmix", resolution)}
    out: dict[str, dict[str, torch.Tensor]] = {m: {} for m in methods}
    seconds: dict[str, float] = {}
    for method in methods:
        config = SignatureConfig(method=method, resolution=resolution, num_probes=k, steps=steps, output=output)
        kind = get_method(method).default_probe_kind
        start = time.perf_counter()
        for name, module in models.items():
            out[method][name] = features(wrap(module, spec), probes[kind], config, batch_size=256)
        seconds[method] = (time.perf_counter() - start) / max(1, len(models))
    return out, seconds


def distances_to(feats: dict[str, torch.Tensor], anchor: str, method: str) -> dict[str, float]:
    return {name: feature_distance(feats[anchor], f, method) for name, f in feats.items() if name != anchor}


def distance_matrix(feats: dict[str, torch.Tensor], names: list[str], method: str) -> np.ndarray:
    n = len(names)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            d[i, j] = d[j, i] = feature_distance(feats[names[i]], feats[names[j]], method)
    return d


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=float))


def results_dir() -> Path:
    return CACHE / "results"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
