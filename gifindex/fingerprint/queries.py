"""The owner's query log: where a thief's student was taught, it repeats the owner's answers.

A model served through an API answers every query it gets, and its owner can log them. A thief who extracts
or distils the model through that API trains its student on exactly those queries and the owner's answers;
students memorise their training labels, so on the logged queries where the owner answered *as independent
models do not* (its idiosyncratic answers: mostly its own errors) a student repeats the owner far more often
than any independent model, even one trained on the same images with their true labels. Away from those
queries a hard-label student holds almost nothing of the owner's (docs/results.md 6.2i), which is why this
part catches hard-label extraction where the conferrable inputs cannot.

Kept: logged queries on which at most ``max_reference_share`` (default none) of the owner's references
(independent models it trains on its own data, never the calibration references) take the owner's answer.
Where even one independent model answers as the owner did, the owner is often simply right, and then every
model trained on those very images (the thief's data is often public) or taught by another model of the task
answers so too (docs/results.md 6.2i). The thief's queries
may be a small part of a large log; every other user's queries where the owner is idiosyncratic dilute the
signal, which the calibration measures like any other part.

Weighed (an option, not the default: both weightings flagged fewer students on the digits zoo, docs/results.md
6.2j): each kept answer counts by how rarely the owner's references give it too, with p the smoothed share of
references that do ((k + 1/2) / (R + 1)): ``surprise`` weighs it -log p (every answer kept), ``log-odds`` log((1 -
p) / p) (answers half of them share dropped). A wrong answer every independent model gives too (an ambiguous image)
says little about who copied whom, and it is where independent models' agreement varies most; one no reference
gives is what a student repeats and honest models almost never do. Under the unreviewed rule every kept answer has
no reference agreeing, so the weights are equal and the rate is the plain one.

Reviewed: where the owner knows the true label of logged queries (it reviewed them, say those this rule
proposes), only the answers known to be wrong are kept. Those are the answers no honest model learns from
the query images, whatever it was trained on: the evaluation zoos show that without review, where the owner
is more accurate than its references, half the kept answers are right and models trained on the very same
images (with their true labels) follow them too (docs/results.md 6.2i).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .helpers import decisions

Net = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def idiosyncratic_answers(owner: Net, references: Sequence[Net], queries: torch.Tensor, max_reference_share: float,
                          limit: int, seed: int = 0, device: str = "cpu",
                          batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, owner answers) of the logged ``queries`` (N, 3, R, R) on which at most ``max_reference_share``
    of the ``references`` answer as the owner does; a seeded sample of ``limit`` when more qualify."""
    answers = decisions(owner, queries, batch_size, device)
    followed = torch.stack([decisions(r, queries, batch_size, device) == answers for r in references])
    return _kept(queries, answers, followed.float().mean(0) <= max_reference_share + 1e-9, limit, seed)


@torch.no_grad()
def wrong_answers(owner: Net, queries: torch.Tensor, labels: torch.Tensor, limit: int, seed: int = 0,
                  device: str = "cpu", batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, owner answers) of the reviewed logged ``queries`` (label >= 0) the owner answered wrongly; a
    seeded sample of ``limit`` when more qualify."""
    answers = decisions(owner, queries, batch_size, device)
    return _kept(queries, answers, (labels >= 0) & (answers != labels), limit, seed)


def is_reviewed(labels: torch.Tensor | None) -> bool:
    """Whether review labels (-1: not reviewed) review any query: then only wrong answers are kept."""
    return labels is not None and bool((labels >= 0).any())


QUERY_WEIGHTINGS = ("none", "surprise", "log-odds")  # FitConfig.query_weighting; "none": every kept answer alike


@torch.no_grad()
def reference_weights(references: Sequence[Net], inputs: torch.Tensor, answers: torch.Tensor, rule: str,
                      device: str = "cpu", batch_size: int = 256) -> torch.Tensor:
    """Per answer, the evidence that a suspect repeating it carries, from p = (k + 1/2) / (R + 1) for k of the R
    ``references`` giving the owner's ``answers`` on ``inputs``: -log p (``surprise``) or log((1 - p) / p), 0 from
    p = 1/2 on (``log-odds``)."""
    if rule not in QUERY_WEIGHTINGS[1:]:
        raise ValueError(f"unknown query weighting {rule!r}")
    shared = torch.stack([decisions(r, inputs, batch_size, device) == answers for r in references]).sum(0)
    p = (shared.double() + 0.5) / (len(references) + 1)
    weights = -torch.log(p) if rule == "surprise" else torch.log((1 - p) / p).clamp(min=0)
    return weights.float()


def logged_answers(owner: Net, references: Sequence[Net], queries: torch.Tensor, labels: torch.Tensor | None,
                   max_reference_share: float, limit: int, weighting: str = "none", seed: int = 0,
                   device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(inputs, owner answers, weights or None) of the query log the fingerprint keeps: the wrong answers when
    ``labels`` reviews some queries (label >= 0), else the idiosyncratic ones; each answer's ``reference_weights``
    by ``weighting``, answers of weight 0 dropped (None for "none": all count alike)."""
    if is_reviewed(labels):
        inputs, answers = wrong_answers(owner, queries, labels, limit, seed, device)
    else:
        inputs, answers = idiosyncratic_answers(owner, references, queries, max_reference_share, limit, seed, device)
    if weighting == "none" or not len(answers):
        return inputs, answers, None
    weights = reference_weights(references, inputs, answers, weighting, device)
    informative = weights > 0
    return inputs[informative].contiguous(), answers[informative], weights[informative]


def effective_count(weights: torch.Tensor | None, count: int) -> float:
    """How many equally weighted answers carry as much binomial noise as ``weights`` (Kish): (sum w)^2 / sum w^2."""
    if weights is None:
        return float(count)
    return float(weights.sum() ** 2 / (weights ** 2).sum())


REVIEW_SHARE = 0.25  # on the evaluation zoos the least sure quarter held every wrong answer of an accurate owner


@torch.no_grad()
def least_sure(owner: Net, queries: torch.Tensor, share: float = REVIEW_SHARE, device: str = "cpu",
               batch_size: int = 256, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positions in the log, owner answers, owner top probabilities) of the ``share`` of ``queries`` (at least one;
    at most ``limit``, a review budget for a large log) the owner answered least surely, in log order: where its
    wrong answers lie, so the queries worth reviewing (docs/results.md 6.2k: the quarter held every wrong answer of
    an accurate owner, 59-79 % of a noisy one's)."""
    if not 0 < share <= 1:
        raise ValueError(f"review share must be in (0, 1], got {share!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"review budget must be at least 1 query, got {limit!r}")
    probabilities = torch.cat([owner(queries[i:i + batch_size].to(device)).float().softmax(1).cpu()
                               for i in range(0, len(queries), batch_size)])
    sure, answers = probabilities.max(1)
    count = max(1, round(share * len(queries)))
    if limit is not None:
        count = min(count, limit)
    pick = sure.argsort(stable=True)[:count].sort().values
    return pick, answers[pick], sure[pick]


def _kept(queries: torch.Tensor, answers: torch.Tensor, mask: torch.Tensor, limit: int,
          seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The queries and answers under ``mask``, a seeded sample of ``limit`` (in log order) when more."""
    keep = torch.nonzero(mask).flatten()
    if len(keep) > limit:
        keep = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(seed))[:limit]].sort().values
    return queries[keep].contiguous(), answers[keep]
