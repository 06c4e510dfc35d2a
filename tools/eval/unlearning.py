"""Unlearning verification testbed, after the paper's Figure 4 (settings of ZEST), on digits.

Reference: test_resnet trained on the whole training split. Unrelated: the same, other seed. Exactly
unlearned: retrained from scratch without the forget set (128 random training digits). Approximately
unlearned: the reference fine-tuned to forget (amnesiac unlearning, Graves et al.: the forget digits with
random wrong labels, mixed with retained data), after 1..E epochs. Probes: the forget digits themselves.
Reported: each classifier's distance to the reference, per method, over the unlearning epochs; a plot.

    python tools/eval/unlearning.py [--quick] [--plot docs/unlearning.png]
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from common import (METHODS, accuracy, build_arch, cached_model, digits, results_dir, setup_threads,
                    sign_all, train, write_json)
from gifindex.methods import feature_distance

ARCH = "timm:test_resnet"
FORGET = 128


def amnesiac(model, x_forget, y_forget, x_retain, y_retain, epochs: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    wrong = (y_forget + torch.randint(1, 10, y_forget.shape, generator=gen)) % 10
    retain = torch.randperm(len(x_retain), generator=gen)[: 3 * len(x_forget)]
    x = torch.cat([x_forget, x_retain[retain]])
    y = torch.cat([wrong, y_retain[retain]])
    return train(model, x, y, epochs, 1e-3, 64, seed)


def evaluate(quick: bool = False, k: int = 16, steps: int = 8, methods=METHODS) -> dict:
    setup_threads()
    start = time.perf_counter()
    epochs = 4 if quick else 6
    max_unlearn = 3 if quick else 6
    data = digits(0)
    n = len(data.x_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(7))
    f_idx, r_idx = perm[:FORGET], perm[FORGET:]
    xf, yf, xr, yr = data.x_train[f_idx], data.y_train[f_idx], data.x_train[r_idx], data.y_train[r_idx]
    # raw forget digits (8x8 in [0, 1]) for the probes: recover them from the split
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits_raw = load_digits()
    raw_train = train_test_split((digits_raw.images / 16.0).astype(np.float32), digits_raw.target, test_size=0.25,
                                 random_state=0, stratify=digits_raw.target)[0]
    raw_forget = raw_train[f_idx.numpy()]

    def make_ref(seed):
        def make():
            torch.manual_seed(seed)
            return train(build_arch(ARCH), data.x_train, data.y_train, epochs, 5e-3, 64, seed)
        return make

    template = lambda: build_arch(ARCH)  # noqa: E731
    ref = cached_model("unlearning", "reference", make_ref(0), ["ref", epochs, 1], template)
    models = {"reference": ref,
              "unrelated": cached_model("unlearning", "unrelated", make_ref(1), ["unrel", epochs, 1], template)}

    def make_exact():
        torch.manual_seed(0)  # same initialisation and schedule as the reference, forget set removed
        return train(build_arch(ARCH), xr, yr, epochs, 5e-3, 64, 0)

    models["exact"] = cached_model("unlearning", "exact", make_exact, ["exact", epochs, 1], template)
    approx = ref
    for e in range(1, max_unlearn + 1):
        prev = approx
        approx = cached_model("unlearning", f"approx-{e}",
                              lambda p=prev, e=e: amnesiac(copy.deepcopy(p), xf, yf, xr, yr, 1, 50 + e),
                              ["approx", e, epochs, 1], template)
        models[f"approx-{e}"] = approx
    train_s = time.perf_counter() - start
    feats, sign_s = sign_all(models, raw_forget, k=min(k, FORGET), steps=steps, methods=methods)
    result = {"scale": "quick" if quick else "full", "K": min(k, FORGET), "T": steps, "forget": FORGET,
              "train_seconds": round(train_s, 1), "sign_seconds_per_model": sign_s, "distance": {},
              "accuracy": {}, "forget_accuracy": {}}
    for name, m in models.items():
        result["accuracy"][name] = round(accuracy(m, data.x_test, data.y_test), 4)
        result["forget_accuracy"][name] = round(accuracy(m, xf, yf), 4)
    for method in methods:
        result["distance"][method] = {name: feature_distance(feats[method]["reference"], feats[method][name], method)
                                      for name in models if name != "reference"}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(result["distance"])
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.0), sharey=False)
    for ax, method in zip(np.atleast_1d(axes), methods):
        d = result["distance"][method]
        epochs = sorted(int(n.split("-")[1]) for n in d if n.startswith("approx-"))
        ax.plot(epochs, [d[f"approx-{e}"] for e in epochs], "o-", label="approx. unlearned")
        ax.axhline(d["exact"], color="tab:green", ls="--", label="exactly unlearned")
        ax.axhline(d["unrelated"], color="tab:red", ls=":", label="unrelated (other seed)")
        ax.set_title(method)
        ax.set_xlabel("unlearning epochs")
    np.atleast_1d(axes)[0].set_ylabel("distance to reference\n(probes: forget set)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-K", type=int, default=16)
    parser.add_argument("-T", type=int, default=8)
    parser.add_argument("--plot", default=None, help="PNG to write (e.g. docs/unlearning.png)")
    args = parser.parse_args()
    result = evaluate(args.quick, args.K, args.T)
    write_json(results_dir() / f"unlearning{'-quick' if args.quick else ''}.json", result)
    if args.plot:
        plot(result, Path(args.plot))
    names = list(next(iter(result["distance"].values())))
    print("distance to the reference on forget-set probes:")
    print("method     " + " ".join(f"{n:>10s}" for n in names))
    for method, row in result["distance"].items():
        print(f"{method:<10s} " + " ".join(f"{row[n]:10.4f}" for n in names))
    print("forget-set accuracy: " + ", ".join(f"{n} {a:.2f}" for n, a in result["forget_accuracy"].items()))
    print(f"({result['seconds']} s)")


if __name__ == "__main__":
    main()
