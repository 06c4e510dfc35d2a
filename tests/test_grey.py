"""Grey (one-channel) models, MNIST's kind, in the shared RGB input space: they read the images' luma."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn as nn

from gifindex.adapter import SharedSpaceAdapter
from gifindex.config import SignatureConfig
from gifindex.curves import compute_curves
from gifindex.distance import curve_distance
from gifindex.ingest import content_sha256
from gifindex.models.spec import GREY_WEIGHTS, InputSpec, input_channels
from gifindex.probes import make_probes

from helpers import Linear, SmoothNet, completeness_error, identity_spec, wrap

GREY = torch.tensor(GREY_WEIGHTS)


def grey_spec(resolution: int, mean: float = 0.0, std: float = 1.0) -> InputSpec:
    return InputSpec(size=(resolution, resolution), mean=(mean,) * 3, std=(std,) * 3, channels=1)


def GreyNet(seed: int = 0, outputs: int = 10) -> nn.Module:
    """A smooth conv net on one input channel, as a hand-written MNIST model is."""
    return SmoothNet(seed=seed, outputs=outputs, channels=1)


def test_linear_grey_model_field_is_its_weights_times_the_luma_weights():
    """M(x) = w . luma(x): the field is constant, and channel c of it is exactly GREY_WEIGHTS[c] * w."""
    resolution, steps = 8, 4
    w = torch.rand(resolution * resolution, generator=torch.Generator().manual_seed(3)) + 0.1
    cfg = SignatureConfig(resolution=resolution, num_probes=3, steps=steps, output="top-logit", seed=2)
    curves = compute_curves(wrap(Linear(w), grey_spec(resolution)), make_probes(cfg), cfg, batch_size=5)
    field = (GREY.view(3, 1) * w.view(1, -1)).reshape(-1)
    times = torch.arange(1, steps + 1).float() / steps  # Riemann: g(t_j) = t_j * field
    torch.testing.assert_close(curves, (times.view(1, -1, 1) * field.view(1, 1, -1)).expand(3, -1, -1),
                               rtol=1e-5, atol=1e-6)


def test_grey_model_sees_the_luma_through_resize_and_normalisation():
    net = GreyNet(seed=1)
    spec = grey_spec(20, mean=0.1307, std=0.3081)
    adapter = SharedSpaceAdapter(net, spec)
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    luma = (x * GREY.view(1, 3, 1, 1)).sum(1, keepdim=True)
    native = nn.functional.interpolate(luma, size=(20, 20), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(x), net((native - 0.1307) / 0.3081))


def test_completeness_holds_for_a_grey_model():
    """Proposition 2 at the end of each curve: (x1 - x0) . g(1) = M(x1) - M(x0), within Gauss-Legendre's error."""
    cfg = SignatureConfig(resolution=16, num_probes=3, steps=8, rule="gauss-legendre", output="top-logit", seed=5)
    assert completeness_error(wrap(GreyNet(seed=2), grey_spec(16)), cfg) < 1e-4


def test_grey_and_rgb_models_share_one_space():
    """A grey model and an RGB model give curves of one shape; a model against itself is at distance 0."""
    cfg = SignatureConfig(resolution=16, num_probes=2, steps=2, seed=0)
    probes = make_probes(cfg)
    grey = compute_curves(wrap(GreyNet(seed=3), grey_spec(28)), probes, cfg, batch_size=4)
    rgb = compute_curves(wrap(SmoothNet(seed=3), identity_spec(16)), probes, cfg, batch_size=4)
    assert grey.shape == rgb.shape == (2, 2, 3 * 16 * 16)
    assert curve_distance(grey, grey) < 1e-9 and 0.0 < curve_distance(grey, rgb) <= 2.0


@pytest.mark.parametrize("build, size, channels", [
    (lambda: GreyNet(), (28, 28), 1),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 30), nn.ReLU(), nn.Linear(30, 10)), (28, 28), 1),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 10)), (28, 28), 3),
    (lambda: nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)), (28, 28), 3),
    (lambda: __import__("timm").create_model("test_resnet", in_chans=1, num_classes=10), (32, 32), 1),
    (lambda: __import__("timm").create_model("test_resnet", num_classes=10), (32, 32), 3),
    (lambda: __import__("timm").create_model("test_vit", num_classes=10), (160, 160), 3),
])
def test_input_channels_reads_the_input_layer(build, size, channels):
    assert input_channels(build(), size) == channels


class HeadFirst(nn.Module):
    """An RGB net whose 1024-input head is registered before its stem: its first weight looks like a flattened
    32 x 32 grey input."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(1024, 10)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(16))

    def forward(self, x):
        return self.head(self.stem(x).flatten(1))


class GreyHeadFirst(HeadFirst):
    """A grey net whose head is registered before its stem: its first weight looks like an RGB model's head."""

    def __init__(self):
        super().__init__()
        self.stem[0] = nn.Conv2d(1, 4, 3, padding=1)


def test_a_first_weight_that_is_not_the_input_layer_is_checked_by_running_the_model():
    net = HeadFirst().train()
    before = net.stem[1].running_mean.clone()
    assert input_channels(net, (32, 32)) == 3                     # was 1: then signing failed
    assert net.training and torch.equal(net.stem[1].running_mean, before)   # modes kept, no statistics moved
    assert input_channels(GreyHeadFirst(), (32, 32)) == 1         # was 3: refused as taking neither


def test_rgb_models_record_and_hash_as_before_grey_models_existed():
    """Indexes built before grey models keep matching their models: an RGB spec records no ``channels``."""
    spec = InputSpec(size=(16, 16), mean=(0.5,) * 3, std=(0.25,) * 3)
    assert spec.describe() == {"size": [16, 16], "mean": [0.5] * 3, "std": [0.25] * 3}
    loaded = wrap(nn.Linear(4, 2), spec)
    digest = hashlib.sha256()
    for key, tensor in sorted(loaded.module.state_dict().items()):
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps({"size": [16, 16], "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear",
                              "output": "norm"}, sort_keys=True).encode())
    assert content_sha256(loaded, "norm", legacy=True) == digest.hexdigest()   # what older indexes hold
    grey = wrap(loaded.module, spec.with_overrides(channels=1))
    assert content_sha256(grey, "norm", legacy=True) != digest.hexdigest()  # another function of the same weights
    assert content_sha256(grey, "norm") != content_sha256(loaded, "norm")


def test_one_mean_or_std_value_stands_for_every_channel():
    spec = InputSpec().with_overrides(28, (0.1307,), (0.3081,))
    assert spec.mean == (0.1307,) * 3 and spec.std == (0.3081,) * 3 and spec.size == (28, 28)
    from gifindex.errors import ConfigError
    with pytest.raises(ConfigError, match="three numbers"):
        InputSpec().with_overrides(mean=(0.1, 0.2))
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3"):
        InputSpec(channels=2)


def test_grey_torchscript_model_from_the_command_line(tmp_path):
    """A grey MNIST-style model saved whole (TorchScript): loaded with --trust, its one-number mean and std, signed
    as grey, recorded as such in the index, and at distance 0 from itself."""
    from test_newuser import TINY, _run

    path = tmp_path / "lenet.pt"
    torch.jit.trace(GreyNet(seed=4).eval(), torch.rand(2, 1, 28, 28)).save(str(path))
    load = ["--trust", "--input-size", "28", "--mean", "0.1307", "--std", "0.3081"]
    out = _run("distance", path, path, *load, *TINY, "--json")
    doc = json.loads(out.stdout)
    assert doc["distance"] == pytest.approx(0.0, abs=1e-6)
    index = tmp_path / "hub"
    _run("init", "-i", index, *TINY)
    _run("ingest", "-i", index, path, "--name", "lenet", *load)
    meta = json.loads(_run("list", "-i", index, "--json").stdout)[0]["metadata"]
    assert meta["channels"] == 1 and meta["mean"] == [0.1307] * 3 and meta["input_size"] == [28, 28]
    bad = _run("distance", path, path, "--trust", "--mean", "0.1 0.2", *TINY, code=2)
    assert "expected three numbers (or one)" in bad.output


def _traced_grey(seed: int) -> torch.jit.ScriptModule:
    return torch.jit.trace(GreyNet(seed=seed).eval(), torch.rand(2, 1, 28, 28))


@pytest.mark.parametrize("make", [lambda: GreyNet(seed=5), lambda: _traced_grey(5),
                                  lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                                                        nn.LazyLinear(10))])
def test_reinitialised_is_a_fresh_model_of_the_same_architecture(make):
    """Helpers of an owner with no timm/torchvision name: the same layers and shapes, every weight drawn anew (the
    owner untouched), reproducible under a seed, statistics reset, trainable."""
    from gifindex.fingerprint.helpers import reinitialised

    owner = make()
    owner(torch.rand(2, 1, 28, 28))  # materialise lazy layers, move running statistics
    for p in owner.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in owner.state_dict().items()}
    torch.manual_seed(7)
    fresh = reinitialised(owner)
    torch.manual_seed(7)
    again = reinitialised(owner)
    state, owner_state = fresh.state_dict(), owner.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in owner_state.items()}
    assert all(torch.equal(owner_state[k], before[k]) for k in before)
    weights = [k for k, v in state.items() if v.ndim >= 2]
    assert weights and all(not torch.equal(state[k], owner_state[k]) for k in weights)
    assert all(torch.equal(state[k], again.state_dict()[k]) for k in state)
    for k in state:
        if k.endswith("running_var"):
            assert torch.equal(state[k], torch.ones_like(state[k]))
    x = torch.rand(4, 1, 28, 28)
    loss = fresh(x).logsumexp(1).sum()
    loss.backward()
    assert all(p.grad is not None for p in fresh.parameters())


def test_helpers_of_an_owner_saved_whole_are_fresh_copies_of_it():
    """A grey owner saved whole (its class known to neither timm nor torchvision) lends its own architecture to the
    helpers it trains by default (and as --helper-arch owner): fresh copies of its module, in its input convention,
    which train like any helper; suspects of its class are calibrated against them."""
    from gifindex.fingerprint import FitConfig, OwnerData, helper_key
    from gifindex.fingerprint.fit import OWN_ARCH, _helper_archs, default_builder
    from gifindex.fingerprint.helpers import TrainRecipe, train_reference

    owner = wrap(_traced_grey(5), grey_spec(28))
    owner.arch = "SmoothNet"
    assert _helper_archs(owner, FitConfig()) == ("SmoothNet",)
    assert _helper_archs(owner, FitConfig(helper_archs=(OWN_ARCH, "timm:test_resnet"))) == ("SmoothNet",
                                                                                        "timm:test_resnet")
    data = OwnerData(torch.rand(40, 3, 28, 28), torch.arange(40) % 10)
    assert helper_key(owner, data, FitConfig()) == helper_key(owner, data, FitConfig(helper_archs=(OWN_ARCH,)))
    build = default_builder(owner)
    torch.manual_seed(0)
    helper = build("SmoothNet", 10)
    assert helper.arch == "SmoothNet" and helper.spec == owner.spec and helper.spec.channels == 1
    untrained = {k: v.clone() for k, v in helper.module.state_dict().items()}
    trained = train_reference(build, "SmoothNet", data.x, data.y, 10, TrainRecipe(epochs=1, batch_size=8), seed=1)
    assert any(not torch.equal(untrained[k], v) for k, v in trained.module.state_dict().items())
    assert not any(p.requires_grad for p in owner.module.parameters())
    other = wrap(GreyNet(seed=1), grey_spec(28))
    other.arch = "timm:test_resnet"  # a named owner: its helpers are built by that name, as before
    assert _helper_archs(other, FitConfig()) == ("timm:test_resnet",)
