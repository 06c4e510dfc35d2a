"""Loading models: one entry point, :func:`load_model`, for every kind of model reference.

The result is always a :class:`LoadedModel` whose module is in eval mode, has every parameter frozen
(``requires_grad=False``) and sits on the requested device, with the input convention it expects.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch.nn as nn

from gifindex.errors import ConfigError, ModelLoadError
from gifindex.models.spec import InputSpec, LoadedModel
from gifindex.refs import ModelRef, parse_ref

__all__ = ["load_model", "LoadedModel", "InputSpec"]


def load_model(ref: "str | ModelRef", *, arch: str | None = None, weights: str | None = None,
               num_classes: int | None = None, input_size: int | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               trust: bool = False, random_init: bool = False, device: str = "cpu") -> LoadedModel:
    """Build the model named by ``ref`` with its weights, ready to be signed.

    ``weights`` is a state-dict file for a named architecture; ``arch`` names the architecture of
    a state-dict file given as ``ref`` (detected from its keys when omitted); ``random_init`` asks
    for untrained weights (seed the RNG first); ``trust`` allows files whose loading runs code.
    ``input_size``/``mean``/``std`` override the model's own input convention.
    """
    from gifindex.models import hub, taskonomy

    _check_file_ref(ref)
    r = parse_ref(ref)
    if weights is not None and random_init:
        raise ConfigError("--weights and --random-init exclude each other")
    if r.kind != "file" and arch is not None:
        raise ConfigError(f"--arch applies to state-dict files only, not to {r.canonical()}")
    if r.kind == "timm":
        built = hub.load_timm(r.name, r.tag, weights=weights, num_classes=num_classes,
                              random_init=random_init, trust=trust)
    elif r.kind == "torchvision":
        built = hub.load_torchvision(r.name, r.tag, weights=weights, num_classes=num_classes,
                                     random_init=random_init, trust=trust)
    elif r.kind == "hf-hub":
        built = hub.load_hf_hub(r.name, weights=weights, num_classes=num_classes,
                                random_init=random_init, trust=trust)
    elif r.kind == "taskonomy":
        built = taskonomy.load_taskonomy(r.name, weights=weights, random_init=random_init, trust=trust)
    else:
        if weights is not None or random_init:
            raise ConfigError("--weights/--random-init do not apply to a model file; use --arch")
        built = _load_file(str(r.path), arch, num_classes, trust)
    spec = built.spec.with_overrides(input_size, tuple(mean) if mean is not None else None,
                                     tuple(std) if std is not None else None)
    module = built.module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    name = Path(str(r.path)).stem if r.kind == "file" else r.canonical()
    return LoadedModel(module=module, spec=spec, ref=r.canonical(), name=name, source=r.kind,
                       arch=built.arch, weights_sha256=built.weights_sha256,
                       num_outputs=built.meta.pop("num_outputs", None) or num_outputs(built.module),
                       meta=built.meta)


def _check_file_ref(ref: object) -> None:
    """A reference that names a local path: refuse FIFOs, devices, directories, outside symlinks (files.py)."""
    import os

    from gifindex.models.files import check_path
    from gifindex.refs import _PREFIXES, FILE_SUFFIXES

    if not isinstance(ref, (str, os.PathLike)):
        return
    text = os.path.expanduser(os.fspath(ref).strip())
    prefixed = text.partition(":")[0].lower() in _PREFIXES and ":" in text
    if os.path.lexists(text) or (not prefixed and Path(text).suffix.lower() in FILE_SUFFIXES):
        check_path(text)


def num_outputs(module: nn.Module) -> int | None:
    """The class count of a classifier (timm's ``num_classes`` or the last Linear), else None."""
    n = getattr(module, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    if module.__class__.__name__ == "TaskonomyEncoder":
        return None
    last = None
    for m in module.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last.out_features if last is not None else None


def _load_file(path: str, arch: str | None, num_classes: int | None, trust: bool) -> Any:
    """A local file: a whole module (trusted pickle / TorchScript) or a state dict plus architecture."""
    from gifindex.models import detect, hub, taskonomy
    from gifindex.models.files import read_weights_file

    wf = read_weights_file(path, trust=trust)
    meta: dict[str, Any] = {"file": path, "format": wf.format}
    if wf.module is not None:
        spec = hub.timm_spec(wf.module) if hasattr(wf.module, "pretrained_cfg") else InputSpec()
        kind = "torchscript" if wf.format == "torchscript" else "pickled module"
        meta["loaded_as"] = kind
        return hub.Built(wf.module, spec, arch or type(wf.module).__name__, wf.sha256, meta)
    assert wf.state_dict is not None
    preloaded = (wf.state_dict, wf.sha256)
    if arch is None:
        arch = _taskonomy_arch(wf.state_dict, path)
    if arch is None:
        found = detect.detect_architecture(wf.state_dict)
        arch, num_classes = found.arch, found.num_classes if num_classes is None else num_classes
        meta["detected"] = {"arch": found.arch, "num_classes": found.num_classes,
                            "seconds": round(found.seconds, 3)}
    if arch.startswith("taskonomy:"):  # the task is only a label once the weights are given
        a = ModelRef("taskonomy", arch.partition(":")[2])
    else:
        a = parse_ref(arch) if ":" in arch else _bare_arch(arch)
    if a.kind == "timm":
        built = hub.load_timm(a.name, a.tag, weights=preloaded, num_classes=num_classes,
                              random_init=False)
    elif a.kind == "torchvision":
        built = hub.load_torchvision(a.name, a.tag, weights=preloaded, num_classes=num_classes,
                                     random_init=False)
    elif a.kind == "taskonomy":
        built = taskonomy.load_taskonomy(a.name, weights=preloaded)
    else:
        raise ConfigError(f"--arch must be timm:NAME, torchvision:NAME or taskonomy:TASK, not {arch!r}")
    built.meta.update(meta, weights_file=path)
    return built


def _bare_arch(name: str) -> ModelRef:
    """``--arch resnet18``: torchvision's name first, then timm's."""
    import timm
    import torchvision.models as tvm
    if name in tvm.list_models():
        return ModelRef("torchvision", name)
    if timm.is_model(name.partition(".")[0]):
        return ModelRef("timm", *name.partition(".")[::2]) if "." in name else ModelRef("timm", name)
    raise ModelLoadError(f"unknown architecture {name!r}: use --arch timm:NAME or --arch torchvision:NAME")


def _taskonomy_arch(sd: dict, path: str) -> str | None:
    """``taskonomy:TASK`` when ``sd`` is a Taskonomy encoder (task from the file name, else 'encoder')."""
    if "compress1.weight" not in sd or "compress_bn.weight" not in sd:
        return None
    from gifindex.refs import taskonomy_task
    stem = Path(path).name.split("_encoder")[0]
    return f"taskonomy:{taskonomy_task(stem) or 'encoder'}"
