"""Where a suspect's input gradients lie: inside the span of the owner's, as a copy's under a new head do.

A copy of the owner under a new head (transfer) keeps the owner's body: at an image x its logits are a new linear
map of the body's features, so its input Jacobian (one row per output: d logit / d pixel) is a linear mix of the
body's, and those rows lie, to the extent the new head reads what the owner's head reads, in the span of the
owner's own Jacobian rows. An independent model's gradients point elsewhere: in a space of thousands of pixels, a
span of ten rows holds a chance share of them, more for models of one architecture (their gradients share a
texture), which the calibration references measure. The share is read on a few of the owner's images and is
independent of how the suspect labels its outputs, which is what a suspect of another label set needs
(docs/results.md 6.2q). It sees a shared body, not a copied function: a student of another architecture has
gradients of its own.

Each Jacobian row (per-image centred logits: a softmax ignores a shift) is count-sketched to ``SKETCH_DIM``
coordinates (each pixel adds, with a seeded sign, to one seeded coordinate), which keeps inner products on average
and bounds what a fingerprint stores whatever the resolution.
"""
from __future__ import annotations

import torch

from ..adapter import SharedSpaceAdapter
from ..models.spec import LoadedModel

SKETCH_DIM = 512  # coordinates a Jacobian row is sketched to
GRADIENT_IMAGES = 32  # owner images at which the spans are compared
MAX_ROWS = 16  # outputs per image whose gradients are taken (the model's most probable ones above that)
SKETCH_SEED = 20_231_001


def sketch(rows: torch.Tensor, dim: int = SKETCH_DIM, seed: int = SKETCH_SEED) -> torch.Tensor:
    """(..., D) -> (..., dim): a count sketch, the same for every model (seeded by ``seed`` and D)."""
    width = rows.shape[-1]
    gen = torch.Generator().manual_seed(seed + width)
    bucket = torch.randint(0, dim, (width,), generator=gen)
    sign = torch.randint(0, 2, (width,), generator=gen).to(rows.dtype) * 2 - 1
    flat = rows.reshape(-1, width) * sign
    out = torch.zeros(flat.shape[0], dim, dtype=rows.dtype).index_add_(1, bucket, flat)
    return out.reshape(*rows.shape[:-1], dim)


def sketched_jacobian(model: LoadedModel | SharedSpaceAdapter, images: torch.Tensor, device: str = "cpu",
                      max_rows: int = MAX_ROWS, batch_size: int = 8) -> torch.Tensor:
    """(M, k, SKETCH_DIM) float64: at each image (shared space, (M, 3, R, R) in [0, 1]), the sketched input gradients
    of the per-image centred logits of its k = min(C, ``max_rows``) most probable outputs, most probable first (all of
    them for a model of at most ``max_rows`` outputs; a span does not depend on the order). One backward pass per
    rank: the cost is bounded however many outputs the model has. ``batch_size`` images at a time bound the memory
    the backward passes hold."""
    adapter = SharedSpaceAdapter.of(model).to(device).eval()
    return torch.cat([_sketched_jacobian(adapter, images[i:i + batch_size], device, max_rows)
                      for i in range(0, len(images), batch_size)])


def _sketched_jacobian(adapter: SharedSpaceAdapter, images: torch.Tensor, device: str, max_rows: int) -> torch.Tensor:
    with torch.enable_grad():
        x = images.to(device).clone().requires_grad_(True)
        logits = adapter.logits(x).float()
        centred = logits - logits.mean(1, keepdim=True)
        ranked = logits.argsort(1, descending=True)[:, :min(max_rows, logits.shape[1])]
        rows = []
        for r in range(ranked.shape[1]):  # each image's r-th most probable output: its gradient is the image's own
            grad, = torch.autograd.grad(centred.gather(1, ranked[:, r:r + 1]).sum(), x,
                                        retain_graph=r < ranked.shape[1] - 1)
            rows.append(grad.flatten(1))
    return sketch(torch.stack(rows, 1).double().cpu())


def row_bases(jacobian: torch.Tensor) -> torch.Tensor:
    """(M, k, d) sketched Jacobians -> (M, d, k) orthonormal bases of each image's row span (columns beyond its rank
    are zero, so they add nothing to a projection)."""
    u, s, _ = torch.linalg.svd(jacobian.transpose(1, 2), full_matrices=False)
    tol = s.amax(1, keepdim=True).clamp(min=1e-30) * 1e-6
    return (u * (s > tol).unsqueeze(1)).float()


def span_share(jacobian: torch.Tensor, bases: torch.Tensor) -> float | None:
    """The share of the sketched Jacobian rows' energy (``jacobian`` (M, C', d)) that lies inside the row spans
    ``bases`` (M, d, k), image by image, averaged over the images whose rows are not all zero (None: none are)."""
    energy = (jacobian ** 2).sum((1, 2))
    used = energy > 0
    if not bool(used.any()):
        return None
    inside = (torch.einsum("mcd,mdk->mck", jacobian[used], bases[used].double()) ** 2).sum((1, 2))
    return float((inside / energy[used]).mean())
