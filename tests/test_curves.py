"""ModelGiF curves against exact answers: linear models, completeness, batching, modes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gifindex.adapter import SharedSpaceAdapter
from gifindex.config import SignatureConfig
from gifindex.curves import compute_curves, gradient_field
from gifindex.models.spec import InputSpec
from gifindex.probes import make_probes
from gifindex.quadrature import quadrature

from helpers import Linear, SmoothNet, completeness_error, identity_spec, wrap


def _linear(resolution: int, seed: int = 0) -> tuple[Linear, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(3 * resolution * resolution, generator=g) + 0.1  # positive: w . x > 0 on the path
    return Linear(w), w


@pytest.mark.parametrize("output", ["norm", "top-logit"])
@pytest.mark.parametrize("rule", ["riemann", "gauss-legendre"])
def test_linear_model_curve_points_are_known_multiples_of_w(output, rule):
    cfg = SignatureConfig(resolution=8, num_probes=3, steps=5, rule=rule, output=output, seed=1)
    model, w = _linear(8)
    probes = make_probes(cfg)
    curves = compute_curves(wrap(model, identity_spec(8)), probes, cfg, batch_size=4)
    times = quadrature(rule, 5).curve_times  # cumulative weights: g(t_j) = t_j * w exactly
    expected = torch.from_numpy(times).float().view(1, -1, 1) * w.view(1, 1, -1)
    assert curves.shape == (3, 5, 3 * 8 * 8)
    torch.testing.assert_close(curves, expected.expand(3, -1, -1), rtol=1e-5, atol=1e-6)


def test_linear_model_ig_mode_multiplies_by_path_vector():
    cfg = SignatureConfig(resolution=8, num_probes=2, steps=4, mode="ig", baseline="random", output="top-logit")
    model, w = _linear(8, seed=4)
    probes = make_probes(cfg)
    curves = compute_curves(wrap(model, identity_spec(8)), probes, cfg, batch_size=3)
    delta = (probes.images - probes.baseline).reshape(2, 1, -1)
    expected = torch.arange(1, 5).float().view(1, 4, 1) / 4 * w.view(1, 1, -1) * delta
    torch.testing.assert_close(curves, expected, rtol=1e-5, atol=1e-6)
    # The last point is Integrated Gradients, whose sum is exactly M(x1) - M(x0) for a linear model.
    completeness = curves[:, -1].sum(dim=1)
    torch.testing.assert_close(completeness, delta.squeeze(1) @ w, rtol=1e-4, atol=1e-4)


def test_linear_model_field_is_constant_through_resize_and_normalisation():
    """With a resize to another native size and mean/std, the field of a linear model is still constant."""
    cfg = SignatureConfig(resolution=12, num_probes=2, steps=3)
    model, _ = _linear(20, seed=2)
    spec = InputSpec(size=(20, 20), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    adapter = SharedSpaceAdapter(model, spec, "top-logit")
    probes = make_probes(cfg)
    field = gradient_field(adapter, probes, torch.tensor([0.2, 0.5, 1.0]), batch_size=2,
                           targets=torch.zeros(2, dtype=torch.long))
    flat = field.reshape(6, -1)
    torch.testing.assert_close(flat, flat[:1].expand(6, -1), rtol=1e-5, atol=1e-7)
    assert flat.abs().sum() > 0


def _completeness_error(rule: str, steps: int) -> float:
    """max_k | (x1 - x0) . g_k(1) - (M(x1) - M(x0)) | relative to the output change."""
    cfg = SignatureConfig(resolution=16, num_probes=3, steps=steps, rule=rule, output="top-logit", seed=5)
    return completeness_error(wrap(SmoothNet(), identity_spec(16)), cfg)


def test_completeness_riemann_error_shrinks_and_gauss_legendre_converges_faster():
    riemann = [_completeness_error("riemann", t) for t in (2, 8, 32)]
    gauss = [_completeness_error("gauss-legendre", t) for t in (2, 4, 8)]
    assert riemann[0] > riemann[1] > riemann[2]
    assert riemann[2] < 0.05
    assert gauss[1] < riemann[2] and gauss[2] < 1e-4  # 4 GL nodes beat 32 Riemann steps
    assert gauss[0] > gauss[2]


def test_completeness_holds_along_every_riemann_curve_point():
    """Proposition 2 (stated exactly): (x1 - x0) . g(t) = M(x0 + t (x1 - x0)) - M(x0) at every point."""
    steps = 64
    cfg = SignatureConfig(resolution=16, num_probes=2, steps=steps, output="top-logit", seed=8)
    net = SmoothNet(seed=1)
    loaded = wrap(net, identity_spec(16))
    probes = make_probes(cfg)
    curves = compute_curves(loaded, probes, cfg, batch_size=50)
    adapter = SharedSpaceAdapter(net, loaded.spec, "top-logit")
    target = adapter.predict(probes.images)
    delta = (probes.images - probes.baseline)
    for j in (7, 31, 63):
        t = (j + 1) / steps
        with torch.no_grad():
            change = adapter(probes.baseline + t * delta, target) - adapter(probes.baseline, target)
        lhs = (delta.reshape(2, -1) * curves[:, j]).sum(dim=1)
        assert torch.allclose(lhs, change, rtol=0.05, atol=1e-3), (j, lhs, change)


@pytest.mark.parametrize("output", ["norm", "top-logit"])
def test_batch_size_does_not_change_curves(output):
    cfg = SignatureConfig(resolution=16, num_probes=3, steps=5, output=output, seed=2)
    loaded = wrap(SmoothNet(seed=3), InputSpec(size=(24, 24)))
    probes = make_probes(cfg)
    ref = compute_curves(loaded, probes, cfg, batch_size=None)
    for batch in (1, 7):
        torch.testing.assert_close(compute_curves(loaded, probes, cfg, batch_size=batch), ref,
                                   rtol=1e-5, atol=1e-7)


def test_parameters_never_require_grad_and_eval_mode_is_kept():
    net = SmoothNet()
    net.train()
    for p in net.parameters():
        p.requires_grad_(True)
    adapter = SharedSpaceAdapter(net, InputSpec(size=(16, 16)))
    adapter.train()
    assert not adapter.training and not net.training
    assert not any(p.requires_grad for p in net.parameters())


def test_nan_output_is_refused():
    from gifindex.errors import SignatureError

    class NaNNet(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1).sum(1, keepdim=True) * float("nan")

    cfg = SignatureConfig(resolution=8, num_probes=1, steps=2)
    with pytest.raises(SignatureError, match="NaN or Inf"):
        compute_curves(wrap(NaNNet(), identity_spec(8)), make_probes(cfg), cfg)


def test_quadrature_rules_integrate_polynomials():
    rule = quadrature("gauss-legendre", 4)
    assert np.isclose((rule.weights * rule.positions ** 7).sum(), 1 / 8)
    riemann = quadrature("riemann", 10)
    np.testing.assert_allclose(riemann.curve_times, np.arange(1, 11) / 10)
    with pytest.raises(ValueError):
        quadrature("simpson", 3)


class _TwoImagesAtMost(SmoothNet):
    """Runs out of memory (as torch reports it) on batches of more than two images."""

    def forward(self, x):
        if x.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return super().forward(x)


def test_out_of_memory_halves_the_batch_says_so_and_changes_nothing(caplog):
    cfg = SignatureConfig(resolution=8, num_probes=3, steps=4, seed=2)
    probes = make_probes(cfg)
    with caplog.at_level("WARNING", logger="gifindex.curves"):
        halved = compute_curves(wrap(_TwoImagesAtMost(seed=3)), probes, cfg, batch_size=8)
    assert [r.getMessage().split(";")[0] for r in caplog.records if r.name == "gifindex.curves"] == [
        "out of memory on cpu with 8 images per batch", "out of memory on cpu with 4 images per batch"]
    torch.testing.assert_close(halved, compute_curves(wrap(SmoothNet(seed=3)), probes, cfg, batch_size=2))


def test_auto_batch_size_fits_memory_and_changes_nothing():
    from gifindex.batching import bytes_per_image, resolve_batch_size

    cfg = SignatureConfig(resolution=16, num_probes=3, steps=4, seed=2)
    loaded = wrap(SmoothNet(seed=3), InputSpec(size=(24, 24)))
    adapter = SharedSpaceAdapter(loaded.module, loaded.spec)
    per_image = bytes_per_image(adapter, 16, "cpu")
    # conv1 (6 x 24 x 24) + conv2 (8 x 12 x 12) + head (5) outputs and the native input, in float32
    assert per_image >= 4 * (6 * 24 * 24 + 8 * 12 * 12 + 5 + 3 * 24 * 24)
    chosen = resolve_batch_size("auto", adapter, 16, "cpu")
    assert isinstance(chosen, int) and 1 <= chosen <= 256
    probes = make_probes(cfg)
    torch.testing.assert_close(compute_curves(loaded, probes, cfg, batch_size="auto"),
                               compute_curves(loaded, probes, cfg, batch_size=5), rtol=1e-5, atol=1e-7)
