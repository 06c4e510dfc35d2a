"""One entry point from a loaded model to its compressed signature vector."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .compress import projection_for
from .curves import ProgressFn
from .methods import sign

if TYPE_CHECKING:
    from .config import SignatureConfig
    from .models.spec import LoadedModel
    from .probes import Probes

__all__ = ["projection_for", "signature"]


def signature(model: "LoadedModel", config: "SignatureConfig", probes: "Probes", batch_size: int | None = 32,
              device: str | torch.device = "cpu", progress: ProgressFn | None = None) -> np.ndarray:
    """Sign a model under config.method (ModelGiF: its curves, compressed to a unit-norm float32 vector of
    K*T*proj_dim; baselines: see gifindex.methods)."""
    return sign(model, probes, config, batch_size=batch_size, device=device, progress=progress)
