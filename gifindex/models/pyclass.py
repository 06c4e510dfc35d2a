"""Architectures from the user's own code: ``--arch python:FILE.py:Class`` or ``--arch python:package.module:Class``.

A state dict holds weights, not the class they fit, and a network written for a paper or a product (advertorch's
LeNet5, say) has no timm or torchvision name. Naming the class that built it lets such a file load as it is,
without re-saving it whole (TorchScript, a pickle). Importing the file runs its code, so this asks for ``--trust``
exactly as a pickle does. The class is called with ``num_classes`` when it takes that keyword and ``--num-classes``
is given, else with no arguments; the state dict must then fit it exactly. A file path is recorded absolute, so the
index loads the model again from any folder (``suspect --all``, ``fit-probes``).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gifindex.errors import ConfigError, ModelLoadError, UntrustedFileError
from gifindex.models.files import fitting

if TYPE_CHECKING:  # torch is imported where a class is built: manifests read this module without paying for it
    import torch
    import torch.nn as nn

PREFIX = "python:"


def is_python_arch(arch: str | None) -> bool:
    return bool(arch) and arch.startswith(PREFIX)


def _split(arch: str) -> tuple[str, str]:
    target, _, class_name = arch[len(PREFIX):].rpartition(":")
    if not target or not class_name.isidentifier():
        raise ConfigError(f"--arch {arch!r}: name the class as python:FILE.py:Class or python:package.module:Class")
    return target, class_name


def with_file(arch: str, place: Callable[[str], str]) -> str:
    """``arch`` with its file (a ``.py`` target) passed through ``place``; a module target as it is."""
    target, class_name = _split(arch)
    return f"{PREFIX}{place(target) if target.endswith('.py') else target}:{class_name}"


def canonical(arch: str) -> str:
    """``arch`` with a file path made absolute (the name the index records)."""
    return with_file(arch, lambda target: str(Path(target).expanduser().resolve()))


def _import(target: str):
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise ModelLoadError(f"--arch python:{target}: no such file")
        name = f"gifindex_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:  # a package of the user's, run from its folder
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(target)
    finally:
        if added:
            sys.path.remove(cwd)


def build(arch: str, num_classes: int | None, trust: bool) -> nn.Module:
    """An untrained instance of the class ``arch`` names (imported only with ``trust``)."""
    import torch.nn as nn

    target, class_name = _split(arch)
    if not trust:
        raise UntrustedFileError(f"--arch {arch}: building it imports {target} and runs its code; pass --trust if "
                                 "you trust that code")
    try:
        module = _import(target)
    except ModelLoadError:
        raise
    except Exception as e:  # the user's code failed to import: its first line says why
        raise ModelLoadError(f"--arch {arch}: cannot import {target}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ModelLoadError(f"--arch {arch}: {target} defines no {class_name!r}")
    kwargs = {}
    if num_classes is not None:
        try:
            takes = "num_classes" in inspect.signature(cls).parameters
        except (TypeError, ValueError):
            takes = False
        if takes:
            kwargs["num_classes"] = num_classes
    try:
        net = cls(**kwargs)
    except Exception as e:
        raise ModelLoadError(f"--arch {arch}: {class_name}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) "
                             f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(net, nn.Module):
        raise ModelLoadError(f"--arch {arch}: {class_name} built a {type(net).__name__}, not a torch.nn.Module")
    return net


def load_into(net: nn.Module, state_dict: dict[str, torch.Tensor], arch: str) -> None:
    """Load ``state_dict`` into ``net`` exactly; a mismatch names the keys (at most three of each kind)."""
    own = net.state_dict()
    state_dict = fitting(state_dict, own)
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    problems = [f"{what} {', '.join(keys[:3])}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
    if problems:
        raise ModelLoadError(f"the weights do not fit --arch {arch}: {'; '.join(problems)}")
    net.load_state_dict(state_dict, strict=True)
