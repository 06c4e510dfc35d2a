"""What a model is on its way to being signed: built (``Built``, by a model source) and then loaded
(``LoadedModel``: frozen, on its device, with the input convention it was trained with)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from gifindex.errors import ConfigError
from gifindex.models.files import read_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class InputSpec:
    """The native input of a model: spatial size (H, W), channels and per-channel normalisation.

    A model expects ``(x - mean) / std`` of an RGB image in [0, 1] resized to ``size``.
    Taskonomy's [-1, 1] convention is mean 0.5, std 0.5. ``channels`` 1: the model reads one grey channel
    (MNIST-style models), the image's luma (GREY_WEIGHTS), normalised by the first mean and std.
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    channels: int = 3

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"a model reads 1 (grey) or 3 (RGB) input channels, not {self.channels}")

    def with_overrides(self, size: int | tuple[int, int] | None = None,
                       mean: tuple[float, ...] | None = None,
                       std: tuple[float, ...] | None = None, channels: int | None = None) -> "InputSpec":
        """Return a copy with user overrides applied (``None`` keeps the current value; one mean or std value
        stands for every channel)."""
        if isinstance(size, numbers.Integral):
            size = (size, size)
        if size is not None and (len(tuple(size)) != 2 or not all(_positive_int(v) for v in size)):
            raise ConfigError(f"input size: expected a positive number of pixels, got {size!r}")
        problem = next((convention_problem("input_size", v) for v in size or () if convention_problem("input_size", v)),
                       None)
        if problem:
            raise ConfigError(f"input size: {problem}")
        return InputSpec(
            size=tuple(size) if size is not None else self.size,  # type: ignore[arg-type]
            mean=_per_channel(mean, "mean") if mean is not None else self.mean,
            std=_per_channel(std, "std") if std is not None else self.std,
            interpolation=self.interpolation,
            channels=channels if channels is not None else self.channels,
        )

    def describe(self) -> dict[str, Any]:
        """size, mean, std (and ``channels`` for a grey model): how the catalogue and digests record it; RGB
        models leave ``channels`` out, so what was recorded before grey models existed stays the same."""
        out: dict[str, Any] = {"size": list(self.size), "mean": list(self.mean), "std": list(self.std)}
        if self.channels != 3:
            out["channels"] = self.channels
        return out


def _per_channel(values: tuple[float, ...], name: str) -> tuple[float, float, float]:
    """Three floats from three values, or from one repeated (finite; a std above zero)."""
    try:  # numpy or torch scalars as plain floats; text and the like stay as they are, for the message
        values = tuple(v if isinstance(v, (str, bytes, bool)) else float(v) for v in values)
    except (TypeError, ValueError):
        pass
    problem = convention_problem(name, values)
    if problem:
        raise ConfigError(f"{name}: {problem}")
    return values * 3 if len(values) == 1 else values  # type: ignore[return-value]


def _positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def convention_problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` as an input convention's ``name`` (``mean``, ``std`` or ``input_size``), else
    None: a mean or std is three numbers (or one, for every channel), finite, and a std above zero; an input size
    a positive integer. The one check the command line, manifests (gifindex.manifest), the Python API
    (``InputSpec.with_overrides``) and a model folder's ``pretrained_cfg`` share."""
    if name == "input_size":
        from ..manifest import MAX_INPUT_SIZE

        if not _positive_int(value):
            return f"expected a positive integer, got {value!r}"
        return None if value <= MAX_INPUT_SIZE else f"{value} px is above the {MAX_INPUT_SIZE} px limit"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or len(value) not in (1, 3) or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        return f"expected three numbers (or one, for every channel), got {shown}"
    if not all(math.isfinite(v) for v in value):
        return f"expected finite numbers, got {list(value)}"
    if "std" in name and not all(v > 0 for v in value):
        return f"a standard deviation must be above zero, got {list(value)}"
    return None


def pretrained_cfg_problem(cfg: dict[str, Any]) -> str | None:
    """What is wrong with the input convention a timm ``pretrained_cfg`` records (``field: why``), else None: its
    mean and std as :func:`convention_problem` says, its input size [channels, height, width] of positive integers.
    Shared by a Hugging Face folder's config.json and a timm model saved whole."""
    for name in ("mean", "std"):
        problem = convention_problem(name, cfg[name]) if cfg.get(name) is not None else None
        if problem:
            return f"{name}: {problem}"
    size = cfg.get("input_size")
    if size is not None and (not isinstance(size, (list, tuple)) or len(size) != 3 or
                             any(convention_problem("input_size", v) for v in size)):
        return f"input_size: expected [channels, height, width], three positive integers, got {size!r}"
    return None


def input_channels(module: nn.Module, size: tuple[int, int]) -> int:
    """1 when ``module`` reads a single grey channel, else 3. Read from its first weight, the input layer in
    registration order (timm, torchvision and hand-written nets alike): a convolution taking three channels is
    RGB; one taking one channel, or, for a network that flattens its input first, a linear layer taking H x W
    features, is grey. The first weight may be another layer registered first (a head declared before the stem):
    unless it is a 3-channel convolution, the model is run once, in eval mode, on one image of the guessed kind,
    and on the other kind if that fails."""
    first = next((p for p in module.parameters() if p.ndim in (2, 4)), None)
    if first is None or (first.ndim == 4 and first.shape[1] == 3):
        return 3
    grey = first.shape[1] == 1 if first.ndim == 4 else first.shape[1] == size[0] * size[1]
    guess, other = (1, 3) if grey else (3, 1)
    if _runs_on(module, size, guess) or not _runs_on(module, size, other):
        return guess
    return other


def _runs_on(module: nn.Module, size: tuple[int, int], channels: int) -> bool:
    """Whether ``module`` runs on one image of ``channels`` x ``size`` (eval mode, no gradient; modes restored)."""
    import torch

    param = next(iter(module.parameters()))
    dtype = param.dtype if param.is_floating_point() else torch.float32
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(1, channels, *size, device=param.device, dtype=dtype))
        return True
    except Exception:  # noqa: BLE001 - any failure means the model does not take such images
        return False
    finally:
        for sub, mode in modes:
            sub.training = mode


@dataclass
class LoadedModel:
    """A model ready to be signed: module in eval mode, its input spec, and where it came from."""

    module: nn.Module
    spec: InputSpec
    ref: str
    name: str
    source: str  # "timm", "torchvision", "taskonomy", "hf-hub", "file"
    arch: str | None = None
    weights_sha256: str | None = None
    num_outputs: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Built:
    """What a model source returns: a constructed module with what is known about its weights and input."""

    module: nn.Module
    spec: InputSpec
    arch: str
    weights_sha256: str | None
    meta: dict[str, Any]


def read_weights(weights: Any, trust: bool) -> tuple[dict[str, torch.Tensor], str]:
    """``(state_dict, sha256)`` from a ``--weights`` path, or passed through when already read."""
    if isinstance(weights, tuple):
        return weights
    return read_state_dict(weights, trust=trust)
