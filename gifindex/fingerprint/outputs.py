"""The owner's soft outputs on its own images, beyond the decision: what a distilled student copies.

A student distilled on the owner's probabilities (Hinton's "dark knowledge") learns, image by image,
how the owner ranks the classes it did *not* choose; an independent model trained on the same task ranks
them its own way. The profile of an output is its log-probabilities over the non-chosen classes
(the owner's top class removed, renormalised over the rest, centred); two models' similarity is the mean
cosine of their profiles over the owner's probe images. Removing the top class matters: it carries the
decision, which every accurate model shares, and it dominates any comparison of whole output vectors.

What a verdict uses is the *contrast*: a model's similarity to the owner minus its mean similarity to the
owner's independent calibration references. Similarity alone rises with how a model was trained (longer
training, the owner's own architecture), which a handful of references trained by the owner's recipe do
not reproduce; a model is about as near the owner as it is near other independent models unless it
learnt from the owner's outputs, and the contrast cancels what it shares with all of them.

A suspect of another label set (the owner's body under a new head: transfer) has no profile over the owner's
classes to compare. What it keeps of the owner is the body's features, and with them how confident it is image by
image *within* a class: ``within_class_fit`` asks how much of that variation a linear map from the owner's outputs
explains, against how much one from an independent reference's explains (docs/results.md 6.2p). Removing each
class's mean first matters as removing the top class does: the class alone explains most of any accurate model's
outputs, for copies and independent models alike.
"""
from __future__ import annotations

from collections.abc import Sequence

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


def profile_similarity(owner_logits: torch.Tensor, logits: torch.Tensor, top: torch.Tensor | None = None) -> float:
    """Mean cosine between the non-top profiles of ``logits`` and of ``owner_logits``, both (N, C), with the
    class ``top`` (default: the owner's choice) removed from both."""
    top = owner_logits.argmax(1) if top is None else top
    return float(F.cosine_similarity(non_top_profile(logits, top), non_top_profile(owner_logits, top), dim=1).mean())


def profile_contrast(owner_logits: torch.Tensor, reference_logits: Sequence[torch.Tensor], logits: torch.Tensor,
                     skip: int | None = None) -> float:
    """Similarity of ``logits`` to the owner's minus its mean similarity to each reference's (the owner's top
    class removed throughout); ``skip``: leave that reference out (a reference scored against the others)."""
    top = owner_logits.argmax(1)
    others = [profile_similarity(ref, logits, top) for i, ref in enumerate(reference_logits) if i != skip]
    if not others:
        raise ValueError("a contrast needs at least one reference besides the one left out")
    return profile_similarity(owner_logits, logits, top) - sum(others) / len(others)


def _within_class(values: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(N, C) rows, each centred, then each class's mean row (``classes``, (N,)) removed."""
    out = values.double() - values.double().mean(1, keepdim=True)
    for c in classes.unique():
        rows = classes == c
        out[rows] -= out[rows].mean(0)
    return out


def within_class_fit(predictor: torch.Tensor, target: torch.Tensor, classes: torch.Tensor) -> float | None:
    """Leave-one-out R^2 of ``target`` (N, C') logits fitted linearly from ``predictor`` (N, C) logits on the same
    images, both centred per image and with each class's mean removed (``classes``: the owner's decision on each
    image): the share of the target's within-class variation the predictor explains on images it was not fitted
    on (the hat matrix gives each image's left-out residual exactly). None when the target does not vary within
    classes (nothing to explain)."""
    x = _within_class(predictor, classes)
    y = _within_class(target, classes)
    total = float((y ** 2).sum())
    if total <= 1e-12:
        return None
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    hat = design @ torch.linalg.pinv(design)
    leverage = hat.diagonal().clamp(max=0.999)
    left_out = (y - hat @ y) / (1 - leverage)[:, None]
    return 1.0 - float((left_out ** 2).sum()) / total


@torch.no_grad()
def model_logits(model: LoadedModel | SharedSpaceAdapter, images: torch.Tensor, device: str = "cpu",
                 batch_size: int = 256) -> torch.Tensor:
    """(N, C) logits of ``model`` on shared-space images (N, 3, R, R) in [0, 1], on the CPU."""
    adapter = SharedSpaceAdapter.of(model).to(device).eval()
    return torch.cat([adapter.logits(images[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, len(images), batch_size)])
