"""What screening against M protected models costs (``suspect SUSPECT`` without ``--owner``; docs/results.md 6.2v),
read from stored ``fingerprint_ip.py`` runs: no model is refitted or rescored. Screening judges a suspect against
each of M owners at the bar that keeps one verdict's Gaussian false-positive rate (Sidak:
``single_look_z(3, M)``); here each run's own owner is one of them, and what its verdict flags at that bar is counted
per attack, with the independent models of every kind the run holds (the zoo's, the transfer label sets', another
teacher's students, those trained by other recipes).

    python tools/eval/screening_bar.py --files fingerprint_ip-digits-s0.json fingerprint_ip-digits-s1-2.json
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

from common import results_dir
from rank_verdict import verdict_z
from gifindex.fingerprint.fingerprint import single_look_z

OWNERS = (1, 2, 10, 50)
COPIES = ("finetune-a", "finetune-l", "fine-pruning", "relabelled", "transfer")
ATTACKS = ("extract-l", "extract-p", "extract-adv")
NEGATIVES = ("irrelevant", "irrelevant-t", "foreign-l", "foreign-p")


def run_scores(run: dict) -> dict[str, list[float]]:
    """{group: verdict z of each of its models}, recipe-trained independent models under "recipe"."""
    out: dict[str, list[float]] = defaultdict(list)
    for model in run["per_model"].values():
        out[model["group"]].append(verdict_z(model))
    for model in (run.get("recipe_negatives") or {}).values():
        out["recipe"].append(verdict_z(model))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="+", required=True, help="fingerprint_ip result files (in the results dir)")
    parser.add_argument("--z-threshold", type=float, default=3.0)
    args = parser.parse_args()
    pooled: dict[str, list[float]] = defaultdict(list)
    for name in args.files:
        for run in json.loads((results_dir() / name).read_text())["runs"]:
            for group, values in run_scores(run).items():
                pooled[group].extend(values)
    kinds = {"weight copies": COPIES, **{a: (a,) for a in ATTACKS}, "independent": (*NEGATIVES, "recipe")}
    print(f"{'owners':>6s} {'bar':>5s}  " + "  ".join(f"{k:>14s}" for k in kinds))
    for owners in OWNERS:
        bar = single_look_z(args.z_threshold, owners)
        cells = []
        for groups in kinds.values():
            values = [z for g in groups for z in pooled.get(g, [])]
            cells.append(f"{sum(z >= bar for z in values):>6d} of {len(values):<4d}")
        print(f"{owners:>6d} {bar:5.2f}  " + "  ".join(f"{c:>14s}" for c in cells))
    top = max(z for g in (*NEGATIVES, "recipe") for z in pooled.get(g, []))  # -inf: not judged
    print(f"highest independent model's z: {top:.2f}")


if __name__ == "__main__":
    main()
