"""The owner's soft outputs on its own images, beyond the decision: what a distilled student copies.

A student distilled on the owner's probabilities (Hinton's "dark knowledge") learns, image by image,
how the owner ranks the classes it did *not* choose; an independent model trained on the same task ranks
them its own way. The profile of an output is its log-probabilities over the non-chosen classes
(the owner's top class removed, renormalised over the rest, centred); two models' similarity is the mean
cosine of their profiles over the owner's probe images. Removing the top class matters: it carries the
decision, which every accurate model shares, and it dominates any comparison of whole output vectors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..adapter import SharedSpaceAdapter
from ..models.spec import LoadedModel


def non_top_profile(logits: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """(N, C) logits -> (N, C - 1) centred log-probabilities over the classes other than ``top`` (N,)."""
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[torch.arange(len(top)), top] = False
    rest = logits.float()[keep].view(len(top), -1)
    rest = rest - rest.logsumexp(1, keepdim=True)
    return rest - rest.mean(1, keepdim=True)


def profile_similarity(owner_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean cosine between the non-top profiles of ``logits`` and the owner's, both (N, C), the owner's
    top class removed from both."""
    top = owner_logits.argmax(1)
    return float(F.cosine_similarity(non_top_profile(logits, top), non_top_profile(owner_logits, top), dim=1).mean())


@torch.no_grad()
def model_logits(model: LoadedModel | SharedSpaceAdapter, images: torch.Tensor, device: str = "cpu",
                 batch_size: int = 256) -> torch.Tensor:
    """(N, C) logits of ``model`` on shared-space images (N, 3, R, R) in [0, 1], on the CPU."""
    adapter = SharedSpaceAdapter.of(model).to(device).eval()
    return torch.cat([adapter.logits(images[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, len(images), batch_size)])
