"""The modelgif+outputs method: exact answers and the properties its signature promises."""
from __future__ import annotations

import numpy as np
import timm
import torch
import torch.nn as nn

from gifindex.config import SignatureConfig
from gifindex.methods import compress_features, feature_distance, features, get_method
from gifindex.methods.functional import OUTPUT_DIM, OUTPUT_WEIGHT, output_map
from gifindex.models.spec import InputSpec, LoadedModel
from gifindex.probes import make_probes

CONFIG = SignatureConfig(method="modelgif+outputs", resolution=16, num_probes=6, steps=4)


def _model(module: nn.Module) -> LoadedModel:
    module = module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(module=module, spec=InputSpec(size=(16, 16)), ref="m", name="m", source="test")


def _timm(seed: int, classes: int = 10) -> LoadedModel:
    torch.manual_seed(seed)
    return _model(timm.create_model("test_resnet", num_classes=classes))


class Shifted(nn.Module):
    """Another model's logits times a temperature plus a constant: the same decisions and centred outputs."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 3.0 * self.inner(x) + 5.0


def test_registered_with_its_dimension_and_passes():
    method = get_method("modelgif+outputs")
    assert CONFIG.signature_dim == CONFIG.points_per_model * (CONFIG.proj_dim + OUTPUT_DIM)
    assert method.passes(CONFIG) == 2 * CONFIG.points_per_model


def test_output_map_is_an_isometry_for_small_outputs():
    m = output_map(10, 0).numpy()
    assert m.shape == (10, OUTPUT_DIM)
    assert np.allclose(m @ m.T, np.eye(10), atol=1e-10)


def test_self_zero_exact_and_compressed_agree_and_unit_norm():
    probes = make_probes(CONFIG)
    a, b = features(_timm(0), probes, CONFIG), features(_timm(1), probes, CONFIG)
    assert abs(feature_distance(a, a, CONFIG.method)) < 1e-12
    sa, sb = compress_features(a, CONFIG), compress_features(b, CONFIG)
    assert sa.shape == (CONFIG.signature_dim,)
    assert abs(np.linalg.norm(sa) - 1) < 1e-5
    exact = feature_distance(a, b, CONFIG.method)
    assert abs((1 - float(sa @ sb)) - exact) < 0.03
    assert 0.0 < exact <= 2.0


def test_output_part_sees_the_function_not_the_scale():
    """A temperature and a constant shift of the logits change the gradient field only by a factor (norm output:
    not even that direction) and the centred outputs not at all: distance 0 in the output half."""
    probes = make_probes(CONFIG)
    base = _timm(0)
    shifted = _model(Shifted(base.module))
    fa, fb = features(base, probes, CONFIG), features(shifted, probes, CONFIG)
    half = fa.shape[0] // 2
    out_a, out_b = fa[half:, :OUTPUT_DIM], fb[half:, :OUTPUT_DIM]
    cos = torch.nn.functional.cosine_similarity(out_a.double(), out_b.double(), dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-6)


def test_different_output_sizes_are_near_orthogonal_in_the_output_part():
    probes = make_probes(CONFIG)
    a, c = features(_timm(0, 10), probes, CONFIG), features(_timm(0, 5), probes, CONFIG)
    half = a.shape[0] // 2
    out_cos = torch.nn.functional.cosine_similarity(a[half:, :OUTPUT_DIM].double(), c[half:, :OUTPUT_DIM].double(), dim=1)
    assert float(out_cos.abs().mean()) < 0.5
    d = feature_distance(a, c, CONFIG.method)
    assert d > OUTPUT_WEIGHT * 0.5
