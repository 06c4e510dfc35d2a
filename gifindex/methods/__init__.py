"""Signature methods: ModelGiF and the baselines it is compared with, behind one interface.

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
|            | meant for `cutmix` probes, Guan et al. 2022)                         | the two matrices             |
| `rsa`      | upper triangle of the K x K representational dissimilarity matrix,   | 1 - Pearson correlation of   |
|            | 1 - Pearson(output_i, output_j) (Dwivedi & Roig 2019)                | the two RDMs                 |

Gradient features are compressed exactly like ModelGiF curves (seeded sign flip + random projection per
point, gifindex.compress). Output features are short (K*(K-1)/2) and stored as they are: centred and
l2-normalised, so the inner product of two signatures is the Pearson correlation of the two matrices.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..adapter import SharedSpaceAdapter

if TYPE_CHECKING:
    from ..config import SignatureConfig
    from ..models.spec import LoadedModel
    from ..probes import Probes

GRADIENT_METHODS = ("modelgif", "saliency", "ig")
OUTPUT_METHODS = ("sac", "rsa")
ProgressFn = Callable[[int], None]


def _adapter(model: "LoadedModel | SharedSpaceAdapter", config: "SignatureConfig") -> SharedSpaceAdapter:
    return model if isinstance(model, SharedSpaceAdapter) else \
        SharedSpaceAdapter(model.module, model.spec, config.output)


def passes(config: "SignatureConfig") -> int:
    """Images pushed through the model per signature (what a progress bar counts)."""
    if config.method in ("modelgif", "ig"):
        return config.num_probes * config.steps
    return config.num_probes


def saliency_maps(adapter: SharedSpaceAdapter, probes: "Probes", batch_size: int | None = 32,
                  device: str | torch.device = "cpu", progress: ProgressFn | None = None) -> torch.Tensor:
    """grad_x M(x) at every probe x (no path): (K, 3*R*R) float32."""
    from ..curves import gradient_field

    adapter = adapter.to(device).eval()
    targets = None
    if adapter.output == "top-logit":
        targets = adapter.predict(probes.images.to(device))
    field = gradient_field(adapter, probes, torch.ones(1), batch_size=batch_size, targets=targets,
                           device=device, progress=progress)
    return field.reshape(probes.num_probes, -1)


@torch.no_grad()
def outputs(adapter: SharedSpaceAdapter, probes: "Probes", batch_size: int | None = 32,
            device: str | torch.device = "cpu", progress: ProgressFn | None = None) -> torch.Tensor:
    """The model's flattened outputs on the probes: (K, N) float64."""
    adapter = adapter.to(device).eval()
    step = batch_size or probes.num_probes
    out = []
    for start in range(0, probes.num_probes, step):
        out.append(adapter.logits(probes.images[start:start + step].to(device)).double().cpu())
        if progress is not None:
            progress(out[-1].shape[0])
    result = torch.cat(out)
    if not torch.isfinite(result).all():
        from ..errors import SignatureError

        raise SignatureError("model output is NaN or Inf on the probes; the model is refused")
    return result


def _upper(matrix: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.triu_indices(matrix.shape[0], matrix.shape[1], offset=1)
    return matrix[rows, cols]


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return torch.where(norms > 0, x / norms.clamp_min(1e-300), torch.zeros_like(x))


def sac_matrix(out: torch.Tensor) -> torch.Tensor:
    """K x K cosine similarity of the output vectors (SAC's sample correlation matrix)."""
    unit = _unit_rows(out.double())
    return unit @ unit.T


def rdm(out: torch.Tensor) -> torch.Tensor:
    """K x K representational dissimilarity matrix: 1 - Pearson correlation of the output vectors."""
    centred = out.double() - out.double().mean(dim=1, keepdim=True)
    unit = _unit_rows(centred)
    return 1.0 - unit @ unit.T


def features(model: "LoadedModel | SharedSpaceAdapter", probes: "Probes", config: "SignatureConfig",
             batch_size: int | None = 32, device: str | torch.device = "cpu",
             progress: ProgressFn | None = None) -> torch.Tensor:
    """The method's uncompressed features: (P, D) with P = K*T (modelgif), K (saliency, ig), 1 (sac, rsa)."""
    from ..curves import compute_curves

    from ..batching import resolve_batch_size

    adapter = _adapter(model, config).to(device)
    batch_size = resolve_batch_size(batch_size, adapter, config.resolution, device)
    method = config.method
    if method == "modelgif":
        curves = compute_curves(adapter, probes, config, batch_size=batch_size, device=device, progress=progress)
        return curves.reshape(-1, curves.shape[-1])
    if method == "saliency":
        return saliency_maps(adapter, probes, batch_size=batch_size, device=device, progress=progress)
    if method == "ig":
        curves = compute_curves(adapter, probes, config.replace(mode="ig"), batch_size=batch_size, device=device,
                                progress=progress)
        return curves[:, -1].contiguous()
    out = outputs(adapter, probes, batch_size=batch_size, device=device, progress=progress)
    matrix = sac_matrix(out) if method == "sac" else rdm(out)
    return _upper(matrix).float().view(1, -1)


def compress_features(feats: torch.Tensor, config: "SignatureConfig") -> np.ndarray:
    """Features -> the stored unit-norm float32 signature of length config.signature_dim."""
    if config.method in GRADIENT_METHODS:
        from ..compress import compress
        from ..signature import projection_for

        return compress(feats.reshape(feats.shape[0], 1, -1), projection_for(config))
    vec = feats.reshape(-1).double()
    vec = vec - vec.mean()
    norm = torch.linalg.vector_norm(vec)
    vec = vec / norm if norm > 0 else vec
    return vec.float().numpy()


def feature_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray,
                     method: str) -> float:
    """The exact (uncompressed) distance of two models' features under ``method``, in [0, 2]."""
    from ..distance import centred_cosine_distance, curve_distance

    if method in GRADIENT_METHODS:
        return curve_distance(feats_a, feats_b)
    return centred_cosine_distance(feats_a, feats_b)


def sign(model: "LoadedModel | SharedSpaceAdapter", probes: "Probes", config: "SignatureConfig",
         batch_size: int | None = 32, device: str | torch.device = "cpu",
         progress: ProgressFn | None = None) -> np.ndarray:
    """A model's signature under config.method (unit norm, length config.signature_dim)."""
    return compress_features(features(model, probes, config, batch_size=batch_size, device=device,
                                      progress=progress), config)


__all__ = ["GRADIENT_METHODS", "OUTPUT_METHODS", "features", "compress_features", "feature_distance", "sign",
           "saliency_maps", "outputs", "sac_matrix", "rdm", "passes"]
