"""One entry point from a loaded model to its compressed signature vector."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .compress import Projection
from .curves import ProgressFn

if TYPE_CHECKING:
    from .config import SignatureConfig
    from .models.spec import LoadedModel
    from .probes import Probes


def projection_for(config: "SignatureConfig") -> Projection:
    """The random projection an index with this configuration uses (seeded by config.seed)."""
    return Projection(config.input_dim, config.proj_dim, config.seed)


def signature(model: "LoadedModel", config: "SignatureConfig", probes: "Probes", batch_size: int | None = 32,
              device: str | torch.device = "cpu", progress: ProgressFn | None = None) -> np.ndarray:
    """Sign a model under config.method (ModelGiF: its curves, compressed to a unit-norm float32 vector of
    K*T*proj_dim; baselines: see gifindex.methods)."""
    from .methods import sign as sign_with_method

    return sign_with_method(model, probes, config, batch_size=batch_size, device=device, progress=progress)
