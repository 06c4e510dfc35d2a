"""Compressed signatures: every curve point randomly projected, l2-normalised, concatenated.

With s = concat_k,t( P g^k(t) / ||P g^k(t)|| ) / sqrt(K*T), the signature has unit norm and
1 - <s_a, s_b> is the mean of 1 - cos over the projected points, which approximates the exact distance
(Johnson-Lindenstrauss: each cosine is preserved up to O(1/sqrt(proj_dim))). The projection is a dense
Gaussian matrix, generated in row blocks from (seed, block) so it is identical on every machine and
never needs to be stored; blocks are cached while they fit in a modest memory budget.

Before projecting, curve point i is multiplied element-wise by its own seeded random sign vector s_i
(an orthogonal map, so exact cosines are unchanged). Without it, the K*T points of a model, which are
strongly alike, would all meet the same projection errors, and those errors would add up instead of
averaging out; with it, the errors of different points are uncorrelated, so the distance error shrinks
like 1/sqrt(K*T*proj_dim) instead of 1/sqrt(proj_dim) (measured: tools/bench/compression.py).

A curve point that is exactly zero (a model flat there: dead ReLUs on a dark path start, a one-output model's
centred output) has no direction. The exact distance counts two such points as equal (cos 1) and one against a
non-zero point as unrelated (cos 0); from signature revision 2 on, the point becomes one fixed, seeded unit
direction, so the inner product keeps both conventions (the second up to the projection's error) and the
signature keeps unit norm. Revision 1 (indexes made before) left it at zero.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .config import SignatureConfig

BLOCK_ROWS = 4096
CACHE_BYTES = 512 * 2**20


@lru_cache(maxsize=4096)
def _block(seed: int, block: int, rows: int, proj_dim: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + block) % (2**63 - 1))
    return torch.randn(rows, proj_dim, generator=generator, dtype=torch.float32)


class Projection:
    """The index's seeded random projection R^D -> R^p (Gaussian entries; scale is irrelevant to cosines)."""

    def __init__(self, input_dim: int, proj_dim: int, seed: int):
        self.input_dim, self.proj_dim, self.seed = int(input_dim), int(proj_dim), int(seed)

    def block(self, index: int) -> torch.Tensor:
        rows = min(BLOCK_ROWS, self.input_dim - index * BLOCK_ROWS)
        return _block(self.seed, index, rows, self.proj_dim)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """Project (N, D) points to (N, p), accumulating over row blocks of the matrix in float32."""
        if points.shape[-1] != self.input_dim:
            raise ValueError(f"points have dimension {points.shape[-1]}, projection expects {self.input_dim}")
        points = points.to(torch.float32)
        out = torch.zeros(points.shape[0], self.proj_dim, dtype=torch.float32, device=points.device)
        for index, start in enumerate(range(0, self.input_dim, BLOCK_ROWS)):
            block = self.block(index).to(points.device)
            out += points[:, start:start + block.shape[0]] @ block
        if self.input_dim * self.proj_dim * 4 > CACHE_BYTES:
            _block.cache_clear()
        return out


def projection_for(config: "SignatureConfig") -> Projection:
    """The random projection an index with this configuration uses (seeded by config.seed)."""
    return Projection(config.input_dim, config.proj_dim, config.seed)


@lru_cache(maxsize=4)
def point_signs(seed: int, points: int, dim: int) -> torch.Tensor:
    """The (points, dim) matrix of +-1 that decorrelates the projection errors of different curve points."""
    generator = torch.Generator().manual_seed((int(seed) * 7_368_787 + 911) % (2**63 - 1))
    bits = torch.randint(0, 2, (points, dim), generator=generator, dtype=torch.int8)
    return bits.mul_(2).sub_(1)


def compress(curves: torch.Tensor, projection: Projection, zero_direction: bool = True) -> np.ndarray:
    """Curves (K, T, D) -> float32 signature of length K*T*p (see module docstring); ``zero_direction``: a zero
    point becomes :func:`flat_direction` (revision 2), else it stays zero (revision 1)."""
    points = curves.reshape(-1, curves.shape[-1]).to(torch.float32)
    points = points * point_signs(projection.seed, points.shape[0], points.shape[1]).to(points.device)
    return unit_points(projection(points), zero_direction)   # a zero point projects to exactly zero


@lru_cache(maxsize=16)
def flat_direction(dim: int) -> torch.Tensor:
    """The fixed unit vector (dim,) a zero point becomes: seeded, the same on every machine and for every index."""
    generator = torch.Generator().manual_seed(20_231_001 + int(dim))
    vector = torch.randn(int(dim), generator=generator, dtype=torch.float64)
    return vector / torch.linalg.vector_norm(vector)


def unit_points(points: torch.Tensor, zero_direction: bool = True) -> np.ndarray:
    """(P, d) points -> each l2-normalised, scaled by 1/sqrt(P), flattened to float32: a signature part whose
    inner products are the mean cosine over the points. A zero point becomes :func:`flat_direction`
    (``zero_direction``, revision 2) or stays zero (revision 1)."""
    points = points.double().cpu()
    norms = torch.linalg.vector_norm(points, dim=1, keepdim=True)
    flat = flat_direction(points.shape[1]) if zero_direction else torch.zeros(points.shape[1], dtype=torch.float64)
    unit = torch.where(norms > 0, points / norms.clamp_min(1e-300), flat.expand_as(points))
    return (unit / np.sqrt(points.shape[0])).reshape(-1).float().numpy()
