"""What a model is on its way to being signed: built (``Built``, by a model source) and then loaded
(``LoadedModel``: frozen, on its device, with the input convention it was trained with)."""
from __future__ import annotations

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
        if isinstance(size, int):
            size = (size, size)
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
    """Three floats from three values, or from one repeated."""
    values = tuple(float(v) for v in values)
    if len(values) not in (1, 3):
        raise ConfigError(f"{name}: expected three values (or one for every channel), got {len(values)}")
    return values * 3 if len(values) == 1 else values  # type: ignore[return-value]


def input_channels(module: nn.Module, size: tuple[int, int]) -> int:
    """1 when ``module`` reads a single grey channel, else 3. Read from its first weight, the input layer in
    registration order (timm, torchvision and hand-written nets alike): a convolution taking one channel, or, for
    a network that flattens its input first, a linear layer taking H x W features. Nothing is run."""
    for param in module.parameters():
        if param.ndim == 4:
            return 1 if param.shape[1] == 1 else 3
        if param.ndim == 2:
            return 1 if param.shape[1] == size[0] * size[1] else 3
    return 3


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
