"""Cost/quality sweep of ModelGiF: mean IP-protection AUC (over attacks) and task-relatedness agreement
(without diagonal, seed 0) against K (probes) at T=8 and against T (curve points) at K=16, with the signing
cost per model. Reuses the cached zoos of ip_protection.py and task_relatedness.py.

    python tools/eval/sweep.py [--quick]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import ip_protection
import task_relatedness
from common import distance_matrix, distances_to, results_dir, setup_threads, sign_all, write_json
from gifindex.apps.relatedness import score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    setup_threads()
    start = time.perf_counter()
    ks = (4, 16, 64) if args.quick else (4, 8, 16, 32, 64, 128)
    ts = (1, 4, 8) if args.quick else (1, 2, 4, 8, 16)
    grid = [(k, 8) for k in ks] + [(16, t) for t in ts if t != 8]
    zoo = ip_protection.ipzoo.build("digits", 0, args.quick)
    models, groups = zoo.models, zoo.groups
    tasks = task_relatedness.evaluate(quick=True, seeds=1, methods=())  # trains/loads the seed-0 encoders
    affinity = np.array(tasks["per_seed"][0]["affinity"])
    encoders = {t: task_relatedness.cached_model("tasks", f"enc-{t}-s0", None, [t, 0, tasks["encoder_epochs"], 1],
                                                 task_relatedness.Encoder) for t in task_relatedness.TASKS}
    te_img = task_relatedness.split(0)[1]
    from sklearn.metrics import roc_auc_score

    rows = []
    neg = [n for n in models if groups[n] == "irrelevant"]
    for k, t in grid:
        feats, secs = sign_all(models, zoo.heldout_raw, k=k, steps=t, methods=("modelgif",))
        dist = distances_to(feats["modelgif"], "owner", "modelgif")
        aucs = []
        for attack in ip_protection.ATTACKS:
            pos = [n for n in models if groups[n] == attack]
            aucs.append(roc_auc_score([1] * len(pos) + [0] * len(neg), [-dist[n] for n in pos + neg]))
        tfeats, _ = sign_all(encoders, te_img, k=k, steps=t, methods=("modelgif",))
        d = distance_matrix(tfeats["modelgif"], list(task_relatedness.TASKS), "modelgif")
        agree = score(d, affinity, list(task_relatedness.TASKS))["agreement_without_diagonal"]
        rows.append({"K": k, "T": t, "auc_mean": float(np.mean(aucs)), "agreement": agree,
                     "sign_seconds_per_model": secs["modelgif"]})
        print(f"K={k:4d} T={t:3d}  AUC {np.mean(aucs):.3f}  agreement {agree:+.3f}  {secs['modelgif']:.3f} s/model",
              flush=True)
    write_json(results_dir() / f"sweep{'-quick' if args.quick else ''}.json",
               {"rows": rows, "seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
