"""The verdict by rank among the indexed models (``suspect --budget``, gifindex.apps.ranking), read from stored
``fingerprint_ip.py`` runs: no model is refitted or rescored, each run's per-model evidence is ranked.

For every run (zoo seed) the hub is the run's models in one of two ways (docs/results.md 6.2u):
``independent``: every independent model the run holds, of every kind (the zoo's, those trained by other recipes,
the transfer label sets', label twins, students of another teacher): an index of the owner's task holding no copy
of the owner. ``index``: those and every derived model of the run, as ``suspect --all --budget`` sees an index
holding all of them, the owner's copies outnumbering nothing (35 derived models beside 50-174 independent ones).
A model is flagged when its rank p-value among the hub's other models is at most the budget (as the command
decides). ``--trim``: models at z >= 3 are left out of every ranking (and flagged by their z), as a user does who
runs ``suspect --all`` and then names what it flags with ``--exclude``. Reported beside the shipped z >= 3 verdict,
per attack, with false positives overall and per kind.

    python tools/eval/rank_verdict.py [--budget 0.05] [--hub independent|index] [--trim] [--zoo digits ...]
        [--log none|reviewed] [--files fingerprint_ip-digits-s3.json ...]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from common import results_dir
from gifindex.apps.ranking import rank_verdict

ATTACKS = ("finetune-a", "finetune-l", "fine-pruning", "extract-l", "extract-p", "extract-adv", "transfer")
Z_THRESHOLD = 3.0
# the runs each zoo's numbers in docs/results.md 6.0 rest on (fingerprint_ip.py's result files)
RUNS = {
    ("digits", "none"): ["fingerprint_ip-digits-s0-1-2.json"],
    ("digits-noisy", "none"): ["fingerprint_ip-digits-noisy-s0-1-2.json"],
    ("textures", "none"): ["fingerprint_ip-textures-s0-1-2.json"],
    ("mnist32", "none"): ["fingerprint_ip-mnist32-s0.json"],
    ("lenet-mnist", "none"): [f"fingerprint_ip-lenet-mnist-s{s}.json" for s in (0, 1, 2)],
    ("digits", "reviewed"): ["fingerprint_ip-digits-qreviewed-wnone-pqueries-s0-1-2.json"],
    ("digits-noisy", "reviewed"): ["fingerprint_ip-digits-noisy-qreviewed-wnone-pqueries-s0-1-2.json"],
    ("textures", "reviewed"): ["fingerprint_ip-textures-qreviewed-wnone-pqueries-s0-1-2.json"],
    ("mnist32", "reviewed"): ["fingerprint_ip-mnist32-qreviewed-wnone-pqueries-s0.json"],
    ("lenet-mnist", "reviewed"): ["fingerprint_ip-lenet-mnist-qreviewed-wnone-pqueries-s0-1.json",
                                  "fingerprint_ip-lenet-mnist-qreviewed-wnone-pqueries-s2.json"],
}


def negative_kind(group: str) -> str | None:
    """The kind of independent model a per-model group names, or None for a derived one."""
    if group.startswith("foreign-"):
        return "foreign"
    if group.startswith("twin-"):
        return "twin"
    return group if group.startswith("irrelevant") else None


def verdict_z(model: dict) -> float:
    """What ``suspect`` decides by (fingerprint_ip's ``combined``): the fingerprint's evidence, else the
    signature's z against the population; -inf for a model not judged (not of the owner's task, 6.2v)."""
    if model.get("off_task"):
        return -np.inf
    if model.get("z") is not None:
        return model["z"]
    return model.get("z_gif_population", -np.inf)


def rank_run(run: dict, budget: float, hub: str, trim: bool = False) -> tuple[dict[str, list], dict[str, list]]:
    """(flags by attack, flags by kind of independent model) for one run: (rank verdict, z verdict) per model."""
    derived, negatives = [], []
    for model in run["per_model"].values():
        kind = negative_kind(model["group"])
        if model["group"] in ATTACKS:
            derived.append((verdict_z(model), model["group"]))
        elif kind is not None:
            negatives.append((verdict_z(model), kind))
    for model in (run.get("recipe_negatives") or {}).values():
        negatives.append((verdict_z(model), "irrelevant-r"))
    pool = [z for z, _ in negatives] + ([z for z, _ in derived] if hub == "index" else [])
    if trim:
        pool = [z for z in pool if z < Z_THRESHOLD]

    def flagged(z: float, in_pool: bool) -> bool:
        if trim and z >= Z_THRESHOLD:
            return True
        others = list(pool)
        if in_pool:
            others.remove(z)
        return rank_verdict(z, others, budget)["verdict"] == "derived"

    by_attack, by_kind = defaultdict(list), defaultdict(list)
    for z, group in derived:
        by_attack[group].append((flagged(z, hub == "index"), z >= Z_THRESHOLD))
    for z, kind in negatives:
        by_kind[kind].append((flagged(z, True), z >= Z_THRESHOLD))
    return by_attack, by_kind


def summarise(files: list[str], budget: float, hub: str, trim: bool = False) -> dict:
    by_attack, by_kind = defaultdict(list), defaultdict(list)
    for name in files:
        for run in json.loads((results_dir() / name).read_text())["runs"]:
            attacks, kinds = rank_run(run, budget, hub, trim)
            for k, v in attacks.items():
                by_attack[k] += v
            for k, v in kinds.items():
                by_kind[k] += v
    negatives = [flag for flags in by_kind.values() for flag in flags]
    share = lambda flags, i: float(np.mean([f[i] for f in flags]))  # noqa: E731
    return {"attacks": {a: {"rank": share(by_attack[a], 0), "z": share(by_attack[a], 1), "n": len(by_attack[a])}
                        for a in ATTACKS if by_attack[a]},
            "false_positives": {"rank": share(negatives, 0), "z": share(negatives, 1), "n": len(negatives)},
            "by_kind": {k: {"rank": share(v, 0), "z": share(v, 1), "n": len(v)} for k, v in sorted(by_kind.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--hub", choices=("independent", "index"), default="independent")
    parser.add_argument("--trim", action="store_true", help="leave models at z >= 3 out of every ranking")
    parser.add_argument("--zoo", nargs="+", default=None, help="zoos to read (default: every one with stored runs)")
    parser.add_argument("--log", choices=("none", "reviewed"), nargs="+", default=["none", "reviewed"])
    parser.add_argument("--files", nargs="+", default=None,
                        help="read these result files (in the results folder) as one group instead")
    args = parser.parse_args()
    runs = {("files", "given"): args.files} if args.files else RUNS
    print(f"rank verdict at budget {args.budget:g}, hub = {args.hub}{', trimmed' if args.trim else ''}; flagged by "
          f"rank (by z >= {Z_THRESHOLD:g})")
    out = {}
    for (zoo, log), files in runs.items():
        if not args.files and ((args.zoo and zoo not in args.zoo) or log not in args.log):
            continue
        if not all((results_dir() / f).is_file() for f in files):
            print(f"{zoo} ({log}): runs not stored here ({', '.join(files)}): run tools/eval/fingerprint_ip.py")
            continue
        s = out[f"{zoo}/{log}"] = summarise(files, args.budget, args.hub, args.trim)
        print(f"{zoo} ({ {'none': 'no log', 'reviewed': 'reviewed log'}.get(log, log)}): " + "  ".join(
            f"{a} {v['rank']:.0%} ({v['z']:.0%})" for a, v in s["attacks"].items()))
        fp = s["false_positives"]
        print(f"    false positives {fp['rank']:.1%} ({fp['z']:.1%}) of {fp['n']}; by kind: " + "  ".join(
            f"{k} {v['rank']:.0%} ({v['z']:.0%}) of {v['n']}" for k, v in s["by_kind"].items()))
    name = f"rank_verdict-{args.hub}{'-trim' if args.trim else ''}-b{args.budget:g}.json"
    (results_dir() / name).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
