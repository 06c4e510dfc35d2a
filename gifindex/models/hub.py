"""timm, torchvision and Hugging Face hub models, built by name, weights from local caches only.

Pretrained weights come from ``--weights FILE`` (read with the safe file loader) or from what is
already on disk: the huggingface_hub cache (timm, hf-hub; read with HF_HUB_OFFLINE semantics) or the
torch hub checkpoints folder (torchvision, older timm URLs). Nothing here touches the network.
"""
from __future__ import annotations

import difflib
import inspect
import logging
import os
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn as nn

from gifindex.errors import MissingWeightsError, ModelLoadError, RefError
from gifindex.models import detect
from gifindex.models.files import check_weight_dtypes, fitting, read_state_dict, read_weights_file
from gifindex.models.sources import ModelSource, register_source
from gifindex.models.spec import IMAGENET_MEAN, IMAGENET_STD, Built, InputSpec, read_weights

if TYPE_CHECKING:
    from gifindex.refs import ModelRef

log = logging.getLogger(__name__)


def _home(path: str | Path) -> str:
    text, home = str(path), os.path.expanduser("~")
    return "~" + text[len(home):] if home not in ("", "/") and text.startswith(home) else text


def hf_cache_dir() -> str:
    """The huggingface_hub cache folder."""
    from huggingface_hub import constants
    return str(constants.HF_HUB_CACHE)


@contextmanager
def hf_offline() -> Iterator[None]:
    """Make huggingface_hub act as with ``HF_HUB_OFFLINE=1`` (cache only) for the duration."""
    from huggingface_hub import constants
    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def unknown_name(lib: str, name: str, known: list[str]) -> RefError:
    """An error naming the closest known names."""
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return RefError(f"unknown {lib} model {name!r}{hint}")


def _finish_weights(module: nn.Module, sd: dict[str, torch.Tensor], arch: str) -> None:
    sd = fitting(sd, module.state_dict())
    check_weight_dtypes(module, sd, arch)
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"cannot load weights into {arch}: {str(e).splitlines()[0]}") from None


def headless(module: nn.Module) -> None:
    """Replace every layer built with zero outputs (torchvision's classifier at num_classes=0) by an identity, as timm
    does itself at num_classes=0: the model then returns its features."""
    for name, layer in list(module.named_modules()):
        params = list(layer.parameters(recurse=False))
        if name and params and all(p.numel() == 0 for p in params):
            parent, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, attr, nn.Identity())


def _file_sha(path: Path) -> str:
    return read_weights_file(path).sha256


def _describe(weights: Any) -> str:
    return "(preloaded)" if isinstance(weights, tuple) else str(weights)


# ---------------------------------------------------------------- timm
def timm_spec(module: nn.Module) -> InputSpec:
    """Input size, mean, std and interpolation from timm's ``pretrained_cfg``."""
    cfg = getattr(module, "pretrained_cfg", None) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224))[-2:])
    return InputSpec(size=size, mean=tuple(cfg.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
                     std=tuple(cfg.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
                     interpolation=str(cfg.get("interpolation") or "bilinear"))


def timm_cached_file(cfg: dict[str, Any]) -> Path | None:
    """The cached weights for a timm pretrained config: hf hub cache first, then torch hub checkpoints."""
    from huggingface_hub import try_to_load_from_cache
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else \
            ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
        for fname in names:
            found = try_to_load_from_cache(hub_id, fname)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    url = cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if path.is_file():
            return path
    return None


# torchvision architectures whose ``transform_input`` (an RGB re-normalisation inside the model) no state dict
# records: torchvision's pretrained weights use True, its builder without weights False.
TRANSFORM_INPUT = ("googlenet", "inception_v3")


def _explicit_build(lib: str, name: str, build: Any, weights: Any, random_init: bool, num_classes: int | None,
                    trust: bool, kwargs: dict[str, Any], meta: dict[str, Any]) -> tuple[nn.Module, str | None] | None:
    """Build with weights from ``--weights`` (class count read from the file; a grey input layer and absent
    auxiliary heads too, :func:`detect.fit_details`) or untrained on request; None when the pretrained weights of
    the local caches are wanted instead."""
    if weights:
        sd, sha = read_weights(weights, trust)
        fit = detect.fit_details(lib, name, sd, num_classes)
        n = fit.num_classes if fit.num_classes is not None else num_classes
        if n is not None:
            kwargs["num_classes"] = n
        if fit.aux_logits is False:
            kwargs["aux_logits"] = False
            meta["aux_logits"] = False
        if lib == "torchvision" and name in TRANSFORM_INPUT:
            kwargs.update(init_weights=False, transform_input=_assumed_transform_input(name, fit.aux_logits is False))
            meta["transform_input"] = kwargs["transform_input"]
        if fit.in_chans and lib == "timm":
            kwargs["in_chans"] = fit.in_chans
        with warnings.catch_warnings():   # a headless build's empty classifier (replaced below): not the user's
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            module = build(kwargs)
        if fit.in_chans and lib == "torchvision":
            _set_input_channels(module, fit.input_layer or "", fit.in_chans, f"{lib}:{name}")
        if fit.in_chans:
            meta["in_chans"] = fit.in_chans
        if n == 0:  # a backbone saved without its classifier: the features are its output
            headless(module)
            meta["headless"] = True
        _finish_weights(module, sd, f"{lib}:{name}")
        meta["weights_file"] = _describe(weights)
        return module, sha
    if random_init:
        meta["random_init"] = True
        return build(kwargs), None
    return None


def _assumed_transform_input(name: str, aux_less: bool) -> bool:
    """``transform_input`` for a torchvision GoogLeNet / Inception v3 state dict, which does not record it, with a
    warning saying what was assumed. Without auxiliary heads: True, as the network fine-tuned from torchvision's
    pretrained weights (the builder drops the heads only after loading those, and sets True with them; a network
    built without weights has the heads unless asked otherwise). With them: False, the builder's own default
    without weights."""
    assumed = aux_less
    why = ("it has no auxiliary heads, as a network fine-tuned from torchvision's pretrained weights (which use "
           "True)" if aux_less else "as torchvision builds it without pretrained weights")
    log.warning("torchvision:%s state dict: assumed transform_input=%s (%s; a state dict does not record it); for "
                "transform_input=%s, load the weights into your own class building %s(transform_input=%s%s) with "
                "--arch python:FILE.py:Class --trust, or save the model whole with torch.jit.script and load that "
                "file with --trust", name, assumed, why, not assumed, name, not assumed,
                ", aux_logits=False" if aux_less else "")
    return assumed


def _set_input_channels(module: nn.Module, key: str, in_chans: int, arch: str) -> None:
    """Replace the input convolution of ``module`` (its weight is ``key``) by one taking ``in_chans`` channels, its
    other hyper-parameters unchanged."""
    path = key.rpartition(".")[0]
    try:
        conv = module.get_submodule(path)
    except AttributeError:
        conv = None
    if type(conv) is not nn.Conv2d or conv.groups != 1:
        raise ModelLoadError(f"cannot make {arch} take {in_chans} input channel(s): its input layer {path or key!r} is "
                             f"not a plain convolution")
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    parent, _, attr = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, attr, new)


def load_timm(name: str, tag: str | None, *, weights: Any, num_classes: int | None,
              random_init: bool, trust: bool = False) -> Built:
    """Build ``timm:name[.tag]``; weights from ``weights``, the local caches, or random."""
    import timm
    if not timm.is_model(name):
        raise unknown_name("timm", name, timm.list_models())
    full = f"{name}.{tag}" if tag else name
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    meta: dict[str, Any] = {}
    explicit = _explicit_build("timm", name, lambda kw: _timm_create(full, False, kw), weights, random_init,
                               num_classes, trust, kwargs, meta)
    if explicit is not None:
        module, sha = explicit
    else:
        cfg = timm.models.get_pretrained_cfg(full)
        cached = timm_cached_file(cfg.to_dict()) if cfg is not None else None
        if cached is None:
            raise MissingWeightsError(
                f"no pretrained weights for timm:{full} in the local cache ({_home(hf_cache_dir())}); "
                "pass --weights FILE, or --random-init for untrained weights")
        sd, sha = read_state_dict(cached)
        kwargs["pretrained_cfg_overlay"] = {"state_dict": sd}
        module = _timm_create(full, True, kwargs)
        meta["weights_file"] = str(cached)
    return Built(module, timm_spec(module), f"timm:{name}", sha, meta)


def _timm_create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm
    try:
        with hf_offline():
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (RuntimeError, ValueError, KeyError, TypeError, OSError) as e:
        raise ModelLoadError(f"cannot build timm:{name}: {str(e).splitlines()[0] if str(e) else e!r}")


def load_hf_hub(repo: str, *, weights: Any, num_classes: int | None, random_init: bool,
                trust: bool = False) -> Built:
    """Build ``hf-hub:ORG/NAME`` through timm from the huggingface_hub cache (config + weights)."""
    import timm
    from huggingface_hub import try_to_load_from_cache
    if not isinstance(try_to_load_from_cache(repo, "config.json"), str):
        raise MissingWeightsError(
            f"hf-hub:{repo} is not in the local cache ({_home(hf_cache_dir())}): its config.json is "
            "missing; download it on a connected machine, or use timm:NAME with --weights FILE")
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    meta: dict[str, Any] = {}
    sha = None
    pretrained = not (weights or random_init)
    try:
        with hf_offline():
            module = timm.create_model(f"hf-hub:{repo}", pretrained=pretrained, **kwargs)
    except Exception as e:  # offline misses surface as various hub/OS errors
        if pretrained:
            raise MissingWeightsError(
                f"no pretrained weights for hf-hub:{repo} in the local cache ({_home(hf_cache_dir())}); "
                "pass --weights FILE, or --random-init for untrained weights") from None
        raise ModelLoadError(f"cannot build hf-hub:{repo}: {str(e).splitlines()[0]}") from None
    if weights:
        sd, sha = read_weights(weights, trust)
        _finish_weights(module, sd, f"hf-hub:{repo}")
        meta["weights_file"] = _describe(weights)
    elif pretrained:
        cached = timm_cached_file(dict(module.pretrained_cfg, hf_hub_id=repo))
        sha = _file_sha(cached) if cached else None
        meta["weights_file"] = str(cached) if cached else None
    else:
        meta["random_init"] = True
    arch = module.pretrained_cfg.get("architecture")
    return Built(module, timm_spec(module), f"timm:{arch}" if arch else f"hf-hub:{repo}", sha, meta)


# ---------------------------------------------------------------- torchvision
def torchvision_weights(name: str, tag: str | None) -> Any:
    """The torchvision weights enum member for ``name`` (``tag`` or DEFAULT), or None."""
    import torchvision.models as tvm
    try:
        enum = tvm.get_model_weights(name)
    except (ValueError, KeyError):
        return None
    if tag is None:
        return enum.DEFAULT
    try:
        return enum[tag]
    except KeyError:
        raise RefError(f"unknown weights {tag!r} for torchvision:{name}; known: "
                       + ", ".join(w.name for w in enum)) from None


def torchvision_spec(weights: Any) -> InputSpec:
    """Crop size, mean, std and interpolation from a weights enum's transforms (ImageNet 224 without)."""
    if weights is None:
        return InputSpec()
    tf = weights.transforms()
    crop = getattr(tf, "crop_size", None) or [224]
    size = (crop[0], crop[-1])
    interp = getattr(tf, "interpolation", None)
    return InputSpec(size=size, mean=tuple(getattr(tf, "mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
                     std=tuple(getattr(tf, "std", IMAGENET_STD)),  # type: ignore[arg-type]
                     interpolation=getattr(interp, "value", "bilinear"))


def load_torchvision(name: str, tag: str | None, *, weights: Any, num_classes: int | None,
                     random_init: bool, trust: bool = False) -> Built:
    """Build ``torchvision:name``; weights from ``weights``, torch hub's checkpoints folder, or random."""
    import torchvision.models as tvm
    known = tvm.list_models()
    if name not in known:
        raise unknown_name("torchvision", name, known)
    wenum = torchvision_weights(name, tag)
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    meta: dict[str, Any] = {}
    explicit = _explicit_build("torchvision", name, lambda kw: _tv_build(name, None, kw), weights, random_init,
                               num_classes, trust, kwargs, meta)
    if explicit is not None:
        module, sha = explicit
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(wenum.url) if wenum else None
        if path is None or not path.is_file():
            where = _home(path) if path else _home(Path(torch.hub.get_dir()) / "checkpoints")
            raise MissingWeightsError(
                f"no pretrained weights for torchvision:{name} in the local cache ({where}); "
                "pass --weights FILE, or --random-init for untrained weights")
        sd, sha = read_state_dict(path)  # weights_only: torch.hub's own loader would unpickle freely
        module = _tv_build(name, wenum, kwargs, sd)
        meta["weights_file"] = str(path)
        meta["weights"] = str(wenum)
    return Built(module, torchvision_spec(wenum), f"torchvision:{name}", sha, meta)


def tv_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for torchvision's builder of ``name``, with ``weights_backbone=None`` where it takes one
    (segmentation, detection): its default is the pretrained ImageNet backbone, which it would download, or load
    from the cache into what gifindex builds untrained or fills from a weights file."""
    import torchvision.models as tvm
    try:
        takes = "weights_backbone" in inspect.signature(tvm.get_model_builder(name)).parameters
    except (ValueError, KeyError, TypeError):
        takes = False
    return {**kwargs, "weights_backbone": None} if takes and "weights_backbone" not in kwargs else kwargs


def _tv_build(name: str, wenum: Any, kwargs: dict[str, Any],
              sd: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Build with torchvision's own builder; with ``wenum``, it is handed ``sd`` (already read
    safely) instead of fetching, so its per-model key fix-ups (e.g. densenet) still apply."""
    import torchvision.models as tvm
    enum_cls = type(wenum) if wenum is not None else None
    original = enum_cls.__dict__.get("get_state_dict") if enum_cls is not None else None
    if enum_cls is not None:
        enum_cls.get_state_dict = lambda self, *a, **k: dict(sd or {})  # type: ignore[method-assign]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return tvm.get_model(name, weights=wenum, **tv_kwargs(name, kwargs))
    except (RuntimeError, ValueError, TypeError) as e:
        raise ModelLoadError(f"cannot build torchvision:{name}: {str(e).splitlines()[0]}") from None
    finally:
        if enum_cls is not None and original is not None:
            enum_cls.get_state_dict = original  # type: ignore[method-assign]
        elif enum_cls is not None:
            del enum_cls.get_state_dict


# ---------------------------------------------------------------- the sources
@register_source
class TimmSource(ModelSource):
    """``timm:NAME[.TAG]``: timm's registry; input convention from the model's ``pretrained_cfg``."""

    kind = "timm"

    def load(self, ref: "ModelRef", *, arch: str | None, weights: Any, num_classes: int | None,
             random_init: bool, trust: bool) -> Built:
        return load_timm(ref.name, ref.tag, weights=weights, num_classes=num_classes, random_init=random_init,
                         trust=trust)

    def has_local_weights(self, ref: "ModelRef") -> bool:
        import timm
        cfg = timm.models.get_pretrained_cfg(f"{ref.name}.{ref.tag}" if ref.tag else ref.name)
        return cfg is not None and timm_cached_file(cfg.to_dict()) is not None

    def constructor(self, name: str) -> Callable[..., nn.Module]:
        import timm
        if not timm.is_model(name):
            raise KeyError(name)
        return lambda **kw: timm.create_model(name, pretrained=False, **kw)

    def version(self) -> str:
        import timm
        return timm.__version__


@register_source
class TorchvisionSource(ModelSource):
    """``torchvision:NAME``: torchvision's classification models; input convention from the weights' transforms."""

    kind = "torchvision"

    def load(self, ref: "ModelRef", *, arch: str | None, weights: Any, num_classes: int | None,
             random_init: bool, trust: bool) -> Built:
        return load_torchvision(ref.name, ref.tag, weights=weights, num_classes=num_classes,
                                random_init=random_init, trust=trust)

    def has_local_weights(self, ref: "ModelRef") -> bool:
        weights = torchvision_weights(ref.name, ref.tag)
        return weights is not None and \
            (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)).is_file()

    def constructor(self, name: str) -> Callable[..., nn.Module]:
        import torchvision.models as tvm
        if name not in tvm.list_models():
            raise KeyError(name)
        return lambda **kw: tvm.get_model(name, weights=None, **tv_kwargs(name, kw))

    def version(self) -> str:
        import torchvision
        return torchvision.__version__.split("+")[0]


@register_source
class HFHubSource(ModelSource):
    """``hf-hub:ORG/NAME``: a timm model in the huggingface_hub cache (config and weights)."""

    kind = "hf-hub"

    def load(self, ref: "ModelRef", *, arch: str | None, weights: Any, num_classes: int | None,
             random_init: bool, trust: bool) -> Built:
        return load_hf_hub(ref.name, weights=weights, num_classes=num_classes, random_init=random_init,
                           trust=trust)

    def has_local_weights(self, ref: "ModelRef") -> bool:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(ref.name, "config.json"), str) and \
            timm_cached_file({"hf_hub_id": ref.name}) is not None
