"""What a model is on its way to being signed: built (``Built``, by a model source) and then loaded
(``LoadedModel``: frozen, on its device, with the input convention it was trained with)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from gifindex.models.files import read_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """The native input of a model: spatial size (H, W) and per-channel normalisation.

    A model expects ``(x - mean) / std`` of an RGB image in [0, 1] resized to ``size``.
    Taskonomy's [-1, 1] convention is mean 0.5, std 0.5.
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def with_overrides(self, size: int | tuple[int, int] | None = None,
                       mean: tuple[float, ...] | None = None,
                       std: tuple[float, ...] | None = None) -> "InputSpec":
        """Return a copy with user overrides applied (``None`` keeps the current value)."""
        if isinstance(size, int):
            size = (size, size)
        return InputSpec(
            size=tuple(size) if size is not None else self.size,  # type: ignore[arg-type]
            mean=tuple(float(m) for m in mean) if mean is not None else self.mean,  # type: ignore[arg-type]
            std=tuple(float(s) for s in std) if std is not None else self.std,  # type: ignore[arg-type]
            interpolation=self.interpolation,
        )


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
