"""Gradient methods: features are input gradients at points of the probes' paths.

``modelgif`` (the K*T ModelGiF curve points), ``saliency`` (the input gradient at each probe) and ``ig``
(Integrated Gradients at each probe, the last curve point in ``ig`` mode). The distance is the mean of
1 - cos over the points; signatures are the points compressed like ModelGiF curves (seeded sign flip and
random projection per point, gifindex.compress), so 1 - <s_a, s_b> approximates it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..adapter import SharedSpaceAdapter
from ..compress import compress, projection_for
from ..curves import compute_curves, gradient_field
from ..distance import curve_distance
from .base import Method, ProgressFn
from .registry import register

if TYPE_CHECKING:
    from ..config import SignatureConfig
    from ..probes import Probes


class GradientMethod(Method):
    """Features are ``points(config)`` gradient points per model, compared point by point with cosines."""

    def points(self, config: "SignatureConfig") -> int:
        """Feature points per model (one per probe unless overridden)."""
        return config.num_probes

    def passes(self, config: "SignatureConfig") -> int:
        return config.num_probes

    def signature_dim(self, config: "SignatureConfig") -> int:
        return self.points(config) * config.proj_dim

    def compress(self, feats: torch.Tensor, config: "SignatureConfig") -> np.ndarray:
        return compress(feats.reshape(feats.shape[0], 1, -1), projection_for(config), config.revision >= 2)

    def distance(self, feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
        return curve_distance(feats_a, feats_b)


@register
class ModelGiF(GradientMethod):
    name = "modelgif"
    summary = "ModelGiF: the K*T curve points (integrated gradient field along each probe's path)"

    def points(self, config: "SignatureConfig") -> int:
        return config.points_per_model

    def passes(self, config: "SignatureConfig") -> int:
        return config.points_per_model

    def compute(self, adapter: SharedSpaceAdapter, probes: "Probes", config: "SignatureConfig",
                batch_size: int | None, device: str | torch.device, progress: ProgressFn | None) -> torch.Tensor:
        curves = compute_curves(adapter, probes, config, batch_size=batch_size, device=device, progress=progress)
        return curves.reshape(-1, curves.shape[-1])


@register
class Saliency(GradientMethod):
    name = "saliency"
    summary = "input gradient at each probe"
    unused = ("steps", "rule", "mode", "baseline")   # no path: the gradient at the probe itself

    def compute(self, adapter: SharedSpaceAdapter, probes: "Probes", config: "SignatureConfig",
                batch_size: int | None, device: str | torch.device, progress: ProgressFn | None) -> torch.Tensor:
        return saliency_maps(adapter, probes, batch_size=batch_size, device=device, progress=progress)


@register
class IntegratedGradients(GradientMethod):
    name = "ig"
    summary = "Integrated Gradients at each probe"
    unused = ("mode",)   # always the ig mode's last point

    def passes(self, config: "SignatureConfig") -> int:
        return config.points_per_model

    def compute(self, adapter: SharedSpaceAdapter, probes: "Probes", config: "SignatureConfig",
                batch_size: int | None, device: str | torch.device, progress: ProgressFn | None) -> torch.Tensor:
        curves = compute_curves(adapter, probes, config.replace(mode="ig"), batch_size=batch_size, device=device,
                                progress=progress)
        return curves[:, -1].contiguous()


def saliency_maps(adapter: SharedSpaceAdapter, probes: "Probes", batch_size: int | None = 32,
                  device: str | torch.device = "cpu", progress: ProgressFn | None = None) -> torch.Tensor:
    """grad_x M(x) at every probe x (no path): (K, 3*R*R) float32."""
    adapter = adapter.to(device).eval()
    targets = None
    if adapter.output == "top-logit":
        targets = adapter.predict(probes.images.to(device))
    field = gradient_field(adapter, probes, torch.ones(1), batch_size=batch_size, targets=targets,
                           device=device, progress=progress)
    return field.reshape(probes.num_probes, -1)
