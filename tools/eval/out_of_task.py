"""Suspects that do not do the owner's task, against the owner's fingerprint (docs/results.md 6.2v).

A fingerprint's nulls are fitted on models of the owner's task (its calibration references); a hub also holds
models that are not: untrained weights, models of another task with the owner's class count, a constant answer.
Per zoo seed: the zoo's default fingerprint (as ``fingerprint_ip.py`` fits it, cached), then every out-of-task
suspect's decisions, outputs and fingerprint z (what ``suspect`` decides by), and its **clean agreement**, the share
of the fingerprint's probe images on which it gives the owner's answer. Out-of-task suspects: ``--untrained`` models
of each zoo architecture, the ``--other`` zoo's owner and independent models (another 10-class task at the same
resolution), and a constant predictor of each class. Also the lowest clean agreement of each group of the zoo's own
models (attacks, independent models, recipe-trained ones, another teacher's students), and the gate registered and
measured in 6.2v, ``chance + 0.5 (references' mean - chance)`` (chance: the largest share of one class among the
owner's answers on those images): which models it would set aside (not adopted: it also sets aside barely trained
independent models of the task). ``suspect`` notes a suspect whose clean agreement is below every calibration
reference's (``task_note``).

    python tools/eval/out_of_task.py --zoo digits --other textures --seeds 0
"""
from __future__ import annotations

import argparse

import torch

import ipzoo
from common import log, results_dir, setup_threads, wrap, write_json
from fingerprint_ip import fingerprint_score, fitted, foreign_students, helper_builder, recipe_negatives, zoo_config
from gifindex.fingerprint import FitConfig
from gifindex.fingerprint.outputs import model_logits

Z_THRESHOLD = 3.0
GATE_SHARE = 0.5  # the measured gate: this far from chance toward the references' mean clean agreement


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


def out_of_task(zoo: ipzoo.IPZoo, other: ipzoo.IPZoo, untrained: int) -> dict[str, tuple]:
    """{name: (kind, arch, module, input spec)} of the out-of-task suspects."""
    build = helper_builder(zoo)
    out = {}
    for arch in sorted(set(zoo.archs.values())):
        for s in range(untrained):
            torch.manual_seed(1000 + s)
            out[f"untrained-{arch.partition(':')[2]}-{s}"] = ("untrained", arch, build(arch, 10).module, zoo.spec)
    for name, module in other.models.items():
        if other.groups[name] in ("owner", "irrelevant"):
            out[f"{other.name}:{name}"] = ("another task", other.archs[name], module, other.spec)
    for c in range(10):
        out[f"constant-{c}"] = ("constant", "constant", ConstantAnswer(c), zoo.spec)
    return out


def evaluate(zoo_name: str, other_name: str, seed: int, untrained: int) -> dict:
    zoo = ipzoo.build(zoo_name, seed, False)
    other = ipzoo.build(other_name, seed, False)
    config = zoo_config(zoo, FitConfig(), seed)
    fp, _, _ = fitted(zoo, config)
    answers = fp.probe_logits.argmax(1)
    chance = float(torch.bincount(answers, minlength=fp.num_classes).max()) / len(answers)
    references = fp.reference_clean_agreement
    gate = chance + GATE_SHARE * (sum(references) / len(references) - chance)

    def clean(module: torch.nn.Module, spec) -> float:
        return float((model_logits(wrap(module, spec), fp.probe_inputs).argmax(1) == answers).float().mean())

    suspects = {}
    for name, (kind, arch, module, spec) in out_of_task(zoo, other, untrained).items():
        score = fingerprint_score(fp, module, arch, spec)
        suspects[name] = {"kind": kind, "arch": arch, "clean_agreement": clean(module, spec), "decision_z": score.z,
                          "output_z": score.output_z, "z": score.evidence}
        log(f"  {name:<32s} clean {suspects[name]['clean_agreement']:.3f}  z {score.evidence:6.2f}")
    own = {n: (zoo.groups[n], m) for n, m in zoo.models.items() if n != "owner" and zoo.tasks[n] == "digits"}
    own.update({n: ("recipe-trained", m) for n, (_, m) in recipe_negatives(zoo, config.helper_archs, 10).items()})
    own.update({n: (g, m) for n, (g, _, m) in foreign_students(zoo, ipzoo.SIZES[zoo_name]["full"][0]).items()})
    lowest: dict[str, tuple[float, str]] = {}
    for name, (group, module) in own.items():
        value = clean(module, zoo.spec)
        if group not in lowest or value < lowest[group][0]:
            lowest[group] = (value, name)
    return {"zoo": zoo_name, "other": other_name, "seed": seed, "chance": chance, "references": references,
            "gate": gate, "suspects": suspects,
            "flagged": sorted(n for n, s in suspects.items() if s["z"] is not None and s["z"] >= Z_THRESHOLD),
            "highest": max(suspects, key=lambda n: suspects[n]["z"]),
            "lowest_clean_by_group": {g: {"clean_agreement": v, "model": n} for g, (v, n) in sorted(lowest.items())},
            "zoo_models_below_gate": sorted(g for g, (v, _) in lowest.items() if v < gate)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", choices=sorted(ipzoo.ZOOS), default="digits")
    parser.add_argument("--other", choices=sorted(ipzoo.ZOOS), default="textures",
                        help="the zoo whose models are the other task's (its resolution must be the zoo's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--untrained", type=int, default=3, help="untrained models per zoo architecture")
    args = parser.parse_args()
    setup_threads()
    for seed in args.seeds:
        r = evaluate(args.zoo, args.other, seed, args.untrained)
        z = {n: s["z"] for n, s in r["suspects"].items()}
        cleans = [s["clean_agreement"] for s in r["suspects"].values()]
        print(f"{args.zoo} seed {seed}: {len(z)} out-of-task suspects, flagged at z >= {Z_THRESHOLD:g}: "
              f"{len(r['flagged'])}; highest z {z[r['highest']]:.2f} ({r['highest']}); their clean agreement "
              f"{min(cleans):.2f}-{max(cleans):.2f}; references {min(r['references']):.2f}-"
              f"{max(r['references']):.2f}; gate {r['gate']:.3f}, zoo groups with a model below it: "
              f"{', '.join(r['zoo_models_below_gate']) or 'none'}")
        for group, low in r["lowest_clean_by_group"].items():
            print(f"  lowest clean agreement, {group:<16s} {low['clean_agreement']:.3f} ({low['model']})")
        write_json(results_dir() / f"out_of_task-{args.zoo}-{args.other}-s{seed}.json", r)


if __name__ == "__main__":
    main()
