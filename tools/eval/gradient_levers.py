"""What ModelGiF's gradient is taken of, and where its paths run: the gradient levers of issue #10 on the IP zoos.

Each variant is a scalar of the model's logits whose input-gradient field is integrated along K straight paths
(Riemann sums at T points, as ModelGiF's default) and compared by the mean 1 - cos of corresponding curve points;
score = -distance to the owner, AUC per attack against the zoo's independent models (docs/results.md 6.2h).

Scalars: ``norm`` (the default signature), ``top-logit`` (each model's own top class at the probe, the authors'
choice for IP protection), and three whose classes are fixed *by the owner* at the probe, the same for every
model compared with it: its class's logit, its top-2 logit margin and its class's log-probability (a transfer model
with another label count falls back to its own top class and runner-up). Paths: zero -> held-out image (the
default), clean image -> its PGD counterpart against the owner (untargeted, L-inf eps 0.1, 10 steps; the margin is
then the owner's clean class minus its class at the adversarial end), zero -> the PGD image. Probes: K held-out
test images drawn with seed 0 (never a scored model); PGD uses the owner only.

    python tools/eval/gradient_levers.py --zoo digits --seeds 0 1 2      # ~1.5 min here
    python tools/eval/gradient_levers.py --zoo mnist32 --seeds 0 1       # ~4 min with the zoo cached
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import ipzoo
from common import results_dir, setup_threads, wrap, write_json
from gifindex.adapter import SharedSpaceAdapter
from gifindex.curves import gradient_field, integrate
from gifindex.distance import curve_distance
from gifindex.probes import Probes, pgd_perturb
from gifindex.quadrature import quadrature

ATTACKS = ("finetune-a", "fine-pruning", "extract-l", "extract-p", "extract-adv", "transfer")
Scalar = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits (B, C), classes (B, 2)) -> (B,)


def _pick(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, cls.view(-1, 1)).squeeze(1)


SCALARS: dict[str, Scalar] = {  # whose classes (the owner's or the model's own) is the variant's choice
    "norm": lambda lg, c: torch.linalg.vector_norm(lg, dim=1),
    "class logit": lambda lg, c: _pick(lg, c[:, 0]),
    "top-2 margin": lambda lg, c: _pick(lg, c[:, 0]) - _pick(lg, c[:, 1]),
    "class log-prob": lambda lg, c: _pick(lg.log_softmax(1), c[:, 0]),
}


@dataclass(frozen=True)
class Variant:
    scalar: str
    path: str = "zero->image"        # or "clean->pgd", "zero->pgd"
    classes: str = "owner"           # "owner": fixed by the owner at the probe; "own": each model's top two


VARIANTS = {
    "norm (default)": Variant("norm", classes="own"),
    "top-logit (own class)": Variant("class logit", classes="own"),
    "owner-class logit": Variant("class logit"),
    "owner top-2 margin": Variant("top-2 margin"),
    "owner-class log-prob": Variant("class log-prob"),
    "clean->pgd, margin": Variant("top-2 margin", "clean->pgd"),
    "clean->pgd, norm": Variant("norm", "clean->pgd", "own"),
    "zero->pgd, norm": Variant("norm", "zero->pgd", "own"),
    "zero->pgd, margin": Variant("top-2 margin", "zero->pgd"),
}


class ScalarOf(nn.Module):
    """A shared-space model reduced to one scalar per image; ``forward(x, classes)`` as gradient_field calls it."""

    def __init__(self, adapter: SharedSpaceAdapter, scalar: Scalar):
        super().__init__()
        self.adapter, self.scalar = adapter, scalar

    def forward(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        return self.scalar(self.adapter.logits(x), classes)


@torch.no_grad()
def top_two(adapter: SharedSpaceAdapter, images: torch.Tensor) -> torch.Tensor:
    """(K, 2): each image's top class and runner-up."""
    return adapter.logits(images).topk(2, dim=1).indices


def curves(adapter: SharedSpaceAdapter, probes: Probes, scalar: Scalar, classes: torch.Tensor, steps: int
           ) -> torch.Tensor:
    """(K, T, D): cumulative quadrature sums of the scalar's input gradient along each probe's path."""
    rule = quadrature("riemann", steps)
    field = gradient_field(ScalarOf(adapter, scalar), probes, torch.from_numpy(rule.positions).float(),
                           batch_size=256, targets=classes)
    return integrate(field, rule.weights).flatten(2)


def paths(zoo: ipzoo.IPZoo, k: int) -> tuple[dict[str, Probes], dict[str, torch.Tensor], int]:
    """The three path families over the same K held-out images, the owner's class pairs on each, and its
    number of classes."""
    images = zoo.heldout_images()
    clean = images[np.random.default_rng(0).permutation(len(images))[:k]].clone()
    owner = wrap(zoo.models["owner"], zoo.spec)
    adapter = SharedSpaceAdapter(owner.module, owner.spec)
    adversarial = pgd_perturb(clean, owner, eps=0.1, steps=10)
    zero = torch.zeros_like(clean)
    clean_pair, adv_class = top_two(adapter, clean), top_two(adapter, adversarial)[:, 0]
    # at the adversarial end the margin is the owner's clean class minus the class it is pushed into
    crossed = torch.stack([clean_pair[:, 0], torch.where(adv_class == clean_pair[:, 0], clean_pair[:, 1], adv_class)],
                          dim=1)
    probes = {"zero->image": Probes(clean, zero), "clean->pgd": Probes(adversarial, clean),
              "zero->pgd": Probes(adversarial, zero)}
    owner_classes = {"zero->image": clean_pair, "clean->pgd": crossed, "zero->pgd": crossed}
    with torch.no_grad():
        num_classes = adapter.logits(clean[:1]).shape[1]
    return probes, owner_classes, num_classes


def evaluate(zoo: ipzoo.IPZoo, k: int, steps: int) -> dict:
    """Every variant's signature of every zoo model, and the AUC per variant and attack on this zoo seed."""
    from sklearn.metrics import roc_auc_score

    probes, owner_classes, num_classes = paths(zoo, k)
    feats: dict[str, dict[str, torch.Tensor]] = {}
    start = time.perf_counter()
    for name, module in zoo.models.items():
        adapter = SharedSpaceAdapter(wrap(module, zoo.spec).module, zoo.spec)
        own = {p: top_two(adapter, probe.images) for p, probe in probes.items()}
        with torch.no_grad():
            outputs = adapter.logits(probes["zero->image"].images[:1]).shape[1]
        same_labels = outputs == num_classes
        feats[name] = {}
        for vname, v in VARIANTS.items():
            classes = owner_classes[v.path] if v.classes == "owner" and same_labels else own[v.path]
            feats[name][vname] = curves(adapter, probes[v.path], SCALARS[v.scalar], classes, steps)
    seconds = (time.perf_counter() - start) / len(zoo.models) / len(VARIANTS)
    negatives = [n for n, g in zoo.groups.items() if g == "irrelevant"]
    auc: dict[str, dict[str, float]] = {}
    for vname in VARIANTS:
        dist = {n: curve_distance(feats["owner"][vname], f[vname]) for n, f in feats.items() if n != "owner"}
        auc[vname] = {}
        for attack in ATTACKS:
            pos = [n for n, g in zoo.groups.items() if g == attack]
            auc[vname][attack] = float(roc_auc_score([1] * len(pos) + [0] * len(negatives),
                                                     [-dist[n] for n in pos + negatives]))
    return {"seed": zoo.seed, "auc": auc, "seconds_per_model_per_variant": round(seconds, 4)}


def report(runs: list[dict]) -> str:
    lines = [f"{'variant':<24s}" + "".join(f"{a:>20s}" for a in ATTACKS)]
    for vname in VARIANTS:
        cells = []
        for attack in ATTACKS:
            values = [r["auc"][vname][attack] for r in runs]
            cells.append(f"{np.mean(values):.2f} [{min(values):.2f}, {max(values):.2f}]")
        lines.append(f"{vname:<24s}" + "".join(f"{c:>20s}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", choices=sorted(ipzoo.ZOOS), default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("-K", type=int, default=16)
    parser.add_argument("-T", type=int, default=8)
    args = parser.parse_args()
    if min(args.seeds) < 0 or args.K < 1 or args.T < 1:
        parser.error("seeds must be >= 0, K and T >= 1")
    setup_threads()
    runs = [evaluate(ipzoo.build(args.zoo, seed), args.K, args.T) for seed in args.seeds]
    path = results_dir() / f"gradient_levers-{args.zoo}-s{'-'.join(map(str, args.seeds))}.json"
    write_json(path, {"zoo": args.zoo, "K": args.K, "T": args.T, "runs": runs})
    print(f"{args.zoo}, seeds {args.seeds}, K = {args.K}, T = {args.T}: AUC mean [min, max] over seeds")
    print(report(runs))
    print(f"({path})")


if __name__ == "__main__":
    main()
