"""Model manifests (YAML): which models to ingest and how to load each.

All problems in a manifest are collected with their line numbers and reported together, before any
model is loaded. Manifests are untrusted input: the file is checked (a regular file, at most
MAX_MANIFEST_BYTES) before it is read, parsed once with libyaml (linear in its size), and YAML aliases are
refused (an "alias bomb" would expand a few lines into gigabytes). Nor can a manifest allow code to run: an
entry's ``trust: true`` is honoured only when the command line says ``--trust`` too (``with_defaults``).
"""
from __future__ import annotations

import difflib
import gc
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import GifindexError
from .safefs import escaping_symlink, read_bytes
from .text import text_problem

MAX_MANIFEST_BYTES = 256 << 20   # 256 MiB: about two million entries
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SCALARS = (str, int, float, bool, type(None))

# model files named after their file name (a Lightning checkpoint, a `.pth.tar` too: "m.pth.tar" is "m")
NAMED_BY_STEM = (".pt", ".pth", ".bin", ".safetensors", ".ts", ".jit", ".ckpt", ".tar")
MAX_INPUT_SIZE = 8192   # pixels: --input-size / input_size above this is a mistake, not a model (--resolution: 2048)

FIELDS = ("name", "ref", "weights", "arch", "num_classes", "input_size", "mean", "std", "output", "tags",
          "trust", "random_init")


class ManifestError(GifindexError):
    """A manifest with one or more problems (all listed, with line numbers)."""


# why an entry's own `trust: true` is refused without the command line's --trust
UNTRUSTED_REQUEST = ("the manifest asks for trust: true, but a manifest cannot allow code to run by itself (loading "
                     "this model may run code from its files); pass --trust on the command line if you trust the "
                     "files the manifest names")


@dataclass
class ModelEntry:
    """One model to ingest: a reference plus how to load it."""

    ref: str
    name: str | None = None
    weights: str | None = None
    arch: str | None = None
    num_classes: int | None = None
    input_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    output: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    trust: bool = False
    random_init: bool = False
    # a manifest entry's own `trust: true`: a request only the command line's --trust grants (see with_defaults)
    trust_asked: bool = False

    def load_kwargs(self) -> dict[str, Any]:
        """How ``load_model`` loads this entry; an entry whose manifest asked for trust the command line did not
        give is refused here (ingest reports it as that entry's failure)."""
        if self.trust_asked and not self.trust:
            raise ManifestError(UNTRUSTED_REQUEST)
        return {"arch": self.arch, "weights": self.weights, "num_classes": self.num_classes,
                "input_size": self.input_size, "mean": self.mean, "std": self.std, "trust": self.trust,
                "random_init": self.random_init}

    def convention_unknown(self) -> bool:
        """Nothing says what images this model takes: no input size, mean or std given, and its weights come from
        a file (a state dict, safetensors, TorchScript, or ``weights`` for a named architecture), which carries
        none; the architecture's default is what its ImageNet weights took. A pretrained reference or a Hugging
        Face folder (its ``pretrained_cfg``) has its own."""
        from .errors import GifindexError
        from .refs import parse_ref

        if self.input_size or self.mean or self.std or self.random_init:
            return False
        try:
            return parse_ref(self.ref).kind == "file" or bool(self.weights)
        except GifindexError:
            return False

    def display_name(self) -> str:
        if self.name:
            return self.name
        if any(self.ref.lower().endswith(s) for s in NAMED_BY_STEM):
            stem = Path(self.ref).stem
            stem = stem[:-4] if self.ref.lower().endswith(".pth.tar") and len(stem) > 4 else stem   # "m.pth.tar": m
            return stem.strip() or stem   # "resnet .pt" is named "resnet"
        if Path(self.ref).is_dir():  # a Hugging Face model folder: its folder name
            return Path(self.ref).name.strip() or Path(self.ref).name
        return self.ref

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, False)}


def _check_entry(data: dict[str, Any], line: int, base: Path, errors: list[str]) -> ModelEntry | None:
    before = len(errors)
    for key in data:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(FIELDS)})"
            errors.append(f"line {line}: unknown field {key!r}{hint}")
    ref = data.get("ref")
    if not isinstance(ref, str) or not ref.strip():
        errors.append(f"line {line}: missing 'ref' (a model reference or file path)")
    for key in ("name", "weights", "arch", "output"):
        if data.get(key) is not None and not isinstance(data[key], str):
            errors.append(f"line {line}: {key!r} must be a string")
    for key in ("num_classes", "input_size"):
        value = data.get(key)
        least = 0 if key == "num_classes" else 1   # as on the command line: 0 classes asks for the backbone alone
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            kind = "a non-negative" if least == 0 else "a positive"
            errors.append(f"line {line}: {key!r} must be {kind} integer, got {value!r}")
        elif key == "input_size" and value is not None and value > MAX_INPUT_SIZE:
            errors.append(f"line {line}: 'input_size' {value} is above the {MAX_INPUT_SIZE} px limit")
    for key in ("mean", "std"):
        value = data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            data[key] = value = [value]  # one number, as on the command line: every channel's
        if value is not None and (not isinstance(value, list) or len(value) not in (1, 3) or
                                  not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            errors.append(f"line {line}: {key!r} must be three numbers (or one, for every channel)")
        elif value is not None:
            from .models.spec import convention_problem   # here: it imports torch

            if problem := convention_problem(key, tuple(value)):
                errors.append(f"line {line}: {key!r}: {problem}")
    if data.get("output") not in (None, "norm", "top-logit"):
        errors.append(f"line {line}: 'output' must be norm or top-logit")
    tags = data.get("tags")
    if tags is not None and (not isinstance(tags, dict) or not all(
            isinstance(k, str) and (isinstance(v, SCALARS) or isinstance(v, list) and all(isinstance(x, SCALARS)
                                                                                      for x in v))
            for k, v in tags.items())):
        errors.append(f"line {line}: 'tags' must be a mapping of names to strings, numbers or lists of them")
    for key, what in (("name", "name"), ("ref", "reference"), ("weights", "reference")):
        # blanks around a name are judged at ingest, which knows the names an older index may hold with them
        if isinstance(data.get(key), str) and (problem := text_problem(data[key], what, stored=True)):
            errors.append(f"line {line}: {problem}")
    for key in ("trust", "random_init"):
        if data.get(key) is not None and not isinstance(data[key], bool):
            errors.append(f"line {line}: {key!r} must be true or false")
    if len(errors) > before:
        return None

    def resolve(path: str | None) -> str | None:
        if path is None or ":" in path.split("/")[0] and not Path(path).exists():
            return path  # a model reference such as timm:resnet50, not a path
        candidate = Path(path).expanduser()
        if candidate.is_absolute():
            return str(candidate)
        escape = escaping_symlink(base, str(candidate))
        if escape:
            errors.append(f"line {line}: {escape}; refusing to follow it; give the target path itself if you "
                          "trust it")
        return str(base / candidate)

    entry = ModelEntry(ref=resolve(ref) or ref, name=data.get("name"), weights=resolve(data.get("weights")),
                      arch=python_arch_beside(data.get("arch"), resolve), num_classes=data.get("num_classes"),
                      input_size=data.get("input_size"),
                      mean=tuple(data["mean"]) if data.get("mean") else None,  # type: ignore[arg-type]
                      std=tuple(data["std"]) if data.get("std") else None,  # type: ignore[arg-type]
                      output=data.get("output"), tags=dict(data.get("tags") or {}),
                      trust_asked=bool(data.get("trust", False)), random_init=bool(data.get("random_init", False)))
    if len(errors) > before:
        return None
    problem = text_problem(entry.display_name(), "name", stored=True)
    if problem:
        errors.append(f"line {line}: {problem}")
        return None
    return entry


def python_arch_beside(arch: Any, resolve: Any) -> Any:
    """A ``python:FILE.py:Class`` architecture with its file resolved as the manifest's paths are (beside it); a
    malformed one is left for the loader to refuse. (gifindex.models, and torch with it, is imported only for such an
    architecture: reading a manifest stays light.)"""
    if not isinstance(arch, str) or not arch.startswith("python:"):
        return arch
    from .models import pyclass

    try:
        return pyclass.with_file(arch, resolve)
    except GifindexError:
        return arch


def _compose(text: str, source: str) -> Any:
    """One YAML document as a node tree (libyaml when installed); aliases refused."""
    loader = Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except (yaml.YAMLError, RecursionError, ValueError) as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ManifestError(f"manifest {source} is not valid YAML: {where}{problem}") from None
        seen: set[int] = set()
        stack = [root] if root is not None and "&" in text else []  # no anchor, no alias
        while stack:  # an alias is a node reached twice: refuse before anything is constructed
            node = stack.pop()
            if id(node) in seen:
                raise ManifestError(f"manifest {source}: line {node.start_mark.line + 1}: YAML anchors and aliases "
                                    "(&name / *name) are not allowed in manifests; write each entry out")
            seen.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)
            elif isinstance(node, yaml.MappingNode):
                stack.extend(item for pair in node.value for item in pair)
        try:
            data = loader.construct_document(root) if root is not None else None
        except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
            raise ManifestError(f"manifest {source} is not valid YAML: {' '.join(str(exc).split())[:200]}") from None
        return root, data
    finally:
        loader.dispose()


def parse_manifest(text: str, source: str = "<manifest>", base: Path | None = None) -> list[ModelEntry]:
    """Parse manifest text: a list of entries, or a mapping with a ``models`` list."""
    base = base or Path.cwd()
    collecting = gc.isenabled()
    gc.disable()  # millions of small objects, none cyclic: the collector would make parsing superlinear
    try:
        return _parse(text, source, base)
    finally:
        if collecting:
            gc.enable()


def _parse(text: str, source: str, base: Path) -> list[ModelEntry]:
    root, data = _compose(text, source)
    if data is None:
        raise ManifestError(f"manifest {source} is empty")
    nodes = root.value if isinstance(root, yaml.SequenceNode) else None
    if isinstance(data, dict):
        unknown = sorted(str(k) for k in set(data) - {"models", "description", "name"})
        if unknown or not isinstance(data.get("models"), list):
            raise ManifestError(f"manifest {source}: expected a list of models or a mapping with a 'models' list")
        for key_node, value_node in root.value:
            if key_node.value == "models":
                nodes = value_node.value
        data = data["models"]
    if not isinstance(data, list) or nodes is None:
        raise ManifestError(f"manifest {source}: expected a list of models")
    errors: list[str] = []
    entries: list[ModelEntry] = []
    first_line: dict[str, int] = {}
    for item, node in zip(data, nodes):
        line = node.start_mark.line + 1
        if isinstance(item, str):
            item = {"ref": item}
        if not isinstance(item, dict):
            errors.append(f"line {line}: expected a mapping with at least 'ref', got {type(item).__name__}")
            continue
        entry = _check_entry(item, line, base, errors)
        if entry is None:
            continue
        name = entry.display_name()
        if name in first_line:
            errors.append(f"line {line}: duplicate name {name!r} (first on line {first_line[name]})")
            continue
        first_line[name] = line
        entries.append(entry)
    if errors:
        raise ManifestError(f"manifest {source} has {len(errors)} error(s): " + "; ".join(errors))
    return entries


def read_manifest(path: str | Path) -> list[ModelEntry]:
    """Read and parse a manifest file (checked first: a regular file within MAX_MANIFEST_BYTES)."""
    path = Path(path)
    data = read_bytes(path, "manifest", MAX_MANIFEST_BYTES, ManifestError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"cannot read manifest {path}: not UTF-8 text ({exc})") from None
    return parse_manifest(text, source=str(path), base=path.parent)


def with_defaults(entry: ModelEntry, defaults: dict[str, Any]) -> ModelEntry:
    """``entry`` with the command line's loading options (``ingest --manifest M --random-init ...``) as
    defaults for what it leaves unset. Options that cannot apply to the entry's kind are left out:
    ``arch`` only for model files, ``random_init`` only for named models without a ``weights`` file. ``trust`` from
    the command line trusts every entry, which also grants an entry's own ``trust: true`` (a manifest alone cannot)."""
    from .errors import GifindexError
    from .refs import FILE_SUFFIXES, parse_ref

    try:
        is_file = parse_ref(entry.ref).kind in ("file", "hf-folder")
    except GifindexError:
        is_file = Path(entry.ref).suffix.lower() in FILE_SUFFIXES
    changes: dict[str, Any] = {}
    for key, value in defaults.items():
        if value in (None, False) or getattr(entry, key) not in (None, False):
            continue
        if (key == "arch" and not is_file) or (key == "random_init" and (is_file or entry.weights)):
            continue
        changes[key] = tuple(value) if key in ("mean", "std") else value
    if changes.get("trust"):
        changes["trust_asked"] = False   # granted: stored as any trusted entry is
    return replace(entry, **changes) if changes else entry
