"""Model references: the one parser for every way a user can name a model.

Forms: ``timm:NAME[.TAG]``, ``torchvision:NAME`` (alias ``tv:NAME``), ``taskonomy:TASK``,
``hf-hub:ORG/NAME`` (also timm's spelling ``hf_hub:ORG/NAME``), a local Hugging Face model folder
(``config.json`` with timm's ``architecture`` + ``model.safetensors`` or ``pytorch_model.bin``) and local
files (``.pt``, ``.pth``, ``.bin``, ``.safetensors``, TorchScript ``.ts``/``.torchscript``/``.jit``, checkpoints
``.ckpt``/``.pth.tar``, or any existing file; the loader sniffs the content, not the name).
Parsing checks syntax and, for files and folders, existence; names are validated by the loaders.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gifindex.errors import RefError

KINDS = ("timm", "torchvision", "taskonomy", "hf-hub", "hf-folder", "file")
_PREFIXES = {"timm": "timm", "torchvision": "torchvision", "tv": "torchvision",
             "taskonomy": "taskonomy", "hf-hub": "hf-hub", "hf_hub": "hf-hub"}
HF_FOLDER_CONFIG = "config.json"
HF_FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".jit")
CHECKPOINT_SUFFIXES = (".ckpt", ".tar")   # Lightning's checkpoints; `.pth.tar` (torch.save under a tar-like name)
FILE_SUFFIXES = WEIGHT_SUFFIXES + TORCHSCRIPT_SUFFIXES + CHECKPOINT_SUFFIXES
MANIFEST_SUFFIXES = (".yaml", ".yml")  # a manifest given where a model is expected is named as one


def in_model_folder(path: Path) -> bool:
    """Whether a file inside a folder given to ``ingest`` is one of its models: a model file's suffix, where a plain
    ``.tar`` is an archive (left out) and only ``.pth.tar`` a checkpoint; a ``.tar`` named directly is still loaded."""
    name = path.name.lower()
    return path.suffix.lower() in FILE_SUFFIXES and (not name.endswith(".tar") or name.endswith(".pth.tar"))

# Encoders published by visualpriors (Sax et al.), by their visualpriors names.
TASKONOMY_TASKS = (
    "autoencoding", "class_object", "class_scene", "colorization", "curvature", "denoising",
    "depth_euclidean", "depth_zbuffer", "edge_occlusion", "edge_texture", "egomotion",
    "fixated_pose", "inpainting", "jigsaw", "keypoints2d", "keypoints3d", "nonfixated_pose",
    "normal", "point_matching", "reshading", "room_layout", "segment_semantic",
    "segment_unsup25d", "segment_unsup2d", "vanishing_point",
)
# Original Taskonomy / taskbank names mapped to the visualpriors names.
TASKONOMY_ALIASES = {
    "autoencoder": "autoencoding", "class_1000": "class_object", "class_places": "class_scene",
    "denoise": "denoising", "rgb2mist": "depth_euclidean", "rgb2depth": "depth_zbuffer",
    "edge3d": "edge_occlusion", "edge2d": "edge_texture", "ego_motion": "egomotion",
    "fix_pose": "fixated_pose", "inpainting_whole": "inpainting", "keypoint2d": "keypoints2d",
    "keypoint3d": "keypoints3d", "non_fixated_pose": "nonfixated_pose", "rgb2sfnorm": "normal",
    "point_match": "point_matching", "reshade": "reshading", "segmentsemantic": "segment_semantic",
    "segment25d": "segment_unsup25d", "segment2d": "segment_unsup2d", "depth": "depth_zbuffer",
    "normals": "normal", "surface_normal": "normal",
}

_EXPECTED = ("expected timm:NAME[.TAG], torchvision:NAME (tv:NAME), taskonomy:TASK, hf-hub:ORG/NAME, "
             "a path to .pt/.pth/.bin/.safetensors or a Hugging Face model folder")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference. ``path`` is set (absolute) only for ``kind`` ``file`` and ``hf-folder``."""

    kind: str
    name: str
    tag: str | None = None
    path: str | None = None

    def canonical(self) -> str:
        """The normal spelling: ``timm:NAME[.TAG]``, ``torchvision:NAME``, ... or the absolute path."""
        if self.kind in ("file", "hf-folder"):
            return str(self.path)
        if self.kind in ("timm", "torchvision") and self.tag:
            return f"{self.kind}:{self.name}.{self.tag}"
        return f"{self.kind}:{self.name}"

    def __str__(self) -> str:
        return self.canonical()


def taskonomy_task(name: str) -> str | None:
    """The visualpriors task name for ``name`` (case, '-' and aliases tolerated), or None."""
    key = name.strip().lower().replace("-", "_")
    if key in TASKONOMY_TASKS:
        return key
    return TASKONOMY_ALIASES.get(key)


def _unknown(text: str) -> RefError:
    return RefError(f"unknown model reference {text!r}: {_EXPECTED}")


def _parse_prefixed(text: str, kind: str, rest: str) -> ModelRef:
    if not rest or any(c.isspace() for c in rest):
        raise RefError(f"empty or malformed model name in reference {text!r}: {_EXPECTED}")
    if kind == "taskonomy":
        task = taskonomy_task(rest)
        if task is None:
            raise RefError(f"unknown Taskonomy task {rest!r} in {text!r}; known tasks: "
                           + ", ".join(TASKONOMY_TASKS))
        return ModelRef("taskonomy", task)
    if kind == "hf-hub":
        parts = rest.split("/")
        if len(parts) != 2 or not all(parts):
            raise RefError(f"malformed reference {text!r}: expected hf-hub:ORG/NAME (or hf_hub:ORG/NAME)")
        return ModelRef("hf-hub", rest)
    name, _, tag = rest.partition(".")
    if not name:
        raise RefError(f"malformed reference {text!r}: expected {kind}:NAME[.TAG]")
    return ModelRef(kind, name, tag or None)


def _hf_folder(text: str, path: Path) -> ModelRef:
    """A local Hugging Face model folder (timm's layout), or a :class:`RefError` saying what it lacks."""
    if not (path / HF_FOLDER_CONFIG).is_file():
        raise RefError(f"{text} is a folder without {HF_FOLDER_CONFIG}; a Hugging Face model folder needs "
                       f"{HF_FOLDER_CONFIG} and {' or '.join(HF_FOLDER_WEIGHTS)}; for a weights file give its path")
    if not any((path / w).is_file() for w in HF_FOLDER_WEIGHTS):
        raise RefError(f"Hugging Face model folder {text} has no weights: expected "
                       f"{' or '.join(HF_FOLDER_WEIGHTS)} next to {HF_FOLDER_CONFIG}")
    resolved = path.resolve()
    return ModelRef("hf-folder", resolved.name, path=str(resolved))


def parse_ref(text: "str | ModelRef | os.PathLike[str]") -> ModelRef:
    """Parse a model reference; raise :class:`RefError` with the accepted forms when it is not one."""
    if isinstance(text, ModelRef):
        return text
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    text = str(text).strip()
    if not text:
        raise _unknown(text)
    prefix, sep, rest = text.partition(":")
    if sep and prefix.lower() in _PREFIXES and not os.path.exists(text):
        return _parse_prefixed(text, _PREFIXES[prefix.lower()], rest.strip())
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~user of an unknown user: not expandable, take the text literally
        path = Path(text)
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            raise RefError(f"{text} is a manifest (a list of models), not a model: ingest it with "
                           f"`gifindex ingest --manifest {text}`")
        return ModelRef("file", path.name, path=str(path.resolve()))
    if path.is_dir():
        return _hf_folder(text, path)
    if path.suffix.lower() in FILE_SUFFIXES:
        if path.exists():
            raise RefError(f"model file {text} is not a regular file")
        raise RefError(f"model file not found: {text}")
    raise _unknown(text)


def folder_models(text: str) -> list[str] | None:
    """The model files directly inside ``text`` (sorted) when it is a folder of them rather than one Hugging Face
    model folder (no ``config.json``); None for anything else, which is then read as one reference."""
    files = _folder_files(text)
    return None if files is None else sorted(str(f) for f in files if in_model_folder(f))


def folder_left_out(text: str) -> dict[str, int]:
    """The files of a folder of model files (:func:`folder_models`) that it leaves out, counted by extension
    (``""``: none): a folder ingest says so rather than skipping them silently."""
    counts: dict[str, int] = {}
    for child in _folder_files(text) or []:
        kind = child.suffix.lower()
        if not in_model_folder(child):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _folder_files(text: str) -> list[Path] | None:
    """The visible regular files directly inside ``text`` when it is a folder but not a Hugging Face model folder
    (no ``config.json``); None otherwise."""
    path = Path(text).expanduser()
    if not path.is_dir() or (path / HF_FOLDER_CONFIG).exists():
        return None
    return [child for child in path.iterdir() if child.is_file() and not child.name.startswith(".")]


def absolute_ref(text: str) -> str:
    """``text`` with a local path made absolute and normalised (symbolic links are not resolved: the loader
    checks where they point), so that what an index stores does not depend on the directory a command ran
    from; prefixed
    references (``timm:...``) come back unchanged."""
    prefix, sep, _ = text.partition(":")
    if sep and prefix.lower() in _PREFIXES and not os.path.exists(text):
        return text
    return os.path.normpath(os.path.abspath(os.path.expanduser(text)))  # links kept: checked when loaded
