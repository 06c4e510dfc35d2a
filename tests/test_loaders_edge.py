"""Loader edge cases: torchvision builders that would fetch a pretrained backbone, grey (1-channel) timm and
torchvision state dicts, GoogLeNet / Inception v3 without their auxiliary heads, and a state dict that fits an
architecture of the same name in both libraries."""
from __future__ import annotations

import inspect
import json
import logging

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

from gifindex.api import distance
from gifindex.config import SignatureConfig
from gifindex.errors import ArchitectureError
from gifindex.models import detect, load_model
from gifindex.models.detect import detect_architecture
from gifindex.models.hub import tv_kwargs
from gifindex.models.sources import get_source


@pytest.fixture(autouse=True)
def offline_caches(tmp_path, monkeypatch):
    """Empty torch hub / HF caches per test (the fingerprint cache is conftest's, kept between runs: speed)."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch-hub"))
    yield
    torch.hub.set_dir(old)


@pytest.fixture
def no_fetching(monkeypatch):
    """Any attempt to read pretrained weights (download, or torch hub's cache) fails the test."""
    from torchvision.models import _api

    def refuse(*args, **kwargs):
        raise AssertionError("gifindex asked torchvision for pretrained weights")
    monkeypatch.setattr(_api.WeightsEnum, "get_state_dict", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def _outputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = module.eval()(x)
    return out["out"] if isinstance(out, dict) else out


def _same_outputs(a: nn.Module, b: nn.Module, channels: int = 3, size: int = 64) -> None:
    x = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_outputs(a, x), _outputs(b, x), rtol=0, atol=0)


TINY = SignatureConfig(resolution=16, num_probes=3, steps=4, proj_dim=32, seed=3)


# ------------------------------------------------------------------ 1. no pretrained backbone, ever
def test_every_builder_taking_a_backbone_gets_none():
    import torchvision.models as tvm
    takes = [n for n in tvm.list_models()
             if "weights_backbone" in inspect.signature(tvm.get_model_builder(n)).parameters]
    assert "fcn_resnet50" in takes and "fasterrcnn_resnet50_fpn" in takes
    for name in takes:
        assert tv_kwargs(name, {"num_classes": 3}) == {"num_classes": 3, "weights_backbone": None}
    assert tv_kwargs("resnet18", {"num_classes": 3}) == {"num_classes": 3}


def test_segmentation_models_build_without_their_pretrained_backbone(tmp_path, no_fetching):
    """--random-init, detection's meta build, --arch and --weights of a segmentation model: nothing fetched,
    the backbone as random (or as the file says) as the rest."""
    assert detect.build_on_meta("torchvision", "fcn_resnet50") is not None
    torch.manual_seed(0)
    lm = load_model("tv:lraspp_mobilenet_v3_large", random_init=True, num_classes=3)
    assert lm.meta["random_init"] is True
    net = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                    num_classes=3)
    path = tmp_path / "seg.pt"
    torch.save(net.state_dict(), path)
    for loaded in (load_model(str(path), arch="torchvision:lraspp_mobilenet_v3_large", num_classes=3),
                   load_model("tv:lraspp_mobilenet_v3_large", weights=str(path))):
        assert loaded.arch == "torchvision:lraspp_mobilenet_v3_large"
        _same_outputs(loaded.module, net)


def test_an_architecture_that_does_not_build_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("GIFINDEX_CACHE_DIR", str(tmp_path / "cache"))  # the failure is cached: keep it here
    source = get_source("torchvision")

    def broken(self, name):
        def build(**kwargs):
            raise RuntimeError("no such backbone here\nsecond line")
        return build
    monkeypatch.setattr(type(source), "constructor", broken)
    sd = torchvision.models.resnet18(num_classes=3).state_dict()
    for _ in range(2):  # built now, then known from the cache to fail: the reason both times
        with pytest.raises(ArchitectureError, match=r"^cannot build torchvision:resnet18 to check the state dict "
                                                    r"against it \(RuntimeError: no such backbone here\)$"):
            detect.fit_architecture("torchvision", "resnet18", sd)


def test_an_older_cache_forgets_its_failures_and_keeps_its_fingerprints(tmp_path, monkeypatch):
    monkeypatch.setenv("GIFINDEX_CACHE_DIR", str(tmp_path))
    fp = detect.fingerprint_of(detect.build_on_meta("torchvision", "resnet18"))
    cache = detect.FingerprintCache("torchvision")
    cache.path.write_text(json.dumps({"archs": {"fcn_resnet50": None, "resnet18": fp},
                                      "representatives": {"resnet": []}}))
    cache = detect.FingerprintCache("torchvision")
    assert cache.archs == {"resnet18": fp} and cache.representatives == {}
    assert cache.get("fcn_resnet50") is not None  # now it builds
    cache.save()
    assert json.loads(cache.path.read_text())["format"] == detect.CACHE_FORMAT


# ------------------------------------------------------------------ 2. grey state dicts
def _grey_tv_resnet18() -> nn.Module:
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


@pytest.mark.parametrize("lib, name, factory", [
    ("timm", "test_resnet", lambda: timm.create_model("test_resnet", num_classes=10, in_chans=1)),
    ("torchvision", "resnet18", _grey_tv_resnet18),
])
def test_grey_state_dicts_are_detected_loaded_and_signed(tmp_path, lib, name, factory):
    torch.manual_seed(0)
    net = factory().eval()
    path, script = tmp_path / "grey.pt", tmp_path / "grey_script.pt"
    torch.save(net.state_dict(), path)
    torch.jit.script(net).save(str(script))
    found = detect_architecture(net.state_dict())
    assert (found.arch, found.num_classes, found.in_chans) == (f"{lib}:{name}", 10, 1)
    ref = "timm:test_resnet" if lib == "timm" else "tv:resnet18"
    for lm in (load_model(str(path)), load_model(str(path), arch=f"{lib}:{name}", num_classes=10),
               load_model(ref, weights=str(path))):
        assert (lm.arch, lm.num_outputs, lm.spec.channels, lm.meta["in_chans"]) == (f"{lib}:{name}", 10, 1, 1)
        assert lm.spec.describe()["channels"] == 1
        _same_outputs(lm.module, net, channels=1)
    opts = {"input_size": 16, "mean": [0.5], "std": [0.25]}
    assert distance(str(path), str(path), TINY, **opts) < 1e-9
    assert distance(str(path), str(script), TINY, trust=True, **opts) < 1e-4


def test_an_input_layer_of_another_channel_count_is_named(tmp_path):
    path = tmp_path / "rgba.pt"
    torch.save(timm.create_model("test_resnet", num_classes=10, in_chans=4).state_dict(), path)
    with pytest.raises(ArchitectureError, match=r"does not fit timm:test_resnet: shape mismatch: conv1\.0\.weight: "
                                                r"file \[16, 4, 3, 3\] vs model \[16, 3, 3, 3\] \(an input layer "
                                                r"taking 4 channels: gifindex signs RGB \(3\) or grey \(1\) models\)$"):
        load_model(str(path), arch="timm:test_resnet")


# ------------------------------------------------------------------ 3. no auxiliary heads
def test_googlenet_without_aux_heads(tmp_path, caplog):
    """As fine-tuned from torchvision's pretrained GoogLeNet: no aux heads, transform_input=True, said so."""
    torch.manual_seed(0)
    saved = torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=False)
    path = tmp_path / "googlenet.pt"
    torch.save(saved.state_dict(), path)
    want = torchvision.models.googlenet(num_classes=10, aux_logits=False, transform_input=True, init_weights=False)
    want.load_state_dict(saved.state_dict())
    for arch in (None, "tv:googlenet"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            lm = load_model(str(path), arch=arch)
        assert (lm.arch, lm.num_outputs) == ("torchvision:googlenet", 10)
        assert lm.module.aux1 is None and lm.module.transform_input is True
        assert lm.meta["aux_logits"] is False and lm.meta["transform_input"] is True
        _same_outputs(lm.module, want)
        said = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert "assumed transform_input=True" in said and "--arch python:" in said and "torch.jit.script" in said
    # with its aux heads (as built without pretrained weights): transform_input=False, said too
    torch.save(torchvision.models.googlenet(num_classes=10, init_weights=False).state_dict(), path)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        lm = load_model(str(path))
    assert lm.module.aux1 is not None and lm.module.transform_input is False
    assert "assumed transform_input=False" in caplog.text


def test_inception_v3_without_aux_logits(tmp_path, caplog):
    torch.manual_seed(0)
    saved = torchvision.models.inception_v3(num_classes=10, aux_logits=False, init_weights=False)
    path = tmp_path / "inception.pt"
    torch.save(saved.state_dict(), path)
    saved.transform_input = True
    with caplog.at_level(logging.WARNING):
        lm = load_model("tv:inception_v3", weights=str(path))
    assert lm.module.AuxLogits is None and lm.module.transform_input is True and lm.num_outputs == 10
    assert "inception_v3 state dict: assumed transform_input=True" in caplog.text
    _same_outputs(lm.module, saved, size=80)
    found = detect_architecture(saved.state_dict(), libraries=("torchvision",))
    assert (found.arch, found.aux_logits) == ("torchvision:inception_v3", False)


# ------------------------------------------------------------------ 4. the same name in both libraries
def test_a_state_dict_fitting_both_libraries_names_the_other(tmp_path, caplog):
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=5)
    path = tmp_path / "timm_r18.pt"
    torch.save(net.state_dict(), path)
    with caplog.at_level(logging.WARNING):
        lm = load_model(str(path))
    assert lm.arch == "torchvision:resnet18"
    assert lm.meta["detected"]["also_fits"][0] == "timm:resnet18"
    assert "timm:resnet18" in caplog.text
    assert "timm:resnet18" not in detect_architecture(net.state_dict(), libraries=("torchvision",)).also
    mine = load_model(str(path), arch="timm:resnet18")
    assert mine.spec.interpolation == "bicubic"
    _same_outputs(mine.module, net)
