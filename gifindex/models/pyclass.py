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
from types import ModuleType
from typing import TYPE_CHECKING

from gifindex.errors import ConfigError, ModelLoadError, UntrustedFileError
from gifindex.models.files import check_weight_dtypes, fitting, on_sys_path

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


def absolute(arch: str) -> str:
    """``arch`` with a file path made absolute; a module target as it is (the name a loaded model goes by)."""
    return with_file(arch, lambda target: str(Path(target).expanduser().resolve()))


def class_file(arch: str) -> Path | None:
    """The file of a ``python:FILE.py:Class`` architecture (None for a ``package.module`` target)."""
    target, _ = _split(arch)
    return Path(target).expanduser() if target.endswith(".py") else None


def canonical(arch: str) -> str:
    """``arch`` as the index records it, to load it again from any folder: a file path made absolute, and a
    ``package.module`` target found below the working folder (where it is imported from) as its file's absolute path
    (imported again as that package's module); one importable otherwise (installed) as it is."""
    target, class_name = _split(arch)
    if not target.endswith(".py"):
        found = module_file(target, Path.cwd())
        return f"{PREFIX}{found}:{class_name}" if found is not None else arch
    return absolute(arch)


def module_file(dotted: str, folder: Path) -> Path | None:
    """The absolute file of module ``dotted`` (``pkg.models``) below ``folder``, as ``import`` would find it with
    ``folder`` first on ``sys.path`` (``pkg/models.py`` or ``pkg/models/__init__.py``, every folder on the way a
    package); None when it is not there. Read from the file system alone: nothing is imported."""
    parts = dotted.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    base = folder.resolve()
    for part in parts[:-1]:
        base = base / part
        if not (base / "__init__.py").is_file():
            return None
    for candidate in (base / parts[-1] / "__init__.py", base / f"{parts[-1]}.py"):
        if candidate.is_file():
            return candidate
    return None


def folders(arch: str | None) -> list[str]:
    """The folders ``arch``'s code is imported from (``sys.path`` entries while a trusted pickle of its class is
    read): a file's own folder, and the folder above its package when it lies in one; none for a module target."""
    if not is_python_arch(arch):
        return []
    target, _ = _split(arch)
    if not target.endswith(".py"):
        return []
    path = Path(target).expanduser().resolve()
    root, _ = _package_of(path)
    return list(dict.fromkeys(str(p) for p in (path.parent, root) if p is not None))


def _package_of(path: Path) -> tuple[Path | None, str | None]:
    """(the folder above the outermost package holding ``path``, its dotted module name), or (None, None) for a file
    in no package (its folder has no ``__init__.py``)."""
    if not (path.parent / "__init__.py").is_file():
        return None, None
    parts = [] if path.name == "__init__.py" else [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file() and folder.name.isidentifier() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    if not parts or not all(p.isidentifier() for p in parts):
        return None, None
    return folder, ".".join(parts)


def _import(target: str):
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise ModelLoadError(f"--arch python:{target}: no such file")
        root, dotted = _package_of(path)
        if dotted is not None:  # a file in a package: that package's module (its relative imports resolve)
            return _import_package_module(target, path, root, dotted)
        name = f"gifindex_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            with on_sys_path([str(path.parent)]):  # what it imports from beside it, as `python FILE.py` finds it
                spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    with on_sys_path([str(Path.cwd())]):  # a package of the user's, run from its folder
        return importlib.import_module(target)


def _import_package_module(target: str, path: Path, root: Path, dotted: str):
    """Import ``dotted`` (the module of ``path``, in a package below ``root``) with ``root`` on ``sys.path``; a clear
    error when a package of that name is already imported from elsewhere."""
    top = dotted.split(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None:
        where = getattr(loaded, "__file__", None)
        if not where or Path(where).resolve().parent.parent != root:
            raise ModelLoadError(f"--arch python:{target}: its package {top!r} is already imported from "
                                 f"{Path(where).parent if where else 'elsewhere'}, not from {root}; name it as "
                                 f"python:{dotted}:Class from {root}, or rename one of the packages")
    with on_sys_path([str(root)]):
        module = importlib.import_module(dotted)
    if Path(getattr(module, "__file__", "") or "").resolve() != path:
        raise ModelLoadError(f"--arch python:{target}: importing it as {dotted} found {module.__file__} instead")
    return module


def user_module(arch: str, trust: bool) -> ModuleType:
    """The module that defines ``arch``'s class, imported (only with ``trust``: importing runs its code)."""
    target, _ = _split(arch)
    if not trust:
        raise UntrustedFileError(f"--arch {arch}: building it imports {target} and runs its code; pass --trust if "
                                 "you trust that code")
    try:
        return _import(target)
    except ModelLoadError:
        raise
    except ImportError as e:
        if "no known parent package" in str(e):
            raise ModelLoadError(f"--arch {arch}: {target} uses relative imports (from . import ...) but its folder "
                                 "is not a package (no __init__.py); add an __init__.py there, or name it as "
                                 "python:package.module:Class from the folder above the package") from None
        raise ModelLoadError(f"--arch {arch}: cannot import {target}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''} (what it imports must lie beside it, in "
                             "its package, or be installed)") from None
    except Exception as e:  # the user's code failed to import: its first line says why
        raise ModelLoadError(f"--arch {arch}: cannot import {target}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None


def build(arch: str, num_classes: int | None, trust: bool) -> nn.Module:
    """An untrained instance of the class ``arch`` names (imported only with ``trust``)."""
    import torch.nn as nn

    target, class_name = _split(arch)
    module = user_module(arch, trust)
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
    """Load ``state_dict`` into ``net`` exactly; a mismatch names the keys (at most three of each kind), and integer
    or complex tensors for floating-point ones are refused, as for every architecture (never silently cast)."""
    own = net.state_dict()
    state_dict = fitting(state_dict, own)
    check_weight_dtypes(net, state_dict, f"--arch {arch}")
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    problems = [f"{what} {', '.join(keys[:3])}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
    if problems:
        raise ModelLoadError(f"the weights do not fit --arch {arch}: {'; '.join(problems)}")
    net.load_state_dict(state_dict, strict=True)
