"""Reference points (probes) in the shared input space, and the baseline each path starts from.

Probes are drawn once per index from a source (built-in images, a folder, an array file), seeded, and
stored exactly as used, so every signature of an index sees bit-identical references.
"""
from __future__ import annotations

import logging
import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .adapter import SharedSpaceAdapter
from .errors import ProbeError
from .safefs import check_file
from .models import load_model

if TYPE_CHECKING:
    from .config import SignatureConfig
    from .models.spec import LoadedModel

log = logging.getLogger(__name__)

MAX_PROBE_FILE = 4 << 30  # bytes: a probe array file larger than this is refused before it is read
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Natural photographs shipped inside scikit-image (no download) and scikit-learn.
SKIMAGE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "camera", "coins", "moon", "brick", "grass", "gravel", "clock", "page", "text")


@dataclass
class Probes:
    """K reference images and their baselines, both (K, 3, R, R) float32 in [0, 1]."""

    images: torch.Tensor
    baseline: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3 or self.images.shape[2] != self.images.shape[3]:
            raise ProbeError(f"probe images must be (K, 3, R, R), got {tuple(self.images.shape)}")
        if self.baseline.shape != self.images.shape:
            raise ProbeError(f"baseline shape {tuple(self.baseline.shape)} differs from probes "
                             f"{tuple(self.images.shape)}")

    @property
    def num_probes(self) -> int:
        return int(self.images.shape[0])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def to_bytes(self) -> bytes:
        """The .npz file's bytes (np.savez is deterministic: no timestamps, so equal probes give equal bytes)."""
        buffer = io.BytesIO()
        np.savez(buffer, images=self.images.numpy(), baseline=self.baseline.numpy())
        return buffer.getvalue()

    def save(self, path: str | os.PathLike) -> None:
        """Write to an .npz file (the caller handles atomic replacement)."""
        with open(path, "wb") as handle:
            handle.write(self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Probes":
        try:
            with np.load(path, allow_pickle=False) as data:
                images, baseline = data["images"], data["baseline"]
        except (OSError, KeyError, ValueError) as exc:
            raise ProbeError(f"cannot read probes from {path}: {exc}") from None
        return cls(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)),
                   torch.from_numpy(np.ascontiguousarray(baseline, dtype=np.float32)))


# ---------------------------------------------------------------------------------------------- sources
def _to_chw_float(image: np.ndarray) -> np.ndarray:
    """Any HxW, HxWxC or CxHxW image (uint8, uint16, bool, float in [0,1], or other integers in 0..255) ->
    float32 3xHxW in [0, 1]."""
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.uint16:     # 16-bit images: full scale is 65535 (dividing by 255 turned them white)
        arr = arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
            raise ProbeError(f"integer probe images of dtype {arr.dtype} hold values {int(arr.min())}.."
                             f"{int(arr.max())}; expected 0..255 (uint8), uint16, or floats in [0, 1]")
        arr = arr.astype(np.float32) / 255.0
    else:
        arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[None], 3, axis=0)
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3):
        arr = arr[..., :3].transpose(2, 0, 1) if arr.shape[-1] != 1 else np.repeat(arr.transpose(2, 0, 1), 3, 0)
    elif arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
        arr = arr[:3] if arr.shape[0] != 1 else np.repeat(arr, 3, axis=0)
    else:
        raise ProbeError(f"cannot interpret an array of shape {arr.shape} as an image")
    if arr.shape[0] == 3 and not np.isfinite(arr).all():
        raise ProbeError("probe images contain NaN or Inf values")
    return np.clip(arr, 0.0, 1.0)


@lru_cache(maxsize=1)
def builtin_images() -> tuple[np.ndarray, ...]:
    """Natural photographs that ship with scikit-image and scikit-learn, as 3xHxW float32 arrays."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    images = [_to_chw_float(getattr(skimage.data, name)()) for name in SKIMAGE_IMAGES]
    images += [_to_chw_float(img) for img in load_sample_images().images]
    return tuple(images)


def _read_folder(folder: Path) -> list[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ProbeError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in folder {folder}")
    images = []
    for path in files:
        try:
            with Image.open(path) as img:
                images.append(_to_chw_float(np.asarray(img.convert("RGB"))))
        except (UnidentifiedImageError, OSError) as exc:
            raise ProbeError(f"cannot read image {path}: {exc}") from None
    return images


def _read_array(path: Path) -> list[np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ProbeError(f"cannot read probe array {path}: {exc}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            key = next((k for k in ("images", "x") if k in loaded.files), loaded.files[0] if loaded.files else None)
            if key is None:
                raise ProbeError(f"{path} holds no arrays")
            array = loaded[key]
    else:
        array = loaded
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] > 4):
        array = array[None] if array.ndim == 2 else array  # a single image, or a stack of gray images
    if array.ndim < 3:
        raise ProbeError(f"{path}: expected images shaped (N, H, W), (N, H, W, C) or (N, C, H, W), "
                         f"got {array.shape}")
    if array.size == 0:
        raise ProbeError(f"{path} holds no images (its array is shaped {array.shape})")
    if np.issubdtype(array.dtype, np.floating) and (np.nanmax(array) > 1.0 or np.nanmin(array) < 0.0):
        raise ProbeError(f"{path}: float images must lie in [0, 1] (found {np.nanmin(array):.3g}.."
                         f"{np.nanmax(array):.3g})")
    return [_to_chw_float(a) for a in array]


def load_source(source: str) -> tuple[list[np.ndarray], bool]:
    """Return the source's images and whether to take random crops (built-in photos) or whole images."""
    if source == "builtin":
        return list(builtin_images()), True
    path = Path(source)
    if not path.exists():
        raise ProbeError(f"probe source not found: {source} (expected 'builtin', a folder of images, "
                         "or an .npz/.npy file)")
    if path.is_dir():
        return _read_folder(path), False
    if path.suffix.lower() in (".npz", ".npy"):
        check_file(path, "probe file", MAX_PROBE_FILE, ProbeError)  # not a FIFO, device or huge file
        return _read_array(path), False
    raise ProbeError(f"unsupported probe source {source}: expected 'builtin', a folder of images, "
                     "or an .npz/.npy file")


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a 3xHxW tensor to 3 x size x size (antialiased), clamped to [0, 1]."""
    out = F.interpolate(image[None].double(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)[0]
    return out.clamp_(0.0, 1.0).float()


def _sample(images: list[np.ndarray], crop: bool, count: int, size: int,
            rng: np.random.Generator) -> torch.Tensor:
    """Draw ``count`` samples: random square crops (scale 0.25-1 of the short side) or whole images."""
    picks = rng.integers(0, len(images), size=count) if crop or count > len(images) else \
        rng.permutation(len(images))[:count]
    out = []
    for index in picks:
        image = images[int(index)]
        _, height, width = image.shape
        if crop:
            side = max(8, int(round(min(height, width) * rng.uniform(0.25, 1.0))))
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            image = image[:, top:top + side, left:left + side]
            if rng.random() < 0.5:
                image = image[:, :, ::-1]
        else:
            side = min(height, width)  # centre square
            top, left = (height - side) // 2, (width - side) // 2
            image = image[:, top:top + side, left:left + side]
        out.append(_resize(torch.from_numpy(np.ascontiguousarray(image)), size))
    return torch.stack(out)


def _cutmix(first: torch.Tensor, second: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """CutMix: paste a random box of ``second`` into ``first`` (box area ~ Uniform(0, 1), as in the paper)."""
    mixed = first.clone()
    size = first.shape[-1]
    for k in range(first.shape[0]):
        lam = rng.uniform(0.0, 1.0)
        cut = int(round(size * np.sqrt(1.0 - lam)))
        cy, cx = int(rng.integers(0, size)), int(rng.integers(0, size))
        y0, y1 = max(cy - cut // 2, 0), min(cy + cut // 2, size)
        x0, x1 = max(cx - cut // 2, 0), min(cx + cut // 2, size)
        mixed[k, :, y0:y1, x0:x1] = second[k, :, y0:y1, x0:x1]
    return mixed


def pgd_perturb(images: torch.Tensor, anchor: "LoadedModel", eps: float, steps: int,
                device: str | torch.device = "cpu", batch_size: int = 32) -> torch.Tensor:
    """Untargeted L-inf PGD against the anchor's own prediction (random start omitted: deterministic).

    x_{n+1} = clip_{x, eps}(x_n + alpha * sign(grad CE(anchor(x_n), y))), alpha = 2.5 eps / steps.
    """
    adapter = SharedSpaceAdapter(anchor.module, anchor.spec).to(device)
    alpha = 2.5 * eps / steps
    out = []
    for start in range(0, images.shape[0], batch_size):
        clean = images[start:start + batch_size].to(device)
        labels = adapter.predict(clean)
        x = clean.clone()
        for _ in range(steps):
            x.requires_grad_(True)
            loss = F.cross_entropy(adapter.logits(x), labels)
            (grad,) = torch.autograd.grad(loss, x)
            with torch.no_grad():
                x = x + alpha * grad.sign()
                x = torch.min(torch.max(x, clean - eps), clean + eps).clamp_(0.0, 1.0)
        out.append(x.detach().cpu())
    return torch.cat(out)


def make_baseline(config: "SignatureConfig") -> torch.Tensor:
    """The path start x0 for each probe: zeros, or a seeded uniform-noise image per probe."""
    shape = (config.num_probes, 3, config.resolution, config.resolution)
    if config.baseline == "zero":
        return torch.zeros(shape)
    generator = torch.Generator().manual_seed(config.seed + 7919)
    return torch.rand(shape, generator=generator)


def make_probes(config: "SignatureConfig", anchor: "LoadedModel | None" = None,
                device: str | torch.device = "cpu") -> Probes:
    """Draw the K reference images of ``config`` (seeded, reproducible bit for bit on one machine).

    ``pgd`` probes need the anchor model; it is loaded from ``config.pgd_anchor`` unless given.
    """
    rng = np.random.default_rng(config.seed)
    images, crop = load_source(config.probe_source)
    samples = _sample(images, crop, config.num_probes, config.resolution, rng)
    if config.probe_kind == "cutmix":
        others = _sample(images, crop, config.num_probes, config.resolution, rng)
        samples = _cutmix(samples, others, rng)
    elif config.probe_kind == "pgd":
        if anchor is None:
            anchor = load_model(config.pgd_anchor, device=str(device))
        samples = pgd_perturb(samples, anchor, config.pgd_eps, config.pgd_steps, device=device)
    log.info("drew %d %s probes at %d px from %s (seed %d)", config.num_probes, config.probe_kind,
             config.resolution, config.probe_source, config.seed)
    return Probes(images=samples.contiguous(), baseline=make_baseline(config))
