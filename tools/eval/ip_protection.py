"""IP protection testbed, after the SAC benchmark (Guan et al. 2022) at small scale, over zoo seeds.

The zoos come from ipzoo.py: an owner trained on half A of the training split; the attacker owns half B.
Per attack, N models derived from the owner: Finetune-A (all layers on B), Finetune-L (last layer on B),
fine-pruning (global magnitude pruning then fine-tuning on B), Extract-L (a student trained on the
owner's hard labels over B), Extract-P (distillation on the owner's probabilities over B), Extract-Adv
(Extract-L then FGSM adversarial training), Transfer (fine-tuned on B to another label set). Hard
negatives: M models trained independently on the same task (several architectures and seeds, on A or B).
Probes are held-out test images (no scored model selects them). Score = -distance(owner, model);
AUC per attack and method with sklearn.metrics.roc_auc_score (attack models positive, irrelevant negative),
then mean and spread (std, min, max) over the zoo seeds.

    python tools/eval/ip_protection.py [--zoo digits|digits-noisy|mnist32|textures] [--seeds 0 1 2] [--quick]
                                       [-K 16] [-T 8] [--methods modelgif ig ...]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import ipzoo
from common import METHODS, distances_to, results_dir, setup_threads, sign_all, write_json
from ipzoo import ATTACKS, IPZoo

GROUPS = ATTACKS + ("irrelevant",)


def evaluate(quick: bool = False, k: int = 16, steps: int = 8, zoo: IPZoo | None = None, methods=METHODS,
             zoo_name: str = "digits", seed: int = 0) -> dict:
    """AUC, mean distance and suspect verdicts per method and attack on one zoo (built unless given)."""
    from sklearn.metrics import roc_auc_score

    from gifindex.apps import suspect_from_distances

    setup_threads()
    start = time.perf_counter()
    if zoo is None:
        zoo = ipzoo.build(zoo_name, seed, quick)
    train_s = time.perf_counter() - start
    models, groups = zoo.models, zoo.groups
    feats, sign_s = sign_all(models, zoo.heldout_raw, k=k, steps=steps, methods=methods, spec=zoo.spec,
                             resolution=zoo.resolution)
    neg = [n for n in models if groups[n] == "irrelevant"]
    result = {"zoo": zoo.name, "seed": zoo.seed, "scale": "quick" if quick else "full", "K": k, "T": steps,
              "per_attack": sum(1 for n in models if groups[n] == ATTACKS[0]), "irrelevant": len(neg),
              "train_seconds": round(train_s, 1), "sign_seconds_per_model": sign_s,
              "accuracy": {n: round(a, 4) for n, a in zoo.accuracy.items()}, "archs": zoo.archs, "groups": groups,
              "auc": {}, "mean_distance": {}, "distance": {}, "suspect": {}}
    for method in methods:
        dist = distances_to(feats[method], "owner", method)
        result["distance"][method] = dist
        result["auc"][method] = {}
        for attack in ATTACKS:
            pos = [n for n in models if groups[n] == attack]
            labels = [1] * len(pos) + [0] * len(neg)
            scores = [-dist[n] for n in pos + neg]
            result["auc"][method][attack] = float(roc_auc_score(labels, scores))
        result["auc"][method]["mean"] = float(np.mean(list(result["auc"][method].values())))
        result["mean_distance"][method] = {g: float(np.mean([dist[n] for n in models if groups[n] == g]))
                                           for g in GROUPS}
        # the suspect command's calibrated verdict, population = the irrelevant models (leave-one-out)
        flagged = dict.fromkeys(GROUPS, 0)  # and any extra group a zoo has (lenet-mnist's irrelevant-x), after them
        for name in models:
            if name == "owner":
                continue
            population = [dist[n] for n in neg if n != name]
            verdict = suspect_from_distances(dist[name], population)["verdict"]
            flagged[groups[name]] = flagged.get(groups[name], 0) + (verdict == "derived")
        result["suspect"][method] = {g: flagged[g] / sum(1 for n in models if groups[n] == g) for g in flagged}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def summarise(results: list[dict]) -> dict:
    """Mean, std, min and max over seeds of every AUC and suspect rate: summary[table][method][column]."""
    summary: dict = {}
    for table in ("auc", "suspect"):
        summary[table] = {}
        for method, row in results[0][table].items():
            summary[table][method] = {}
            for column in row:
                values = np.array([r[table][method][column] for r in results])
                summary[table][method][column] = {"mean": float(values.mean()), "std": float(values.std()),
                                                  "min": float(values.min()), "max": float(values.max())}
    return summary


def _cell(stats: dict, spread: bool) -> str:
    return f"{stats['mean']:.3f}+-{stats['std']:.3f}" if spread else f"{stats['mean']:.3f}"


def report(summary: dict, seeds: list[int]) -> str:
    """The AUC and suspect tables as text (mean +- std over seeds when there are several)."""
    spread = len(seeds) > 1
    width = 13 if spread else 12
    first = max(10, *(len(m) for m in summary["auc"]))
    lines = [f"AUC per attack (owner vs irrelevant), seeds {seeds}" + (" (mean+-std)" if spread else "") + ":"]
    groups = tuple(next(iter(summary["suspect"].values())))  # GROUPS, then any extra group (irrelevant-x)
    for table, columns in (("auc", ATTACKS + ("mean",)), ("suspect", groups)):
        if table == "suspect":
            lines.append("suspect verdict 'derived' rate (irrelevant = false positives):")
        lines.append(f"{'method':<{first}s} " + " ".join(f"{c:>{width}s}" for c in columns))
        for method, row in summary[table].items():
            lines.append(f"{method:<{first}s} " + " ".join(f"{_cell(row[c], spread):>{width}s}" for c in columns))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", choices=sorted(ipzoo.ZOOS), default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="zoo seeds (default: 0)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-K", type=int, default=16)
    parser.add_argument("-T", type=int, default=8)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = parser.parse_args()
    if min(args.seeds) < 0 or args.K < 1 or args.T < 1:
        parser.error("seeds must be >= 0, K and T >= 1")
    start = time.perf_counter()
    per_seed = [evaluate(args.quick, args.K, args.T, methods=tuple(args.methods), zoo_name=args.zoo, seed=s)
                for s in args.seeds]
    summary = summarise(per_seed)
    name = f"ip_protection-{args.zoo}{'-quick' if args.quick else ''}-s{'-'.join(map(str, args.seeds))}.json"
    write_json(results_dir() / name, {"zoo": args.zoo, "seeds": args.seeds, "K": args.K, "T": args.T,
                                      "summary": summary, "per_seed": per_seed})
    print(report(summary, args.seeds))
    print(f"({time.perf_counter() - start:.1f} s; {results_dir() / name})")


if __name__ == "__main__":
    main()
