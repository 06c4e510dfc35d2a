"""The signature's verdict without a fingerprint: which population calibrates it (docs/results.md 6.2x).

`gifindex suspect` with no fingerprint for the owner judges a suspect by its ModelGiF distance to the owner against
the owner's distances to the other indexed models (robust z, median / MAD, z >= 3). Independent models of the
owner's architecture sit nearer the owner than models of other architectures, so a population of every architecture
is too wide for some suspects and too near for others. Two rules, on one pool of independently trained models (the
zoo's independent models, the recipe-trained negatives and the transfer label sets' negatives, all as cached by
fingerprint_ip.py and out_of_task.py):

  ``all``   the pool, less the suspect (what `suspect` does with an index of such models);
  ``arch``  the pool's models of the suspect's own architecture, less the suspect, when at least ``--min-arch``
            remain; else ``all``.

Scored: every zoo model (weight copies, transfers, students, independents), the relabelled copies, the students of
another teacher, the recipe-trained and transfer-label-set negatives. Per group, the share flagged under each rule.
Nothing here is fitted: the signature is the index default (K = 16, T = 8, held-out images as probes).

    python tools/eval/signature_population.py --zoo digits --seeds 0 1 2 [--min-arch 5]
"""
from __future__ import annotations

import argparse
import time

import torch

import ipzoo
from common import distances_to, log, results_dir, setup_threads, sign_all, wrap, write_json
from fingerprint_ip import foreign_students, recipe_negatives, relabelled_copies, task_negatives, zoo_family
from gifindex.adapter import SharedSpaceAdapter
from gifindex.apps import suspect_from_distances

Z_THRESHOLD = 3.0
POOL = ("irrelevant", "irrelevant-r", "irrelevant-t")  # independently trained models: what a hub's population holds
WEIGHT_COPIES = ("finetune-a", "finetune-l", "fine-pruning", "relabelled")


def evaluate(zoo_name: str, seed: int, min_arch: int) -> dict:
    zoo = ipzoo.build(zoo_name, seed, False)
    count = ipzoo.SIZES[zoo_name]["full"][0]
    added = {**(foreign_students(zoo, count) if count else {}), **relabelled_copies(zoo)}
    for name, (group, arch, module) in added.items():
        zoo.models[name], zoo.groups[name], zoo.archs[name] = module, group, arch
    for name, (group, arch, _task, module) in task_negatives(zoo).items():
        zoo.models[name], zoo.groups[name], zoo.archs[name] = module, group, arch
    with torch.no_grad():
        classes = int(SharedSpaceAdapter.of(wrap(zoo.models["owner"], zoo.spec)).logits(zoo.heldout_images()[:2])
                      .shape[1])
    for name, (arch, module) in recipe_negatives(zoo, zoo_family(zoo), classes).items():
        zoo.models[name], zoo.groups[name], zoo.archs[name] = module, "irrelevant-r", arch
    feats, sign_s = sign_all(zoo.models, zoo.heldout_raw, k=16, steps=8, methods=("modelgif",), spec=zoo.spec,
                             resolution=zoo.resolution)
    dist = distances_to(feats["modelgif"], "owner", "modelgif")
    pool = [n for n in dist if zoo.groups[n] in POOL]
    per_model = {}
    for n, d in dist.items():
        everyone = [dist[m] for m in pool if m != n]
        same = [dist[m] for m in pool if m != n and zoo.archs[m] == zoo.archs[n]]
        z_all = suspect_from_distances(d, everyone, Z_THRESHOLD)["z"]
        z_arch = suspect_from_distances(d, same, Z_THRESHOLD)["z"] if len(same) >= min_arch else z_all
        per_model[n] = {"group": zoo.groups[n], "arch": zoo.archs[n], "distance": d, "z_all": z_all,
                        "z_arch": z_arch, "arch_population": len(same) if len(same) >= min_arch else None}
    return {"zoo": zoo_name, "seed": seed, "min_arch": min_arch, "pool": len(pool),
            "sign_seconds_per_model": sign_s["modelgif"], "per_model": per_model}


def flagged(runs: list[dict], rule: str) -> dict[str, tuple[int, int]]:
    """{group: (flagged, models)} pooled over runs."""
    out: dict[str, list[int]] = {}
    for run in runs:
        for m in run["per_model"].values():
            cell = out.setdefault(m["group"], [0, 0])
            cell[0] += m[f"z_{rule}"] >= Z_THRESHOLD
            cell[1] += 1
    return {g: (a, b) for g, (a, b) in sorted(out.items())}


def report(runs: list[dict]) -> str:
    lines = ["| group | models | flagged, population of every architecture (`all`) | flagged, the suspect's own "
             "architecture (`arch`) |", "|---|---|---|---|"]
    rule_all, rule_arch = flagged(runs, "all"), flagged(runs, "arch")
    for group, (hit, total) in rule_all.items():
        lines.append(f"| {group} | {total} | {hit} ({hit / total:.0%}) | {rule_arch[group][0]} "
                     f"({rule_arch[group][0] / total:.0%}) |")
    negatives = [g for g in rule_all if g in POOL or g.startswith("foreign")]
    for rule, table in (("all", rule_all), ("arch", rule_arch)):
        fp, n = sum(table[g][0] for g in negatives), sum(table[g][1] for g in negatives)
        copies = sum(table[g][0] for g in WEIGHT_COPIES if g in table), sum(table[g][1] for g in WEIGHT_COPIES
                                                                             if g in table)
        lines.append(f"\n`{rule}`: false positives {fp} of {n} ({fp / max(1, n):.1%}); weight copies flagged "
                     f"{copies[0]} of {copies[1]}; transfers {table.get('transfer', (0, 0))[0]} of "
                     f"{table.get('transfer', (0, 0))[1]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", default="digits", choices=sorted(ipzoo.SIZES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--min-arch", type=int, default=5, help="fewest same-architecture models for rule arch")
    args = parser.parse_args()
    setup_threads()
    start = time.perf_counter()
    runs = [evaluate(args.zoo, seed, args.min_arch) for seed in args.seeds]
    text = report(runs)
    print(text)
    path = results_dir() / f"signature_population-{args.zoo}-s{'-'.join(map(str, args.seeds))}.json"
    write_json(path, {"runs": runs, "report": text})
    log(f"wrote {path} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
