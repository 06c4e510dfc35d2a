"""The owner's own labelled data, in the index's shared input space (RGB in [0, 1], R x R).

Accepted: an ``.npz`` with arrays ``x`` (images) and ``y`` (integer labels), or a folder with one
sub-folder of images per class (sorted sub-folder names are the classes 0..C-1). Images may be (N, H, W)
grey, (N, H, W, 3) or (N, 3, H, W), float in [0, 1] or uint8; they are resized to R x R.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ProbeError
from ..probes import IMAGE_SUFFIXES

MAX_IMAGES = 200_000
MAX_FILE_BYTES = 4 << 30
MAX_QUERY_BYTES = 4 << 30  # a query log is held in memory at the index resolution while the fit chooses from it
MIN_IMAGES = 20  # labelled images a fingerprint's fit needs at least


@dataclass
class OwnerData:
    """(N, 3, R, R) float32 images in [0, 1] and their (N,) int64 labels."""

    x: torch.Tensor
    y: torch.Tensor
    class_names: list[str] | None = field(default=None, compare=False)  # a folder's class sub-folders, label order

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.x.shape[1] != 3:
            raise ProbeError(f"owner data images must be (N, 3, R, R), got {tuple(self.x.shape)}")
        if self.y.shape != (self.x.shape[0],):
            raise ProbeError(f"owner data has {self.x.shape[0]} images but {tuple(self.y.shape)} labels")
        if len(self.y) < MIN_IMAGES:
            raise ProbeError(f"owner data has {len(self.y)} labelled images; fitting a fingerprint needs at least "
                             f"{MIN_IMAGES}")
        if int(self.y.min()) < 0:
            raise ProbeError("owner data labels must be integers >= 0")

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1


def to_shared_space(images: np.ndarray, resolution: int) -> torch.Tensor:
    """Any of the accepted image layouts -> (N, 3, R, R) float32 in [0, 1]."""
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif not np.issubdtype(arr.dtype, np.floating):
        raise ProbeError(f"owner data images have dtype {arr.dtype}; expected float in [0, 1] or uint8")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ProbeError(f"owner data images have shape {tuple(arr.shape)}; expected (N, H, W), (N, H, W, 3) "
                         "or (N, 3, H, W)")
    if not torch.isfinite(x).all() or float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6:
        raise ProbeError("owner data images must be finite and lie in [0, 1] (or be uint8)")
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    if tuple(x.shape[-2:]) != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > resolution)
    return x.clamp(0.0, 1.0).contiguous()


def _require_npz(path: Path, what: str) -> None:
    """An ``.npz`` that is not a zip archive of arrays is one clear error (numpy would read it as a pickle)."""
    if not zipfile.is_zipfile(path):
        raise ProbeError(f"{path}: not an .npz archive (numpy's zip of named arrays, as np.savez writes it); "
                         f"{what}")


def require_images(source: str | os.PathLike, what: str) -> None:
    """An ``.npy``/``.npz`` image array (``source``) that holds no images, or an ``.npz`` that is not a zip archive,
    is one clear error naming ``what`` it is, read from the arrays' headers alone (``probes.load_source`` would
    fail on the first with numpy's text). Folders and other sources are left to the reader."""
    path = Path(source)
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in (".npy", ".npz"):
        return
    shape = None
    try:
        if suffix == ".npz":
            _require_npz(path, f"{what} must be an .npy/.npz image array or a folder of images")
            with zipfile.ZipFile(path) as archive:
                members = [n[:-len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
                key = next((k for k in ("images", "x") if k in members), members[0] if members else None)
                if key is not None:
                    with archive.open(f"{key}.npy") as handle:
                        shape = _npy_shape(handle)
        else:
            with open(path, "rb") as handle:
                shape = _npy_shape(handle)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return  # unreadable: the reader's own error says so
    if shape is not None and len(shape) >= 3 and shape[0] == 0:
        raise ProbeError(f"{path}: {what} holds no images (an array of shape {shape})")


def _npy_shape(handle) -> tuple[int, ...]:
    """The shape in an ``.npy`` header, without reading the array."""
    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return tuple(read(handle)[0])


def _from_npz(path: Path, resolution: int) -> OwnerData:
    if path.suffix.lower() == ".npy":
        raise ProbeError(f"{path}: owner data needs labels: an .npz with arrays 'x' (images) and 'y' (labels), or a "
                         "folder with one sub-folder of images per class (an .npy holds one array, no labels)")
    _require_npz(path, "owner data is an .npz with arrays 'x' (images) and 'y' (labels), or a folder of class "
                       "sub-folders")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise ProbeError(f"{path}: an owner-data .npz needs arrays 'x' (images) and 'y' (labels); "
                                 f"found {', '.join(data.files) or 'none'}")
            x, y = data["x"], data["y"]
    except ProbeError:
        raise
    except (OSError, ValueError) as exc:
        raise ProbeError(f"{path}: not a readable .npz file ({exc})") from None
    if np.ndim(x) == 0:
        raise ProbeError(f"{path}: images 'x' must be an array of images, got a single value")
    if len(x) > MAX_IMAGES:
        raise ProbeError(f"{path}: {len(x)} images; at most {MAX_IMAGES} are used to fit a fingerprint")
    if len(x) < MIN_IMAGES:
        raise ProbeError(f"owner data has {len(x)} labelled images; fitting a fingerprint needs at least "
                         f"{MIN_IMAGES}")
    if np.ndim(y) != 1:
        raise ProbeError(f"{path}: labels 'y' must be one integer per image, got shape {np.shape(y)}")
    if not np.issubdtype(np.asarray(y).dtype, np.integer):
        raise ProbeError(f"{path}: labels 'y' must be integers, got {np.asarray(y).dtype}")
    return OwnerData(to_shared_space(x, resolution), torch.from_numpy(np.asarray(y, dtype=np.int64)))


def _from_folder(path: Path, resolution: int) -> OwnerData:
    from PIL import Image

    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ProbeError(f"{path}: an owner-data folder needs one sub-folder of images per class (found "
                         f"{len(classes)})")
    images, labels = [], []
    for label, folder in enumerate(classes):
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES or not file.is_file():
                continue
            if len(images) >= MAX_IMAGES:
                raise ProbeError(f"{path}: more than {MAX_IMAGES} images")
            try:
                with Image.open(file) as img:
                    rgb = img.convert("RGB").resize((resolution, resolution), Image.BILINEAR)
            except (OSError, ValueError) as exc:
                raise ProbeError(f"{file}: not a readable image ({exc})") from None
            images.append(np.asarray(rgb, dtype=np.uint8))
            labels.append(label)
    if not images:
        raise ProbeError(f"{path}: no images in its class sub-folders")
    if len(images) < MIN_IMAGES:
        raise ProbeError(f"owner data has {len(images)} labelled images; fitting a fingerprint needs at least "
                         f"{MIN_IMAGES}")
    return OwnerData(to_shared_space(np.stack(images), resolution), torch.tensor(labels, dtype=torch.int64),
                     class_names=[folder.name for folder in classes])


PROBE_WORDS = (("probe images", "images"), ("probe image", "image"), ("probe array", "array"),
               ("probe file", "file"), ("probe source", "source"))  # gifindex.probes' words for any image source


@contextmanager
def file_role(source: str | os.PathLike, role: str) -> Iterator[None]:
    """Errors reading ``source`` name the file and what it is (``role``: "the query log", "owner data", ...): the
    image readers of gifindex.probes speak of "probe images", and a check of the data's values names no file."""
    try:
        yield
    except ProbeError as exc:
        message = str(exc)
        for probe, plain in PROBE_WORDS:
            message = message.replace(probe, plain)
        names = {str(source), str(Path(source))}
        if any(name in message for name in names):
            if role not in message:
                name = next(name for name in names if name in message)
                message = message.replace(name, f"{name} ({role})", 1)
        else:
            message = f"{source} ({role}): {message}" if role not in message else f"{source}: {message}"
        raise ProbeError(message) from None


def load_owner_data(source: str | os.PathLike, resolution: int) -> OwnerData:
    """Load the owner's labelled data from an ``.npz`` (``x``, ``y``) or a class-per-folder directory; every error
    names the file (``file_role``)."""
    path = Path(source)
    with file_role(source, "owner data"):
        if path.is_dir():
            return _from_folder(path, resolution)
        if not path.is_file():
            raise ProbeError(f"owner data {path} does not exist (an .npz with x and y, or a folder of class folders)")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ProbeError(f"{path}: larger than {MAX_FILE_BYTES >> 30} GiB; pass a sample of the owner's data")
        return _from_npz(path, resolution)


def load_query_log(source: str | os.PathLike, resolution: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The inputs the owner's API answered (its query log; the owner's answers are recomputed) from an
    ``.npy``/``.npz`` array or a folder of images, as (N, 3, R, R) float32 in [0, 1]; and, when an ``.npz``
    also holds ``y``, the true labels the owner reviewed (-1 where not reviewed), else None. Every error names the
    file as the query log (``file_role``)."""
    if str(source) == "builtin":
        raise ProbeError("a query log is the owner's own record of queries: an .npy/.npz array or a folder of images")
    with file_role(source, "the query log"):
        return _query_log(source, resolution)


def _query_log(source: str | os.PathLike, resolution: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`load_query_log`'s reading, its errors not yet naming the file's role."""
    from ..probes import _resize, load_source

    labels = _review_labels(Path(source))
    require_images(source, "the query log")
    images, _ = load_source(str(source))
    limit = min(MAX_IMAGES, MAX_QUERY_BYTES // (3 * resolution * resolution * 4))
    if len(images) > limit:
        raise ProbeError(f"{source}: {len(images)} logged queries; at {resolution} px pass a sample of at most "
                         f"{limit} (the thief's share of the log is what counts: a uniform sample keeps it)")
    out = torch.empty(len(images), 3, resolution, resolution)
    for i, image in enumerate(images):
        out[i] = _resize(torch.from_numpy(image), resolution)
    if not len(out):
        raise ProbeError(f"{source}: the query log holds no images")
    if labels is not None and len(labels) != len(out):
        raise ProbeError(f"{source}: {len(out)} logged queries but {len(labels)} review labels 'y'")
    return out, labels


def check_review_labels(labels: torch.Tensor | None, num_classes: int, source: str | os.PathLike) -> None:
    """Review labels (``y`` of a query log) must name the owner's classes (or be -1, not reviewed): a label past
    its ``num_classes`` outputs would count every answer to that query as wrong."""
    if labels is not None and len(labels) and int(labels.max()) >= num_classes:
        raise ProbeError(f"{source}: review labels 'y' go up to {int(labels.max())} but the owner has {num_classes} "
                         f"outputs (classes 0-{num_classes - 1}; -1: not reviewed)")


def _review_labels(path: Path) -> torch.Tensor | None:
    """``y`` of a query-log ``.npz`` (integers, -1 = not reviewed), or None."""
    if path.suffix.lower() != ".npz" or not path.is_file():
        return None
    _require_npz(path, "a query log is an .npy/.npz image array or a folder of images")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "y" not in data.files:
                return None
            y = np.asarray(data["y"])
    except (OSError, ValueError) as exc:
        raise ProbeError(f"{path}: not a readable .npz file ({exc})") from None
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and int(y.min()) < -1):
        raise ProbeError(f"{path}: review labels 'y' must be integers >= -1 (-1: not reviewed), one per query")
    return torch.from_numpy(y.astype(np.int64))
