"""Safe reading of local weight files.

The format is sniffed from the bytes, never trusted from the extension. Plain state dicts load with
``torch.load(weights_only=True)``; anything that would run code from the file when loaded (a pickled
``nn.Module`` or other object, a TorchScript archive) is refused unless the caller passes ``trust``.
The sha256 is computed over exactly the bytes that are loaded.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from gifindex.errors import ModelLoadError, UntrustedFileError

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
    """Name the container format of ``data``: torch-zip, torchscript, torch-legacy, safetensors, ..."""
    if not data:
        return "empty"
    if data[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "bad-zip"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "torch-zip"
    if data[0] == 0x80:
        return "torch-legacy"
    if len(data) >= 9:
        (n,) = struct.unpack("<Q", data[:8])
        if 0 < n <= len(data) - 8 and data[8:9] == b"{":
            return "safetensors"
    return "unknown"


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


def _untrusted(path: str) -> UntrustedFileError:
    return UntrustedFileError(
        f"{path} holds a pickled Python object (e.g. a whole nn.Module); loading it would run code "
        "from the file. Re-save it as a state dict, or pass --trust if you trust its origin")


def _torch_load(data: bytes, path: str, trust: bool) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise ModelLoadError(f"cannot read {path}: corrupt or truncated file ({_first_line(e)})")
        if not trust:
            raise _untrusted(path) from None
    except Exception as e:  # EOFError, RuntimeError, struct.error, zipfile errors...: unreadable
        raise ModelLoadError(f"cannot read {path}: corrupt or truncated file ({_first_line(e)})")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as e:  # trusted arbitrary pickle: any failure is a load failure
        raise ModelLoadError(f"cannot load {path} (trusted pickle): {_first_line(e)}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def read_weights_file(path: str | Path, *, trust: bool = False) -> WeightsFile:
    """Read ``path`` as a state dict (or, with ``trust``, a pickled module / TorchScript archive)."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {path}") from None
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {_first_line(e)}") from None
    sha = hashlib.sha256(data).hexdigest()
    fmt = sniff(data)
    if fmt == "empty":
        raise ModelLoadError(f"cannot read {path}: the file is empty")
    if fmt == "unknown":
        raise ModelLoadError(f"cannot read {path}: not a PyTorch, TorchScript or safetensors file "
                             "(unrecognised content)")
    if fmt == "bad-zip":
        raise ModelLoadError(f"cannot read {path}: corrupt or truncated zip archive")
    if fmt == "safetensors":
        from safetensors.torch import load as st_load
        try:
            sd = st_load(data)
        except Exception as e:  # safetensors raises its own SafetensorError
            raise ModelLoadError(f"cannot read {path}: corrupt safetensors file ({_first_line(e)})")
        return WeightsFile(path, fmt, sha, state_dict=extract_state_dict(sd, path))
    if fmt == "torchscript":
        if not trust:
            raise UntrustedFileError(f"{path} is a TorchScript archive; loading it runs code from the "
                                     "file; pass --trust if you trust its origin")
        try:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as e:
            raise ModelLoadError(f"cannot load TorchScript archive {path}: {_first_line(e)}")
        return WeightsFile(path, fmt, sha, module=module)
    obj = _torch_load(data, path, trust)
    if isinstance(obj, nn.Module):
        return WeightsFile(path, fmt, sha, module=obj)
    if isinstance(obj, dict):
        mod = next((v for v in obj.values() if isinstance(v, nn.Module)), None)
        if mod is not None and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            return WeightsFile(path, fmt, sha, module=mod)
    return WeightsFile(path, fmt, sha, state_dict=extract_state_dict(obj, path))


def read_state_dict(path: str | Path, *, trust: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """Read a ``--weights`` file: it must hold a state dict. Returns ``(state_dict, sha256)``."""
    wf = read_weights_file(path, trust=trust)
    if wf.state_dict is None:
        assert wf.module is not None
        return extract_state_dict(wf.module.state_dict(), str(path)), wf.sha256
    return wf.state_dict, wf.sha256
