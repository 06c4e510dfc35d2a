"""The ModelGiF distance between two models' curves (DESIGN section 1, paper Eqn 5 divided by K*T)."""
from __future__ import annotations

import numpy as np
import torch

ArrayLike = "np.ndarray | torch.Tensor"


def _as_points(curves: "np.ndarray | torch.Tensor") -> np.ndarray:
    arr = curves.detach().cpu().numpy() if isinstance(curves, torch.Tensor) else np.asarray(curves)
    if arr.ndim < 2:
        raise ValueError(f"curves must be shaped (K, T, D) or (points, D), got {arr.shape}")
    return arr.reshape(-1, arr.shape[-1]).astype(np.float64)


def pointwise_cosine(curves_a: "np.ndarray | torch.Tensor", curves_b: "np.ndarray | torch.Tensor") -> np.ndarray:
    """cos(g_a^k(t), g_b^k(t)) for every curve point, in float64.

    Convention for degenerate points: two zero vectors are identical (cos 1); a zero vector against a
    non-zero one has cos 0.
    """
    a, b = _as_points(curves_a), _as_points(curves_b)
    if a.shape != b.shape:
        raise ValueError(f"curves differ in shape: {a.shape} vs {b.shape}; were they signed with the "
                         "same configuration?")
    norm_a = np.linalg.norm(a, axis=1)
    norm_b = np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    both_zero = (norm_a == 0) & (norm_b == 0)
    denom = np.where(norm_a * norm_b > 0, norm_a * norm_b, 1.0)
    cos = np.where(norm_a * norm_b > 0, dots / denom, 0.0)
    cos = np.where(both_zero, 1.0, cos)
    return np.clip(cos, -1.0, 1.0)


def curve_distance(curves_a: "np.ndarray | torch.Tensor", curves_b: "np.ndarray | torch.Tensor") -> float:
    """d = mean over k, t of 1 - cos(g_a^k(t), g_b^k(t)); in [0, 2], 0 for identical curves."""
    return float(np.mean(1.0 - pointwise_cosine(curves_a, curves_b)))
