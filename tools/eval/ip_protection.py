"""IP protection testbed, after the SAC benchmark (Guan et al. 2022) at small scale, on digits.

An owner (timm test_resnet) trained on half A of the training split; the attacker owns half B. Per attack,
N models derived from the owner: Finetune-A (all layers on B), Finetune-L (last layer on B),
fine-pruning (global magnitude pruning 20-60 % then fine-tuning on B), Extract-L (a student trained on the
owner's hard labels over B), Extract-P (distillation on the owner's probabilities over B), Extract-Adv
(Extract-L then FGSM adversarial training), Transfer (fine-tuned on B to another label set). Hard
negatives: M models trained independently on the same task (4 architectures, several seeds, on A or B).
Probes are held-out test digits (no scored model selects them). Score = -distance(owner, model);
AUC per attack and method with sklearn.metrics.roc_auc_score (attack models positive, irrelevant negative).

    python tools/eval/ip_protection.py [--quick] [-K 16] [-T 8]
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from common import (METHODS, accuracy, build_arch, cached_model, digits, distances_to, log, make_permanent,
                    prune_global, results_dir, setup_threads, sign_all, train, write_json)

OWNER_ARCH = "timm:test_resnet"
ARCHS = ("timm:test_resnet", "timm:test_efficientnet", "timm:test_byobnet", "timm:test_vit")
ATTACKS = ("finetune-a", "finetune-l", "fine-pruning", "extract-l", "extract-p", "extract-adv", "transfer")
TRANSFER_TASKS = (("parity", 2), ("mod3", 3), ("big", 2), ("mod4", 4), ("mod5", 5))


def relabel(y: torch.Tensor, task: str) -> torch.Tensor:
    return {"parity": y % 2, "mod3": y % 3, "big": (y >= 5).long(), "mod4": y % 4, "mod5": y % 5}[task]


def adversarial_train(model, x, y, epochs: int, lr: float, seed: int, eps: float = 0.3):
    """FGSM adversarial training (eps in normalised units, ~0.1 of the [0, 1] range), Adam."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            if len(idx) < 2:
                continue
            xb = x[idx].clone().requires_grad_(True)
            loss = F.cross_entropy(model(xb), y[idx])
            (grad,) = torch.autograd.grad(loss, xb)
            xa = (xb + eps * grad.sign()).detach()
            loss = 0.5 * F.cross_entropy(model(x[idx]), y[idx]) + 0.5 * F.cross_entropy(model(xa), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def build_zoo(per_attack: int, irrelevant: int, epochs: int = 6):
    """{name: (module, group)}: the owner, per_attack models per attack, ``irrelevant`` hard negatives."""
    data = digits(0)
    n = len(data.x_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(123))
    a_idx, b_idx = perm[: n // 2], perm[n // 2:]
    xa, ya, xb, yb = data.x_train[a_idx], data.y_train[a_idx], data.x_train[b_idx], data.y_train[b_idx]
    zoo: dict[str, tuple[torch.nn.Module, str]] = {}

    def owner_make():
        torch.manual_seed(0)
        return train(build_arch(OWNER_ARCH), xa, ya, epochs, 5e-3, 64, 0)

    owner = cached_model("ip", "owner", owner_make, ["owner", OWNER_ARCH, epochs, 1],
                         lambda: build_arch(OWNER_ARCH))
    zoo["owner"] = (owner, "owner")
    with torch.no_grad():
        owner_labels = owner(xb).argmax(1)

    for i in range(per_attack):
        def ft_a(i=i):
            return train(copy.deepcopy(owner), xb, yb, 2, 5e-4 * (1 + i), 64, 100 + i)

        def ft_l(i=i):
            m = copy.deepcopy(owner)
            for p in m.parameters():
                p.requires_grad_(False)
            for p in m.get_classifier().parameters():
                p.requires_grad_(True)
            m = train(m, xb, yb, 2, 5e-3 * (1 + i), 64, 200 + i)
            for p in m.parameters():
                p.requires_grad_(True)
            return m

        def fp(i=i):
            m = copy.deepcopy(owner)
            masks = prune_global(m, 0.2 + 0.1 * i)
            m = train(m, xb, yb, 2, 1e-3, 64, 300 + i)
            make_permanent(masks)
            return m

        arch = ARCHS[i % len(ARCHS)]

        def ext_l(i=i, arch=arch):
            torch.manual_seed(400 + i)
            return train(build_arch(arch), xb, owner_labels, epochs, 5e-3, 64, 400 + i)

        def ext_p(i=i, arch=arch):
            torch.manual_seed(500 + i)
            return train(build_arch(arch), xb, owner_labels, epochs, 5e-3, 64, 500 + i, teacher=owner,
                         temperature=2.0, alpha=1.0)

        def ext_adv(i=i, arch=arch):
            torch.manual_seed(600 + i)
            m = train(build_arch(arch), xb, owner_labels, epochs, 5e-3, 64, 600 + i)
            return adversarial_train(m, xb, owner_labels, 2, 1e-3, 600 + i)

        task, classes = TRANSFER_TASKS[i % len(TRANSFER_TASKS)]

        def transfer(i=i, task=task, classes=classes):
            m = copy.deepcopy(owner)
            m.reset_classifier(classes)
            torch.manual_seed(700 + i)
            return train(m, xb, relabel(yb, task), 3, 2e-3, 64, 700 + i)

        recipes = {"finetune-a": (ft_a, OWNER_ARCH, 10), "finetune-l": (ft_l, OWNER_ARCH, 10),
                   "fine-pruning": (fp, OWNER_ARCH, 10), "extract-l": (ext_l, arch, 10),
                   "extract-p": (ext_p, arch, 10), "extract-adv": (ext_adv, arch, 10),
                   "transfer": (transfer, OWNER_ARCH, classes)}
        for attack, (make, arch_used, classes_used) in recipes.items():
            name = f"{attack}-{i}"
            zoo[name] = (cached_model("ip", name, make, [name, arch_used, classes_used, epochs, 1],
                                      lambda a=arch_used, c=classes_used: build_arch(a, c)), attack)

    for j in range(irrelevant):
        arch = ARCHS[j % len(ARCHS)]
        x, y = (xa, ya) if (j // len(ARCHS)) % 2 == 0 else (xb, yb)

        def indep(j=j, arch=arch, x=x, y=y):
            torch.manual_seed(1000 + j)
            return train(build_arch(arch), x, y, epochs, 5e-3, 64, 1000 + j)

        name = f"irrelevant-{j}"
        zoo[name] = (cached_model("ip", name, indep, [name, arch, epochs, 1], lambda a=arch: build_arch(a)),
                     "irrelevant")
    accs = {name: accuracy(m, data.x_test, data.y_test) for name, (m, g) in zoo.items() if g != "transfer"}
    return zoo, data, accs


def evaluate(quick: bool = False, k: int = 16, steps: int = 8, zoo=None, methods=METHODS) -> dict:
    from sklearn.metrics import roc_auc_score

    from gifindex.apps import suspect_from_distances

    setup_threads()
    start = time.perf_counter()
    per_attack, irrelevant = (2, 4) if quick else (5, 12)
    if zoo is None:
        zoo, data, accs = build_zoo(per_attack, irrelevant)
    else:
        zoo, data, accs = zoo
    train_s = time.perf_counter() - start
    models = {name: m for name, (m, _) in zoo.items()}
    groups = {name: g for name, (_, g) in zoo.items()}
    feats, sign_s = sign_all(models, data.raw_test, k=k, steps=steps, methods=methods)
    result = {"scale": "quick" if quick else "full", "K": k, "T": steps, "per_attack": per_attack,
              "irrelevant": irrelevant, "train_seconds": round(train_s, 1), "sign_seconds_per_model": sign_s,
              "accuracy": {n: round(a, 4) for n, a in accs.items()}, "auc": {}, "mean_distance": {},
              "suspect": {}}
    neg = [n for n in models if groups[n] == "irrelevant"]
    for method in methods:
        dist = distances_to(feats[method], "owner", method)
        result["auc"][method] = {}
        for attack in ATTACKS:
            pos = [n for n in models if groups[n] == attack]
            labels = [1] * len(pos) + [0] * len(neg)
            scores = [-dist[n] for n in pos + neg]
            result["auc"][method][attack] = float(roc_auc_score(labels, scores))
        result["auc"][method]["mean"] = float(np.mean(list(result["auc"][method].values())))
        result["mean_distance"][method] = {g: float(np.mean([dist[n] for n in models if groups[n] == g]))
                                           for g in ATTACKS + ("irrelevant",)}
        # the suspect command's calibrated verdict, population = the irrelevant models (leave-one-out)
        flagged = {g: 0 for g in ATTACKS + ("irrelevant",)}
        for name in models:
            if name == "owner":
                continue
            population = [dist[n] for n in neg if n != name]
            verdict = suspect_from_distances(dist[name], population)["verdict"]
            flagged[groups[name]] += verdict == "derived"
        result["suspect"][method] = {g: flagged[g] / sum(1 for n in models if groups[n] == g) for g in flagged}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-K", type=int, default=16)
    parser.add_argument("-T", type=int, default=8)
    args = parser.parse_args()
    result = evaluate(args.quick, args.K, args.T)
    write_json(results_dir() / f"ip_protection{'-quick' if args.quick else ''}.json", result)
    print("AUC per attack (owner vs irrelevant):")
    print("method     " + " ".join(f"{a:>12s}" for a in ATTACKS + ("mean",)))
    for method, row in result["auc"].items():
        print(f"{method:<10s} " + " ".join(f"{row[a]:12.3f}" for a in ATTACKS + ("mean",)))
    print(f"({result['seconds']} s)")


if __name__ == "__main__":
    main()
