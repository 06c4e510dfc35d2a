"""The Python API of DESIGN section 3, as a user imports it from ``gifindex``."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import gifindex
from gifindex import SignatureConfig

DESIGN_NAMES = ("load_model", "SignatureConfig", "make_probes", "compute_curves", "curve_distance", "signature",
                "distance", "Index")


@pytest.fixture(scope="module")
def tiny():
    """A timm test_resnet saved as a state dict, a perturbed copy, and a small configuration."""
    import timm
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=10).eval()
    other = timm.create_model("test_resnet", num_classes=10).eval()
    config = SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=16, seed=1)
    return net, other, config


def test_design_names_exported() -> None:
    for name in DESIGN_NAMES:
        assert name in gifindex.__all__ and callable(getattr(gifindex, name)), name
    from gifindex.index import Index
    assert gifindex.Index is Index


def test_distance_and_signature_are_functions_and_modules_still_import() -> None:
    from gifindex.distance import curve_distance, pointwise_cosine
    from gifindex.signature import projection_for
    import gifindex.distance  # noqa: F401 - loading the submodule must not replace the function
    assert callable(gifindex.distance) and gifindex.distance.__module__ == "gifindex.api"
    assert gifindex.signature.__module__ == "gifindex.api"
    assert gifindex.curve_distance is curve_distance and callable(pointwise_cosine) and callable(projection_for)
    assert type(sys.modules["gifindex.distance"]).__name__ == "module"


def test_import_does_not_load_torch() -> None:
    code = "import sys, gifindex; gifindex.SignatureConfig; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_signature_and_distance_take_any_model_form(tiny, tmp_path) -> None:
    net, other, config = tiny
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    probes = gifindex.make_probes(config)
    loaded = gifindex.load_model(str(path), arch="timm:test_resnet")
    from_path = gifindex.signature(str(path), config, probes, arch="timm:test_resnet")
    from_module = gifindex.signature(net, config, probes)
    from_loaded = gifindex.signature(loaded, config, probes)
    assert from_path.dtype == np.float32 and from_path.shape == (2 * 2 * 16,)   # K*T*proj_dim
    np.testing.assert_allclose(from_path, from_module, atol=1e-6)
    np.testing.assert_allclose(from_path, from_loaded, atol=1e-6)
    assert np.linalg.norm(from_path) == pytest.approx(1.0, abs=1e-5)
    assert gifindex.distance(str(path), net, config, probes) == pytest.approx(0.0, abs=1e-9)
    d = gifindex.distance(net, other, config, probes)
    curves = [gifindex.compute_curves(gifindex.api.as_loaded_model(m), probes, config) for m in (net, other)]
    assert d == pytest.approx(gifindex.curve_distance(*curves)) == pytest.approx(gifindex.distance(*curves))
    assert 0.2 < d <= 2.0
    with pytest.raises(TypeError, match="do not apply to an nn.Module"):
        gifindex.signature(net, config, probes, arch="timm:test_resnet")


def test_module_convention_overrides(tiny) -> None:
    net, _, _ = tiny
    lm = gifindex.api.as_loaded_model(net, input_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert lm.spec.size == (16, 16) and lm.spec.mean == (0.5, 0.5, 0.5) and lm.spec.std == (0.25, 0.25, 0.25)
    assert not any(p.requires_grad for p in lm.module.parameters()) and not lm.module.training
