"""IP protection with owner-fitted decision fingerprints (issue #10), beside ModelGiF, on the ipzoo zoos.

Per zoo seed: the owner fits its fingerprint from its own data only (``gifindex.fingerprint``: surrogates and
references it trains itself, held-out calibration references), the scored models play no part; then every
scored model gets its agreement with the owner on the fingerprint and its output similarity on the owner's
probe images (z against the calibration references of its architecture: ``fp-dec-z``, ``fp-out-z``, and the
fingerprint's z, their Stouffer sum, ``fp-z``), its ModelGiF distance to the owner (z against the other
independent models, leave-one-out, as ``gifindex suspect`` does with the index population;
``modelgif-arch-z``: centred instead on the calibration references of the suspect's architecture, a lever not kept), and
the verdict's evidence (``combined``: gifindex.fingerprint.fingerprint.combine, what ``suspect`` does;
``max-z``: the larger of the two, the first rule tried). AUC per attack (attack models positive, independent
models negative) and what the verdict (z >= 3) flags; both again against only the independent models trained on
the thieves' half B (``auc_thief_data_negatives``, flagged ``irrelevant-b``): like the thieves' students, and
like any model in the wild, they never saw the owner's images, so they are the hard negatives for a fingerprint
built from those images. And what the verdict flags among independent models trained on the owner's data by
recipes neither calibration uses (``RECIPE_NEGATIVES``, flagged ``irrelevant-r``; docs/results.md 6.2d). And
against students of *another* teacher (``foreign_students``: Extract-L and Extract-P students trained exactly as
the zoo's, from an independent model of the owner's architecture; ``auc_foreign_students``, flagged ``foreign``):
a score that ranks the owner's students above them sees the owner, one that does not sees only that a model
learnt from some model's labels (docs/results.md 6.2f). ``--twins``: every hard-label student's label twin (same
architecture, initialisation, data and order, true labels), and students against twins (6.2i). ``--query-log``: the
owner's query log given to the fit (the thieves' query images, and for ``reviewed`` their true labels; QUERY_LOGS,
6.2i). ``--query-weighting``: how each kept answer counts (FitConfig.query_weighting, 6.2j). Last, what the rank
verdict (``suspect --budget 0.05``) flags among the run's independent models (tools/eval/rank_verdict.py, 6.2u).

    python tools/eval/fingerprint_ip.py --zoo digits --seeds 0 1 2 [--quick] [--twins] [--query-log reviewed]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

import ipzoo
import rank_verdict
from common import (CACHE, cached_model, distances_to, key, log, results_dir, setup_threads, sign_all, wrap,
                    write_json)
from gifindex.apps import suspect_from_distances
from gifindex.errors import GifindexError
from gifindex.fingerprint import (FingerprintScore, FitConfig, OwnerData, fit_fingerprint, helper_key, judge,
                                  load_fingerprint, load_helpers, save_fingerprint, save_helpers, train_helpers)
from gifindex.fingerprint.helpers import TrainRecipe, decisions, train_reference
from gifindex.fingerprint.fingerprint import ReorderedOutputs, combine
from gifindex.fingerprint.queries import QUERY_WEIGHTINGS, REVIEW_SHARE, least_sure
from gifindex.fingerprint.fit import CALIBRATION_RECIPES, PROBE_SOURCES, calibration_recipes, varied_calibration

Z_THRESHOLD = 3.0
RANK_BUDGET = 0.05  # the rank verdict's false-positive budget (suspect --budget; docs/results.md 6.2u)
SCORES = ("modelgif", "modelgif-arch-z", "modelgif+outputs", "owner-errors", "fp-agree", "fp-dec-z", "fp-out-z",
          "fp-query-z", "fp-z", "max-z", "combined-arch", "combined")
# The owner's query log (docs/results.md 6.2i): what its API answered. "thief": exactly the thieves' queries (half B's
# images; never their labels); "half": a seeded half of them (sampled logging); "mixed": the thieves' queries and, from
# other users, the held-out test images (a third of the log); "reviewed": the thieves' queries with their true
# labels, as an owner that reviewed its log knows them (only its wrong answers are kept); "uncertain": the same
# reviewed only where the owner was least sure, the quarter of the queries with its lowest top probability (a review
# budget an owner can choose without knowing the truth, 6.2k); "none": no log.
QUERY_LOGS = ("none", "thief", "half", "mixed", "reviewed", "uncertain", "pool", "pool-half")


def pixels(zoo: ipzoo.IPZoo, x: torch.Tensor) -> torch.Tensor:
    """The zoo's normalised model input -> the images in [0, 1] (the shared space fingerprints work in)."""
    mean = torch.tensor(zoo.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(zoo.spec.std).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)


def owner_data(zoo: ipzoo.IPZoo) -> OwnerData:
    x, y = zoo.owner_data
    return OwnerData(pixels(zoo, x), y)


def helper_builder(zoo: ipzoo.IPZoo):
    """Untrained models of the zoo's architectures in its input convention, for the helpers the owner trains."""
    def build(arch: str, classes: int):
        return wrap(zoo.make_arch(arch, classes), zoo.spec)
    return build


def fingerprint_score(fp, module: torch.nn.Module, arch: str, spec) -> FingerprintScore:
    """A model's decisions, outputs and answers to the logged queries on the fingerprint, as ``suspect`` scores
    them."""
    model = wrap(module, spec)
    return judge(fp, model, arch)


def seeded_half(count: int, seed: int) -> torch.Tensor:
    """Half of ``range(count)`` (rounded down), drawn by a seeded permutation: a query log missing half the queries."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:count // 2]


def query_log(zoo: ipzoo.IPZoo, which: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The owner's query log (QUERY_LOGS) as images in [0, 1] (the inputs of the thieves' queries), and the true
    labels of the reviewed ones ("reviewed", "uncertain": what an owner that reviewed its log knows; "pool": no log,
    but a public labelled dataset that holds the thief's images and the held-out ones it never queried; "pool-half":
    the same with a seeded half of the thief's images), else None."""
    if which == "none":
        return None, None
    x, y = zoo.attacker_data
    thief = pixels(zoo, x)
    if which == "thief":
        return thief, None
    if which == "reviewed":
        return thief, y.clone()
    if which == "uncertain":  # the rows `gifindex review-queries` writes for review
        least, _, _ = least_sure(zoo.owner, x, REVIEW_SHARE)
        labels = torch.full_like(y, -1)
        labels[least] = y[least]
        return thief, labels
    if which == "half":
        return thief[seeded_half(len(thief), 77 + zoo.seed)], None
    if which == "mixed":
        return torch.cat([thief, zoo.heldout_images()]), None
    if which in ("pool", "pool-half"):  # no log: a public labelled dataset with the thief's images (all, or a
        test_x, test_y = zoo.test_data   # seeded half) among others it never queried
        keep = torch.arange(len(thief)) if which == "pool" else seeded_half(len(thief), 78 + zoo.seed)
        return torch.cat([thief[keep], pixels(zoo, test_x)]), torch.cat([y[keep], test_y])
    raise SystemExit(f"unknown query log {which!r}: choose one of {', '.join(QUERY_LOGS)}")


def fitted(zoo: ipzoo.IPZoo, config: FitConfig, queries: str = "none"):
    """The owner's fingerprint for this zoo and seed (cached: fitting trains the helper models), and its
    calibration references' ModelGiF distances to the owner by architecture (the lever of centring a suspect's
    signature z on independent models of its own architecture, docs/results.md 6.1)."""
    # v4: the calibration references train on the helpers' rows (under --disjoint, not the fingerprint's images)
    log_tag = "" if queries == "none" else f"-q{queries}"
    settings = config.to_dict()
    if queries == "none":  # where the probes come from matters only with a log: keep earlier fits' keys
        settings.pop("output_probe_source")
    # v6: with a log, the owner images a class map is read on; v7: and the owner's and references' outputs there;
    # v8: the owner's and references' input-gradient bases (gradients.py), with a log or without
    version = "v8"
    path = CACHE / "fingerprints" / f"{zoo.name}-{zoo.seed}-{key(settings, 2)}{log_tag}-{version}.npz"
    sidecar = path.with_suffix(".distances.json")
    if path.is_file() and sidecar.is_file():
        return load_fingerprint(path), json.loads(sidecar.read_text()), 0.0
    start = time.perf_counter()
    owner = wrap(zoo.owner, zoo.spec)
    owner.name = "owner"
    calibration: dict[str, tuple[str, torch.nn.Module]] = {}

    def keep(arch: str, model) -> None:
        calibration[f"cal-{len(calibration)}"] = (arch, model.module)

    data, build = owner_data(zoo), helper_builder(zoo)
    # the helpers (nearly all of a fit's time) are cached apart: a query-log or probe variant reuses them
    trained_from = helper_key(owner, data, config)
    kept = CACHE / "helpers" / f"{zoo.name}-{zoo.seed}-{trained_from[:16]}.pt"
    helpers = load_helpers(kept, build, trained_from) if kept.is_file() else None
    if helpers is None:
        helpers = train_helpers(owner, data, config, build=build, progress=log)
        save_helpers(helpers, kept)
    fp = fit_fingerprint(owner, data, config, build=build, progress=log, on_calibration=keep, helpers=helpers,
                         **dict(zip(("queries", "query_labels"), query_log(zoo, queries))))
    # as `fit-probes` does with the index: the calibration references' ModelGiF distances to the owner
    feats, _ = sign_all({"owner": zoo.owner, **{n: m for n, (_, m) in calibration.items()}}, zoo.heldout_raw, k=16,
                        steps=8, methods=("modelgif",), spec=zoo.spec, resolution=zoo.resolution)
    distances: dict[str, list[float]] = {}
    for name, d in distances_to(feats["modelgif"], "owner", "modelgif").items():
        distances.setdefault(calibration[name][0], []).append(d)
    save_fingerprint(fp, path)
    write_json(sidecar, distances)
    return fp, distances, time.perf_counter() - start


@torch.no_grad()
def owner_errors_followed(zoo: ipzoo.IPZoo, names: list[str]) -> dict[str, float]:
    """A diagnostic lever (docs/results.md 6.2c), not part of the fingerprint: on the test images the owner
    misclassifies (its validation data: no model trained on them), the fraction on which a model takes the owner's
    wrong label (-1 for another label set). A hard-label student learned the owner's labels on the thieves' data,
    which differ from the truth exactly where the owner errs."""
    x, y = zoo.test_data
    owner_logits = zoo.owner(x)
    owner, classes = owner_logits.argmax(1), owner_logits.shape[1]
    wrong = owner != y
    out = {}
    for n in names:
        logits = zoo.models[n](x[wrong])
        out[n] = float((logits.argmax(1) == owner[wrong]).float().mean()) if logits.shape[1] == classes else -1.0
    return out


# Recipes neither calibration family uses (FitConfig's owner recipe, TrainRecipe.variant's four), fixed before any
# model trained by them was scored: independent models of every helper architecture, trained on the owner's own
# images by them, are negatives the zoo's independents (all trained by one recipe) do not include.
RECIPE_NEGATIVES = {
    "adam-nowd-long": dict(lr=1e-3, weight_decay=0.0, epochs=12, batch_size=128),
    "sgd-hi-lr": dict(optimizer="sgd", lr=0.1, weight_decay=1e-4),
    "adamw-very-short": dict(epochs=2),
    "adamw-low-lr-long-shift": dict(lr=1.5e-3, epochs=12, shift_augment=True),
}


def recipe_negatives(zoo: ipzoo.IPZoo, archs: tuple[str, ...], classes: int) -> dict[str, tuple[str, torch.nn.Module]]:
    """{name: (arch, model)}: one independent model per helper architecture and RECIPE_NEGATIVES recipe, trained on
    the owner's data (cached)."""
    data, build = owner_data(zoo), helper_builder(zoo)
    out = {}
    for a, arch in enumerate(archs):
        for r, (recipe_name, changes) in enumerate(RECIPE_NEGATIVES.items()):
            recipe = dataclasses.replace(TrainRecipe(), **changes)
            seed = 90_000 + 100 * zoo.seed + 10 * a + r

            def make(arch=arch, recipe=recipe, seed=seed):
                return train_reference(build, arch, data.x, data.y, classes, recipe, seed).module

            name = f"recipe-{recipe_name}-{a}"
            out[name] = (arch, cached_model("recipe-negatives", f"{zoo.name}-{zoo.seed}-{name}", make,
                                            [zoo.name, zoo.seed, arch, dataclasses.asdict(recipe), seed],
                                            lambda arch=arch: zoo.make_arch(arch, classes)))
    return out


FOREIGN_TEACHER = "irrelevant-0"  # every zoo's first independent model: the owner's architecture, the owner's half A


def foreign_students(zoo: ipzoo.IPZoo, count: int) -> dict[str, tuple[str, str, torch.nn.Module]]:
    """{name: (group, arch, model)}: ``count`` Extract-L and ``count`` Extract-P students of FOREIGN_TEACHER, trained
    as the zoo trains the owner's students (same architectures in turn, same data half B, same recipe; cached)."""
    if zoo.archs.get(FOREIGN_TEACHER) != zoo.recipe.owner_arch or ipzoo.on_thief_data(0, zoo.recipe):
        raise SystemExit(f"{zoo.name}: {FOREIGN_TEACHER} is not an independent model of the owner's architecture "
                         "trained on the owner's half A")
    teacher = zoo.models[FOREIGN_TEACHER]
    xb, _ = zoo.attacker_data
    labels = decisions(teacher, xb)
    out = {}
    for i in range(count):
        arch = zoo.recipe.student_archs[i % len(zoo.recipe.student_archs)]
        for kind in ("l", "p"):
            seed = 10_000 * zoo.seed + 800 + 10 * i + (kind == "p")

            def make(arch=arch, seed=seed, kind=kind):
                if kind == "l":
                    return ipzoo.hard_label_student(zoo.recipe, zoo.make_arch, arch, xb, labels, seed)
                return ipzoo.distilled_student(zoo.recipe, zoo.make_arch, arch, xb, labels, teacher, seed)

            name = f"foreign-{kind}-{i}"
            model = cached_model("foreign-students", f"{zoo.name}-{zoo.seed}-{name}", make,
                                 [zoo.name, zoo.seed, name, arch, seed, dataclasses.asdict(zoo.recipe)],
                                 lambda arch=arch: zoo.make_arch(arch, 10))
            out[name] = (f"foreign-{kind}", arch, model)
    return out


def task_negatives(zoo: ipzoo.IPZoo) -> dict[str, tuple[str, str, str, torch.nn.Module]]:
    """{name: (group, arch, task, model)}: independent models of the zoo's transfer label sets, trained from scratch
    by the zoo's recipe: per task, one of the owner's architecture on the owner's half A (its images, its body's
    shape) and one of another architecture on half B. A transfer verdict must not accuse them: they share the
    transfer copies' label set, not the owner's weights (cached under ``task-negatives/``)."""
    from common import train

    (xa, ya), (xb, yb) = zoo.owner_data, zoo.attacker_data
    others = [a for a in zoo.recipe.independent_archs if a != zoo.recipe.owner_arch] or [zoo.recipe.owner_arch]
    out = {}
    for i, (task, classes) in enumerate(ipzoo.TRANSFER_TASKS):
        for half, arch in (("a", zoo.recipe.owner_arch), ("b", others[i % len(others)])):
            x, y = (xa, ya) if half == "a" else (xb, yb)
            seed = 10_000 * zoo.seed + 900 + 10 * i + (half == "b")

            def make(arch=arch, x=x, y=y, task=task, classes=classes, seed=seed):
                torch.manual_seed(seed)
                return train(zoo.make_arch(arch, classes), x, ipzoo.relabel(y, task), zoo.recipe.epochs,
                             zoo.recipe.lr_for(arch), zoo.recipe.batch_size, seed)

            name = f"task-{task}-{half}"
            out[name] = ("irrelevant-t", arch, task,
                         cached_model("task-negatives", f"{zoo.name}-{zoo.seed}-{name}", make,
                                      [zoo.name, zoo.seed, name, arch, seed, dataclasses.asdict(zoo.recipe)],
                                      lambda arch=arch, classes=classes: zoo.make_arch(arch, classes)))
    return out


def relabelled_copies(zoo: ipzoo.IPZoo) -> dict[str, tuple[str, str, torch.nn.Module]]:
    """{name: (group, arch, model)}: every fine-tuned (finetune-a) and fine-pruned copy with its output units
    permuted by a seeded derangement (no unit keeps its class): the same function under other class names, the
    cheapest disguise of a copy; group ``relabelled``."""
    out = {}
    for n in [m for m, g in zoo.groups.items() if g in ("finetune-a", "fine-pruning")]:
        gen = torch.Generator().manual_seed(10_000 * zoo.seed + sum(map(ord, n)))
        order = torch.randperm(10, generator=gen)
        while bool((order == torch.arange(10)).any()):
            order = torch.randperm(10, generator=gen)
        out[f"relabelled-{n}"] = ("relabelled", zoo.archs[n], ReorderedOutputs(zoo.models[n], order).eval())
    return out


def auc_rows(scores: dict[str, float], groups: dict[str, str], negatives: list[str] | None = None) -> dict[str, float]:
    """AUC per attack against all independent models, or only ``negatives``."""
    neg = negatives if negatives is not None else [n for n in scores if groups[n] == "irrelevant"]
    row = {attack: auc([scores[n] for n in scores if groups[n] == attack], [scores[n] for n in neg])
           for attack in ipzoo.ATTACKS}
    row["mean"] = float(np.mean(list(row.values())))
    return row


def group_auc(scores: dict[str, float], groups: dict[str, str], group: str) -> float:
    """AUC of the models of ``group`` against all independent models."""
    return auc([scores[n] for n in scores if groups[n] == group],
                [scores[n] for n in scores if groups[n] == "irrelevant"])


@torch.no_grad()
def twin_report(zoo: ipzoo.IPZoo, scores: dict[str, dict[str, float]]) -> dict:
    """Hard-label students against their label twins (ipzoo.label_twins): per attack, how many of half B's labels
    the owner changed, how often students and twins take the owner's label there (students memorise them: the
    check that the twins differ from the students only there), and per score the AUC of students over twins and
    the share of pairs where the student scores higher."""
    xb, yb = zoo.attacker_data
    owner_labels = decisions(zoo.owner, xb)
    changed = owner_labels != yb
    report: dict = {"owner_changed_labels": int(changed.sum()), "of": len(yb)}
    for attack in ipzoo.HARD_LABEL_ATTACKS:
        pairs = [(n, f"twin-{attack.split('-', 1)[1]}-{n.rsplit('-', 1)[1]}")
                 for n, g in zoo.groups.items() if g == attack]
        pairs = [(s, t) for s, t in pairs if t in zoo.models]
        if not pairs:
            continue

        def follows(name: str) -> float:
            return float((decisions(zoo.models[name], xb[changed]) == owner_labels[changed]).float().mean())

        row = {"pairs": len(pairs), "students_follow_changed": [follows(s) for s, _ in pairs],
               "twins_follow_changed": [follows(t) for _, t in pairs], "scores": {}}
        for score, values in scores.items():
            students, twins = [values[s] for s, _ in pairs], [values[t] for _, t in pairs]
            wins = float(np.mean([(a > b) + 0.5 * (a == b) for a, b in zip(students, twins)]))
            row["scores"][score] = {"auc": auc(students, twins), "paired_wins": wins}
        report[attack] = row
    return report


def auc(positives: list[float], negatives: list[float]) -> float:
    """ROC AUC of a score: positives above negatives (sklearn)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([1] * len(positives) + [0] * len(negatives), positives + negatives))


def _judged(z: float | None) -> float:
    """A verdict's z as a score: a model the verdict does not judge (not of the owner's task) ranks below all."""
    return -1e9 if z is None else z


HELPERS = ("family", "owner")  # the zoo's architecture family (documented runs), or the owner's alone


def zoo_family(zoo: ipzoo.IPZoo) -> tuple[str, ...]:
    """The zoo's architectures: the owner's and the independent models' (its students share them)."""
    return tuple(dict.fromkeys((zoo.recipe.owner_arch,) + zoo.recipe.independent_archs))


def zoo_config(zoo: ipzoo.IPZoo, config: FitConfig, seed: int, helpers: str = "family") -> FitConfig:
    """``config`` as the evaluation fits a zoo's owner: helper architectures the zoo's family (the owner's and the
    independent models'), or with ``helpers`` "owner" the owner's alone (what `fit-probes` without --helper-arch
    does), unless named, and the zoo seed."""
    helper_archs = zoo_family(zoo) if helpers == "family" else (zoo.recipe.owner_arch,)
    return dataclasses.replace(config, helper_archs=config.helper_archs or helper_archs, seed=seed)


def evaluate(zoo_name: str, seed: int, quick: bool, config: FitConfig, with_recipe_negatives: bool = True,
             foreign: int | None = None, twins: bool = False, queries: str = "none",
             with_task_negatives: bool = True, helpers: str = "family") -> dict:
    """Every score of every model of one zoo seed; ``foreign``: students of another teacher per kind (None: as many
    as the zoo has per attack; 0: none); ``twins``: add every hard-label student's label twin (twin_report);
    ``queries``: the owner's query log (QUERY_LOGS); ``with_task_negatives``: add independent models of the
    transfer label sets (task_negatives)."""
    zoo = ipzoo.build(zoo_name, seed, quick)
    count = ipzoo.SIZES[zoo_name]["quick" if quick else "full"][0] if foreign is None else foreign
    added = {**(foreign_students(zoo, count) if count else {}), **(ipzoo.label_twins(zoo) if twins else {}),
             **relabelled_copies(zoo)}
    for name, (group, arch, module) in added.items():
        zoo.models[name], zoo.groups[name], zoo.archs[name], zoo.tasks[name] = module, group, arch, "digits"
    for name, (group, arch, task, module) in (task_negatives(zoo) if with_task_negatives else {}).items():
        zoo.models[name], zoo.groups[name], zoo.archs[name], zoo.tasks[name] = module, group, arch, task
    config = zoo_config(zoo, config, seed, helpers)
    fp, calibration_distances, fit_s = fitted(zoo, config, queries)
    scored = [n for n in zoo.models if n != "owner"]
    groups = {n: zoo.groups[n] for n in scored}
    start = time.perf_counter()
    fp_scores = {n: fingerprint_score(fp, zoo.models[n], zoo.archs[n], zoo.spec) for n in scored}
    fp_s = (time.perf_counter() - start) / len(scored)
    feats, sign_s = sign_all(zoo.models, zoo.heldout_raw, k=16, steps=8, methods=("modelgif", "modelgif+outputs"),
                             spec=zoo.spec, resolution=zoo.resolution)
    dist = distances_to(feats["modelgif"], "owner", "modelgif")
    dist_out = distances_to(feats["modelgif+outputs"], "owner", "modelgif+outputs")
    neg = [n for n in scored if groups[n] == "irrelevant"]
    z_pop, z_gif = {}, {}  # as `suspect` does; and (a lever, not kept) centred on the suspect's architecture
    for n in scored:
        population = [dist[m] for m in neg if m != n]
        calibrated = suspect_from_distances(dist[n], population, Z_THRESHOLD)
        z_pop[n] = calibrated["z"]
        own_kind = calibration_distances.get(zoo.archs[n], [])
        centre = float(np.mean(own_kind)) if len(own_kind) >= 2 else None
        z_gif[n] = z_pop[n] if centre is None else (centre - dist[n]) / calibrated["population"]["mad_sigma"]
    scores = {
        "modelgif": {n: -dist[n] for n in scored},
        "modelgif-arch-z": z_gif,
        "modelgif+outputs": {n: -dist_out[n] for n in scored},
        "fp-agree": {n: (fp_scores[n].agreement if fp_scores[n].agreement is not None else -1.0) for n in scored},
        "fp-dec-z": {n: (fp_scores[n].z if fp_scores[n].z is not None else -1e9) for n in scored},
        "fp-out-z": {n: (fp_scores[n].output_z if fp_scores[n].output_z is not None else -1e9) for n in scored},
        "fp-query-z": {n: (fp_scores[n].query_z if fp_scores[n].query_z is not None else -1e9) for n in scored},
        "fp-z": {n: (fp_scores[n].evidence if fp_scores[n].evidence is not None else -1e9) for n in scored},
        "owner-errors": owner_errors_followed(zoo, scored),
        "max-z": {n: max(z for z in (z_pop[n], fp_scores[n].evidence) if z is not None) for n in scored},
        "combined-arch": {n: _judged(combine(z_gif[n], fp_scores[n].evidence, fp_scores[n].off_task)[0])
                          for n in scored},
        "combined": {n: _judged(combine(z_pop[n], fp_scores[n].evidence, fp_scores[n].off_task)[0]) for n in scored},
    }
    zs = {"modelgif": z_pop, "modelgif-arch-z": z_gif, "combined-arch": scores["combined-arch"],
          "fp-dec-z": scores["fp-dec-z"], "fp-out-z": scores["fp-out-z"], "fp-query-z": scores["fp-query-z"],
          "fp-z": scores["fp-z"],
          "max-z": scores["max-z"], "combined": scores["combined"]}
    thief_data = [n for n in ipzoo.thief_data_negatives(zoo) if n in groups]
    foreign_names = [n for n in scored if groups[n].startswith("foreign-")]
    task_names = [n for n in scored if groups[n] == "irrelevant-t"]
    flagged = {}
    for name, z in zs.items():
        flagged[name] = {g: float(np.mean([z[n] >= Z_THRESHOLD for n in scored if groups[n] == g]))
                         for g in ipzoo.ATTACKS + ("irrelevant",)}
        flagged[name]["irrelevant-b"] = float(np.mean([z[n] >= Z_THRESHOLD for n in thief_data]))
        if foreign_names:
            flagged[name]["foreign"] = float(np.mean([z[n] >= Z_THRESHOLD for n in foreign_names]))
        twin_names = [n for n in scored if groups[n].startswith("twin-")]
        if twin_names:
            flagged[name]["twin"] = float(np.mean([z[n] >= Z_THRESHOLD for n in twin_names]))
        flagged[name]["relabelled"] = float(np.mean([z[n] >= Z_THRESHOLD for n in scored
                                                       if groups[n] == "relabelled"]))
        if task_names:
            flagged[name]["irrelevant-t"] = float(np.mean([z[n] >= Z_THRESHOLD for n in task_names]))
        external = [n for n in scored if groups[n] == "irrelevant-x"]  # trained elsewhere (ipzoo.lenet_mnist)
        if external:
            flagged[name]["irrelevant-x"] = float(np.mean([z[n] >= Z_THRESHOLD for n in external]))
    by_recipe = {}
    if with_recipe_negatives:  # the fingerprint's verdict on them (their outputs are comparable: combined = fp-z)
        for n, (arch, module) in recipe_negatives(zoo, zoo_family(zoo), fp.num_classes).items():
            by_recipe[n] = {"arch": arch, **fingerprint_score(fp, module, arch, zoo.spec).to_dict()}
        for name, field in (("fp-dec-z", "decision_z"), ("fp-out-z", "output_z"), ("fp-query-z", "query_z"),
                            ("fp-z", "z"), ("combined", "z")):
            # the verdict (combined) does not judge a model that hardly does the owner's task (combine, 6.2v)
            flagged[name]["irrelevant-r"] = float(np.mean([
                (m[field] if m[field] is not None and not (name == "combined" and m["off_task"]) else -1e9)
                >= Z_THRESHOLD for m in by_recipe.values()]))
    return {
        "zoo": zoo_name, "seed": seed, "quick": quick, "query_log": queries,
        "fingerprint": {"size": fp.size, "calibration": fp.calibration, "output_calibration": fp.output_calibration,
                        "queries": fp.queries, "query_effective_count": fp.query_effective_count,
                        "query_calibration": fp.query_calibration, "recipe": fp.recipe},
        "fit_seconds": round(fit_s, 1), "fp_seconds_per_model": fp_s, "gif_seconds_per_model": sign_s["modelgif"],
        "gifout_seconds_per_model": sign_s["modelgif+outputs"],
        "fp_passes_per_model": fp.size + fp.output_probes + fp.queries,
        "gif_passes_per_model": 16 * 8,
        "auc": {s: auc_rows(scores[s], groups) for s in SCORES}, "flagged": flagged,
        "auc_thief_data_negatives": {s: auc_rows(scores[s], groups, thief_data) for s in SCORES},
        "auc_foreign_students": ({s: auc_rows(scores[s], groups, foreign_names) for s in SCORES}
                                 if foreign_names else None),
        "auc_task_negatives": ({s: auc_rows(scores[s], groups, task_names) for s in SCORES} if task_names else None),
        "auc_relabelled": {s: group_auc(scores[s], groups, "relabelled") for s in SCORES},
        "per_model": {n: {"group": groups[n], "arch": zoo.archs[n], "distance": dist[n],
                          "distance_outputs": dist_out[n],
                          "z_gif": z_gif[n], "z_gif_population": z_pop[n],
                          **fp_scores[n].to_dict()} for n in scored},
        "recipe_negatives": by_recipe,
        "twins": twin_report(zoo, scores) if twins else None,
    }


def summarise(results: list[dict], which: str = "auc") -> dict:
    out = {}
    for s in SCORES:
        rows = [r[which][s] for r in results]
        out[s] = {a: {"mean": float(np.mean([row[a] for row in rows])), "min": float(np.min([row[a] for row in rows])),
                      "max": float(np.max([row[a] for row in rows]))} for a in ipzoo.ATTACKS + ("mean",)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", choices=sorted(ipzoo.ZOOS), default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--eps", type=float, default=FitConfig().search.eps)
    parser.add_argument("--surrogates", type=int, default=FitConfig().surrogates)
    parser.add_argument("--references", type=int, default=FitConfig().references)
    parser.add_argument("--calibration", type=int, default=FitConfig().calibration_per_arch)
    parser.add_argument("--candidates", type=int, default=FitConfig().candidates)
    parser.add_argument("--output-probes", type=int, default=FitConfig().output_probes,
                        help="images whose outputs are compared (0: decisions only, the fingerprint before "
                        "outputs)")
    parser.add_argument("--output-probes-from", choices=PROBE_SOURCES, default=FitConfig.output_probe_source,
                        help="with --query-log, compare outputs on logged queries (queries, 6.2n) or on the owner's "
                        "images (owner, before 6.2n)")
    parser.add_argument("--query-weighting", choices=QUERY_WEIGHTINGS, default=FitConfig.query_weighting,
                        help="how each kept answer to the logged queries counts (FitConfig.query_weighting; none: "
                        "alike, the query part before weights)")
    parser.add_argument("--disjoint", action="store_true", help="helpers train on half the owner's data, "
                        "candidates come from the other half (FitConfig.disjoint)")
    parser.add_argument("--calibration-recipes", choices=CALIBRATION_RECIPES, default=calibration_recipes(),
                        help="train the calibration references by four common recipes (FitConfig.varied_calibration)"
                        " or all by the owner's")
    parser.add_argument("--epochs", type=int, default=FitConfig().recipe.epochs,
                        help="reference epochs (surrogates get 2/3, as `gifindex fit-probes --epochs` does)")
    parser.add_argument("--foreign-students", type=int, default=None, metavar="N",
                        help="Extract-L and Extract-P students of another teacher, N of each (default: as many as the "
                             "zoo has per attack; 0: none)")
    parser.add_argument("--twins", action="store_true",
                        help="add every hard-label student's label twin (same architecture, initialisation, data "
                             "and order, true labels: ipzoo.label_twins) and report students against twins")
    parser.add_argument("--query-log", choices=QUERY_LOGS, default="none",
                        help="the owner's query log given to the fit (QUERY_LOGS: the thieves' query images, half of "
                             "them, or them and the held-out images, unlabelled; reviewed or its least-sure part "
                             "labelled; pool: them and the held-out images, all labelled, as a public dataset is; "
                             "pool-half: half of them and the held-out images)")
    parser.add_argument("--no-recipe-negatives", action="store_true",
                        help="skip the independent models trained by RECIPE_NEGATIVES (training them costs a few "
                             "minutes per seed on mnist32)")
    parser.add_argument("--helpers", choices=HELPERS, default="family",
                        help="helper architectures: the zoo's family (the owner's and the three the students and "
                             "independent models use; every documented run) or the owner's alone (fit-probes "
                             "without --helper-arch); the negatives are the same either way")
    parser.add_argument("--no-task-negatives", action="store_true",
                        help="skip the independent models of the transfer label sets (task_negatives)")
    args = parser.parse_args()
    setup_threads()
    default = FitConfig()
    same_epochs = args.epochs == default.recipe.epochs
    recipe = dataclasses.replace(default.recipe, epochs=args.epochs, surrogate_epochs=default.recipe.surrogate_epochs
                                 if same_epochs else max(1, round(args.epochs * 2 / 3)))
    config = FitConfig(surrogates=args.surrogates, references=args.references, calibration_per_arch=args.calibration,
                       candidates=args.candidates, output_probes=args.output_probes,
                       recipe=recipe, search=dataclasses.replace(default.search, eps=args.eps),
                       disjoint=args.disjoint, varied_calibration=varied_calibration(args.calibration_recipes),
                       query_weighting=args.query_weighting, output_probe_source=args.output_probes_from)
    results = []
    for seed in args.seeds:
        results.append(evaluate(args.zoo, seed, args.quick, config, not args.no_recipe_negatives,
                                args.foreign_students, args.twins, args.query_log, not args.no_task_negatives,
                                args.helpers))
        r = results[-1]
        log(f"{args.zoo} seed {seed}: fingerprint {r['fingerprint']['size']} inputs, {r['fingerprint']['queries']} "
            f"logged queries, fit {r['fit_seconds']} s")
        for s in SCORES:
            log(f"  {s:<10s} " + " ".join(f"{r['auc'][s][a]:.2f}" for a in ipzoo.ATTACKS + ("mean",))
                + "  flagged " + (" ".join(f"{v:.0%}" for v in r["flagged"][s].values()) if s in r["flagged"] else ""))
    summary = summarise(results)
    summary_thief = summarise(results, "auc_thief_data_negatives")
    summary_foreign = summarise(results, "auc_foreign_students") if all(r["auc_foreign_students"] for r in results) \
        else None
    summary_task = summarise(results, "auc_task_negatives") if all(r["auc_task_negatives"] for r in results) \
        else None
    seeds = "-".join(map(str, args.seeds))
    probes_tag = "-pqueries" if args.output_probes_from == "queries" else ""
    log_tag = "" if args.query_log == "none" else f"-q{args.query_log}-w{args.query_weighting}{probes_tag}"
    # fit settings other than the defaults name the file too, so a variant does not overwrite the default's results
    tagged = ("helper_archs", "seed", "output_probe_source", "query_weighting")  # named above, or per zoo and seed
    changed = {k: v for k, v in config.to_dict().items() if k not in tagged and v != FitConfig().to_dict()[k]}
    log_tag += "" if not changed else f"-cfg{key(changed, 2)}"
    log_tag += "" if args.helpers == "family" else f"-helpers-{args.helpers}"
    write_json(results_dir() / f"fingerprint_ip-{args.zoo}{'-quick' if args.quick else ''}{log_tag}-s{seeds}.json",
               {"runs": results, "summary": summary, "summary_thief_data_negatives": summary_thief,
                "summary_foreign_students": summary_foreign, "summary_task_negatives": summary_task})
    tables = [("all independent models", summary),
              ("independent models trained on the thieves' half B only", summary_thief)]
    if summary_foreign:
        tables.append(("students of another teacher (Extract-L and -P of an independent model)", summary_foreign))
    if summary_task:
        tables.append(("independent models of the transfer label sets (the transfer column)", summary_task))
    for title, table in tables:
        print(f"AUC mean [min, max] over seeds {' '.join(map(str, args.seeds))}, negatives: {title}")
        print("score      " + " ".join(f"{a:>17s}" for a in ipzoo.ATTACKS + ("mean",)))
        for s in SCORES:
            print(f"{s:<10s} " + " ".join(f"{v['mean']:.2f} [{v['min']:.2f},{v['max']:.2f}]"
                                          for v in table[s].values()))
    print("flagged (z >= 3), mean over seeds: " + " ".join(ipzoo.ATTACKS) + " independent independent-B "
          "[foreign: students of another teacher] [twin] [independent-T: of the transfer label sets] "
          "[independent-R: trained by other recipes, fingerprint scores only]")
    for s in results[0]["flagged"]:
        print(f"{s:<10s} " + " ".join(f"{np.mean([r['flagged'][s][g] for r in results]):.0%}"
                                      for g in results[0]["flagged"][s]))
    try:
        ranked = [rank_verdict.rank_run(r, RANK_BUDGET, "independent") for r in results]  # suspect --budget (6.2u)
    except GifindexError as exc:  # too few independent models in a run (say, without the recipe-trained ones)
        print(f"no verdict by rank at a {RANK_BUDGET:g} budget: {exc}")
    else:
        print(f"flagged by rank among the run's independent models at a {RANK_BUDGET:g} budget (suspect --budget), "
              "mean over seeds: " + "  ".join(
                  f"{a} {np.mean([flag for attacks, _ in ranked for flag, _ in attacks[a]]):.0%}"
                  for a in ipzoo.ATTACKS)
              + f"  false positives {np.mean([f for _, kinds in ranked for v in kinds.values() for f, _ in v]):.1%}")
    print("copies with their output units permuted (relabelled), AUC against all independent models, mean over "
          "seeds: " + ", ".join(f"{s} {np.mean([r['auc_relabelled'][s] for r in results]):.2f}" for s in SCORES))
    if args.twins:
        print_twins(results)


def print_twins(results: list[dict]) -> None:
    """Students against their label twins, per seed and attack (twin_report)."""
    for r in results:
        t = r["twins"]
        print(f"seed {r['seed']}: the owner changed {t['owner_changed_labels']} of {t['of']} labels of half B")
        for attack in ipzoo.HARD_LABEL_ATTACKS:
            if attack not in t:
                continue
            row = t[attack]
            print(f"  {attack}: on those images students take the owner's label "
                  f"{np.mean(row['students_follow_changed']):.0%}, twins {np.mean(row['twins_follow_changed']):.0%}")
            print("    " + "  ".join(f"{s} {v['auc']:.2f}/{v['paired_wins']:.2f}" for s, v in row["scores"].items()))


if __name__ == "__main__":
    main()
