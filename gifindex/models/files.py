"""Safe reading of local weight files.

The format is sniffed from the bytes, never trusted from the extension. Plain state dicts load with
``torch.load(weights_only=True)``; anything that would run code from the file when loaded (a pickled
``nn.Module`` or other object, a TorchScript archive) is refused unless the caller passes ``trust``.
The sha256 is computed over exactly the bytes that are loaded.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import stat
import struct
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn

from gifindex.errors import ModelLoadError, UntrustedFileError
from gifindex.safefs import escaping_symlink

# Caps applied before anything is allocated or decompressed.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
ZIP_MAX_RATIO = 20  # declared uncompressed bytes per byte of archive (real checkpoints: about 1)
ZIP_SLACK = 1 << 20
ZIP_MAX_ENTRIES = 1_000_000
LFS_MAGIC = b"version https://git-lfs.github.com/spec/"
REFIX = "re-download the file or re-save it with torch.save(model.state_dict(), PATH)"
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2,
                      "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8,
                      "F64": 8, "C64": 8, "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75}

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "ema", "state_dict_ema", "model_ema",
               "module", "net")


@dataclass
class WeightsFile:
    """What a file held: a state dict, or (only with trust) a whole module."""

    path: str
    format: str  # "torch-zip", "torch-legacy", "safetensors", "torchscript"
    sha256: str
    state_dict: dict[str, torch.Tensor] | None = None
    module: nn.Module | None = None


def sniff(data: bytes) -> str:
    """Name the container format of ``data``: torch-zip, torchscript, torch-legacy, safetensors, lfs-pointer,
    html, bad-zip, empty or unknown. Reads only; never raises. A file whose first 8 bytes are a little-endian
    length followed by that many bytes of a JSON object is safetensors even when its first byte is 0x80
    (the pickle magic): about one safetensors file in 256 starts so."""
    if not data:
        return "empty"
    if data.startswith(LFS_MAGIC):
        return "lfs-pointer"
    head = data[:1024].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")) or \
            (head.startswith(b"<") and b"<html" in head):
        return "html"
    if data[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except Exception:  # noqa: BLE001 - any failure to parse the directory: a bad archive
            return "bad-zip"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "torch-zip"
    if _safetensors_header(data):   # safetensors' own structure first: its length may start with 0x80
        return "safetensors"
    if data[0] == 0x80:              # pickle protocol 2+ (torch's legacy format)
        return "torch-legacy"
    if len(data) >= 9 and data[8:9] == b"{":
        return "safetensors"  # a damaged header: check_safetensors says what is wrong
    return "unknown"


def _safetensors_header(data: bytes) -> bool:
    """True when ``data`` starts as a safetensors file does: an 8-byte little-endian header length that fits
    the file (and the library's limit), then that many bytes of a JSON object. Never raises."""
    if len(data) < 10 or data[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > min(MAX_SAFETENSORS_HEADER, len(data) - 8):
        return False
    try:
        return isinstance(json.loads(data[8:8 + n].decode("utf-8")), dict)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False


def check_path(path: str | os.PathLike) -> None:
    """Refuse what is not a plain weights file before opening it: missing paths, directories, FIFOs,
    devices, sockets, broken symlinks and symlinks that point outside their own folder."""
    text = os.fspath(path)
    cwd = os.getcwd()
    below = not os.path.isabs(text) or text.startswith(cwd + os.sep)  # the part the user gave relative to cwd
    escape = escaping_symlink(Path(cwd), os.path.relpath(text, cwd)) if below else None
    if escape:  # a symlinked folder on the way gets the same treatment as a symlinked file
        raise ModelLoadError(f"{escape}; refusing to follow it; give the target path itself if you trust it")
    try:
        info = os.lstat(text)
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {text}; check the path (paths in a manifest are relative "
                             "to the manifest)") from None
    except OSError as e:
        raise ModelLoadError(f"cannot read {text}: {_first_line(e)}") from None
    if stat.S_ISLNK(info.st_mode):
        target = os.path.realpath(text)
        folder = os.path.realpath(os.path.dirname(os.path.abspath(text)))
        if not os.path.exists(target):
            raise ModelLoadError(f"{text} is a broken symbolic link (to {target}); fix the link or give the "
                                 "file itself")
        if os.path.commonpath([folder, target]) != folder:
            raise ModelLoadError(f"{text} is a symbolic link to {target}, outside its folder {folder}; refusing "
                                 "to follow it; give the target path itself if you trust it")
        info = os.stat(text)
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        raise ModelLoadError(f"{text} is a directory, not a model file; give the weights file inside it "
                             "(.pt/.pth/.bin/.safetensors)")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device file"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        raise ModelLoadError(f"{text} is {kind}, not a regular file; refusing to read it; give a weights file")


def check_zip(data: bytes, path: str) -> None:
    """Cap a zip checkpoint's declared sizes before torch decompresses or allocates anything."""
    try:
        infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except Exception:  # noqa: BLE001
        raise ModelLoadError(f"cannot read {path}: corrupt or truncated zip archive; {REFIX}") from None
    if len(infos) > ZIP_MAX_ENTRIES:
        raise ModelLoadError(f"cannot read {path}: the zip archive lists {len(infos)} entries; refusing it as a "
                             f"zip bomb; {REFIX}")
    declared = sum(max(0, int(i.file_size)) for i in infos)
    limit = ZIP_MAX_RATIO * len(data) + ZIP_SLACK
    if declared > limit:
        raise ModelLoadError(f"cannot read {path}: the zip archive declares {declared} bytes uncompressed in a "
                             f"{len(data)}-byte file (a zip bomb or a corrupt archive); refusing to decompress "
                             f"it; {REFIX}")
    for info in infos:
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise ModelLoadError(f"cannot read {path}: zip entry {info.filename!r} declares {info.file_size} "
                                 f"bytes but stores {info.compress_size}; corrupt archive; {REFIX}")
        if info.header_offset + info.compress_size > len(data):
            raise ModelLoadError(f"cannot read {path}: zip entry {info.filename!r} lies beyond the end of the "
                                 f"file (truncated); {REFIX}")


def check_safetensors(data: bytes, path: str) -> None:
    """Validate a safetensors layout before the library allocates: header size, JSON, dtypes, shapes,
    offsets inside the data section, sizes that fit shape and dtype, tensors that do not overlap."""
    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"cannot read {path}: corrupt safetensors file ({why}); {REFIX}")

    if len(data) < 8:
        raise bad("shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_SAFETENSORS_HEADER:
        raise bad(f"declared header of {n} bytes exceeds the {MAX_SAFETENSORS_HEADER}-byte limit")
    if n > len(data) - 8:
        raise bad(f"declared header of {n} bytes but the file has only {len(data) - 8} after the length")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"header is not valid JSON: {_first_line(e)}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    size = len(data) - 8 - n
    spans = []
    for key, spec in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(spec, dict) or set(spec) - {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {key!r} has a malformed entry")
        dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPES:
            raise bad(f"tensor {key!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"tensor {key!r} has a malformed shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise bad(f"tensor {key!r} has malformed data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= size:
            raise bad(f"tensor {key!r} offsets [{begin}, {end}] lie outside the {size}-byte data section")
        nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
        if nbytes != end - begin:
            raise bad(f"tensor {key!r} shaped {shape} {dtype} needs {nbytes:g} bytes but its offsets span "
                      f"{end - begin}")
        spans.append((begin, end, key))
    spans.sort()
    for (b1, e1, k1), (b2, e2, k2) in zip(spans, spans[1:]):
        if b2 < e1:
            raise bad(f"tensors {k1!r} and {k2!r} overlap")


def extract_state_dict(obj: Any, path: str = "") -> dict[str, torch.Tensor]:
    """Find the tensors of a checkpoint: unwrap ``state_dict``/``model``/``ema``... and drop ``module.``."""
    seen = 0
    while isinstance(obj, dict) and seen < 4:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj, seen = inner, seen + 1
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ModelLoadError(f"{path} holds no tensors (keys: {', '.join(map(str, list(obj)[:5]))})")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def peeled(sd: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``sd`` as saved, then with the one name every key starts with peeled off, in turn (at most three): what a
    training wrapper puts before the network's own names (a Lightning module's ``model.``, a ``backbone.``)."""
    variants = [sd]
    while len(variants) < 4:
        last = variants[-1]
        heads = {key.partition(".")[0] for key in last}
        if len(heads) != 1 or not all("." in key for key in last):
            break
        cut = len(heads.pop()) + 1
        variants.append({key[cut:]: t for key, t in last.items()})
    return variants


def fitting(sd: dict[str, torch.Tensor], keys: Any) -> dict[str, torch.Tensor]:
    """The variant of ``sd`` (:func:`peeled`) that shares the most names with ``keys`` (``num_batches_tracked``
    aside; as saved on a tie): the one that loads exactly where any does, and whose mismatch is worth naming."""
    def names(d: Any) -> set[str]:
        return {k for k in d if not k.endswith("num_batches_tracked")}
    want = names(keys)
    return max(peeled(sd), key=lambda variant: len(names(variant) & want))


def check_weight_dtypes(module: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Refuse tensors that cannot go into the module unchanged: complex ones anywhere, integer or boolean
    ones into floating-point parameters (a quantised checkpoint: casting its codes makes another model)."""
    target = module.state_dict()
    bad = [f"{key} ({t.dtype}{f' into {target[key].dtype}' if key in target else ''})" for key, t in sd.items()
           if t.is_complex() or (key in target and target[key].is_floating_point() and not t.is_floating_point())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ModelLoadError(f"{source}: tensors {', '.join(bad[:3])}{more} are not real floating-point values where "
                             "the model has them (a quantised or complex checkpoint?); converting them would "
                             "silently make another model; refusing it")


def _untrusted(path: str) -> UntrustedFileError:
    return UntrustedFileError(
        f"{path} holds a pickled Python object (e.g. a whole nn.Module); loading it would run code "
        "from the file. Re-save it as a state dict, or pass --trust if you trust its origin")


@contextmanager
def on_sys_path(folders: Iterable[str]) -> Iterator[None]:
    """``folders`` at the front of ``sys.path`` for the duration (those not there already), then taken off again:
    what a trusted pickle's classes or a user's class file import is found as Python itself would find it."""
    added = []
    for folder in reversed(list(dict.fromkeys(str(f) for f in folders))):
        if folder not in sys.path:
            sys.path.insert(0, folder)
            added.append(folder)
    try:
        yield
    finally:
        for folder in added:
            try:
                sys.path.remove(folder)
            except ValueError:  # the imported code took it off itself
                pass


class PickledDDP(nn.Module):
    """What a whole pickled ``DistributedDataParallel`` is read as: its attributes, not its process group (which
    unpickling DDP itself would ask for); :func:`unwrapped` takes out the model it wraps."""


DDP_CLASS = ("torch.nn.parallel.distributed", "DistributedDataParallel")
MainModule = Callable[[], ModuleType]


def _unpickler(main: MainModule | None) -> ModuleType:
    """A pickle module for ``torch.load`` whose unpickler reads a DistributedDataParallel as :class:`PickledDDP`,
    and a class pickled from a script's ``__main__`` as the class of that name in ``main()`` (the user's file named
    with ``--arch python:FILE.py:Class``; else a clear error)."""
    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) == DDP_CLASS:
                return PickledDDP
            if module == "__main__":
                return _main_class(name, main, super().find_class)
            return super().find_class(module, name)

    shim = ModuleType("gifindex_pickle")
    shim.__dict__.update({k: v for k, v in vars(pickle).items() if not k.startswith("__")})
    shim.Unpickler = Unpickler  # type: ignore[attr-defined]
    return shim


def _main_class(name: str, main: MainModule | None, find: Callable[[str, str], Any]) -> Any:
    """Class ``name`` of a pickle saved from a script (``__main__``): the one the user's file defines, else (no file
    named) the running program's own, as pickle finds it (a Python caller that defines the class itself)."""
    try:
        found = getattr(main(), name, None) if main is not None else find("__main__", name)
    except AttributeError:
        found = None
    if found is None:
        where = "the file --arch names defines none" if main is not None else "gifindex cannot import that script"
        raise ModelLoadError(f"its class {name!r} was defined in a script's __main__ (the script that saved it) and "
                             f"{where}; re-save a state dict (torch.save(model.state_dict(), PATH)) and pass --arch "
                             f"python:FILE.py:{name} --trust, or name the file that defines it with --arch "
                             f"python:FILE.py:{name}")
    return found


def unwrapped(module: nn.Module) -> nn.Module:
    """The network inside the wrappers training saves whole with it: ``DataParallel`` and
    ``DistributedDataParallel`` (``.module``), ``torch.compile``'s ``OptimizedModule`` (``._orig_mod``); so it is
    named, normalised and hashed as itself, and a compiled one is not compiled again when it runs."""
    for _ in range(8):   # wrappers of wrappers; a few at most
        inner = _wrapped(module)
        if inner is None:
            break
        module = inner
    for sub in () if isinstance(module, torch.jit.ScriptModule) else module.modules():
        if getattr(sub, "_compiled_call_impl", None) is not None:   # `model.compile()` in place: run it uncompiled
            sub._compiled_call_impl = None
    return module


def _wrapped(module: nn.Module) -> nn.Module | None:
    """The module a training wrapper holds (see :func:`unwrapped`), or None when ``module`` is no wrapper."""
    if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel, PickledDDP)):
        inner = getattr(module, "module", None)
    elif type(module).__name__ == "OptimizedModule":   # by name: torch._dynamo is not imported for the check
        inner = getattr(module, "_orig_mod", None)
    else:
        return None
    return inner if isinstance(inner, nn.Module) else None


def _torch_load(data: bytes, path: str, trust: bool, import_paths: Iterable[str] = (),
                main: MainModule | None = None) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise ModelLoadError(f"cannot read {path}: corrupt or truncated file ({_first_line(e)}); {REFIX}")
        if not trust:
            raise _untrusted(path) from None
    except Exception as e:  # EOFError, RuntimeError, struct.error, zipfile errors...: unreadable
        raise ModelLoadError(f"cannot read {path}: corrupt or truncated file ({_first_line(e)}); {REFIX}")
    try:
        with on_sys_path(import_paths):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False, pickle_module=_unpickler(main))
    except ModelLoadError as e:   # said in full where it was found (a class from a script's __main__)
        raise ModelLoadError(f"cannot load {path} (trusted pickle): {e}") from None
    except ImportError as e:  # the pickle names a module of classes that is not importable here
        module = getattr(e, "name", None)
        raise ModelLoadError(f"cannot load {path} (trusted pickle): it needs module {module or '?'!r} for its "
                             f"classes, which cannot be imported ({_first_line(e)}); it must be importable: run from "
                             "the folder that holds it, add that folder to PYTHONPATH, or name the class's file with "
                             "--arch python:FILE.py:Class") from None
    except AttributeError as e:  # the module imports but no longer defines the pickled class
        raise ModelLoadError(f"cannot load {path} (trusted pickle): a class it needs is not where it was saved from "
                             f"({_first_line(e)}); make the module that defines it importable") from None
    except Exception as e:  # trusted arbitrary pickle: any failure is a load failure
        raise ModelLoadError(f"cannot load {path} (trusted pickle): {_first_line(e)}")


def as_float32(module: nn.Module) -> nn.Module:
    """``module`` (a model read from a file: gifindex's own copy) with its floating-point parameters and buffers in
    float32, the precision gifindex signs in (a module saved in fp16, bf16 or fp64); other tensors as they are."""
    if any(t.is_floating_point() and t.dtype != torch.float32
           for t in (*module.parameters(), *module.buffers())):
        module = module.float()
    return module


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def read_weights_file(path: str | Path, *, trust: bool = False, import_paths: Iterable[str] = (),
                      main: MainModule | None = None) -> WeightsFile:
    """Read ``path`` as a state dict (or, with ``trust``, a pickled module / TorchScript archive, its floating-point
    tensors in float32, out of its training wrappers). A trusted pickle is unpickled with ``import_paths`` on
    ``sys.path`` (its classes' modules), and classes pickled from a script's ``__main__`` taken from ``main()``."""
    path = str(path)
    check_path(path)
    try:
        with open(path, "rb") as handle:  # the format is told by its first bytes: junk is refused unread
            head = handle.read(1024)
        if sniff(head) == "unknown":
            raise ModelLoadError(f"cannot read {path}: not a PyTorch, TorchScript or safetensors file "
                                 f"(unrecognised content); {REFIX}")
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {path}; check the path") from None
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {_first_line(e)}") from None
    sha = hashlib.sha256(data).hexdigest()
    fmt = sniff(data)
    if fmt == "empty":
        raise ModelLoadError(f"cannot read {path}: the file is empty; {REFIX}")
    if fmt == "lfs-pointer":
        raise ModelLoadError(f"cannot read {path}: it is a Git LFS pointer ({len(data)} bytes), not the weights; "
                             "run `git lfs pull` in its repository (or download the real file) and retry")
    if fmt == "html":
        raise ModelLoadError(f"cannot read {path}: it is an HTML page (a download error or login page saved as "
                             "a model file), not weights; download the file again")
    if fmt == "unknown":
        raise ModelLoadError(f"cannot read {path}: not a PyTorch, TorchScript or safetensors file "
                             f"(unrecognised content); {REFIX}")
    if fmt == "bad-zip":
        raise ModelLoadError(f"cannot read {path}: corrupt or truncated zip archive; {REFIX}")
    if fmt in ("torch-zip", "torchscript"):
        check_zip(data, path)
    if fmt == "safetensors":
        from safetensors.torch import load as st_load
        check_safetensors(data, path)
        try:
            sd = st_load(data)
        except Exception as e:  # safetensors raises its own SafetensorError
            raise ModelLoadError(f"cannot read {path}: corrupt safetensors file ({_first_line(e)}); {REFIX}")
        return WeightsFile(path, fmt, sha, state_dict=extract_state_dict(sd, path))
    if fmt == "torchscript":
        if not trust:
            raise UntrustedFileError(f"{path} is a TorchScript archive; loading it runs code from the "
                                     "file; pass --trust if you trust its origin")
        try:
            with warnings.catch_warnings():  # torch's deprecation notice is not the user's to act on
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as e:
            raise ModelLoadError(f"cannot load TorchScript archive {path}: {_first_line(e)}")
        return WeightsFile(path, fmt, sha, module=_own_module(module, path))
    obj = _torch_load(data, path, trust, import_paths, main)
    if isinstance(obj, nn.Module):
        return WeightsFile(path, fmt, sha, module=_own_module(obj, path))
    if isinstance(obj, dict):
        mod = next((v for v in obj.values() if isinstance(v, nn.Module)), None)
        if mod is not None and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            return WeightsFile(path, fmt, sha, module=_own_module(mod, path))
    return WeightsFile(path, fmt, sha, state_dict=extract_state_dict(obj, path))


def _own_module(module: nn.Module, path: str) -> nn.Module:
    """A module read from ``path`` as gifindex signs it: out of its training wrappers, in float32."""
    try:
        return as_float32(unwrapped(module))
    except Exception as e:  # noqa: BLE001 - a module whose own code refuses the conversion
        raise ModelLoadError(f"cannot convert {path} to float32 (the precision gifindex signs in): "
                             f"{_first_line(e)}") from None


def read_state_dict(path: str | Path, *, trust: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """Read a ``--weights`` file: it must hold a state dict. Returns ``(state_dict, sha256)``."""
    wf = read_weights_file(path, trust=trust)
    if wf.state_dict is None:
        assert wf.module is not None
        return extract_state_dict(wf.module.state_dict(), str(path)), wf.sha256
    return wf.state_dict, wf.sha256
