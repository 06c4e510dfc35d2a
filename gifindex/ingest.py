"""The per-model worker: reference -> loaded model -> content hash -> signature.

One function, ``sign_entry``, does the work for one model and never raises for a bad model: failures
come back as a result with the reason, so one broken file never stops an ingest. Executors (local loop,
Ray) only decide where it runs; the index commits the results.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import traceback
from pathlib import Path
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import GifindexError, SignatureError
from .manifest import ModelEntry

if TYPE_CHECKING:
    from .config import SignatureConfig
    from .models.spec import LoadedModel
    from .probes import Probes


@dataclass
class SignResult:
    """What the worker returns for one model."""

    name: str
    ref: str
    status: str  # "added" (signed, to be committed), "skipped" (already indexed), "failed"
    weights_sha256: str | None = None
    signature: np.ndarray | None = None
    older_sha256: tuple[str, ...] = ()  # the content hash as indexes made by earlier versions held it
    same_as: str | None = None         # skipped: the indexed model that holds the same content
    seconds: float = 0.0
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def held_in(self, known: Collection[str]) -> str | None:
        """The first of this model's content hashes (current, then older forms) that ``known`` holds, or None."""
        return next((sha for sha in (self.weights_sha256, *self.older_sha256) if sha and sha in known), None)

    def summary(self) -> dict[str, Any]:
        out = {"name": self.name, "ref": self.ref, "status": self.status, "seconds": round(self.seconds, 3)}
        if self.weights_sha256:
            out["weights_sha256"] = self.weights_sha256
        if self.same_as:
            out["same_as"] = self.same_as
        if self.metadata.get("random_init"):
            out["random_init"] = True
        if self.error:
            out["error"] = self.error
        return out


def content_sha256(loaded: "LoadedModel", output: str, legacy: bool = False) -> str:
    """One of :func:`content_hashes`: the current one, or with ``legacy`` the oldest form (no architecture)."""
    current, older = content_hashes(loaded, output)
    return older[0] if legacy else current


def content_hashes(loaded: "LoadedModel", output: str) -> tuple[str, tuple[str, ...]]:
    """The current hash of what defines the model's function, and its older forms, from one pass over its weights.
    Current: its architecture (``architecture_identity``), every tensor of its state dict (names, dtypes, shapes,
    bytes), its input convention and the output reduction. The same weights saved in another file format hash the
    same; the same weights behind another normalisation, or in another architecture (another class, another
    TorchScript program or pickled module tree: a ReLU net and its Tanh twin), do not. Older forms, which indexes
    made by earlier versions hold, so that they still recognise their models: the hash without the architecture,
    and (for a pickled module) with the architecture named by its top class alone."""
    digest = hashlib.sha256()
    state = loaded.module.state_dict()
    for key in sorted(state):
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    spec = loaded.spec
    described = {**spec.describe(), "interpolation": spec.interpolation, "output": output}
    forms = [described] + [{**described, "architecture": arch} for arch in _architecture_forms(loaded)]
    hashes = []
    for form in forms:
        one = digest.copy()
        one.update(json.dumps(form, sort_keys=True).encode())
        hashes.append(one.hexdigest())
    return hashes[-1], tuple(dict.fromkeys(hashes[:-1]))


def _architecture_forms(loaded: "LoadedModel") -> list[str]:
    """How the content hash has named the architecture, oldest first; the last is ``architecture_identity``."""
    return list(dict.fromkeys([architecture_identity(loaded, earlier=True), architecture_identity(loaded)]))


def architecture_identity(loaded: "LoadedModel", earlier: bool = False) -> str:
    """What names a model's computation besides its weights: its architecture (``timm:NAME``, ``torchvision:NAME``,
    the user's ``python:FILE.py:Class``, a pickled module's class; every Taskonomy task's encoder is one
    architecture, the task a label read from a file name); for a TorchScript program, the sha256 of its code
    (every submodule's), which is the architecture there; for a pickled module not named by timm, the sha256 of
    its module tree (``_module_tree``). ``earlier``: as the hash named it before the last two (the Taskonomy task
    named, no module tree)."""
    code = []
    for name, module in loaded.module.named_modules():
        text = getattr(module, "code", None) if isinstance(module, torch.jit.ScriptModule) else None
        if isinstance(text, str):
            code.append(f"{name}\n{text}")
    program = hashlib.sha256("\n".join(code).encode()).hexdigest() if code else None
    arch = _portable_arch(loaded.arch)
    if not earlier and arch.startswith("taskonomy:"):
        arch = "taskonomy:encoder"
    identity = arch + (f"|torchscript:{program}" if program else "")
    if not earlier and loaded.meta.get("loaded_as") == "pickled module" and not arch.startswith("timm:"):
        identity += f"|tree:{_module_tree(loaded.module)}"
    return identity


_LIBRARIES = ("torch", "torchvision", "timm")   # their classes are named, not hashed: an upgrade keeps the model


def _module_tree(module: torch.nn.Module) -> str:
    """sha256 of a pickled module's tree: every submodule's path and class (``torch.nn.modules.activation.Tanh``),
    and for a class of the user's own code the sha256 of its source file, since the forward is code the weights do
    not hold (a ReLU net and its Tanh twin, or an edited class, are other models)."""
    import inspect

    digest = hashlib.sha256()
    for name, sub in module.named_modules():
        cls = type(sub)
        source = ""
        if cls.__module__.split(".")[0] not in _LIBRARIES:
            try:
                source = hashlib.sha256(Path(inspect.getsourcefile(cls) or "").read_bytes()).hexdigest()
            except (OSError, TypeError):
                source = ""
        digest.update(f"{name}|{cls.__module__}.{cls.__qualname__}|{source}\n".encode())
    return digest.hexdigest()


def trusted_code(arch: str | None) -> dict[str, dict[str, str]]:
    """The class file a ``python:FILE.py:Class`` architecture imports (as the index records it, by absolute path),
    with its sha256: ``{path: {"sha256"}}``; empty for any other architecture. A stored ``--trust`` holds only while
    that file is the one trusted (``Index.entry_for``). What the file imports in turn, and the modules a whole pickle
    imports by name, are found as Python finds them when the model loads, as for any script, and are not recorded."""
    from .index.shards import file_sha256
    from .models import pyclass

    if not pyclass.is_python_arch(arch):
        return {}
    path = pyclass.class_file(pyclass.canonical(arch))
    if path is None or not path.is_file():
        return {}
    return {str(path): {"sha256": file_sha256(path)}}


def _portable_arch(arch: str | None) -> str:
    """``arch``, with a ``python:FILE.py:Class`` named by its class and the sha256 of the file's bytes instead of its
    path: a project moved or copied elsewhere holds the same models (an edited class is another architecture)."""
    from .models import pyclass

    if not pyclass.is_python_arch(arch):
        return str(arch)
    file, _, cls = str(arch)[len("python:"):].rpartition(":")
    try:
        digest = hashlib.sha256(Path(file).read_bytes()).hexdigest()
    except OSError:
        return str(arch)
    return f"python:sha256={digest}:{cls}"


def check_finite_weights(module: torch.nn.Module, ref: str) -> None:
    """Refuse weights holding NaN/Inf (their signature would be NaN and poison search) or complex values;
    name the tensors."""
    tensors = [(key, t) for key, t in module.state_dict().items() if isinstance(t, torch.Tensor)]
    complex_ = [f"{key} ({t.dtype})" for key, t in tensors if t.is_complex()]
    if complex_:
        raise SignatureError(f"{ref}: the weights hold complex tensors ({', '.join(complex_[:3])}); gifindex signs "
                             "real-valued models only (taking the real part would make another model); refused")
    bad = [key for key, t in tensors if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise SignatureError(f"{ref}: the weights hold NaN or Inf in {', '.join(bad[:3])}{more}; the model is "
                             "refused (a NaN signature would poison search); re-export the checkpoint")


def absolute_entry(entry: ModelEntry) -> ModelEntry:
    """``entry`` with its file reference, weights and the file of a ``python:`` architecture as absolute,
    normalised paths (what the index stores)."""
    from .models import pyclass
    from .refs import absolute_ref

    arch = pyclass.canonical(entry.arch) if pyclass.is_python_arch(entry.arch) else entry.arch
    return dataclasses.replace(entry, ref=absolute_ref(entry.ref), arch=arch,
                               weights=absolute_ref(entry.weights) if entry.weights else None)


def load_options(entry: ModelEntry) -> dict[str, Any]:
    """How to load an entry again (stored as ``metadata["load"]``): everything but its name and tags."""
    return {k: v for k, v in entry.to_dict().items() if k not in ("tags", "name")}


def file_stamp(path: str | None) -> list[int] | None:
    """``[size, mtime_ns]`` of a regular file (a resumed ingest skips files whose stamp is unchanged)."""
    try:
        info = os.stat(path) if path else None
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns] if info is not None and os.path.isfile(path) else None


def random_name(name: str, content_sha: str) -> str:
    """The name of a model built with random weights and no explicit name: ``REF#random-<hash8>``, so that it
    never passes for the pretrained model and a second random draw gets a name of its own."""
    return f"{name}#random-{content_sha[:8]}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, GifindexError):
        return str(exc)
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def name_taken(name: str) -> str:
    """Why a model cannot be added under ``name``: another model (other weights) has it."""
    return (f"name {name!r} is already used by another model in the index; give this one another name (--name or "
            "the manifest's name)")


def sign_entry(entry: ModelEntry, config: "SignatureConfig", probes: "Probes", *, device: str = "cpu",
               batch_size: int | None = 32, known_sha256: Collection[str] = (),
               taken_names: Mapping[str, str] | None = None, progress: Callable[[int], None] | None = None,
               on_signed: Callable[[Any], None] | None = None) -> SignResult:
    """Load, hash and sign one model; return a SignResult (never raises for a bad model). A model whose content
    hash is in ``known_sha256`` (a mapping to the indexed model's name, or a set) is skipped, and one whose name
    ``taken_names`` gives to other weights fails, both before it is signed. ``on_signed`` is handed the loaded
    model once it is signed (in this process: a caller that looks at it again, e.g. its fingerprint, need not load
    it twice)."""
    from .adapter import SharedSpaceAdapter
    from .models import load_model
    from .methods import get_method

    start = time.perf_counter()
    entry = absolute_entry(entry)
    name = entry.display_name()
    result = SignResult(name=name, ref=entry.ref, status="failed")
    try:
        loaded = load_model(entry.ref, device=device, **entry.load_kwargs())
        check_finite_weights(loaded.module, entry.ref)
        output = entry.output or config.output
        result.weights_sha256, result.older_sha256 = content_hashes(loaded, output)
        random_init = bool(entry.random_init or loaded.meta.get("random_init"))
        if random_init and not entry.name:
            result.name = random_name(name, result.weights_sha256)
        held = result.held_in(known_sha256)
        if held is not None:
            result.status = "skipped"
            result.same_as = known_sha256.get(held) if isinstance(known_sha256, Mapping) else None
            return result
        if taken_names and result.held_in({taken_names.get(result.name, result.weights_sha256)}) is None:
            result.status, result.error = "failed", name_taken(result.name)   # found before the signing's work
            return result
        adapter = SharedSpaceAdapter(loaded.module, loaded.spec, output)
        method = get_method(config.method)
        feats = method.features(adapter, probes, config, batch_size=batch_size, device=device, progress=progress)
        flat = method.flat_reason(feats)
        if flat is not None:
            raise SignatureError(f"{entry.ref}: the model's {config.method} signature says nothing of it: {flat}; "
                                 "it would match nothing (or everything alike) and skew calibration, so the model "
                                 "is refused")
        result.signature = method.compress(feats, config)
        result.status = "added"
        if on_signed is not None:
            on_signed(loaded)
        result.metadata = {
            "source": loaded.source, "arch": loaded.arch, "output": output, "device": device,
            "input_size": list(loaded.spec.size), "mean": list(loaded.spec.mean), "std": list(loaded.spec.std),
            "channels": loaded.spec.channels, "interpolation": loaded.spec.interpolation,
            "num_outputs": loaded.num_outputs, "tags": entry.tags,
            "parameters": int(sum(p.numel() for p in loaded.module.parameters())),
            "file_sha256": loaded.weights_sha256, "file_stamp": file_stamp(entry.ref),
            "random_init": random_init, "load": load_options(entry),
        }
        if loaded.meta.get("convention_from"):   # the file carried its own (a pickled timm module's pretrained_cfg)
            result.metadata["convention_from"] = loaded.meta["convention_from"]
        for key in ("detected", "headless"):      # an architecture read from the weights; a backbone without a head
            if loaded.meta.get(key):
                result.metadata[key] = loaded.meta[key]
        code = trusted_code(entry.arch) if entry.trust else {}
        if code:                                  # the class file this --trust let run, which a stored trust covers
            result.metadata["code_sha256"] = code
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad model is a result, not a crash
        result.error = _describe(exc)
        result.metadata = {"traceback": traceback.format_exc(limit=5)}
    finally:
        result.seconds = time.perf_counter() - start
    if result.status == "added":
        result.metadata["seconds"] = round(result.seconds, 3)
    return result


def changed_code(metadata: Mapping[str, Any], hashed: dict[str, str | None] | None = None) -> list[str]:
    """The class files recorded with a model (``trusted_code``) that are there but no longer hold the bytes
    recorded (a file gone is the loader's to report). ``hashed``: each file's sha256 already read (None: gone),
    filled in as files are read, so models sharing a class file read it once."""
    from .index.shards import file_sha256

    hashed = {} if hashed is None else hashed
    changed = []
    for path, held in (metadata.get("code_sha256") or {}).items():
        if path not in hashed:
            hashed[path] = file_sha256(Path(path)) if Path(path).is_file() else None
        if hashed[path] is not None and hashed[path] != held.get("sha256"):
            changed.append(path)
    return changed


def split_unchanged(entries: list[ModelEntry], records: list[Any]) -> tuple[list[ModelEntry], list[SignResult]]:
    """Split off the entries an index already holds unchanged: same loading options (absolute paths) and a
    file of the same size and mtime as when it was ingested (and the same ``python:`` class file, where one was
    recorded). A resumed ingest skips them without reading or
    hashing the file again; the rest go to the workers (which still skip by content hash)."""
    stamped = {json.dumps(r.metadata["load"], sort_keys=True): r for r in records
               if r.metadata.get("load") and r.metadata.get("file_stamp")}
    drawn = {(r.name, json.dumps(r.metadata["load"], sort_keys=True)): r for r in records
             if r.metadata.get("load") and r.metadata.get("random_init")}
    todo: list[ModelEntry] = []
    skipped: list[SignResult] = []
    class_files: dict[str, str | None] = {}   # each python: class file hashed once, however many models use it
    for entry in entries:
        absolute = absolute_entry(entry)
        options = json.dumps(load_options(absolute), sort_keys=True)
        record = stamped.get(options)
        if record is not None and changed_code(record.metadata, class_files):   # its class edited: signed again
            record = None
        if record is None or record.metadata["file_stamp"] != file_stamp(absolute.ref):
            # a named --random-init entry indexed before: its weights were drawn once (a new draw is another model)
            record = drawn.get((entry.name, options)) if entry.name and entry.random_init else None
        if record is not None:
            skipped.append(SignResult(name=absolute.display_name(), ref=absolute.ref, status="skipped",
                                      weights_sha256=record.weights_sha256, same_as=record.name,
                                      metadata={"random_init": True} if record.metadata.get("random_init") else {}))
        else:
            todo.append(entry)
    return todo, skipped
