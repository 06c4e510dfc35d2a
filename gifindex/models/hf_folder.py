"""A local Hugging Face model folder as a model reference (timm's layout, as ``save_for_hf`` writes it).

The folder holds ``config.json`` (with timm's ``architecture``, optional ``num_classes`` and
``pretrained_cfg``) and ``model.safetensors`` or ``pytorch_model.bin``. The architecture comes from the
config, the input convention from its ``pretrained_cfg``, and the weights are read with the same safe
reader as any weights file (no code runs unless ``trust``); nothing is downloaded.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gifindex.errors import ModelLoadError
from gifindex.models.files import fitting, read_state_dict
from gifindex.models.hub import _finish_weights, timm_spec
from gifindex.models.sources import ModelSource, register_source
from gifindex.models.spec import Built, pretrained_cfg_problem
from gifindex.refs import HF_FOLDER_CONFIG, HF_FOLDER_WEIGHTS, ModelRef


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json`` as a dict with a timm ``architecture``; a clear error otherwise."""
    path = folder / HF_FOLDER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        hint = f" (a transformers config: {config['architectures']})" if isinstance(config, dict) and \
            config.get("architectures") else ""
        raise ModelLoadError(f"{path} names no timm 'architecture'{hint}; only timm-style folders "
                             "(timm's save_for_hf / push_to_hf_hub) are supported")
    check_convention(config, path)
    return config


def check_convention(config: dict[str, Any], path: Path) -> None:
    """Refuse a ``pretrained_cfg`` whose input convention is malformed (a mean of two numbers, a string, a std of
    zero, an input size that is no [channels, height, width] of positive integers), naming the field."""
    cfg = config.get("pretrained_cfg")
    if cfg is None:
        return
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{path}: 'pretrained_cfg' must be a mapping, got {type(cfg).__name__}")
    problem = pretrained_cfg_problem(cfg)
    if problem:
        raise ModelLoadError(f"{path}: pretrained_cfg.{problem}")


def check_fit(module: Any, sd: dict[str, Any], arch: str, path: Path, num_classes: int | None) -> None:
    """Say in one line what keeps the weights in ``path`` from loading into ``module``: a class count that differs
    from the one asked for (``--num-classes``, else config.json's), else the keys missing, unexpected or shaped
    otherwise (three of each)."""
    own = module.state_dict()
    sd = fitting(sd, own)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    want = getattr(module, "num_classes", None)
    counts = {int(sd[k].shape[0]) for k in shapes if sd[k].ndim >= 1}
    if not missing and not unexpected and isinstance(want, int) and len(counts) == 1 and all(
            sd[k].ndim == own[k].ndim and own[k].shape[0] == want and tuple(sd[k].shape[1:]) == tuple(own[k].shape[1:])
            for k in shapes):
        said = f"--num-classes says {num_classes}" if num_classes is not None else \
            f"its {HF_FOLDER_CONFIG} says {want}"
        raise ModelLoadError(f"cannot load {path} into timm:{arch}: the file has {counts.pop()} classes, {said}")
    problems = [f"{what} {', '.join(keys[:3])}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
                for what, keys in (("missing", missing), ("unexpected", unexpected),
                                   ("shape", [f"{k} file {list(sd[k].shape)} vs model {list(own[k].shape)}"
                                              for k in shapes])) if keys]
    raise ModelLoadError(f"cannot load {path} into timm:{arch} as its {HF_FOLDER_CONFIG} builds it: "
                         f"{'; '.join(problems)}")


def weights_path(folder: Path) -> Path:
    """``model.safetensors`` when present, else ``pytorch_model.bin``."""
    for name in HF_FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise ModelLoadError(f"Hugging Face model folder {folder} has no weights: expected "
                         f"{' or '.join(HF_FOLDER_WEIGHTS)}")


def load_hf_folder(folder: str | Path, *, num_classes: int | None = None, trust: bool = False):
    """Build the timm model a Hugging Face folder describes and load its weights (returns a ``Built``)."""
    import timm

    folder = Path(folder)
    config = read_config(folder)
    arch = config["architecture"]
    if not timm.is_model(arch):
        raise ModelLoadError(f"{folder / HF_FOLDER_CONFIG} names architecture {arch!r}, which this timm "
                             f"({timm.__version__}) does not know")
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    try:
        module = timm.create_model(f"local-dir:{folder}", pretrained=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - a bad config surfaces as various timm errors
        raise ModelLoadError(f"cannot build {arch} from {folder / HF_FOLDER_CONFIG}: "
                             f"{str(e).splitlines()[0][:200]}") from None
    path = weights_path(folder)
    sd, sha = read_state_dict(path, trust=trust)
    check_fit(module, sd, arch, path, num_classes)
    _finish_weights(module, sd, f"timm:{arch}")
    spec = timm_spec(module)
    spec = spec.with_overrides(mean=spec.mean, std=spec.std)  # one value for every channel: three
    return Built(module, spec, f"timm:{arch}", sha,
                 {"folder": str(folder), "weights_file": str(path)})


@register_source
class HFFolderSource(ModelSource):
    """A local Hugging Face model folder (timm layout): its config names the architecture."""

    kind = "hf-folder"
    refuses_weights = ("--weights/--random-init/--arch do not apply to a Hugging Face model folder: its "
                       "config.json names the architecture and the folder holds the weights")

    def load(self, ref: ModelRef, *, arch: str | None, weights: Any, num_classes: int | None,
             random_init: bool, trust: bool):
        return load_hf_folder(str(ref.path), num_classes=num_classes, trust=trust)

    def model_name(self, ref: ModelRef) -> str:
        return Path(str(ref.path)).name
