"""Taskonomy encoders (Zamir et al. 2018, PyTorch weights published by visualpriors, Sax et al.).

A ResNet-50-like encoder whose parameter names match visualpriors' ``TaskonomyEncoder`` so the
published ``{task}_encoder-{sha}.pth`` checkpoints (a dict with a ``state_dict`` key) load as is.
Differences from torchvision's ResNet-50: the stride-2 sits in the *last* bottleneck of layer1 and
layer2 (its shortcut is a parameter-free 1x1 max-pool), layer3/layer4 keep stride 1, the stem max-pool
has no padding but ``ceil_mode``, and a 3x3 conv compresses 2048 channels to 8. At 256 px the
output is 8 x 16 x 16. Inputs are expected in [-1, 1] (mean 0.5, std 0.5 on a [0, 1] image).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from gifindex.errors import MissingWeightsError
from gifindex.models import detect
from gifindex.models.sources import ModelSource, register_source
from gifindex.models.files import check_weight_dtypes
from gifindex.models.spec import Built, InputSpec, read_weights

if TYPE_CHECKING:
    from gifindex.refs import ModelRef

TASKONOMY_SPEC = InputSpec(size=(256, 256), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                           interpolation="bilinear")

# File names of the published encoder checkpoints (visualpriors), looked up in <torch hub>/checkpoints.
_FILES = """
autoencoding e35146c09253720e97c0a7f8ee4e896ac931f5faa1449df003d81e6089ac6307
class_object 4a4e42dad58066039a0d2f9d128bb32e93a7e4aa52edb2d2a07bcdd1a6536c18
class_scene ad85764467cddafd98211313ceddebb98adf2a6bee2cedfe0b922a37ae65eaf8
colorization 5ed817acdd28d13e443d98ad15ebe1c3059a3252396a2dff6a2090f6f86616a5
curvature 3767cf5d06d9c6bca859631eb5a3c368d66abeb15542171b94188ffbe47d7571
denoising b64cab95af4a2c565066a7e8effaf37d6586c3b9389b47fff9376478d849db38
depth_euclidean 88f18d41313de7dbc88314a7f0feec3023047303d94d73eb8622dc40334ef149
depth_zbuffer cc343a8ed622fd7ee3ce54398be8682bbbbfb5d11fa80e8d03a56a5ae4e11b09
edge_occlusion 5ac3f3e918131f61e01fe95e49f462ae2fc56aa463f8d353ca84cd4e248b9c08
edge_texture be2d686a6a4dfebe968d16146a17176eba37e29f736d5cd9a714317c93718810
egomotion 9aa647c34bf98f9e491e0b37890d77566f6ae35ccf41d9375c674511318d571c
fixated_pose 78cf321518abc16f9f4782b9e5d4e8f5d6966c373d951928a26f872e55297567
inpainting bf96fbaaea9268a820a19a1d13dbf6af31798f8983c6d9203c00fab2d236a142
jigsaw 0c2b342c9080f8713c178b04aa6c581ed3a0112fecaf78edc4c04e0a90516e39
keypoints2d 6b77695acff4c84091c484a7b128a1e28a7e9c36243eda278598f582cf667fe0
keypoints3d 7e3f1ec97b82ae30030b7ea4fec2dc606b71497d8c0335d05f0be3dc909d000d
nonfixated_pose 3433a600ca9ff384b9898e55d86a186d572c2ebbe4701489a373933e3cfd5b8b
normal f5e2c7737e4948e3b2a822f584892c342eaabbe66661576ba50db7cdd40561c5
point_matching 4bd2a6b2909d9998fabaf0278ab568f42f2b692a648e28555ede6c6cda5361f4
reshading de456246e171dc8407fb2951539aa60d75925ae0f1dbb43f110b7768398b36a6
room_layout 1e1662f43b834261464b1825227a04efba59b50cc8883bee9adc3ddafd4796c1
segment_semantic bb3007244520fc89cd111e099744a22b1e5c98cd83ed3f116fbff6376d220127
segment_unsup25d 7d12d2500c18c003ffc23943214f5dfd74932f0e3d03dde2c3a81ebc406e31a0
segment_unsup2d b679053a920e8bcabf0cd454606098ae85341e054080f2be29473971d4265964
vanishing_point afd2ae9b71d46a54efc5231b3e38ebc3e35bfab78cb0a78d9b75863a240b19a8
"""
ENCODER_FILES: dict[str, str] = {
    task: f"{task}_encoder-{sha}.pth" for task, sha in (line.split() for line in _FILES.strip().splitlines())
}
WEIGHTS_URL = "https://github.com/alexsax/visual-prior/raw/networks/assets/pytorch/{filename}"


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 (x4 channels) residual block."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """First block widens (1x1 conv shortcut), the last one strides (1x1 max-pool shortcut)."""
    out = planes * Bottleneck.expansion
    widen = nn.Sequential(nn.Conv2d(inplanes, out, 1, bias=False), nn.BatchNorm2d(out))
    layers: list[nn.Module] = [Bottleneck(inplanes, planes, downsample=widen)]
    layers += [Bottleneck(out, planes) for _ in range(blocks - 2)]
    pool = nn.Sequential(nn.MaxPool2d(kernel_size=1, stride=stride)) if stride != 1 else None
    layers.append(Bottleneck(out, planes, stride=stride, downsample=pool))
    return nn.Sequential(*layers)


class TaskonomyEncoder(nn.Module):
    """The Taskonomy encoder: (B, 3, 256, 256) in [-1, 1] -> (B, 8, 16, 16).

    ``normalize_outputs`` appends visualpriors' parameter-free per-channel GroupNorm. It is off by
    default: it makes every channel zero-mean unit-variance, so the l2 norm of the output is constant
    and its gradient (the ModelGiF signal for ``norm`` outputs) vanishes.
    """

    def __init__(self, normalize_outputs: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        self.layer1 = _stage(64, 64, 3, stride=2)
        self.layer2 = _stage(256, 128, 4, stride=2)
        self.layer3 = _stage(512, 256, 6, stride=1)
        self.layer4 = _stage(1024, 512, 3, stride=1)
        self.compress1 = nn.Conv2d(2048, 8, 3, stride=1, padding=1, bias=False)
        self.compress_bn = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU(inplace=True)
        self.groupnorm = nn.GroupNorm(8, 8, affine=False) if normalize_outputs else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.relu1(self.compress_bn(self.compress1(x)))
        return x if self.groupnorm is None else self.groupnorm(x)


def cached_encoder_file(task: str) -> Path | None:
    """The published checkpoint for ``task`` in ``<torch hub dir>/checkpoints``, if present."""
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    exact = ckpt_dir / ENCODER_FILES[task]
    if exact.is_file():
        return exact
    others = sorted(ckpt_dir.glob(f"{task}_encoder-*.pth")) if ckpt_dir.is_dir() else []
    return others[0] if others else None


def expected_location(task: str) -> str:
    """Where the checkpoint for ``task`` is looked for, with ``~`` for the home directory."""
    path = str(Path(torch.hub.get_dir()) / "checkpoints" / ENCODER_FILES[task])
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if home not in ("", "/") and path.startswith(home) else path


def load_taskonomy(task: str, *, weights: Any = None, random_init: bool = False,
                   trust: bool = False) -> Built:
    """Build the encoder for ``task``; weights from ``weights`` (path or ``(state_dict, sha)``),
    the torch hub checkpoints folder, or random (``random_init``)."""
    module = TaskonomyEncoder()
    meta: dict[str, Any] = {"task": task, "output_shape": (8, 16, 16)}
    sha = None
    if weights is None and not random_init:
        weights = cached_encoder_file(task)
        if weights is None:
            raise MissingWeightsError(
                f"no pretrained weights for taskonomy:{task} in the local cache: expected "
                f"{expected_location(task)} (from {WEIGHTS_URL.format(filename=ENCODER_FILES[task])}); "
                "pass --weights FILE, or --random-init for untrained weights")
        weights = str(weights)
    if weights is not None:
        sd, sha = read_weights(weights, trust)
        detect.fit_architecture("taskonomy", "encoder", sd)
        check_weight_dtypes(module, sd, f"taskonomy:{task}")
        module.load_state_dict(sd, strict=True)
        meta["weights_file"] = weights if isinstance(weights, str) else "(preloaded)"
    else:
        meta["random_init"] = True
    return Built(module, TASKONOMY_SPEC, f"taskonomy:{task}", sha, meta)


@register_source
class TaskonomySource(ModelSource):
    """``taskonomy:TASK``: the encoder above; inputs in [-1, 1] at 256 px (``TASKONOMY_SPEC``)."""

    kind = "taskonomy"

    def load(self, ref: "ModelRef", *, arch: str | None, weights: Any, num_classes: int | None,
             random_init: bool, trust: bool) -> Built:
        return load_taskonomy(ref.name, weights=weights, random_init=random_init, trust=trust)

    def has_local_weights(self, ref: "ModelRef") -> bool:
        return cached_encoder_file(ref.name) is not None

    def constructor(self, name: str) -> Callable[..., nn.Module]:
        return lambda **kw: TaskonomyEncoder()  # one architecture for every task; no classifier
