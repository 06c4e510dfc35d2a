"""Model loading: every source, every refusal, detection, specs. No network: weights are made here."""
from __future__ import annotations

import os
import pickle

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

from gifindex.errors import (ArchitectureError, MissingWeightsError, ModelLoadError, RefError,
                             UntrustedFileError)
from gifindex.models import LoadedModel, load_model
from gifindex.models.detect import detect_architecture
from gifindex.models.spec import IMAGENET_MEAN, IMAGENET_STD
from gifindex.models.taskonomy import ENCODER_FILES, TaskonomyEncoder


@pytest.fixture(autouse=True)
def offline_caches(tmp_path_factory, tmp_path, monkeypatch):
    """Empty torch hub / HF caches per test; one fingerprint cache for the session (speed)."""
    from huggingface_hub import constants
    shared = tmp_path_factory.getbasetemp() / "gifindex-cache"
    monkeypatch.setenv("GIFINDEX_CACHE_DIR", str(shared))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch-hub"))
    yield tmp_path / "torch-hub"
    torch.hub.set_dir(old)


def _frozen(lm: LoadedModel) -> None:
    assert not lm.module.training
    assert all(not m.training for m in lm.module.modules())
    assert all(not p.requires_grad for p in lm.module.parameters())


def _same_outputs(a: nn.Module, b: nn.Module, size: int = 64) -> None:
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def _untrusted_msg(path) -> str:
    return (f"{path} holds a pickled Python object (e.g. a whole nn.Module); loading it would run "
            "code from the file. Re-save it as a state dict, or pass --trust if you trust its origin")


class _WritesMarker:
    """Unpickling this creates the marker file: proof that code from the file ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("writer", ["pickle", "torch.save", "torch.save-legacy"])
def test_malicious_pickle_refused_without_running(tmp_path, writer: str) -> None:
    marker, path = tmp_path / "PWNED", tmp_path / "evil.pt"
    payload = {"weight": _WritesMarker(str(marker))}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=writer == "torch.save")
    with pytest.raises(UntrustedFileError) as info:
        load_model(str(path))
    assert str(info.value) == _untrusted_msg(path)
    assert not marker.exists()


def test_whole_module_refused_then_trusted(tmp_path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    net(torch.rand(1, 3, 64, 64))
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    with pytest.raises(UntrustedFileError) as info:
        load_model(str(path))
    assert str(info.value) == _untrusted_msg(path)
    lm = load_model(str(path), trust=True)
    _frozen(lm)
    assert lm.meta["loaded_as"] == "pickled module" and lm.num_outputs == 5
    _same_outputs(lm.module, net)


def test_torchscript_refused_then_trusted(tmp_path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    path = tmp_path / "scripted.pt"  # extension says state dict; the content says TorchScript
    torch.jit.trace(net, torch.rand(1, 3, 64, 64)).save(str(path))
    with pytest.raises(UntrustedFileError) as info:
        load_model(str(path))
    assert str(info.value) == (f"{path} is a TorchScript archive; loading it runs code from the file; "
                               "pass --trust if you trust its origin")
    lm = load_model(str(path), trust=True)
    _frozen(lm)
    assert lm.meta["format"] == "torchscript" and len(lm.weights_sha256) == 64
    _same_outputs(lm.module, net)


REFIX = "re-download the file or re-save it with torch.save(model.state_dict(), PATH)"


@pytest.mark.parametrize("content, message", [
    (b"", "cannot read {p}: the file is empty; " + REFIX),
    (bytes(range(7, 200)) * 5, "cannot read {p}: not a PyTorch, TorchScript or safetensors file "
                               "(unrecognised content); " + REFIX),
    (b"PK\x03\x04" + b"\x00" * 40, "cannot read {p}: corrupt or truncated zip archive; " + REFIX),
])
def test_unreadable_files(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path))
    assert str(info.value) == message.format(p=path)


def test_truncated_torch_file(tmp_path) -> None:
    path = tmp_path / "cut.pt"
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path))
    assert str(info.value).startswith(f"cannot read {path}: corrupt or truncated")
    assert "\n" not in str(info.value)


def test_truncated_legacy_pickle(tmp_path) -> None:
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(ModelLoadError, match=f"^cannot read {path}: corrupt or truncated"):
        load_model(str(path))


@pytest.mark.parametrize("ref, message", [
    ("timm:resnet18", "no pretrained weights for timm:resnet18 in the local cache ({hf}); "
                      "pass --weights FILE, or --random-init for untrained weights"),
    ("timm:resnet50.a1_in1k", "no pretrained weights for timm:resnet50.a1_in1k in the local cache "
                              "({hf}); pass --weights FILE, or --random-init for untrained weights"),
    ("torchvision:resnet18", "no pretrained weights for torchvision:resnet18 in the local cache "
                             "({hub}/checkpoints/resnet18-f37072fd.pth); pass --weights FILE, or "
                             "--random-init for untrained weights"),
    ("taskonomy:normal", "no pretrained weights for taskonomy:normal in the local cache: expected "
                         "{hub}/checkpoints/" + ENCODER_FILES["normal"] + " (from https://github.com/"
                         "alexsax/visual-prior/raw/networks/assets/pytorch/" + ENCODER_FILES["normal"]
                         + "); pass --weights FILE, or --random-init for untrained weights"),
])
def test_missing_pretrained_weights(offline_caches, ref: str, message: str) -> None:
    from huggingface_hub import constants
    with pytest.raises(MissingWeightsError) as info:
        load_model(ref)
    assert str(info.value) == message.format(hf=constants.HF_HUB_CACHE, hub=offline_caches)


def test_unknown_names_suggest_close_matches() -> None:
    with pytest.raises(RefError, match=r"unknown timm model 'resnet51'; did you mean .*resnet50"):
        load_model("timm:resnet51", random_init=True)
    with pytest.raises(RefError, match=r"unknown torchvision model 'resnet17'; did you mean .*resnet18"):
        load_model("tv:resnet17", random_init=True)


# ------------------------------------------------------------------ state dicts and detection
def test_torchvision_state_dict_detected(tmp_path) -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "tv_r18.pth"
    torch.save(net.state_dict(), path)
    lm = load_model(str(path))
    _frozen(lm)
    assert (lm.arch, lm.num_outputs, lm.source) == ("torchvision:resnet18", 10, "file")
    assert lm.meta["detected"]["num_classes"] == 10
    import hashlib
    assert lm.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    _same_outputs(lm.module, net)


def test_timm_state_dict_detected(tmp_path) -> None:
    torch.manual_seed(0)
    net = timm.create_model("mobilenetv3_small_050", num_classes=7)
    path = tmp_path / "mnv3.pt"
    torch.save(net.state_dict(), path)
    lm = load_model(str(path))
    _frozen(lm)
    assert (lm.arch, lm.num_outputs) == ("timm:mobilenetv3_small_050", 7)
    assert lm.spec.size == (224, 224) and lm.spec.interpolation == "bicubic"
    _same_outputs(lm.module, net)


def test_nested_and_dataparallel_prefixed_state_dict(tmp_path) -> None:
    net = torchvision.models.resnet18(num_classes=4)
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "model_state_dict": sd, "lr": 0.1}, path)
    lm = load_model(str(path), arch="torchvision:resnet18")
    assert lm.num_outputs == 4
    _same_outputs(lm.module, net)


def test_detection_across_a_module_of_several_families_and_its_ambiguities(tmp_path) -> None:
    """timm's ``regnet`` module defines regnetv/x/y/z, named differently: each is found. A state dict that
    fits several architectures exactly (``tf_efficientnet_b0`` pads otherwise than ``efficientnet_b0``, with
    the same layers) is loaded as the first and names the others."""
    torch.manual_seed(0)
    for name in ("regnetx_002", "regnety_002"):
        net = timm.create_model(name, num_classes=3)
        assert detect_architecture(net.state_dict()).arch == f"timm:{name}"
    path = tmp_path / "tf_b0.pt"
    torch.save(timm.create_model("tf_efficientnet_b0", num_classes=3).state_dict(), path)
    lm = load_model(str(path))
    assert lm.arch == "timm:efficientnet_b0"
    assert "timm:tf_efficientnet_b0" in lm.meta["detected"]["also_fits"]
    assert load_model(str(path), arch="timm:tf_efficientnet_b0").arch == "timm:tf_efficientnet_b0"


def test_a_backbone_saved_without_its_classifier(tmp_path) -> None:
    """Feature extractors (a torchvision fc set to Identity, timm's num_classes=0) load as backbones: their
    features are the output, the same function as saved; a class count given for one is named as the mismatch."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    tv.fc = nn.Identity()
    vit = timm.create_model("test_vit", num_classes=0).eval()
    for net, name, arch in ((tv, "tv.pt", "torchvision:resnet18"), (vit, "vit.pt", "timm:test_vit")):
        torch.save(net.state_dict(), tmp_path / name)
        for lm in (load_model(str(tmp_path / name)), load_model(str(tmp_path / name), arch=arch)):
            assert lm.arch == arch and lm.num_outputs is None and lm.meta.get("headless") is True
            _same_outputs(lm.module, net)
    with pytest.raises(ArchitectureError, match="the file has none .a backbone saved without it., --num-classes "
                                                "says 10"):
        load_model(str(tmp_path / "tv.pt"), arch="torchvision:resnet18", num_classes=10)
    from gifindex.errors import GifindexError
    from gifindex.fingerprint import FitConfig, OwnerData, fit_fingerprint
    data = OwnerData(x=torch.rand(20, 3, 16, 16), y=torch.arange(20) % 2)
    with pytest.raises(GifindexError, match="is a backbone without a classifier"):
        fit_fingerprint(load_model(str(tmp_path / "tv.pt")), data, FitConfig())


def test_a_training_wrappers_prefix_is_peeled(tmp_path) -> None:
    """A Lightning checkpoint names every tensor ``model.<the network's name>`` under ``state_dict``: the
    architecture is detected through the prefix, and --arch / --weights load it exactly."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4)
    path = tmp_path / "epoch=3.ckpt"
    torch.save({"epoch": 3, "global_step": 120, "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"lr": 0.1}}, path)
    detected = load_model(str(path))
    assert (detected.arch, detected.num_outputs) == ("torchvision:resnet18", 4)
    _same_outputs(detected.module, net)
    for lm in (load_model(str(path), arch="torchvision:resnet18"), load_model("tv:resnet18", weights=str(path))):
        assert lm.num_outputs == 4
        _same_outputs(lm.module, net)
    # two wrappers deep (``model.backbone.``); a mismatch is named in the network's names, not the wrappers'
    torch.save({f"model.backbone.{k}": v for k, v in net.state_dict().items()}, path)
    _same_outputs(load_model(str(path), arch="torchvision:resnet18").module, net)
    with pytest.raises(ArchitectureError, match=r"not fit torchvision:resnet34: missing: layer1\.2\.conv1\.weight"):
        load_model(str(path), arch="torchvision:resnet34")


def test_safetensors_round_trip(tmp_path) -> None:
    from safetensors.torch import save_file
    net = torchvision.models.resnet18(num_classes=6)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    lm = load_model(str(path), arch="tv:resnet18")
    assert lm.meta["format"] == "safetensors" and lm.num_outputs == 6
    _same_outputs(lm.module, net)


@pytest.mark.parametrize("ref, factory", [
    ("timm:resnet18", lambda: timm.create_model("resnet18", num_classes=5)),
    ("torchvision:mobilenet_v3_small", lambda: torchvision.models.mobilenet_v3_small(num_classes=5)),
])
def test_weights_flag_gives_identical_outputs(tmp_path, ref: str, factory) -> None:
    torch.manual_seed(0)
    net = factory().eval()
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    lm = load_model(ref, weights=str(path))  # num_classes read from the classifier
    _frozen(lm)
    assert lm.num_outputs == 5 and lm.meta["weights_file"] == str(path)
    _same_outputs(lm.module, net)


def test_arch_that_does_not_fit(tmp_path) -> None:
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    with pytest.raises(ArchitectureError) as info:
        load_model(str(path), arch="torchvision:resnet34")
    msg = str(info.value)
    assert msg.startswith("the state dict does not fit torchvision:resnet34: missing: layer1.2.conv1.weight")
    with pytest.raises(ArchitectureError, match="file has 3 classes, --num-classes says 5"):
        load_model(str(path), arch="torchvision:resnet18", num_classes=5)
    with pytest.raises(ArchitectureError, match="does not fit timm:resnet18"):
        load_model("timm:resnet18", weights=str(torch_save_small(tmp_path)))


def torch_save_small(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    return path


def test_no_architecture_matches() -> None:
    sd = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).state_dict()
    with pytest.raises(ArchitectureError) as info:
        detect_architecture(sd, libraries=("torchvision",))
    assert str(info.value).startswith("the state dict matches no torchvision or timm architecture "
                                      "(4 tensors)")
    assert str(info.value).endswith("pass --arch timm:NAME --num-classes C (or --arch torchvision:NAME); a network "
                                    "of your own class: --arch python:FILE.py:Class --trust (or save it whole with "
                                    "torch.jit.script and load that file with --trust)")
    near = torchvision.models.resnet18(num_classes=3).state_dict()
    near.pop("layer4.1.bn2.bias")
    with pytest.raises(ArchitectureError, match=r"closest: torchvision:resnet18 \(missing: layer4.1.bn2.bias\)"):
        detect_architecture(near, libraries=("torchvision",))


# ------------------------------------------------------------------ Taskonomy
def test_taskonomy_encoder_shapes_and_strides() -> None:
    enc = TaskonomyEncoder().eval()
    sizes = {}
    for name in ("maxpool", "layer1", "layer2", "layer3", "layer4"):
        getattr(enc, name).register_forward_hook(lambda m, i, o, n=name: sizes.__setitem__(n, o.shape[1:]))
    with torch.no_grad():
        out = enc(torch.rand(1, 3, 256, 256) * 2 - 1)
    assert out.shape == (1, 8, 16, 16)
    assert sizes == {"maxpool": (64, 64, 64), "layer1": (256, 32, 32), "layer2": (512, 16, 16),
                     "layer3": (1024, 16, 16), "layer4": (2048, 16, 16)}
    assert [b.conv2.stride for b in enc.layer1] == [(1, 1), (1, 1), (2, 2)]
    assert [b.conv2.stride for b in enc.layer2] == [(1, 1)] * 3 + [(2, 2)]
    keys = set(enc.state_dict())
    assert {"conv1.weight", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
            "compress1.weight", "compress_bn.weight"} <= keys
    assert not any(k.startswith("layer1.2.downsample") for k in keys)  # parameter-free max-pool


def test_taskonomy_published_checkpoint_format(offline_caches, tmp_path) -> None:
    torch.manual_seed(0)
    enc = TaskonomyEncoder().eval()
    for m in enc.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ckpt = tmp_path / "normal_encoder.pth"
    torch.save({"state_dict": enc.state_dict()}, ckpt)
    lm = load_model("taskonomy:normal", weights=str(ckpt))
    _frozen(lm)
    assert lm.spec.size == (256, 256) and lm.spec.mean == (0.5,) * 3 and lm.spec.std == (0.5,) * 3
    assert lm.num_outputs is None and lm.meta["task"] == "normal"
    _same_outputs(lm.module, enc, size=256)
    # the same file found in the torch hub checkpoints folder under its published name
    target = offline_caches / "checkpoints" / ENCODER_FILES["normal"]
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(ckpt, target)
    cached = load_model("taskonomy:rgb2sfnorm")
    assert cached.weights_sha256 == lm.weights_sha256 and cached.ref == "taskonomy:normal"
    # and as a bare file, recognised as a Taskonomy encoder
    assert load_model(str(target)).arch == "taskonomy:normal"


# ------------------------------------------------------------------ input specs, random init
def test_input_specs_per_source() -> None:
    torch.manual_seed(0)
    lm = load_model("timm:resnet18", random_init=True)
    assert (lm.spec.size, lm.spec.mean, lm.spec.std) == ((224, 224), IMAGENET_MEAN, IMAGENET_STD)
    assert lm.weights_sha256 is None and lm.meta["random_init"] and lm.num_outputs == 1000
    _frozen(lm)
    tv = load_model("torchvision:resnet18", random_init=True, num_classes=12)
    assert (tv.spec.size, tv.spec.mean, tv.spec.std) == ((224, 224), IMAGENET_MEAN, IMAGENET_STD)
    assert tv.num_outputs == 12 and tv.arch == "torchvision:resnet18"
    _frozen(tv)
    tk = load_model("taskonomy:curvature", random_init=True, input_size=128, mean=[0, 0, 0])
    assert (tk.spec.size, tk.spec.mean, tk.spec.std) == ((128, 128), (0.0, 0.0, 0.0), (0.5, 0.5, 0.5))
    over = load_model("timm:resnet18", random_init=True, input_size=96, std=(1, 1, 1))
    assert (over.spec.size, over.spec.std, over.spec.mean) == ((96, 96), (1.0, 1.0, 1.0), IMAGENET_MEAN)


def test_every_reference_kind_has_one_source() -> None:
    from gifindex.models.detect import build_on_meta
    from gifindex.models.sources import get_source, source_kinds
    from gifindex.refs import KINDS
    assert set(source_kinds()) == set(KINDS)
    assert get_source("timm").version() == timm.__version__
    assert get_source("torchvision").version() == torchvision.__version__.split("+")[0]
    assert get_source("taskonomy").version() == "0"
    with pytest.raises(KeyError):
        get_source("timm").constructor("no_such_net")
    with pytest.raises(KeyError):  # files are not built by name
        get_source("file").constructor("resnet18")
    on_meta = build_on_meta("torchvision", "resnet18", num_classes=7)
    assert on_meta.fc.weight.shape == (7, 512) and on_meta.fc.weight.device.type == "meta"
    assert isinstance(build_on_meta("taskonomy", "encoder"), TaskonomyEncoder)
    with pytest.raises(RefError, match="no model source"):
        get_source("open_clip")


def test_sources_say_whether_weights_are_local(offline_caches, tmp_path) -> None:
    from gifindex.manifest import ModelEntry
    from gifindex.models.available import has_local_weights
    assert not has_local_weights(ModelEntry(ref="taskonomy:normal"))
    assert not has_local_weights(ModelEntry(ref="torchvision:resnet18"))
    assert not has_local_weights(ModelEntry(ref="timm:resnet18"))
    assert has_local_weights(ModelEntry(ref="timm:resnet18", random_init=True))
    (offline_caches / "checkpoints").mkdir(parents=True)
    (offline_caches / "checkpoints" / ENCODER_FILES["normal"]).write_bytes(b"x")
    assert has_local_weights(ModelEntry(ref="taskonomy:normal"))
    model_file = tmp_path / "m.pt"
    model_file.write_bytes(b"x")
    assert has_local_weights(ModelEntry(ref=str(model_file)))


def test_torchvision_spec_from_weights_metadata() -> None:
    from gifindex.models.hub import torchvision_spec, torchvision_weights
    spec = torchvision_spec(torchvision_weights("inception_v3", None))
    assert spec.size == (299, 299) and spec.mean == IMAGENET_MEAN
    assert torchvision_spec(None).size == (224, 224)


def test_option_conflicts(tmp_path) -> None:
    from gifindex.errors import ConfigError
    with pytest.raises(ConfigError):
        load_model("timm:resnet18", weights="x.pt", random_init=True)
    with pytest.raises(ConfigError):
        load_model("timm:resnet18", arch="timm:resnet18", random_init=True)
    with pytest.raises(ConfigError, match="--arch applies to state-dict files only"):
        load_model("taskonomy:normal", arch="timm:resnet18")
    model_file = tmp_path / "m.pt"
    torch.save(timm.create_model("test_resnet").state_dict(), model_file)
    with pytest.raises(ConfigError, match="do not apply to a model file"):
        load_model(str(model_file), random_init=True)


# ------------------------------------------------------------------ pretrained from local caches
def test_torchvision_pretrained_from_torch_hub_cache(offline_caches) -> None:
    import hashlib
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()  # 1000 classes, like the published weights
    path = offline_caches / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    lm = load_model("tv:resnet18")
    assert lm.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert lm.num_outputs == 1000 and lm.spec.size == (224, 224)
    from torchvision.models import ResNet18_Weights
    assert "get_state_dict" not in ResNet18_Weights.__dict__  # the temporary hook is gone
    _same_outputs(lm.module, net)


def test_timm_pretrained_from_hf_cache(tmp_path, monkeypatch) -> None:
    import hashlib
    from huggingface_hub import constants
    from safetensors.torch import save_file
    torch.manual_seed(0)
    net = timm.create_model("resnet18").eval()
    repo = tmp_path / "hf" / "models--timm--resnet18.a1_in1k"
    rev = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    save_file(net.state_dict(), str(snap / "model.safetensors"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    lm = load_model("timm:resnet18.a1_in1k")
    assert lm.weights_sha256 == hashlib.sha256((snap / "model.safetensors").read_bytes()).hexdigest()
    assert lm.spec.interpolation == "bicubic" and lm.ref == "timm:resnet18.a1_in1k"
    _same_outputs(lm.module, net)
