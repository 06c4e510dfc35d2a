"""ModelGiF curves: the model's input-gradient field integrated along straight paths.

For probe x1 and baseline x0, point j of the curve is g(t_j) = sum_{i<=j} w_i F(x0 + a_i (x1 - x0)),
F = grad_x M(x) (paper Eqn 4, DESIGN section 1). The K*T path points are stacked and pushed through
the model in chunks of ``batch_size``; chunking changes the memory used, and the result only by float rounding.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .adapter import SharedSpaceAdapter, is_out_of_memory
from .batching import resolve_batch_size
from .device import check_device
from .errors import SignatureError
from .quadrature import quadrature

if TYPE_CHECKING:
    import numpy as np
    from .config import SignatureConfig
    from .models.spec import LoadedModel
    from .probes import Probes

ProgressFn = Callable[[int], None]
log = logging.getLogger(__name__)


def _gradients(adapter: SharedSpaceAdapter, points: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """d M(x) / d x for every image of the chunk (independent per image: the model is in eval mode)."""
    points = points.detach().requires_grad_(True)
    with torch.enable_grad():
        scalars = adapter(points, targets)
        if not torch.isfinite(scalars).all():
            raise SignatureError("model output is NaN or Inf on the probes; a NaN signature would poison "
                                 "search, so the model is refused")
        if not scalars.requires_grad:
            raise SignatureError("the model's output does not depend on its input (no gradient reaches the image: "
                                 "a constant output, or an input detached or cast to integers); it would match "
                                 "nothing, so the model is refused")
        (grad,) = torch.autograd.grad(scalars.sum(), points)
    if not torch.isfinite(grad).all():
        raise SignatureError("input gradients are NaN or Inf on the probes; the model is refused")
    return grad.detach()


def _out_of_memory(adapter: SharedSpaceAdapter, device: str | torch.device) -> str:
    """Why a model cannot be signed on ``device`` at all, with the native input size that sets its memory."""
    height, width = adapter.spec.size
    return (f"out of memory on {device} even with one image per batch at the model's native input size "
            f"{height}x{width} px; give a smaller --input-size if the model takes one, or a device with more memory")


def gradient_field(adapter: SharedSpaceAdapter, probes: "Probes", positions: torch.Tensor,
                   batch_size: int | None = None, targets: torch.Tensor | None = None,
                   device: str | torch.device = "cpu", progress: ProgressFn | None = None) -> torch.Tensor:
    """F at every path point x0_k + a_i (x1_k - x0_k), as a (K, T, 3, R, R) float32 tensor on the CPU.

    Points are enumerated k-major and processed in chunks of ``batch_size`` (None: all at once).
    A chunk that runs out of memory is retried at half the size, down to one image.
    """
    num_probes, steps = probes.num_probes, int(positions.shape[0])
    total = num_probes * steps
    x1 = probes.images.to(device)
    x0 = probes.baseline.to(device)
    alphas = positions.to(device=device, dtype=torch.float32)
    field = torch.empty((num_probes, steps) + tuple(probes.images.shape[1:]), dtype=torch.float32)
    flat = field.view(total, *probes.images.shape[1:])
    chunk = total if batch_size is None else max(1, int(batch_size))
    start = 0
    while start < total:
        stop = min(start + chunk, total)
        index = torch.arange(start, stop, device=device)
        k, i = index // steps, index % steps
        points = x0[k] + alphas[i].view(-1, 1, 1, 1) * (x1[k] - x0[k])
        try:
            grads = _gradients(adapter, points, None if targets is None else targets[k])
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            if chunk == 1:
                raise SignatureError(_out_of_memory(adapter, device)) from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("out of memory on %s with %d images per batch; retrying with %d (set --batch-size lower "
                        "to avoid the retries)", device, chunk, max(1, chunk // 2))
            chunk = max(1, chunk // 2)
            continue
        flat[start:stop] = grads.float().cpu()
        if progress is not None:
            progress(stop - start)
        start = stop
    if not field.any():
        raise SignatureError("the model's input gradient is zero at every probe point (an output rounded or cast, "
                             "or zero weights): its signature would match nothing, so the model is refused")
    return field


def integrate(field: torch.Tensor, weights: "np.ndarray") -> torch.Tensor:
    """Curve point j = sum_{i<=j} w_i F_i, in place on a (K, T, ...) field: per probe, float64 temporaries of one
    probe's T points, not of all K*T (bounded memory)."""
    w = torch.from_numpy(weights).to(torch.float64).view(-1, *([1] * (field.dim() - 2)))
    for k in range(field.shape[0]):
        field[k] = torch.cumsum(field[k].double() * w, dim=0).float()
    return field


def compute_curves(model: "LoadedModel | SharedSpaceAdapter", probes: "Probes", config: "SignatureConfig",
                   batch_size: int | str | None = 32, device: str | torch.device = "cpu",
                   progress: ProgressFn | None = None) -> torch.Tensor:
    """The K ModelGiF curves of a model: a (K, T, 3*R*R) float32 tensor.

    ``model`` is a LoadedModel (wrapped in the shared-space adapter with ``config.output``) or an
    adapter. Mode ``field`` returns the integrated gradients as they are; mode ``ig`` multiplies each
    point by (x1 - x0), so its last point is Integrated Gradients. ``batch_size`` is the number of path
    points per pass (None: all at once; "auto": the most that fit in free memory, see gifindex.batching).
    """
    if probes.resolution != config.resolution or probes.num_probes != config.num_probes:
        raise SignatureError(f"probes are {probes.num_probes} x {probes.resolution}px but the configuration "
                             f"asks for {config.num_probes} x {config.resolution}px")
    check_device(device)
    adapter = SharedSpaceAdapter.of(model, config.output).to(device).eval()
    batch_size = resolve_batch_size(batch_size, adapter, config.resolution, device)
    targets = None
    if adapter.output == "top-logit":
        targets = torch.cat([adapter.predict(probes.images[s:s + (batch_size or probes.num_probes)].to(device))
                             for s in range(0, probes.num_probes, batch_size or probes.num_probes)])
    rule = quadrature(config.rule, config.steps)
    positions = torch.from_numpy(rule.positions)
    field = gradient_field(adapter, probes, positions, batch_size=batch_size, targets=targets, device=device,
                           progress=progress)
    curves = integrate(field, rule.weights)
    if config.mode == "ig":
        curves = curves * (probes.images - probes.baseline).unsqueeze(1)
    return curves.reshape(config.num_probes, config.steps, -1)
