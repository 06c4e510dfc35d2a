"""Conferrable inputs: small perturbations of the owner's images that move the owner *and its
surrogates* to another class while independent references keep the true one.

For each image x with label y, target t = the owner's runner-up class; projected sign-gradient descent
(L-infinity ball of radius ``eps`` in [0, 1] pixel units) on

    CE(owner(x'), t) + mean_s CE(surrogate_s(x'), t) + mean_r CE(reference_r(x'), y)

Kept: inputs where the owner predicts t, at least ``min_surrogates`` of the surrogates do, and no
reference does (the conferrable ones). The owner's decision t is the fingerprint's expected answer.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Net = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SearchConfig:
    eps: float = 0.075          # L-infinity radius in [0, 1] pixel units
    steps: int = 30
    step_size: float | None = None  # default eps / 5
    min_surrogates: float = 0.5  # fraction of surrogates that must follow the owner
    batch_size: int = 128


def runner_up(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The owner's most likely class other than the true one."""
    masked = logits.clone()
    masked[torch.arange(len(y)), y] = float("-inf")
    return masked.argmax(1)


def search(owner: Net, surrogates: Sequence[Net], references: Sequence[Net], x: torch.Tensor, y: torch.Tensor,
           config: SearchConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, owner targets, kept mask) for every image of x."""
    step = config.step_size or config.eps / 5
    outs, targets, kept = [], [], []
    for start in range(0, len(x), config.batch_size):
        xb, yb = x[start:start + config.batch_size], y[start:start + config.batch_size]
        with torch.no_grad():
            t = runner_up(owner(xb), yb)
        delta = torch.zeros_like(xb, requires_grad=True)
        for _ in range(config.steps):
            xa = (xb + delta).clamp(0.0, 1.0)
            loss = F.cross_entropy(owner(xa), t)
            loss = loss + sum(F.cross_entropy(s(xa), t) for s in surrogates) / max(1, len(surrogates))
            loss = loss + sum(F.cross_entropy(r(xa), yb) for r in references) / max(1, len(references))
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta -= step * grad.sign()
                delta.clamp_(-config.eps, config.eps)
        with torch.no_grad():
            xa = (xb + delta).clamp(0.0, 1.0)
            owner_hit = owner(xa).argmax(1) == t
            surr = torch.stack([s(xa).argmax(1) == t for s in surrogates]).float().mean(0) if surrogates \
                else torch.ones(len(t))
            ref_hit = torch.stack([r(xa).argmax(1) == t for r in references]).any(0) if references \
                else torch.zeros(len(t), dtype=torch.bool)
        outs.append(xa.detach())
        targets.append(t)
        kept.append(owner_hit & (surr >= config.min_surrogates) & ~ref_hit)
    return torch.cat(outs), torch.cat(targets), torch.cat(kept)
