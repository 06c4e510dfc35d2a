"""Output methods: features are a K x K matrix of how the model's outputs on pairs of probes relate.

``sac`` (cosine matrix of the outputs, on CutMix probes by default: SAC, Guan et al. 2022) and ``rsa``
(representational dissimilarity matrix, 1 - Pearson of the outputs: Dwivedi & Roig 2019). The features
are the upper triangle (K*(K-1)/2 values); the distance is 1 - the Pearson correlation of two models'
triangles. Signatures are the triangles centred and l2-normalised, so 1 - <s_a, s_b> is that distance
(up to the float16 the index stores). Both papers compare their matrices otherwise (SAC: the mean absolute
difference; RSA: Spearman's rank correlation); gifindex uses Pearson for both, which an inner-product index
holds exactly, so these baselines are adaptations (a monotone but non-linear change of an RDM moves the
distance here, not under Spearman).
"""
from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..adapter import SharedSpaceAdapter
from ..distance import centred_cosine_distance
from ..errors import SignatureError
from .base import Method, ProgressFn
from .registry import register

if TYPE_CHECKING:
    from ..config import SignatureConfig
    from ..probes import Probes


class OutputMethod(Method):
    """Features are the upper triangle of ``matrix(outputs)``; at least three probes make a comparison."""

    min_probes = 3
    unused = ("steps", "rule", "mode", "output", "baseline", "proj_dim")   # no gradients, no paths, no projection

    @abstractmethod
    def matrix(self, out: torch.Tensor) -> torch.Tensor:
        """K x K matrix of the model's (K, N) outputs on the probes."""

    def passes(self, config: "SignatureConfig") -> int:
        return config.num_probes

    def signature_dim(self, config: "SignatureConfig") -> int:
        return config.num_probes * (config.num_probes - 1) // 2

    def compute(self, adapter: SharedSpaceAdapter, probes: "Probes", config: "SignatureConfig",
                batch_size: int | None, device: str | torch.device, progress: ProgressFn | None) -> torch.Tensor:
        out = outputs(adapter, probes, batch_size=batch_size, device=device, progress=progress)
        return _upper(self.matrix(out)).float().view(1, -1)

    def compress(self, feats: torch.Tensor, config: "SignatureConfig") -> np.ndarray:
        vec = feats.reshape(-1).double()
        vec = vec - vec.mean()
        norm = torch.linalg.vector_norm(vec)
        vec = vec / norm if norm > 0 else vec
        return vec.float().numpy()

    def distance(self, feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
        return centred_cosine_distance(feats_a, feats_b)

    def flat_reason(self, feats: torch.Tensor) -> str | None:
        vec = torch.as_tensor(feats).reshape(-1).double()
        if bool((vec == vec[0]).all()):
            return (f"its {self.name} matrix is constant: its outputs relate alike on every pair of probes (a constant "
                    "output; a one-output model gives rsa nothing to compare, and sac nothing unless the output "
                    "changes sign); sign it with a gradient method (modelgif)")
        return None


@register
class SAC(OutputMethod):
    name = "sac"
    summary = "cosine matrix of the outputs on CutMix probes (probe kind cutmix unless given)"
    default_probe_kind = "cutmix"  # SAC's fingerprint is defined on CutMix samples

    def matrix(self, out: torch.Tensor) -> torch.Tensor:
        return sac_matrix(out)


@register
class RSA(OutputMethod):
    name = "rsa"
    summary = "representational dissimilarity matrix of the outputs"

    def matrix(self, out: torch.Tensor) -> torch.Tensor:
        return rdm(out)


@torch.no_grad()
def outputs(adapter: SharedSpaceAdapter, probes: "Probes", batch_size: int | None = 32,
            device: str | torch.device = "cpu", progress: ProgressFn | None = None) -> torch.Tensor:
    """The model's flattened outputs on the probes: (K, N) float64."""
    adapter = adapter.to(device).eval()
    step = batch_size or probes.num_probes
    out = []
    for start in range(0, probes.num_probes, step):
        out.append(adapter.logits(probes.images[start:start + step].to(device)).double().cpu())
        if progress is not None:
            progress(out[-1].shape[0])
    result = torch.cat(out)
    if not torch.isfinite(result).all():
        raise SignatureError("model output is NaN or Inf on the probes; the model is refused")
    return result


def _upper(matrix: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.triu_indices(matrix.shape[0], matrix.shape[1], offset=1)
    return matrix[rows, cols]


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return torch.where(norms > 0, x / norms.clamp_min(1e-300), torch.zeros_like(x))


def sac_matrix(out: torch.Tensor) -> torch.Tensor:
    """K x K cosine similarity of the output vectors (SAC's sample correlation matrix)."""
    unit = _unit_rows(out.double())
    return unit @ unit.T


def rdm(out: torch.Tensor) -> torch.Tensor:
    """K x K representational dissimilarity matrix: 1 - Pearson correlation of the output vectors."""
    centred = out.double() - out.double().mean(dim=1, keepdim=True)
    unit = _unit_rows(centred)
    return 1.0 - unit @ unit.T
