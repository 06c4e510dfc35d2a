"""Which device runs the models: a name torch knows and this machine has, checked once before any work, so a
missing GPU is one clear line rather than a driver error from deep inside the first model."""
from __future__ import annotations

from typing import Any

from .errors import GifindexError


def check_device(device: Any, option: str = "device") -> str:
    """``device`` (cpu, cuda, cuda:N, or a torch.device) as a string, else a GifindexError naming ``option`` (the
    command line passes ``--device``)."""
    import torch  # lazy: heavy, and not needed to parse or print help

    use = (lambda d: f"{option} {d}") if option.startswith("-") else (lambda d: f"{option}={d!r}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise GifindexError(f"unknown {option} {str(device)!r}: expected cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise GifindexError(f"{option} {str(device)!r} is not supported: expected cpu, cuda or cuda:N")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise GifindexError(f"{use(str(device))} asked for, but CUDA is not available here; use {use('cpu')}")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise GifindexError(f"{use(str(device))}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return str(device)
