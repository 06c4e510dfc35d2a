"""``batch_size="auto"``: the largest chunk of path points that fits in the free memory of the device.

Per image, a forward+backward pass keeps intermediate activations for the backward pass; the estimate is
SAFETY x the bytes of all leaf-module outputs of one forward pass (measured once, on one image, with
forward hooks). For resnet50 at 224 px that is 133 MiB per image against a measured peak of about 65 MiB
(tools/bench/signing.py --memory): in-place ops and freed temporaries make the sum an upper bound, so
SAFETY is 1. The batch is the share ``fraction`` of the free memory divided by that, clamped to
[1, cap]. If the estimate is ever too low, ``compute_curves`` still halves a chunk that runs out of memory.
"""
from __future__ import annotations

import os

import torch

SAFETY = 1.0
DEFAULT_FRACTION = 0.5
DEFAULT_CAP = 256


def available_bytes(device: str | torch.device) -> int:
    """Free memory of the device: CUDA's free bytes, or the host's MemAvailable (Linux) / free pages."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def bytes_per_image(adapter: torch.nn.Module, resolution: int, device: str | torch.device) -> int:
    """Estimated bytes one path point needs in a forward+backward pass of the adapted model."""
    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        for tensor in (output if isinstance(output, (tuple, list)) else (output,)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()

    leaves = [m for m in adapter.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            adapter.logits(torch.zeros(1, 3, resolution, resolution, device=device))
    finally:
        for handle in handles:
            handle.remove()
    native = 3 * adapter.spec.size[0] * adapter.spec.size[1] * 4
    return int(SAFETY * (total + native))


def resolve_batch_size(batch_size: int | str | None, adapter: torch.nn.Module, resolution: int,
                       device: str | torch.device, fraction: float = DEFAULT_FRACTION,
                       cap: int = DEFAULT_CAP) -> int | None:
    """An int batch size from ``batch_size`` (an int >= 1, None for all at once, or "auto")."""
    from .errors import ConfigError

    if batch_size is None:
        return None
    if str(batch_size).lower() != "auto":
        try:
            value = int(batch_size)
        except (TypeError, ValueError):
            value = 0
        if isinstance(batch_size, bool) or value < 1 or value != batch_size and not isinstance(batch_size, str):
            raise ConfigError(f"invalid batch size {batch_size!r}: expected an integer >= 1, None (all at once) "
                              "or 'auto'")
        return value
    per_image = max(1, bytes_per_image(adapter, resolution, device))
    return max(1, min(cap, int(fraction * available_bytes(device) // per_image)))
