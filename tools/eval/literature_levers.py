"""Two fingerprinting levers from the literature, measured beside the shipped fingerprint (issue #10).

1. ModelDiff decision-distance vectors (Li et al., ISSTA 2021): N pairs (x_i, x'_i) of owner images and a
   perturbation of each; a model's DDV is, over i, how far its output moves from x_i to x'_i ("cos": cosine of the
   softmax outputs, one number per pair; "diff": the change of log-probabilities, one centred C-vector per pair).
   Two models' similarity: Pearson correlation of their "cos" DDVs, or mean per-pair cosine of their "diff" rows.
   Perturbations: PGD against the owner alone at a small L-inf radius, FGSM, Gaussian pixel noise, a one-pixel shift,
   a 3x3 blur.
2. A universal adversarial perturbation of the owner (after Peng et al., CVPR 2022): one perturbation (untargeted,
   or one per target class) fitted by sign-gradient ascent of the owner's loss on its own half-A images, its L-inf
   radius the smallest of a grid at which the owner's decision flips on at least UAP_FLIP of the images. A suspect's
   score: agreement with the owner's decisions on the perturbed owner images where the owner's decision flipped
   ("agree"), that minus its mean agreement with the calibration references' decisions there ("contrast"), or the
   ModelDiff-style "diff" similarity of the output change the perturbation causes. "uap-conf": the same perturbation
   fitted to move the owner and its surrogates and not its search references (a conferrable UAP).

Honesty: every input, perturbation and radius is fitted from the owner, its half-A images and its own helpers (the
fingerprint's surrogates and search references); scored models play no part. Each lever's null is the fingerprint's
calibration references (16: four architectures, four recipes), each scored against the others (leave-one-out) for a
contrast, z as the shipped outputs part computes it (mean of the suspect's architecture's references, pooled
within-architecture spread; floors as the shipped parts). Which variant of each lever is *the* lever is chosen by the
owner's helpers alone (``helper_separation``: surrogates, the owner's own students, against the search references,
both scored as suspects), reported beside every variant's AUC.

    cd tools/eval && ../../.venv/bin/python literature_levers.py --zoo digits --seeds 0 [--all-variants]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import fingerprint_ip as fip
import ipzoo
from common import CACHE, log, results_dir, wrap
from gifindex.adapter import SharedSpaceAdapter
from gifindex.fingerprint import FitConfig, helper_key, judge, load_helpers
from gifindex.fingerprint.fingerprint import MIN_OUTPUT_SIGMA, MIN_SIGMA, _null
from gifindex.fingerprint.outputs import model_logits

Z = 3.0
SCORED_ATTACKS = ("finetune-a", "finetune-l", "fine-pruning", "extract-l", "extract-p", "extract-adv")
N_PAIRS = 128          # ModelDiff pairs (owner images)
N_UAP_FIT = 512        # owner images a UAP is fitted on
N_UAP_EVAL = 256       # owner images a suspect is scored on (untargeted UAPs)
N_UAP_PER_TARGET = 32  # per target class (targeted UAPs)
UAP_EPS_GRID = (0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)
UAP_FLIP = 0.3         # smallest radius at which the owner flips at least this share of the fit images
UAP_STEPS = 40
# frozen after the development zoo (digits seed 0), where the helpers chose these too: reported beside the per-seed
# helper choice so that a held-out seed where the helpers pick another variant still shows the dev setting
FIXED = {"modeldiff-fixed": "md-cos-pgd0.03", "uap-fixed": "uap-t-agree"}
PGD_STEPS = 10
PGD_EPS = (0.01, 0.02, 0.03, 0.05, 0.1)
PAIR_SETS = tuple(f"pgd{e:g}" for e in PGD_EPS) + ("fgsm0.05", "noise0.1", "shift", "blur")


# ----------------------------------------------------------------------------------------------- perturbations
def pgd(fn, x: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """Untargeted L-inf PGD against ``fn`` (ascent of its loss on its own decisions); steps=1: FGSM."""
    with torch.no_grad():
        y = fn(x).argmax(1)
    step = eps if steps == 1 else eps / 4
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        loss = F.cross_entropy(fn((x + delta).clamp(0, 1)), y)
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta += step * g.sign()
            delta.clamp_(-eps, eps)
    return (x + delta).detach().clamp(0, 1)


def blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]]) / 16
    w = k.view(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), w, groups=x.shape[1])


def shift(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    out[:, :, 1:, 1:] = x[:, :, :-1, :-1]
    return out


def fit_uap(owner, surrogates, references, x: torch.Tensor, eps: float, target: int | None,
            seed: int) -> torch.Tensor:
    """One perturbation (1, 3, R, R) in the L-inf ball: sign-gradient ascent of the owner's loss on its own
    decisions over minibatches of x (targeted: descent of the loss of ``target``); with surrogates / references:
    also move the surrogates (their loss on the owner's clean decisions up) and keep the references (theirs down)."""
    with torch.no_grad():
        y = owner(x).argmax(1)
    gen = torch.Generator().manual_seed(seed)
    delta = torch.zeros(1, *x.shape[1:], requires_grad=True)
    step = eps / 10
    for _ in range(UAP_STEPS):
        idx = torch.randperm(len(x), generator=gen)[:128]
        xa = (x[idx] + delta).clamp(0, 1)
        if target is None:
            loss = F.cross_entropy(owner(xa), y[idx])
            if surrogates:
                loss = loss + sum(F.cross_entropy(s(xa), y[idx]) for s in surrogates) / len(surrogates)
            if references:
                loss = loss - sum(F.cross_entropy(r(xa), y[idx]) for r in references) / len(references)
        else:
            t = torch.full_like(y[idx], target)
            loss = -F.cross_entropy(owner(xa), t)
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta += step * g.sign()
            delta.clamp_(-eps, eps)
    return delta.detach()


def flip_rate(owner, x: torch.Tensor, delta: torch.Tensor) -> float:
    with torch.no_grad():
        return float((owner((x + delta).clamp(0, 1)).argmax(1) != owner(x).argmax(1)).float().mean())


# ----------------------------------------------------------------------------------------------- the probe sets
def make_probes(owner_ld, helpers, x_owner: torch.Tensor, seed: int) -> tuple[dict, dict]:
    """{set name: images} every model is evaluated on, and what was fitted (radii, flip rates, seconds)."""
    owner = SharedSpaceAdapter.of(owner_ld).eval().logits
    surr = [SharedSpaceAdapter.of(m).eval().logits for m in helpers.surrogates]
    refs = [SharedSpaceAdapter.of(m).eval().logits for m in helpers.references]
    order = torch.randperm(len(x_owner), generator=torch.Generator().manual_seed(4242 + seed))
    xp = x_owner[order[:N_PAIRS]]
    x_fit = x_owner[order[:N_UAP_FIT]]
    x_eval = x_owner[order[-N_UAP_EVAL:]] if len(order) >= N_UAP_FIT + N_UAP_EVAL else x_owner[order[:N_UAP_EVAL]]
    info: dict = {"owner_images": len(x_owner)}
    t0 = time.perf_counter()
    sets = {"clean": xp}
    for eps in PGD_EPS:
        sets[f"pgd{eps:g}"] = pgd(owner, xp, eps, PGD_STEPS)
    sets["fgsm0.05"] = pgd(owner, xp, 0.05, 1)
    gen = torch.Generator().manual_seed(999 + seed)
    sets["noise0.1"] = (xp + 0.1 * torch.randn(xp.shape, generator=gen)).clamp(0, 1)
    sets["shift"], sets["blur"] = shift(xp), blur(xp)
    with torch.no_grad():
        base = owner(xp).argmax(1)
        info["pair_owner_flip"] = {k: float((owner(v).argmax(1) != base).float().mean()) for k, v in sets.items()}
    info["pair_seconds"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    for kind, (s_, r_) in (("uap", ([], [])), ("uap-conf", (surr, refs))):
        chosen = None
        tried = []
        for eps in UAP_EPS_GRID:
            delta = fit_uap(owner, s_, r_, x_fit, eps, None, seed + 31)
            rate = flip_rate(owner, x_fit, delta)
            tried.append((eps, round(rate, 3)))
            chosen = (eps, delta)
            if rate >= UAP_FLIP:
                break
        info[f"{kind}_search"] = tried
        info[f"{kind}_eps"] = chosen[0]
        info[f"{kind}_eval_flip"] = flip_rate(owner, x_eval, chosen[1])
        sets[f"{kind}-clean"] = x_eval
        sets[kind] = (x_eval + chosen[1]).clamp(0, 1)
    # targeted: one UAP per class at the untargeted radius; evaluated on owner images not of that class
    eps = info["uap_eps"]
    with torch.no_grad():
        y_eval = owner(x_owner[order]).argmax(1)
    xt, xt_clean = [], []
    hits = []
    for t in range(helpers.num_classes):
        delta = fit_uap(owner, [], [], x_fit, eps, t, seed + 100 + t)
        pool = x_owner[order][y_eval != t][-N_UAP_PER_TARGET:]
        xt_clean.append(pool)
        xt.append((pool + delta).clamp(0, 1))
        with torch.no_grad():
            hits.append(float((owner(xt[-1]).argmax(1) == t).float().mean()))
    sets["uap-t-clean"], sets["uap-t"] = torch.cat(xt_clean), torch.cat(xt)
    info["uap_t_owner_hit"] = hits
    info["uap_seconds"] = round(time.perf_counter() - t0, 1)
    return sets, info


# ----------------------------------------------------------------------------------------------- similarities
def ddv_cos(l_a: torch.Tensor, l_b: torch.Tensor) -> torch.Tensor:
    """ModelDiff's DDV of one model: per pair, cosine of its softmax outputs on x and x'."""
    return F.cosine_similarity(l_a.softmax(1), l_b.softmax(1), dim=1)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    d = float(a.norm() * b.norm())
    return float((a * b).sum()) / d if d > 1e-12 else 0.0


def change_rows(l_a: torch.Tensor, l_b: torch.Tensor) -> torch.Tensor:
    d = l_b.log_softmax(1) - l_a.log_softmax(1)
    return d - d.mean(1, keepdim=True)


def rows_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12).mean())


def features(logits: dict[str, torch.Tensor]) -> dict[str, object]:
    """A model's lever features from its logits on every probe set."""
    out = {}
    for p in PAIR_SETS:
        out[f"ddv-cos-{p}"] = ddv_cos(logits["clean"], logits[p])
        out[f"ddv-lcos-{p}"] = F.cosine_similarity(logits["clean"], logits[p], dim=1)
        out[f"ddv-diff-{p}"] = change_rows(logits["clean"], logits[p])
    for u in ("uap", "uap-conf", "uap-t"):
        out[f"{u}-decisions"] = logits[u].argmax(1)
        out[f"{u}-diff"] = change_rows(logits[f"{u}-clean"], logits[u])
    return out


def variants(owner_logits: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """{variant: (kind, feature key, mask)}: kind "corr" (Pearson of vectors), "rows" (mean row cosine), "agree"
    (decision agreement on the owner-flipped mask)."""
    out = {}
    for p in PAIR_SETS:
        out[f"md-cos-{p}"] = ("corr", f"ddv-cos-{p}", None)
        out[f"md-cos-raw-{p}"] = ("corr-raw", f"ddv-cos-{p}", None)
        out[f"md-lcos-{p}"] = ("corr", f"ddv-lcos-{p}", None)
        out[f"md-diff-{p}"] = ("rows", f"ddv-diff-{p}", None)
    for u in ("uap", "uap-conf", "uap-t"):
        flipped = owner_logits[u].argmax(1) != owner_logits[f"{u}-clean"].argmax(1)
        out[f"{u}-agree"] = ("agree", f"{u}-decisions", flipped)
        out[f"{u}-agree-contrast"] = ("agree-contrast", f"{u}-decisions", flipped)
        out[f"{u}-diff"] = ("rows", f"{u}-diff", None)
    return out


def similarity(kind: str, fa, fb, mask) -> float:
    if kind == "corr":
        return pearson(fa, fb)
    if kind == "rows":
        return rows_cos(fa, fb)
    return float((fa[mask] == fb[mask]).double().mean()) if int(mask.sum()) else 0.0


def lever_scores(variant, feats_owner, feats_cal: list, feats_model, skip: int | None = None) -> float:
    """Score of one model: similarity to the owner ("agree": raw), or that minus its mean similarity to the
    calibration references (contrasts; ``skip``: a reference left out)."""
    kind, key, mask = variant
    base_kind = "agree" if kind.startswith("agree") else kind.removesuffix("-raw")
    s = similarity(base_kind, feats_model[key], feats_owner[key], mask)
    if kind in ("agree", "corr-raw"):
        return s
    others = [similarity(base_kind, feats_model[key], f[key], mask) for j, f in enumerate(feats_cal) if j != skip]
    return s - float(np.mean(others))


def z_against(value: float, null_by_arch: dict[str, list[float]], arch: str, kind: str, count: int) -> float:
    mean, spread, _ = _null(null_by_arch, arch, True)
    if kind == "agree":
        floor = max(math.sqrt(max(mean * (1 - mean), 1.0 / max(count, 1)) / max(count, 1)), MIN_SIGMA)
    else:
        floor = MIN_OUTPUT_SIGMA
    return (value - mean) / max(spread, floor)


def auc(pos: list[float], neg: list[float]) -> float:
    return fip.auc(pos, neg) if pos and neg else float("nan")


# ----------------------------------------------------------------------------------------------- one zoo seed
def evaluate(zoo_name: str, seed: int) -> dict:
    zoo = ipzoo.build(zoo_name, seed)
    count = ipzoo.SIZES[zoo_name]["full"][0]
    suspects: dict[str, tuple[str, str, torch.nn.Module]] = {}
    for n in zoo.models:
        if zoo.groups[n] in SCORED_ATTACKS + ("irrelevant",):
            suspects[n] = (zoo.groups[n], zoo.archs[n], zoo.models[n])
    suspects.update(fip.foreign_students(zoo, count))
    config = fip.zoo_config(zoo, FitConfig(), seed)
    fp, _, _ = fip.fitted(zoo, config)
    for n, (arch, module) in fip.recipe_negatives(zoo, fip.zoo_family(zoo), fp.num_classes).items():
        suspects[n] = ("recipe", arch, module)
    owner_ld = wrap(zoo.owner, zoo.spec)
    data, build = fip.owner_data(zoo), fip.helper_builder(zoo)
    trained_from = helper_key(owner_ld, data, config)
    helpers = load_helpers(CACHE / "helpers" / f"{zoo.name}-{zoo.seed}-{trained_from[:16]}.pt", build, trained_from)
    if helpers is None:
        raise SystemExit("helpers not cached: run fingerprint_ip.py for this zoo seed first")

    sets, info = make_probes(owner_ld, helpers, data.x, seed)
    log(f"{zoo_name} seed {seed}: probes fitted {info}")

    def logits_of(model) -> dict[str, torch.Tensor]:
        return {k: model_logits(model, v) for k, v in sets.items()}

    owner_logits = logits_of(owner_ld)
    f_owner = features(owner_logits)
    f_cal = [features(logits_of(m)) for _, m in helpers.calibration]
    cal_archs = [a for a, _ in helpers.calibration]
    var = variants(owner_logits)
    info["flipped_counts"] = {v: int(m.sum()) for v, (_, _, m) in var.items() if m is not None}
    # the null: each calibration reference scored against the others
    nulls: dict[str, dict[str, list[float]]] = {}
    for v, spec in var.items():
        by_arch: dict[str, list[float]] = {}
        for j, (arch, f) in enumerate(zip(cal_archs, f_cal)):
            by_arch.setdefault(arch, []).append(lever_scores(spec, f_owner, f_cal, f, skip=j))
        nulls[v] = by_arch

    def lever_z(f, arch: str) -> dict[str, float]:
        out = {}
        for v, spec in var.items():
            kind, _, mask = spec
            out[v] = z_against(lever_scores(spec, f_owner, f_cal, f), nulls[v], arch, kind,
                               0 if mask is None else int(mask.sum()))
        return out

    # helper separation: the owner's surrogates (its own students) against its search references, scored as suspects
    arch_of = lambda i: helpers.archs[i % len(helpers.archs)]  # noqa: E731
    sur_z = [lever_z(features(logits_of(m)), arch_of(i)) for i, m in enumerate(helpers.surrogates)]
    ref_z = [lever_z(features(logits_of(m)), arch_of(i)) for i, m in enumerate(helpers.references)]
    separation = {v: float(np.mean([z[v] for z in sur_z]) - np.mean([z[v] for z in ref_z])) for v in var}

    per_model = {}
    passes = sum(len(v) for v in sets.values())
    t0 = time.perf_counter()
    for n, (group, arch, module) in suspects.items():
        model = wrap(module, zoo.spec)
        zs = lever_z(features(logits_of(model)), arch)
        per_model[n] = {"group": group, "arch": arch, "lever_z": zs}
    lever_s = (time.perf_counter() - t0) / len(suspects)
    t0 = time.perf_counter()
    for n, (group, arch, module) in suspects.items():
        sc = judge(fp, wrap(module, zoo.spec), arch)
        per_model[n]["fp-out-z"] = sc.output_z if sc.output_z is not None else -1e9
        per_model[n]["fp-dec-z"] = sc.z if sc.z is not None else -1e9
        ev = sc.evidence
        per_model[n]["combined"] = -1e9 if (ev is None or sc.off_task) else ev
        per_model[n]["off_task"] = sc.off_task
    fp_s = (time.perf_counter() - t0) / len(suspects)
    return {"zoo": zoo_name, "seed": seed, "info": info, "separation": separation,
            "surrogate_z": sur_z, "reference_z": ref_z, "nulls": nulls, "per_model": per_model,
            "passes_per_suspect": {"lever_sets": {k: len(v) for k, v in sets.items()}, "all_sets": passes,
                                   "fp": fp.size + fp.output_probes},
            "seconds_per_suspect": {"all_lever_sets": round(lever_s, 3), "fp": round(fp_s, 3)},
            "fingerprint": {"size": fp.size, "eps": fp.recipe.get("eps")}}


def score_table(run: dict, score) -> dict:
    """AUC per attack (against `irrelevant`) and shares flagged at z >= 3 of a score function of a per-model row."""
    pm = run["per_model"]
    groups = {n: r["group"] for n, r in pm.items()}
    vals = {n: score(r) for n, r in pm.items()}
    neg = [vals[n] for n in pm if groups[n] == "irrelevant"]
    row = {"auc": {a: auc([vals[n] for n in pm if groups[n] == a], neg) for a in SCORED_ATTACKS}, "flagged": {}}
    for g in SCORED_ATTACKS + ("irrelevant", "recipe"):
        row["flagged"][g] = float(np.mean([vals[n] >= Z for n in pm if groups[n] == g]))
    row["flagged"]["foreign"] = float(np.mean([vals[n] >= Z for n in pm if groups[n].startswith("foreign")]))
    return row


def stouffer(a: float, b: float) -> float:
    return -1e9 if a <= -1e8 or b <= -1e8 else (a + b) / math.sqrt(2)


def report(run: dict, chosen: dict[str, str]) -> dict:
    tables = {"fp-out-z": score_table(run, lambda r: r["fp-out-z"]),
              "fp-dec-z": score_table(run, lambda r: r["fp-dec-z"]),
              "combined": score_table(run, lambda r: r["combined"])}
    for v in run["separation"]:
        tables[v] = score_table(run, lambda r, v=v: r["lever_z"][v])
        tables[f"{v}+combined"] = score_table(run, lambda r, v=v: stouffer(r["lever_z"][v], r["combined"]))
    for lever, v in chosen.items():
        tables[f"[{lever}]"] = tables[v]
        tables[f"[{lever}]+combined"] = tables[f"{v}+combined"]
    return tables


def choose(run: dict) -> dict[str, str]:
    """Each lever's variant by the owner's helpers alone: the largest separation of surrogates from references."""
    sep = run["separation"]
    md = max((v for v in sep if v.startswith("md-")), key=lambda v: sep[v])
    uap = max((v for v in sep if v.startswith("uap")), key=lambda v: sep[v])
    return {"modeldiff": md, "uap": uap, **FIXED}


def fmt(tables: dict, names: list[str]) -> str:
    head = "score".ljust(34) + " ".join(f"{a[:11]:>11s}" for a in SCORED_ATTACKS) + " | flagged " + \
        " ".join(f"{a[:6]:>6s}" for a in SCORED_ATTACKS) + "  FP: irr  recipe foreign"
    lines = [head]
    for n in names:
        t = tables[n]
        lines.append(n[:34].ljust(34) + " ".join(f"{t['auc'][a]:11.2f}" for a in SCORED_ATTACKS) + " |         "
                     + " ".join(f"{t['flagged'][a]:6.0%}" for a in SCORED_ATTACKS)
                     + f"  {t['flagged']['irrelevant']:6.0%} {t['flagged']['recipe']:6.0%} "
                       f"{t['flagged']['foreign']:6.0%}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="digits", choices=sorted(ipzoo.ZOOS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default=str(results_dir()), help="folder for the per-seed JSON (default: the cache's "
                        "results folder)")
    parser.add_argument("--all-variants", action="store_true", help="print every variant's table, not just the chosen")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        t0 = time.perf_counter()
        run = evaluate(args.zoo, seed)
        chosen = choose(run)
        tables = report(run, chosen)
        run["chosen"], run["tables"] = chosen, tables
        run["wall_seconds"] = round(time.perf_counter() - t0, 1)
        (out / f"levers-{args.zoo}-s{seed}.json").write_text(json.dumps(run, indent=1, default=float))
        print(f"== {args.zoo} seed {seed}: chosen by the helpers {chosen}; fingerprint {run['fingerprint']}; "
              f"passes per suspect {run['passes_per_suspect']}; s/suspect {run['seconds_per_suspect']}")
        print("probes:", json.dumps(run["info"]))
        names = ["fp-out-z", "fp-dec-z", "combined"]
        names += [f"[{k}]" for k in chosen] + [f"[{k}]+combined" for k in chosen]
        if args.all_variants:
            names += sorted(run["separation"], key=lambda v: -run["separation"][v])
        print(fmt(tables, names))
        if args.all_variants:
            print("helper separation (mean surrogate z - mean search-reference z):")
            print("  " + ", ".join(f"{v} {s:.2f}" for v, s in sorted(run["separation"].items(),
                                                                     key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
