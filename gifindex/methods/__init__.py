"""Signature methods: ModelGiF and the baselines it is compared with, as plug-ins behind one interface.

Every method maps a model (through the shared-space adapter) and the index's probes to *features*, a
(P, D) float tensor of points, and compresses them to a fixed-length unit-norm float32 signature s,
so that 1 - <s_a, s_b> approximates (gradient methods) or equals (output methods) the method's distance
and nearest / tree / suspect work unchanged whatever the method.

| method     | features (before compression)                                        | distance                     |
| ---        | ---                                                                  | ---                          |
| `modelgif` | the K*T ModelGiF curve points (gifindex.curves.compute_curves)       | mean 1 - cos over the points |
| `saliency` | the input gradient at each probe (K points)                          | mean 1 - cos over the probes |
| `ig`       | Integrated Gradients at each probe: last curve point in `ig` mode    | mean 1 - cos over the probes |
| `sac`      | upper triangle of the K x K cosine matrix of the outputs (SAC;        | 1 - Pearson correlation of   |
|            | on `cutmix` probes unless another kind is given, Guan et al. 2022)   | the two matrices             |
| `rsa`      | upper triangle of the K x K representational dissimilarity matrix,   | 1 - Pearson correlation of   |
|            | 1 - Pearson(output_i, output_j) (Dwivedi & Roig 2019)                | the two RDMs                 |

Modules: ``registry`` (name -> method; no torch, so the configuration and the command line can use it),
``base`` (the ``Method`` interface), ``gradient`` (modelgif, saliency, ig) and ``output`` (sac, rsa).
The functions below look the method up by name; ``feature_distance`` is THE exact distance (used by
``gifindex distance --exact``, unlearning verification and the evaluation tools).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import get_method, method_names, register

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..adapter import SharedSpaceAdapter
    from ..config import SignatureConfig
    from ..models.spec import LoadedModel
    from ..probes import Probes
    from .base import ProgressFn


def passes(config: "SignatureConfig") -> int:
    """Images pushed through the model per signature (what a progress bar counts)."""
    return get_method(config.method).passes(config)


def features(model: "LoadedModel | SharedSpaceAdapter", probes: "Probes", config: "SignatureConfig",
             batch_size: int | str | None = 32, device: "str | torch.device" = "cpu",
             progress: "ProgressFn | None" = None) -> "torch.Tensor":
    """The method's uncompressed features: (P, D) with P = K*T (modelgif), K (saliency, ig), 1 (sac, rsa)."""
    return get_method(config.method).features(model, probes, config, batch_size=batch_size, device=device,
                                              progress=progress)


def compress_features(feats: "torch.Tensor", config: "SignatureConfig") -> "np.ndarray":
    """Features -> the stored unit-norm float32 signature of length config.signature_dim."""
    return get_method(config.method).compress(feats, config)


def feature_distance(feats_a: "torch.Tensor | np.ndarray", feats_b: "torch.Tensor | np.ndarray",
                     method: str) -> float:
    """The exact (uncompressed) distance of two models' features under ``method``, in [0, 2]."""
    return get_method(method).distance(feats_a, feats_b)


def sign(model: "LoadedModel | SharedSpaceAdapter", probes: "Probes", config: "SignatureConfig",
         batch_size: int | str | None = 32, device: "str | torch.device" = "cpu",
         progress: "ProgressFn | None" = None) -> "np.ndarray":
    """A model's signature under config.method (unit norm, length config.signature_dim)."""
    method = get_method(config.method)
    return method.compress(method.features(model, probes, config, batch_size=batch_size, device=device,
                                           progress=progress), config)


__all__ = ["compress_features", "feature_distance", "features", "get_method", "method_names", "passes", "register",
           "sign"]
