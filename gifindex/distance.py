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
    shape_a, shape_b = np.shape(curves_a), np.shape(curves_b)
    if len(shape_a) == len(shape_b) and shape_a != shape_b:   # (4, 4, D) against (2, 8, D): other curve points
        raise ValueError(f"curves differ in shape: {shape_a} vs {shape_b}; were they signed with the same "
                         "configuration?")
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


# Compressed signatures are unit vectors: their distance is 1 - <a, b>, clipped to [0, 2] (float64). Stored in
# float16, a signature's norm is 1 only to ~1e-4, so the same signature twice is set to 0 exactly (d(M, M) = 0).
def signature_distance(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Approximate ModelGiF distance of two compressed signatures: 1 - <s_a, s_b>, clipped to [0, 2]."""
    return float(signature_distances(np.asarray(sig_a)[None], sig_b)[0])


def signature_distances(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Distances of each row of ``vectors`` (n, dim) to one ``query`` signature (dim,)."""
    v = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    d = np.clip(1.0 - v @ q, 0.0, 2.0)
    d[np.all(v == q, axis=1)] = 0.0
    return d


def distance_matrix(vectors: np.ndarray) -> np.ndarray:
    """All pairwise distances of the rows of ``vectors``: float64, symmetric, zero diagonal (and zero between
    equal rows: the same model named twice)."""
    v = np.asarray(vectors, dtype=np.float64)
    d = np.clip(1.0 - v @ v.T, 0.0, 2.0)
    d = (d + d.T) / 2
    if len(v):
        _, group = np.unique(v, axis=0, return_inverse=True)
        group = group.reshape(-1)
        d[group[:, None] == group[None, :]] = 0.0
    np.fill_diagonal(d, 0.0)
    return d


def centred_cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - Pearson correlation of two feature vectors, in [0, 2] (output-based methods' exact distance);
    a constant vector is at 0 from another constant one and 1 from anything else."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    a, b = a - a.mean(), b - b.mean()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0 if na == nb else 1.0
    return float(np.clip(1.0 - a @ b / (na * nb), 0.0, 2.0))
