"""The owner's helper models: surrogates (students of the owner) and references (independent models).

Both are trained from scratch on the owner's own data in the shared input space, through the same
resize + normalisation the index applies. Surrogates learn the owner's hard decisions on augmented copies
of that data (a thief queries with inputs of its own, not the owner's training images); references learn
the true labels. A second, disjoint set of references (the calibration set) is never used to choose
fingerprint inputs: their agreement with the owner is the null distribution of the verdict. They are trained
by varied recipes (``TrainRecipe.variant``): independent models trained otherwise than the owner trains its
helpers follow the fingerprint more (an under-trained model follows perturbations more readily), and a null
of the owner's recipe alone flagged 15 % of such models as derived (docs/results.md 6.2d).
"""
from __future__ import annotations

import copy
import dataclasses
import io
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapter import SharedSpaceAdapter
from ..models.spec import LoadedModel

log = logging.getLogger(__name__)

# builds an untrained model of an architecture for C classes (seed the RNG first), with its input convention
Builder = Callable[[str, int], LoadedModel]


def reinitialised(module: nn.Module) -> nn.Module:
    """A fresh model of ``module``'s own architecture, whatever it is (a class of the user's, a TorchScript archive):
    a copy with every parameter drawn anew and normalisation statistics reset, for helpers of an owner whose
    architecture has no timm or torchvision name. Layers with ``reset_parameters`` use it (PyTorch's own
    initialisation); the rest (compiled TorchScript layers, bare parameters) get the same defaults by shape:
    Kaiming-uniform weights, biases uniform in +-1/sqrt(fan_in), 1-D scales 1 and other 1-D parameters 0. Draws from
    torch's global generator: seed it first. ``module`` itself is left as it was."""
    if isinstance(module, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        with warnings.catch_warnings():  # torch's deprecation notice of TorchScript is not the user's to act on
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(module, buffer)
            buffer.seek(0)
            fresh = torch.jit.load(buffer, map_location="cpu")
    else:
        fresh = copy.deepcopy(module)
    done: set[int] = set()
    for layer in fresh.modules():
        reset = None if isinstance(layer, torch.jit.ScriptModule) else getattr(layer, "reset_parameters", None)
        if callable(reset):
            reset()
            done.update(id(p) for p in layer.parameters(recurse=False))
    with torch.no_grad():
        for layer in fresh.modules():
            own = dict(layer.named_parameters(recurse=False))
            weight = own.get("weight")
            fan_in = weight[0].numel() if weight is not None and weight.ndim >= 2 else 0
            for name, param in own.items():
                if id(param) in done:
                    continue
                if param.ndim >= 2:
                    nn.init.kaiming_uniform_(param, a=math.sqrt(5))
                elif name == "bias" and fan_in:
                    nn.init.uniform_(param, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
                elif name in ("weight", "gamma", "scale"):
                    nn.init.ones_(param)
                else:
                    nn.init.zeros_(param)
            for name, buffer_ in layer.named_buffers(recurse=False):
                if name in ("running_mean", "num_batches_tracked"):
                    buffer_.zero_()
                elif name == "running_var":
                    buffer_.fill_(1)
    for param in fresh.parameters():
        param.requires_grad_(True)
    return fresh.train()


@dataclass(frozen=True)
class TrainRecipe:
    """How a helper model is trained (one-cycle schedule)."""

    epochs: int = 6            # references (true labels)
    surrogate_epochs: int = 4  # surrogates see 1 + augment_copies times as many images per epoch
    lr: float = 5e-3
    batch_size: int = 64
    augment_copies: int = 2  # surrogates: augmented copies of the owner data per epoch, beside the originals
    optimizer: str = "adamw"   # or "sgd" (Nesterov momentum 0.9)
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    shift_augment: bool = False  # each batch randomly shifted (up to 1/16 of the side) with pixel noise

    def variant(self, index: int) -> "TrainRecipe":
        """The index-th of four ways others commonly train the same model (cycled): this recipe; SGD with
        momentum at 10x the learning rate and larger batches; half the learning rate for 1.5x the epochs with
        label smoothing; twice the learning rate for half the epochs on shifted, noisy batches. Their mean epochs
        equal this recipe's. The calibration references use them, so that the null of independent models
        holds the spread that training choices alone cause (models in the wild were not trained by the owner's
        recipe), chosen a priori, not by looking at any suspect."""
        kind = index % 4
        if kind == 1:
            return dataclasses.replace(self, optimizer="sgd", lr=self.lr * 10, weight_decay=5e-4,
                                       batch_size=self.batch_size * 2)
        if kind == 2:
            return dataclasses.replace(self, lr=self.lr / 2, epochs=max(1, round(self.epochs * 1.5)),
                                       label_smoothing=0.1)
        if kind == 3:
            return dataclasses.replace(self, lr=self.lr * 2, epochs=max(1, round(self.epochs / 2)),
                                       batch_size=max(2, self.batch_size // 2), shift_augment=True)
        return self


def random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The whole batch rolled by one random offset of up to 1/16 of the side, in each direction."""
    shift = max(1, x.shape[-1] // 16)
    dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=generator))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Inputs a thief might query with, made from the owner's images in [0, 1]: per image a random
    intensity scale in [0, 1], Gaussian noise (sd 0.1), a shift of up to 1/16 of the side, and (half the time)
    a mixup."""
    n = len(x)
    lam = torch.rand(n, 1, 1, 1, generator=generator) * (torch.rand(n, 1, 1, 1, generator=generator) < 0.5)
    out = random_shift(x * (1 - lam) + x[torch.randperm(n, generator=generator)] * lam, generator)
    out = out * torch.rand(n, 1, 1, 1, generator=generator)
    return (out + 0.1 * torch.randn(out.shape, generator=generator)).clamp(0.0, 1.0)


class Trainable(nn.Module):
    """A loaded model as a trainable function of shared-space images (the adapter's resize + normalise)."""

    def __init__(self, model: LoadedModel):
        super().__init__()
        self.adapter = SharedSpaceAdapter(model.module, model.spec)
        for p in self.adapter.model.parameters():
            p.requires_grad_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter.model(self.adapter.to_native(x))


@torch.no_grad()
def decisions(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 256,
              device: str | None = None) -> torch.Tensor:
    """argmax of ``model`` over ``x`` in batches; with ``device``, each batch is moved there and the answers back
    to the CPU (``x`` may be larger than the device holds)."""
    if device is None:
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def shifted(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A batch as a plain training augmentation sees it: shifted by up to 1/16 of the side, pixel noise sd 0.03."""
    out = random_shift(x, generator)
    return (out + 0.03 * torch.randn(out.shape, generator=generator)).clamp(0.0, 1.0)


def train_helper(model: LoadedModel, x: torch.Tensor, y: torch.Tensor, recipe: TrainRecipe, seed: int,
                 device: str = "cpu") -> LoadedModel:
    """Train ``model`` on (x, y) and return it frozen, in eval mode."""
    net = Trainable(model).to(device)
    net.adapter.model.train()
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in net.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        optimiser = torch.optim.SGD(params, lr=recipe.lr, momentum=0.9, nesterov=True,
                                    weight_decay=recipe.weight_decay)
    else:
        optimiser = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    per_epoch = (len(x) + recipe.batch_size - 1) // recipe.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=recipe.lr,
                                                   total_steps=max(1, recipe.epochs * per_epoch), pct_start=0.15)
    for _ in range(recipe.epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on one image
                continue
            xb = shifted(x[idx], gen) if recipe.shift_augment else x[idx]
            loss = F.cross_entropy(net(xb.to(device)), y[idx].to(device), label_smoothing=recipe.label_smoothing)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    module = net.adapter.model.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(module=module, spec=model.spec, ref=model.ref, name=model.name, source=model.source,
                       arch=model.arch, num_outputs=model.num_outputs, meta={**model.meta, "helper": True})


def train_surrogate(build: Builder, arch: str, owner: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    num_classes: int, recipe: TrainRecipe, seed: int, device: str = "cpu") -> LoadedModel:
    """A student of the owner: its hard labels on the owner's images and augmented copies of them."""
    gen = torch.Generator().manual_seed(seed)
    xs = torch.cat([x] + [augment(x, gen) for _ in range(recipe.augment_copies)])
    ys = decisions(owner, xs.to(device)).cpu()
    torch.manual_seed(seed)
    started = time.perf_counter()
    model = train_helper(build(arch, num_classes), xs, ys, dataclasses.replace(recipe, epochs=recipe.surrogate_epochs),
                         seed, device)
    log.info("surrogate %s (seed %d) trained in %.1f s", arch, seed, time.perf_counter() - started)
    return model


def train_reference(build: Builder, arch: str, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                    recipe: TrainRecipe, seed: int, device: str = "cpu") -> LoadedModel:
    """An independent model: the true labels of the owner's images."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    model = train_helper(build(arch, num_classes), x, y, recipe, seed, device)
    log.info("reference %s (seed %d) trained in %.1f s", arch, seed, time.perf_counter() - started)
    return model
