"""Heterogeneous models all live in one shared input space: curves of identical shape, comparable."""
from __future__ import annotations

import torch

from gifindex.config import SignatureConfig
from gifindex.curves import compute_curves
from gifindex.distance import curve_distance
from gifindex.models import load_model
from gifindex.probes import make_probes


def test_heterogeneous_models_give_curves_of_one_shape():
    cfg = SignatureConfig(resolution=24, num_probes=2, steps=2, seed=0)
    probes = make_probes(cfg)
    torch.manual_seed(0)
    models = {
        "timm resnet10t, 10 classes, 32 px": load_model("timm:resnet10t", random_init=True, num_classes=10,
                                                        input_size=32),
        "torchvision resnet18, 1000 classes, 48 px": load_model("tv:resnet18", random_init=True, input_size=48),
        "timm convnext_atto, own mean/std, 40 px": load_model("timm:convnext_atto", random_init=True,
                                                             num_classes=5, input_size=40,
                                                             mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        "taskonomy encoder (random), [-1, 1], 64 px": load_model("taskonomy:curvature", random_init=True,
                                                                 input_size=64),
    }
    sizes = {m.spec.size for m in models.values()}
    assert len(sizes) == 4  # genuinely different native inputs
    curves = {name: compute_curves(m, probes, cfg, batch_size=4) for name, m in models.items()}
    shapes = {tuple(c.shape) for c in curves.values()}
    assert shapes == {(2, 2, 3 * 24 * 24)}
    names = list(curves)
    for a in names:
        assert torch.isfinite(curves[a]).all() and curves[a].abs().sum() > 0
        assert curve_distance(curves[a], curves[a]) < 1e-9
        for b in names:
            assert 0.0 <= curve_distance(curves[a], curves[b]) <= 2.0
