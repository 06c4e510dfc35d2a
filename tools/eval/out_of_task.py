"""Suspects that do not do the owner's task, against the owner's fingerprint (docs/results.md 6.2v).

A fingerprint's nulls are fitted on models of the owner's task (its calibration references); a hub also holds
models that are not: untrained weights, models of another task with the owner's class count, a constant answer.
Per zoo seed: the zoo's default fingerprint (as ``fingerprint_ip.py`` fits it, cached), then every out-of-task
suspect's decisions, outputs and fingerprint z (what ``suspect`` decides by), and its **clean agreement**, the share
of the fingerprint's probe images on which it gives the owner's answer. Out-of-task suspects: ``--untrained`` models
of each zoo architecture, the ``--other`` zoo's owner and independent models (another 10-class task at the same
resolution), and a constant predictor of each class; beside them every model of the zoo (each attack, relabelled
copies, independent models, recipe-trained ones, another teacher's students). Per kind: the lowest clean agreement,
and what the gate measured in 6.2v, ``chance + 0.5 (references' mean - chance)`` (chance: the largest share of one
class among the owner's answers on those images), sets aside, and what is flagged at z >= 3 without it and with it
(a model below the gate judged by its ModelGiF z against the zoo's independent models, as ``suspect`` judges
a model the fingerprint cannot compare; or not judged at all, "unrelated"). ``suspect`` notes a suspect whose clean
agreement is below every calibration reference's (``task_note``).

    python tools/eval/out_of_task.py --zoo digits --other textures --seeds 0
"""
from __future__ import annotations

import argparse
import math

import torch

import ipzoo
from common import distances_to, log, results_dir, setup_threads, sign_all, write_json
from fingerprint_ip import (fingerprint_score, fitted, foreign_students, helper_builder, recipe_negatives,
                            relabelled_copies, zoo_config, zoo_family)
from gifindex.apps import suspect_from_distances
from gifindex.fingerprint import FitConfig

Z_THRESHOLD = 3.0
GATE_SHARE = 0.5  # the measured gate: this far from chance toward the references' mean clean agreement
OUT_OF_TASK = ("untrained", "another task", "constant")


class ConstantAnswer(torch.nn.Module):
    """Always the same class (a faint dependence on the input keeps it a model of its input)."""

    def __init__(self, answer: int, classes: int = 10):
        super().__init__()
        self.answer, self.classes = answer, classes
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), self.classes)
        out[:, self.answer] = 5.0
        return out + 0.01 * self.scale * x.flatten(1)[:, :self.classes]


def out_of_task(zoo: ipzoo.IPZoo, other: ipzoo.IPZoo | None, untrained: int) -> dict[str, tuple]:
    """{name: (kind, arch, module, input spec)} of the out-of-task suspects (``other``: None, no other task's)."""
    build = helper_builder(zoo)
    out = {}
    for arch in sorted(set(zoo.archs.values())):
        for s in range(untrained):
            torch.manual_seed(1000 + s)
            out[f"untrained-{arch.partition(':')[2]}-{s}"] = ("untrained", arch, build(arch, 10).module, zoo.spec)
    for name, module in ({} if other is None else other.models).items():
        if other.groups[name] in ("owner", "irrelevant"):
            out[f"{other.name}:{name}"] = ("another task", other.archs[name], module, other.spec)
    for c in range(10):
        out[f"constant-{c}"] = ("constant", "constant", ConstantAnswer(c), zoo.spec)
    return out


def signature_z(zoo: ipzoo.IPZoo, models: dict[str, tuple[torch.nn.Module, object]]) -> dict[str, float]:
    """Each model's ModelGiF z against the zoo's independent models (as ``suspect`` calibrates the signature, the
    verdict's evidence for a suspect the fingerprint does not judge), each signed in its own input convention."""
    population = {n: (m, zoo.spec) for n, m in zoo.models.items() if zoo.groups[n] == "irrelevant"}
    by_spec: dict[int, dict[str, torch.nn.Module]] = {}
    specs = {}
    for name, (module, spec) in {**population, **models, "owner": (zoo.owner, zoo.spec)}.items():
        by_spec.setdefault(id(spec), {})[name] = module
        specs[id(spec)] = spec
    feats = {}
    for key, group in by_spec.items():
        signed, _ = sign_all(group, zoo.heldout_raw, k=16, steps=8, methods=("modelgif",), spec=specs[key],
                             resolution=zoo.resolution)
        feats.update(signed["modelgif"])
    dist = distances_to(feats, "owner", "modelgif")
    return {n: suspect_from_distances(dist[n], [dist[m] for m in population if m != n], Z_THRESHOLD)["z"]
            for n in models}


def evaluate(zoo_name: str, other_name: str, seed: int, untrained: int) -> dict:
    zoo = ipzoo.build(zoo_name, seed, False)
    other = None if other_name == "none" else ipzoo.build(other_name, seed, False)
    config = zoo_config(zoo, FitConfig(), seed)
    fp, _, _ = fitted(zoo, config)
    answers = fp.probe_logits.argmax(1)
    chance = float(torch.bincount(answers, minlength=fp.num_classes).max()) / len(answers)
    references = fp.reference_clean_agreement
    gate = chance + GATE_SHARE * (sum(references) / len(references) - chance)
    # every model judged: out-of-task suspects, and the zoo's own (as fingerprint_ip.py adds them)
    judged = {name: (kind, arch, module, spec) for name, (kind, arch, module, spec)
              in out_of_task(zoo, other, untrained).items()}
    for name, module in zoo.models.items():
        if name != "owner" and zoo.tasks[name] == "digits":
            judged[name] = (zoo.groups[name], zoo.archs[name], module, zoo.spec)
    for name, (group, arch, module) in {**relabelled_copies(zoo),
                                        **foreign_students(zoo, ipzoo.SIZES[zoo_name]["full"][0])}.items():
        judged[name] = (group, arch, module, zoo.spec)
    for name, (arch, module) in recipe_negatives(zoo, zoo_family(zoo), 10).items():
        judged[name] = ("recipe-trained", arch, module, zoo.spec)
    rows = {}
    for name, (kind, arch, module, spec) in judged.items():
        score = fingerprint_score(fp, module, arch, spec)
        rows[name] = {"kind": kind, "arch": arch, "clean_agreement": score.clean_agreement,
                      "z": -math.inf if score.evidence is None else score.evidence,
                      "decision_z": score.z, "output_z": score.output_z,
                      "gated": score.clean_agreement is not None and score.clean_agreement < gate}
    gated = {n: (judged[n][2], judged[n][3]) for n, r in rows.items() if r["gated"]}
    for name, z in (signature_z(zoo, gated) if gated else {}).items():
        rows[name]["signature_z"] = z
    for r in rows.values():
        r["gated_z"] = r["signature_z"] if r["gated"] else r["z"]
    kinds = sorted({r["kind"] for r in rows.values()})
    summary = {k: {"models": sum(r["kind"] == k for r in rows.values()),
                   "gated": sum(r["kind"] == k and r["gated"] for r in rows.values()),
                   "flagged": sum(r["kind"] == k and r["z"] >= Z_THRESHOLD for r in rows.values()),
                   "flagged_gated": sum(r["kind"] == k and r["gated_z"] >= Z_THRESHOLD for r in rows.values()),
                   "flagged_gated_unjudged": sum(r["kind"] == k and not r["gated"] and r["z"] >= Z_THRESHOLD
                                                 for r in rows.values()),
                   "lowest_clean": min(r["clean_agreement"] for r in rows.values() if r["kind"] == k)}
               for k in kinds}
    for name, r in rows.items():
        if r["kind"] in OUT_OF_TASK:
            log(f"  {name:<32s} clean {r['clean_agreement']:.3f}  z {r['z']:6.2f}")
    return {"zoo": zoo_name, "other": other_name, "seed": seed, "chance": chance, "references": references,
            "gate": gate, "models": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", choices=sorted(ipzoo.ZOOS), default="digits")
    parser.add_argument("--other", choices=[*sorted(ipzoo.ZOOS), "none"], default="textures",
                        help="the zoo whose models are the other task's (its resolution must be the zoo's; none: "
                             "untrained models and constant answers only)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--untrained", type=int, default=3, help="untrained models per zoo architecture")
    args = parser.parse_args()
    setup_threads()
    for seed in args.seeds:
        r = evaluate(args.zoo, args.other, seed, args.untrained)
        print(f"{args.zoo} seed {seed}: chance {r['chance']:.2f}, calibration references' clean agreement "
              f"{min(r['references']):.2f}-{max(r['references']):.2f}, gate {r['gate']:.3f}")
        print(f"  {'kind':<16s} {'models':>6s} {'lowest clean':>12s} {'gated':>6s} {'flagged':>8s} "
              f"{'gated: by signature':>20s} {'gated: not judged':>18s}")
        for kind, k in r["summary"].items():
            print(f"  {kind:<16s} {k['models']:>6d} {k['lowest_clean']:>12.3f} {k['gated']:>6d} {k['flagged']:>8d} "
                  f"{k['flagged_gated']:>20d} {k['flagged_gated_unjudged']:>18d}")
        out = [v for v in r["models"].values() if v["kind"] in OUT_OF_TASK]
        top = max(out, key=lambda v: v["z"])
        print(f"  out-of-task: highest fingerprint z {top['z']:.2f} ({top['kind']}, {top['arch']})")
        write_json(results_dir() / f"out_of_task-{args.zoo}-{args.other}-s{seed}.json", r)


if __name__ == "__main__":
    main()
