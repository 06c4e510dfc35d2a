"""The demo model zoo: small networks trained on scikit-learn's digits, with known family relations.

``gifindex demo`` needs a zoo that exists without network access and whose ground truth is known, so
the similarity tree can be checked by eye: a few base architectures (timm and torchvision) trained
briefly on the 8x8 digits upscaled to RGB, and from each base a fine-tuned, a pruned, a distilled
(into another architecture) and a re-seeded model. Every model is an ordinary state-dict ``.pt``
file plus a manifest entry saying how to load it. Training is seeded and cached in the output folder.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import SignatureConfig
from .index import Index, index_exists
from .index.shards import file_sha256
from .probes import make_probes

# Fixed normalisation of the upscaled digits in [0, 1] (measured once at 32 px; recorded in
# every manifest entry so the index feeds the models exactly what they were trained on).
DIGITS_MEAN = (0.305, 0.305, 0.305)
DIGITS_STD = (0.324, 0.324, 0.324)
STAMP_NAME = "demo_zoo.json"
PROBES_NAME = "digit_probes.npy"
OWNER_DATA_NAME = "digits_train.npz"  # the base models' training digits, as an owner gives them to `fit-probes`
STAMP_VERSION = 2
RELATIONS = ("base", "finetuned", "pruned", "distilled", "reseeded")

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class DemoZooConfig:
    """What the demo zoo is made of; any change retrains (the cache is keyed on all of it).

    bases: architecture references of the base models (timm and torchvision); each base's distilled
    student uses the ``students`` entry at the same position (a different architecture). image_size 16:
    the digits are 8x8, so 16 px loses nothing and trains ~4x faster than 32 (timm's test_convnext needs
    >= 32 px and is therefore not a default base). Epoch counts are per model.
    relations: all four derived kinds. Measured ModelGiF distances (digit probes, R 8/16, K 16, T 4,
    output norm) in the default build: fine-tuned and pruned models at d 0.05-0.38 from their parent vs
    >= 0.86 to any other family; distilled students (augmented inputs, pure KL, 8 epochs) at 0.54-0.79
    (R 8) / 0.75-0.88 (R 16) from their teacher vs 0.77-0.96 to the nearest other family: nearer, but
    by a small margin (a plain 4-epoch distillation sat at ~0.93-0.99); re-seeded retrains at 0.83-0.99
    from their parent, about as far as unrelated models (ModelGiF does not claim otherwise).
    """

    seed: int = 0
    image_size: int = 16
    bases: tuple[str, ...] = ("timm:test_resnet", "timm:test_efficientnet", "torchvision:resnet18")
    students: tuple[str, ...] = ("timm:test_efficientnet", "timm:test_resnet", "timm:test_efficientnet")
    relations: tuple[str, ...] = RELATIONS
    epochs: int = 4
    lr: float = 5e-3
    batch_size: int = 64
    test_fraction: float = 0.25
    finetune_epochs: int = 2
    finetune_lr: float = 5e-4
    finetune_fraction: float = 0.5
    prune_amount: float = 0.4
    prune_recovery_epochs: int = 1
    distill_epochs: int = 4
    distill_temperature: float = 4.0
    distill_alpha: float = 1.0
    distill_augment: bool = True

    def __post_init__(self) -> None:
        if len(self.students) < len(self.bases):
            raise ValueError("demo zoo: every base needs a student architecture (students shorter than bases)")
        unknown = sorted(set(self.relations) - set(RELATIONS))
        if unknown or "base" not in self.relations:
            raise ValueError(f"demo zoo relations must include 'base' and be among {RELATIONS}")
        if not 0.0 < self.prune_amount < 1.0:
            raise ValueError("prune_amount must lie in (0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# ---------------------------------------------------------------------------------------------- data
@dataclass
class DigitsData:
    """Digits as normalised (N, 3, S, S) tensors, split once (stratified, seeded) into train and test."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    raw_test: np.ndarray  # (N, 8, 8) float32 in [0, 1]: the hold-out digits, usable as probes
    raw_train: np.ndarray  # (N, 8, 8) float32 in [0, 1]: the training digits (labels: y_train)


def digits_to_rgb(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, 8, 8) grey in [0, 1] -> (N, 3, size, size) in [0, 1]: bilinear upscaling, grey replicated."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return x.expand(-1, 3, -1, -1).contiguous()


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(DIGITS_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DIGITS_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def load_digit_data(config: DemoZooConfig) -> DigitsData:
    """Load scikit-learn's bundled digits (no download) and split them with the config's seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    tr_img, te_img, tr_lab, te_lab = train_test_split(images, labels, test_size=config.test_fraction,
                                                      random_state=config.seed, stratify=labels)
    return DigitsData(normalise(digits_to_rgb(tr_img, config.image_size)), torch.from_numpy(tr_lab),
                      normalise(digits_to_rgb(te_img, config.image_size)), torch.from_numpy(te_lab),
                      te_img, tr_img)


def write_owner_data(out_dir: Path, config: DemoZooConfig, data: DigitsData | None = None) -> Path:
    """``digits_train.npz`` in out_dir: the training digits as the base models saw them before normalising (grey,
    (N, S, S) in [0, 1] at the zoo's image size) with their labels: what an owner gives `gifindex fit-probes`
    (``--data``) to fit its model's fingerprint. Derived from the bundled digits, so written again when missing."""
    data = data or load_digit_data(config)
    images = digits_to_rgb(data.raw_train, config.image_size)[:, 0].numpy()
    path = out_dir / OWNER_DATA_NAME
    _atomic_write(path, lambda h: np.savez(h, x=images, y=data.y_train.numpy().astype(np.int64)))
    return path


# ---------------------------------------------------------------------------------------------- models
def build_arch(arch: str, num_classes: int = 10) -> nn.Module:
    """An untrained network for an ``timm:NAME`` / ``torchvision:NAME`` reference (seed the RNG first)."""
    source, _, name = arch.partition(":")
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    if source in ("torchvision", "tv"):
        import torchvision.models

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    raise ValueError(f"demo zoo: unsupported architecture reference {arch!r} (timm:NAME or torchvision:NAME)")


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def augment(xb: torch.Tensor, generator: torch.Generator, noise: float = 0.1, shift: int = 1,
            mixup: float = 0.5) -> torch.Tensor:
    """A distiller's ordinary augmentations of its own (normalised) digits, returned normalised.

    Per image, in [0, 1] pixel space: a random intensity scale in [0, 1] (dim to bright), Gaussian noise,
    a shift of up to ``shift`` pixels, and with probability ``mixup`` a mixup with another image of the
    batch. Labels are not needed: the student learns the teacher's outputs on whatever it is shown.
    """
    mean = torch.tensor(DIGITS_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DIGITS_STD).view(1, 3, 1, 1)
    raw = xb * std + mean
    n = len(raw)
    if mixup > 0:
        lam = torch.rand(n, 1, 1, 1, generator=generator)
        use = (torch.rand(n, 1, 1, 1, generator=generator) < mixup).float()
        partner = raw[torch.randperm(n, generator=generator)]
        raw = raw * (1 - use * lam) + partner * use * lam
    if shift > 0:
        dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=generator))
        raw = torch.roll(raw, shifts=(dy, dx), dims=(2, 3))
    raw = raw * torch.rand(n, 1, 1, 1, generator=generator)
    raw = (raw + noise * torch.randn(raw.shape, generator=generator)).clamp(0.0, 1.0)
    return (raw - mean) / std


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int,
          seed: int, teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.9,
          augmented: bool = False) -> nn.Module:
    """AdamW with a one-cycle schedule; with a teacher, the loss mixes soft-label KL (weight alpha) and CE.

    augmented (distillation only): each batch is the clean images plus an augmented copy (see augment());
    the augmented copy is trained on the teacher's soft outputs only.
    """
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * ((len(x) + batch_size - 1) // batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.15)
    if teacher is not None:
        teacher.eval()
    model.train()
    for _ in range(epochs):
        for index in _batches(len(x), batch_size, generator):
            if len(index) < 2:  # BatchNorm cannot train on a single image
                continue
            xb, yb = x[index], y[index]
            if teacher is not None and augmented:
                xb = torch.cat([xb, augment(xb, generator)])
            logits = model(xb)
            loss = F.cross_entropy(logits[:len(yb)], yb)
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher(xb) / temperature, dim=1)
                kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean")
                loss = alpha * kl * temperature ** 2 + (1.0 - alpha) * loss
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    hits = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
               for i in range(0, len(x), batch_size))
    return hits / max(1, len(x))


def prune_global(model: nn.Module, amount: float) -> list[tuple[nn.Module, str]]:
    """Global L1 magnitude pruning of every conv/linear weight; returns the pruned (module, name) pairs.

    The masks stay attached (so a recovery fine-tune keeps the zeros); call make_permanent() afterwards.
    """
    from torch.nn.utils import prune

    targets = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    return targets


def make_permanent(targets: list[tuple[nn.Module, str]]) -> None:
    from torch.nn.utils import prune

    for module, name in targets:
        prune.remove(module, name)


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all conv/linear layers."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(1, total)


# ---------------------------------------------------------------------------------------------- files
def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, mode) as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_state_dict(model: nn.Module, path: Path) -> str:
    """Save plain, contiguous CPU tensors only (loads with ``weights_only=True``); return the sha256."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write(path, lambda h: torch.save(state, h))
    return file_sha256(path)


def short_name(arch: str) -> str:
    """``timm:mobilenetv3_small_050`` -> ``mobilenetv3_small_050`` (a file- and index-friendly name)."""
    return arch.partition(":")[2].replace("/", "_").replace(".", "_")


def _entry(name: str, path: Path, arch: str, config: DemoZooConfig, family: str, relation: str,
           parent: str | None, acc: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    tags: dict[str, Any] = {"family": family, "relation": relation, "parent": parent,
                            "test_accuracy": round(acc, 4), "dataset": "sklearn-digits"}
    tags.update(extra or {})
    return {"name": name, "ref": str(path), "arch": arch, "num_classes": 10, "input_size": config.image_size,
            "mean": list(DIGITS_MEAN), "std": list(DIGITS_STD), "tags": tags}


def _load_cached(out_dir: Path, config: DemoZooConfig) -> list[dict[str, Any]] | None:
    """The stamped zoo in out_dir if it was built with this exact config and no file changed."""
    stamp_path = out_dir / STAMP_NAME
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("version") != STAMP_VERSION or stamp.get("config") != config.to_dict():
        return None
    entries = stamp.get("entries", [])
    hashes = stamp.get("sha256", {})
    for entry in entries:
        path = out_dir / Path(entry["ref"]).name
        if not path.is_file() or hashes.get(path.name) != file_sha256(path):
            return None
        entry["ref"] = str(path)
    if not (out_dir / PROBES_NAME).is_file():
        return None
    return entries


def build_demo_zoo(out_dir: str | os.PathLike, config: DemoZooConfig = DemoZooConfig(),
                   progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Train (or reuse from out_dir) the demo zoo and return its manifest entries.

    Per base architecture: ``base`` (trained from scratch), ``finetuned`` (base trained further on half
    the training set at a lower lr), ``pruned`` (global magnitude pruning of conv/linear weights, masked
    recovery epoch), ``distilled`` (a different architecture trained on the base's soft labels) and
    ``reseeded`` (same architecture and data, another initialisation and data order). Also writes
    ``digit_probes.npy`` (hold-out digits, usable as ``probe_source``), ``digits_train.npz`` (the training digits
    with labels, an owner's data for ``fit-probes``) and the cache stamp.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)
    cached = _load_cached(out, config)
    if cached is not None:
        say(f"demo zoo: reusing {len(cached)} trained models in {out}")
        if not (out / OWNER_DATA_NAME).is_file():   # a zoo built before the file was written
            write_owner_data(out, config)
        return cached

    data = load_digit_data(config)
    probes_path = out / PROBES_NAME
    _atomic_write(probes_path, lambda h: np.save(h, data.raw_test.astype(np.float32)))
    write_owner_data(out, config, data)
    entries: list[dict[str, Any]] = []
    hashes: dict[str, str] = {}
    started = time.perf_counter()

    def finish(model: nn.Module, name: str, arch: str, family: str, relation: str, parent: str | None,
               extra: dict[str, Any] | None = None) -> None:
        path = out / f"{name}.pt"
        hashes[path.name] = save_state_dict(model, path)
        acc = accuracy(model, data.x_test, data.y_test)
        entries.append(_entry(name, path, arch, config, family, relation, parent, acc, extra))
        say(f"  {name:<40s} {relation:<10s} test acc {acc:6.1%}  ({time.perf_counter() - started:5.1f} s)")

    for b, arch in enumerate(config.bases):
        family = short_name(arch)
        seed = config.seed * 1000 + 17 * b
        torch.manual_seed(seed)
        base = train(build_arch(arch), data.x_train, data.y_train, config.epochs, config.lr,
                     config.batch_size, seed)
        finish(base, family, arch, family, "base", None)

        if "finetuned" in config.relations:
            gen = torch.Generator().manual_seed(seed + 1)
            subset = torch.randperm(len(data.x_train), generator=gen)[:int(len(data.x_train) * config.finetune_fraction)]
            tuned = train(copy.deepcopy(base), data.x_train[subset], data.y_train[subset], config.finetune_epochs,
                          config.finetune_lr, config.batch_size, seed + 1)
            finish(tuned, f"{family}-finetuned", arch, family, "finetuned", family)

        if "pruned" in config.relations:
            pruned = copy.deepcopy(base)
            masks = prune_global(pruned, config.prune_amount)
            if config.prune_recovery_epochs > 0:
                pruned = train(pruned, data.x_train, data.y_train, config.prune_recovery_epochs,
                               config.finetune_lr, config.batch_size, seed + 2)
            make_permanent(masks)
            finish(pruned, f"{family}-pruned", arch, family, "pruned", family,
                   {"sparsity": round(sparsity(pruned), 4)})

        if "distilled" in config.relations:
            student_arch = config.students[b]
            torch.manual_seed(seed + 3)
            student = train(build_arch(student_arch), data.x_train, data.y_train, config.distill_epochs,
                            config.lr, config.batch_size, seed + 3, teacher=base,
                            temperature=config.distill_temperature, alpha=config.distill_alpha,
                            augmented=config.distill_augment)
            finish(student, f"{family}-distilled-{short_name(student_arch)}", student_arch, family,
                   "distilled", family)

        if "reseeded" in config.relations:
            torch.manual_seed(seed + 4)
            other = train(build_arch(arch), data.x_train, data.y_train, config.epochs, config.lr,
                          config.batch_size, seed + 4)
            finish(other, f"{family}-reseeded", arch, family, "reseeded", family)

    stamp = {"version": STAMP_VERSION, "config": config.to_dict(), "sha256": hashes,
             "probes_sha256": file_sha256(probes_path), "train_seconds": round(time.perf_counter() - started, 1),
             "entries": [{**e, "ref": Path(e["ref"]).name} for e in entries]}
    _atomic_write(out / STAMP_NAME, lambda h: h.write(json.dumps(stamp, indent=1)), mode="w")
    say(f"demo zoo: trained {len(entries)} models in {time.perf_counter() - started:.1f} s")
    return entries


# ---------------------------------------------------------------------------------------------- manifest
MANIFEST_HEADER = """\
# The gifindex demo zoo: small networks trained on scikit-learn's digits (8x8, upscaled to RGB).
# `gifindex demo` regenerates the .pt files (seeded, cached) and indexes them; refs are relative to
# the demo output folder. tags: family (the base model), relation (base / finetuned / pruned /
# distilled / reseeded), parent, test_accuracy (hold-out split).
"""


def manifest_entries(entries: list[dict[str, Any]], relative_to: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Entries in manifest form: refs made relative to ``relative_to`` when given, plain YAML types."""
    out = []
    for entry in entries:
        item = json.loads(json.dumps(entry))  # deep copy to plain types
        if relative_to is not None:
            item["ref"] = os.path.relpath(item["ref"], relative_to)
        item["tags"] = {k: v for k, v in item.get("tags", {}).items() if v is not None}
        out.append(item)
    return out


def write_manifest(entries: list[dict[str, Any]], path: str | os.PathLike,
                   relative_to: str | os.PathLike | None = None, header: str = MANIFEST_HEADER) -> Path:
    """Write a zoo manifest (DESIGN section 2: ``models:`` list of name/ref/arch/... entries) as YAML."""
    import yaml

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump({"models": manifest_entries(entries, relative_to)}, sort_keys=False,
                          default_flow_style=None, width=110)
    _atomic_write(target, lambda h: h.write(header + body), mode="w")
    return target


# ---------------------------------------------------------------- the demo index (gifindex demo)
QUICK_ZOO = DemoZooConfig(bases=("timm:test_resnet", "timm:test_efficientnet"),
                          students=("timm:test_efficientnet", "timm:test_resnet"), epochs=3, finetune_epochs=1,
                          distill_epochs=3)


def demo_index_config(zoo_dir: str | os.PathLike) -> SignatureConfig:
    """The demo index's signature configuration: the zoo's digit probes at 16 px (the digits are 8x8), and
    method ``modelgif+outputs`` so that distilled students (another architecture, the teacher's outputs)
    land next to their teachers, not only fine-tuned and pruned copies (docs/results.md)."""
    return SignatureConfig(method="modelgif+outputs", resolution=16, num_probes=16, steps=4,
                           probe_source=str(Path(zoo_dir) / PROBES_NAME))


def open_demo_index(index_dir: str | os.PathLike, config: SignatureConfig, entries: list[dict[str, Any]] | None = None,
                    device: str = "cpu") -> Index:
    """The demo index at ``index_dir``: reused when it was made for this zoo, else made afresh. Made for this zoo:
    the same configuration (the probes' path aside: the same probe images, so a copied or moved demo folder is
    reused) and, given ``entries`` (the zoo's entries, as build_demo_zoo returns them), no indexed model that the
    zoo does not hold as the same file (a --quick zoo's index is not the full zoo's)."""
    if index_exists(index_dir):
        existing = Index.open(index_dir)
        stale = (existing.config.replace(probe_source=config.probe_source) != config
                 or not np.array_equal(existing.probes.images.cpu().numpy(), make_probes(config).images.numpy())
                 or (entries is not None and _other_models(existing, entries)))
        if not stale:
            return existing     # as made (its recorded probe path may name the folder it was made in)
        existing.close()
        shutil.rmtree(index_dir)
    return Index.create(index_dir, config, device=device)


def _other_models(index: Index, entries: list[dict[str, Any]]) -> bool:
    """Whether ``index`` holds a model that is not one of the zoo's files as they are now."""
    files = {e["name"]: Path(e["ref"]) for e in entries}
    for record in index.records():
        path = files.get(record.name)
        if path is None or not path.is_file() or record.metadata.get("file_sha256") != file_sha256(path):
            return True
    return False


def relation_rows(index: Index, entries: list[dict[str, Any]]) -> list[list[Any]]:
    """Per derived model: distance to its parent, the parent's rank among its neighbours, nearest model, its
    family or not, and whether the parent is nearer than every model of another family."""
    names, dist = index.matrix()
    position = {name: i for i, name in enumerate(names)}
    family = {e["name"]: e["tags"].get("family") for e in entries}
    rows = []
    for entry in entries:
        parent = entry["tags"].get("parent")
        if not parent or entry["name"] not in position or parent not in position:
            continue
        i = position[entry["name"]]
        order = [j for j in dist[i].argsort() if j != i]
        nearest = names[order[0]]
        rank = 1 + [names[j] for j in order].index(parent)
        outside = [dist[i, j] for j in order if family.get(names[j]) != family[entry["name"]]]
        parent_first = all(dist[i, position[parent]] < d for d in outside)
        rows.append([entry["name"], entry["tags"].get("relation"), round(float(dist[i, position[parent]]), 4),
                     rank, nearest, "yes" if family.get(nearest) == family[entry["name"]] else "no",
                     "yes" if parent_first else "no"])
    return rows

