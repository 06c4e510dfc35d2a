"""The ModelGiF distance: identities, symmetry, scale invariance, and that it ranks relatives first."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from click.testing import CliRunner

from gifindex.cli import main
from gifindex.config import SignatureConfig
from gifindex.curves import compute_curves
from gifindex.distance import curve_distance, pointwise_cosine
from gifindex.methods import feature_distance, features
from gifindex.models import load_model
from gifindex.models.spec import InputSpec
from gifindex.probes import make_probes

from helpers import SmoothNet, wrap

CFG = SignatureConfig(resolution=16, num_probes=4, steps=3, seed=11)


class Scaled(nn.Module):
    def __init__(self, inner: nn.Module, factor: float):
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x):
        return self.inner(x) * self.factor


def _curves(module: nn.Module, spec: InputSpec | None = None, cfg: SignatureConfig = CFG) -> torch.Tensor:
    return compute_curves(wrap(module, spec or InputSpec(size=(32, 32))), make_probes(cfg), cfg, batch_size=16)


def test_self_distance_is_zero_and_distance_is_symmetric():
    a, b = _curves(SmoothNet(seed=0)), _curves(SmoothNet(seed=1))
    assert curve_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    assert curve_distance(a, b) == pytest.approx(curve_distance(b, a), abs=1e-15)
    assert 0.0 < curve_distance(a, b) <= 2.0


def test_positive_output_scaling_leaves_distance_zero_under_norm():
    net = SmoothNet(seed=2)
    base = _curves(net)
    for factor in (0.01, 3.0, 250.0):
        assert curve_distance(base, _curves(Scaled(net, factor))) == pytest.approx(0.0, abs=1e-9)


def test_exact_formula_against_hand_computation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    cos = [(x @ y) / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(a.reshape(6, 5), b.reshape(6, 5))]
    assert curve_distance(a, b) == pytest.approx(np.mean(1 - np.array(cos)), abs=1e-14)
    assert curve_distance(a, -a) == pytest.approx(2.0)
    zeros = np.zeros((1, 2, 5))
    assert curve_distance(zeros, zeros) == 0.0
    assert pointwise_cosine(zeros, np.ones((1, 2, 5))).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="differ in shape"):
        curve_distance(a, b[:, :2])


def _perturbed(module: nn.Module, scale: float, seed: int) -> nn.Module:
    clone = copy.deepcopy(module)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.std() if p.numel() > 1 else 0.0))
    return clone


def _build(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "torchvision:resnet18":
        return torchvision.models.resnet18(num_classes=10)
    name = kind.split(":", 1)[1]
    kwargs = {"img_size": 32} if name.startswith("vit") else {}
    return timm.create_model(name, num_classes=10, **kwargs)


@pytest.mark.parametrize("kind", ["timm:resnet10t", "timm:mobilenetv3_small_050", "timm:vit_tiny_patch16_224",
                                  "timm:convnext_atto", "torchvision:resnet18"])
def test_noisy_copy_is_closer_than_independent_init(kind):
    cfg = SignatureConfig(resolution=16, num_probes=3, steps=2, seed=4)
    base, other = _build(kind, 0), _build(kind, 1)
    noisy = _perturbed(base, 0.02, seed=5)
    spec = InputSpec(size=(32, 32))
    c_base, c_noisy, c_other = (_curves(m, spec, cfg) for m in (base, noisy, other))
    near, far = curve_distance(c_base, c_noisy), curve_distance(c_base, c_other)
    assert near < far, (kind, near, far)
    assert near < 0.5 * far


def test_cli_distance_without_index_is_the_exact_distance_and_verbose_says_what_happened(tmp_path):
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"m{seed}.pt"
        torch.save(SmoothNet(seed=seed), path)
        paths.append(str(path))
    options = ["-K", "3", "-T", "2", "--resolution", "8", "--trust", "--input-size", "8"]
    quiet = CliRunner().invoke(main, ["distance", *paths, *options, "--json"])
    assert quiet.exit_code == 0, quiet.output
    assert "info:" not in quiet.stderr
    config = SignatureConfig(resolution=8, num_probes=3, steps=2)
    probes = make_probes(config)
    loaded = [load_model(p, trust=True, input_size=8) for p in paths]
    expected = feature_distance(*(features(m, probes, config) for m in loaded), "modelgif")
    assert json.loads(quiet.stdout)["distance"] == pytest.approx(expected, abs=1e-9)
    verbose = CliRunner().invoke(main, ["-v", "distance", *paths, *options])
    assert verbose.exit_code == 0, verbose.output
    assert "info: drew 3 random probes at 8 px from builtin" in verbose.stderr
    assert f"info: loaded {paths[0]}" in verbose.stderr
