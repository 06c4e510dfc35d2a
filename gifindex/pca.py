"""PCA for long signatures: a FAISS PCAMatrix trained by randomised SVD (used by search and the tree)."""
from __future__ import annotations

import faiss
import numpy as np
import torch

PCA_TRAIN = 8192  # rows a PCA is trained on at most (FAISS uses the n x n Gram matrix when n < dim)


def fit_pca(pca: faiss.PCAMatrix, x: np.ndarray, centre: bool = True) -> None:
    """Train a FAISS PCAMatrix by randomised SVD (torch; seconds at 8,192 x 16,384 where FAISS's exact
    eigendecomposition takes minutes on a small CPU). Deterministic; the global torch RNG is untouched.
    ``centre=False``: the top right singular vectors of ``x`` itself (mean zero), so that inner products of
    projections approximate inner products of the vectors, not of their deviations from the mean."""
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    mean = x.mean(0) if centre else torch.zeros(x.shape[1])
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        _, sv, v = torch.svd_lowrank(x - mean, q=min(pca.d_out + 16, *x.shape), niter=3)
    finally:
        torch.random.set_rng_state(generator_state)
    d_out = pca.d_out
    components = v[:, :d_out].T.contiguous()                      # (d_out, d_in)
    if components.shape[0] < d_out:                               # fewer samples than d_out: pad with zeros
        components = torch.cat([components, torch.zeros(d_out - components.shape[0], pca.d_in)])
        sv = torch.cat([sv, torch.zeros(d_out - len(sv))])
    faiss.copy_array_to_vector(mean.numpy().astype(np.float32), pca.mean)
    faiss.copy_array_to_vector((sv[:d_out] ** 2 / max(len(x) - 1, 1)).numpy().astype(np.float32), pca.eigenvalues)
    faiss.copy_array_to_vector(components.numpy().ravel().astype(np.float32), pca.PCAMat)
    pca.prepare_Ab()
    pca.is_trained = True
