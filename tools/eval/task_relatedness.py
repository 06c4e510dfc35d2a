"""Task relatedness testbed: a small Taskonomy on digits.

Nine tasks over the same images (16 px digits): class (10 digits), parity, coarse (loops: {0,6,8,9} /
{1,4,7} / rest), rotation (which of 0/90/180/270 degrees), autoencoding (the 8x8 digit), denoising (8x8
clean digit from a noisy input), edges (8x8 Sobel magnitude), inpainting (8x8 digit from one with its
centre blanked), ink (regression: mean intensity). One encoder per task (a small CNN, 64-d features, same
architecture and initialisation seed for all), trained with a task head. Empirical transfer affinity:
for every (source encoder, target task) a linear head is trained on the frozen source features; affinity
= minus the head's test loss (only ranks within a target column matter). Spearman per target column
between the methods' encoder distances and that affinity, with and without the diagonal, mean and spread
over seeds (every seed retrains the encoders and the heads and redraws the probes).

    python tools/eval/task_relatedness.py [--quick] [--seeds 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import (IMAGE_SIZE, METHODS, cached_model, digits_to_rgb, distance_matrix, log, normalise,
                    results_dir, setup_threads, sign_all, write_json)
from gifindex.apps.relatedness import score

TASKS = ("class", "parity", "coarse", "rotation", "autoencode", "denoise", "edges", "inpaint", "ink")
LOOPS = torch.tensor([0, 1, 2, 2, 1, 2, 0, 1, 0, 0])


class Encoder(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(2 * width, 64, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


def task_data(raw: np.ndarray, labels: np.ndarray, task: str, seed: int):
    """(encoder input normalised (N,3,S,S), target, loss kind, output size) for one task."""
    gen = torch.Generator().manual_seed(seed)
    img = torch.from_numpy(raw.astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    x = img.clone()
    if task == "rotation":
        rot = torch.randint(0, 4, (len(img),), generator=gen)
        x = torch.stack([torch.rot90(im, int(r), (0, 1)) for im, r in zip(img, rot)])
        target, kind, size = rot, "ce", 4
    elif task in ("class", "parity", "coarse"):
        target = {"class": y, "parity": y % 2, "coarse": LOOPS[y]}[task]
        kind, size = "ce", {"class": 10, "parity": 2, "coarse": 3}[task]
    elif task == "ink":
        target, kind, size = img.mean(dim=(1, 2), keepdim=False).view(-1, 1) * 4, "mse", 1
    else:
        kind, size = "mse", 64
        if task == "autoencode":
            target = img.reshape(len(img), -1)
        elif task == "denoise":
            x = (img + 0.3 * torch.randn(img.shape, generator=gen)).clamp(0, 1)
            target = img.reshape(len(img), -1)
        elif task == "inpaint":
            x = img.clone()
            x[:, 2:6, 2:6] = 0
            target = img.reshape(len(img), -1)
        else:  # edges
            kx = torch.tensor([[-1., 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
            gx = F.conv2d(img[:, None], kx, padding=1)
            gy = F.conv2d(img[:, None], kx.transpose(2, 3), padding=1)
            target = torch.sqrt(gx ** 2 + gy ** 2).reshape(len(img), -1) / 4
    return normalise(digits_to_rgb(x.numpy(), IMAGE_SIZE)), target, kind, size


def loss_fn(kind: str, out, target):
    return F.cross_entropy(out, target) if kind == "ce" else F.mse_loss(out, target)


def fit(params, forward, x, target, kind, epochs, lr, seed, batch=64):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            loss = loss_fn(kind, forward(x[idx]), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def split(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    return train_test_split((d.images / 16.0).astype(np.float32), d.target, test_size=0.3, random_state=seed,
                            stratify=d.target)


def evaluate(quick: bool = False, seeds: int = 3, k: int = 16, steps: int = 8, methods=METHODS) -> dict:
    setup_threads()
    start = time.perf_counter()
    epochs = 6 if quick else 12
    seeds = 1 if quick else seeds
    per_seed = []
    for seed in range(seeds):
        tr_img, te_img, tr_lab, te_lab = split(seed)
        train_sets = {t: task_data(tr_img, tr_lab, t, seed) for t in TASKS}
        test_sets = {t: task_data(te_img, te_lab, t, seed + 1000) for t in TASKS}
        encoders = {}
        for t in TASKS:
            x, target, kind, size = train_sets[t]

            def make(t=t, x=x, target=target, kind=kind, size=size):
                torch.manual_seed(seed)
                enc, head = Encoder(), nn.Linear(64, size)
                fit(list(enc.parameters()) + list(head.parameters()), lambda z: head(enc(z)), x, target, kind,
                    epochs, 3e-3, seed)
                return enc
            encoders[t] = cached_model("tasks", f"enc-{t}-s{seed}", make, [t, seed, epochs, 1], Encoder)
        # empirical transfer affinity: linear heads on frozen features
        affinity = np.zeros((len(TASKS), len(TASKS)))
        for i, s in enumerate(TASKS):
            enc = encoders[s].eval()
            for j, t in enumerate(TASKS):
                x, target, kind, size = train_sets[t]
                xt, tt, _, _ = test_sets[t]
                with torch.no_grad():
                    f, ft = enc(x), enc(xt)
                mu, sd = f.mean(0), f.std(0) + 1e-6
                f, ft = (f - mu) / sd, (ft - mu) / sd
                torch.manual_seed(seed)
                head = nn.Linear(64, size)
                fit(head.parameters(), head, f, target, kind, 30 if not quick else 15, 1e-2, seed, batch=128)
                with torch.no_grad():
                    affinity[i, j] = -float(loss_fn(kind, head(ft), tt))
        feats, sign_s = sign_all(encoders, te_img, k=k, steps=steps, seed=seed, methods=methods)
        scores = {}
        for method in methods:
            dist = distance_matrix(feats[method], list(TASKS), method)
            s = score(dist, affinity, list(TASKS))
            scores[method] = {"without_diagonal": s["agreement_without_diagonal"],
                              "with_diagonal": s["agreement_with_diagonal"]}
        per_seed.append({"seed": seed, "affinity": affinity.tolist(), "agreement": scores,
                         "sign_seconds_per_model": sign_s})
        log(f"seed {seed}: " + ", ".join(f"{m} {v['without_diagonal']:.3f}" for m, v in scores.items()))
    summary = {}
    for method in methods:
        summary[method] = {}
        for which in ("without_diagonal", "with_diagonal"):
            vals = np.array([p["agreement"][method][which] for p in per_seed])
            summary[method][which] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1
                                      else 0.0, "values": vals.tolist()}
    return {"scale": "quick" if quick else "full", "tasks": list(TASKS), "seeds": seeds, "K": k, "T": steps,
            "encoder_epochs": epochs, "summary": summary, "per_seed": per_seed,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("-K", type=int, default=16)
    parser.add_argument("-T", type=int, default=8)
    args = parser.parse_args()
    result = evaluate(args.quick, args.seeds, args.K, args.T)
    write_json(results_dir() / f"task_relatedness{'-quick' if args.quick else ''}.json", result)
    print("agreement = -Spearman(distance, affinity), mean over target columns; mean +- std over seeds")
    print(f"{'method':<10s} {'without diagonal':>20s} {'with diagonal':>20s}")
    for method, row in result["summary"].items():
        a, b = row["without_diagonal"], row["with_diagonal"]
        print(f"{method:<10s} {a['mean']:12.3f} +- {a['std']:.3f} {b['mean']:12.3f} +- {b['std']:.3f}")
    print(f"({result['seconds']} s)")


if __name__ == "__main__":
    main()
