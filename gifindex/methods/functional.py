"""``modelgif+outputs``: the ModelGiF curves and the model's outputs along the same paths, in one signature.

A student distilled or extracted into another architecture copies its teacher's *outputs*, not its
gradient field, so on ModelGiF curves alone it sits as far from its teacher as an unrelated model. This
method adds, for every curve point (probe k, step t), the model's output at that path point
x0 + a_t (x1 - x0): centred (so a constant shift or the softmax temperature does not matter) and embedded
in ``OUTPUT_DIM`` dimensions by a seeded map chosen by the output size N (orthonormal rows when
N <= OUTPUT_DIM, so cosines are exact; otherwise a Gaussian map, after per-point random signs from signature
revision 2 on, so that its errors on the K*T points average out: the "exact" distance of models with more than
OUTPUT_DIM outputs is this embedding's, within 0.015 of the centred outputs' own in the output part at K*T = 64,
where one map for all points was off by up to 0.045). A one-output model's
centred output is zero at every point: its output part then agrees with any other one-output model's and with
nothing else (the zero-point convention of gifindex.compress). Models whose outputs have different
sizes get independent random maps, so their output parts are near-orthogonal: their outputs mean
different things. The distance is

    d = (1 - OUTPUT_WEIGHT) * mean_p (1 - cos(g_a(p), g_b(p))) + OUTPUT_WEIGHT * mean_p (1 - cos(o_a(p), o_b(p)))

and the signature [sqrt(1 - w) * s_gradient, sqrt(w) * s_output] keeps 1 - <s_a, s_b> equal to it up to the
gradient part's compression error. Cost: K*T extra forward passes (no backward), K*T*OUTPUT_DIM more floats.
Features are (2P, D): P gradient rows, then P output rows zero-padded to the same width D.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..adapter import SharedSpaceAdapter
from ..compress import compress, point_signs, projection_for, unit_points
from ..curves import compute_curves
from ..distance import curve_distance
from ..quadrature import quadrature
from .base import Method, ProgressFn
from .registry import register

if TYPE_CHECKING:
    from ..config import SignatureConfig
    from ..probes import Probes

OUTPUT_WEIGHT = 0.5
OUTPUT_DIM = 32


@lru_cache(maxsize=64)
def output_map(size: int, seed: int) -> torch.Tensor:
    """The (size, OUTPUT_DIM) embedding of centred outputs of this size: orthonormal rows when size <= OUTPUT_DIM."""
    generator = torch.Generator().manual_seed((int(seed) * 1_000_033 + int(size) * 7919 + 17) % (2**63 - 1))
    gaussian = torch.randn(max(size, OUTPUT_DIM), OUTPUT_DIM, generator=generator, dtype=torch.float64)
    if size <= OUTPUT_DIM:
        q, _ = torch.linalg.qr(gaussian[:OUTPUT_DIM].T)  # (OUTPUT_DIM, OUTPUT_DIM) orthogonal
        return q[:, :size].T.contiguous()
    return gaussian[:size]


@torch.no_grad()
def path_outputs(adapter: SharedSpaceAdapter, probes: "Probes", config: "SignatureConfig", batch_size: int | None,
                 device: str | torch.device) -> torch.Tensor:
    """The model's centred, embedded outputs at every path point: (K*T, OUTPUT_DIM) float32."""
    positions = torch.from_numpy(quadrature(config.rule, config.steps).positions).to(torch.float32)
    x0, x1 = probes.baseline, probes.images
    points = (x0[:, None] + positions.view(1, -1, 1, 1, 1) * (x1 - x0)[:, None]).reshape(-1, *x1.shape[1:])
    step = batch_size or len(points)
    outs = torch.cat([adapter.logits(points[i:i + step].to(device)).double().cpu()
                      for i in range(0, len(points), step)])
    outs = outs - outs.mean(dim=1, keepdim=True)
    if outs.shape[1] > OUTPUT_DIM and config.revision >= 2:   # per-point signs: the map's errors average out
        outs = outs * point_signs(config.seed + 1, outs.shape[0], outs.shape[1]).double()
    return (outs @ output_map(outs.shape[1], config.seed)).float()


@register
class ModelGiFOutputs(Method):
    name = "modelgif+outputs"
    summary = "ModelGiF curves and the outputs along the same paths (brings distilled students next to their teachers)"

    def passes(self, config: "SignatureConfig") -> int:
        return 2 * config.points_per_model  # K*T forward+backward, K*T forward only

    def signature_dim(self, config: "SignatureConfig") -> int:
        return config.points_per_model * (config.proj_dim + OUTPUT_DIM)

    def compute(self, adapter: SharedSpaceAdapter, probes: "Probes", config: "SignatureConfig",
                batch_size: int | None, device: str | torch.device, progress: ProgressFn | None) -> torch.Tensor:
        curves = compute_curves(adapter, probes, config, batch_size=batch_size, device=device, progress=progress)
        grads = curves.reshape(-1, curves.shape[-1])
        outs = path_outputs(adapter, probes, config, batch_size, device)
        if progress is not None:
            progress(len(outs))
        width = max(grads.shape[1], outs.shape[1])
        feats = torch.zeros(2 * len(grads), width, dtype=torch.float32)
        feats[:len(grads), :grads.shape[1]] = grads.cpu()
        feats[len(grads):, :outs.shape[1]] = outs
        return feats

    def compress(self, feats: torch.Tensor, config: "SignatureConfig") -> np.ndarray:
        half = feats.shape[0] // 2
        grads = feats[:half, :config.input_dim]
        s_grad = compress(grads.reshape(half, 1, -1), projection_for(config), config.revision >= 2)
        s_out = unit_points(feats[half:, :OUTPUT_DIM], config.revision >= 2)
        return np.concatenate([np.sqrt(1 - OUTPUT_WEIGHT) * s_grad, np.sqrt(OUTPUT_WEIGHT) * s_out]).astype(np.float32)

    def distance(self, feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
        a, b = torch.as_tensor(feats_a), torch.as_tensor(feats_b)
        half = a.shape[0] // 2
        width = min(a.shape[1], b.shape[1])
        d_grad = curve_distance(a[:half, :width], b[:half, :width])
        d_out = curve_distance(a[half:, :OUTPUT_DIM], b[half:, :OUTPUT_DIM])
        return (1 - OUTPUT_WEIGHT) * d_grad + OUTPUT_WEIGHT * d_out
