"""What a signature method is: the ``Method`` interface every method implements.

A method maps a model (through the shared-space adapter) and the index's probes to *features*, a (P, D)
float tensor of points; ``compress`` turns them into the stored fixed-length unit-norm float32
signature, so that 1 - <s_a, s_b> approximates (or equals) ``distance``, the method's exact distance.
Batching and out-of-memory handling (gifindex.batching, gifindex.curves.gradient_field) and the
integration rule (gifindex.quadrature) are separate utilities that methods use.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from ..adapter import SharedSpaceAdapter
from ..batching import resolve_batch_size
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import SignatureConfig
    from ..models.spec import LoadedModel
    from ..probes import Probes

ProgressFn = Callable[[int], None]


class Method(ABC):
    """One signature method. Subclasses set ``name`` (and may change ``default_probe_kind`` and
    ``min_probes``) and implement the five operations below; ``@register`` makes them known."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    default_probe_kind: ClassVar[str] = "random"
    min_probes: ClassVar[int] = 1
    unused: ClassVar[tuple[str, ...]] = ()   # configuration fields the method never reads

    def validate(self, config: "SignatureConfig") -> None:
        """Raise ConfigError if ``config`` cannot be used with this method."""
        if config.num_probes < self.min_probes:
            raise ConfigError(f"method {self.name!r} compares the outputs on pairs of probes: it needs "
                              f"num_probes >= {self.min_probes}")

    def unused_settings(self, config: "SignatureConfig") -> list[str]:
        """The fields of ``config`` set away from their defaults that this method never reads: they change
        the configuration's hash and nothing else (``sac`` with ``output='top-logit'``), so a caller warns."""
        defaults = type(config).field_defaults()
        return [name for name in self.unused if getattr(config, name) != defaults[name]]

    @abstractmethod
    def passes(self, config: "SignatureConfig") -> int:
        """Images pushed through the model per signature (what a progress bar counts)."""

    @abstractmethod
    def signature_dim(self, config: "SignatureConfig") -> int:
        """Length of a stored signature."""

    @abstractmethod
    def compute(self, adapter: SharedSpaceAdapter, probes: "Probes", config: "SignatureConfig",
                batch_size: int | None, device: str | torch.device, progress: ProgressFn | None) -> torch.Tensor:
        """The uncompressed features (P, D) of an adapted model on the probes."""

    @abstractmethod
    def compress(self, feats: torch.Tensor, config: "SignatureConfig") -> np.ndarray:
        """Features -> the stored unit-norm float32 signature of length ``signature_dim(config)``."""

    @abstractmethod
    def distance(self, feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
        """The exact (uncompressed) distance of two models' features, in [0, 2]."""

    def flat_reason(self, feats: torch.Tensor) -> str | None:
        """Why features that say nothing about the model (it would match nothing, or everything alike) are
        refused, or None: here, features that are zero everywhere."""
        if not bool(torch.as_tensor(feats).any()):
            return "its gradient field vanishes on every probe (a constant output?)"
        return None

    def features(self, model: "LoadedModel | SharedSpaceAdapter", probes: "Probes", config: "SignatureConfig",
                 batch_size: int | str | None = 32, device: str | torch.device = "cpu",
                 progress: ProgressFn | None = None) -> torch.Tensor:
        """The features of a loaded model (or adapter); ``batch_size`` may be ``"auto"``."""
        adapter = SharedSpaceAdapter.of(model, config.output).to(device)
        batch_size = resolve_batch_size(batch_size, adapter, config.resolution, device)
        check_reproducible(adapter, probes, device)
        return self.compute(adapter, probes, config, batch_size, device, progress)


@torch.no_grad()
def check_reproducible(adapter: SharedSpaceAdapter, probes: "Probes", device: str | torch.device) -> None:
    """Refuse a model whose outputs are not a function of each image alone: run twice on the same two probes,
    and on the first alone, they must agree (to float rounding). Dropout left on (a forward that calls
    ``self.train()``), added noise, or batch norm using the batch's statistics would give a signature that is
    not the model's: the same file far from itself. Costs three forward passes of at most two images."""
    from ..errors import SignatureError

    images = probes.images[:2].to(device)
    first, again, alone = adapter.logits(images), adapter.logits(images), adapter.logits(images[:1])
    if not bool(torch.isfinite(first).all()):
        return                                   # NaN or Inf outputs are refused, with that reason, when signed
    # Relative l2 difference: float rounding (also TF32 convolutions on CUDA, whose algorithm may change with the
    # batch size) stays near 1e-3; dropout or batch statistics move outputs by tens of percent.
    limit = 2e-2 if getattr(adapter, "dtype", torch.float32) in (torch.float32, torch.float64) else 1e-1

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        if a.shape != b.shape:
            return False
        a, b = a.double(), b.double()
        return float((a - b).norm()) <= limit * max(float(a.norm()), float(b.norm()), 1e-12)

    if not close(first, again):
        raise SignatureError("its outputs differ between two runs on the same images (dropout left on, or random "
                             "noise): its signature would not be reproducible; put it in eval mode (a forward "
                             "that calls self.train() keeps dropout on)")
    if not close(first[:1], alone):
        raise SignatureError("its output for an image depends on the other images in the batch (batch norm using "
                             "the batch's statistics?): its signature would not be reproducible; put it in eval mode")
