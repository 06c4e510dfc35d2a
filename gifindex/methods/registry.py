"""The registry of signature methods: name -> one ``Method`` instance.

Light on purpose (no torch): the configuration validates its ``method`` here and the command line draws
its ``--method`` choices from here, and ``gifindex --help`` must not pay for torch. The modules that define
methods are imported on the first lookup; a method registers itself with the ``@register`` decorator.
Adding a method: a class in one of ``METHOD_MODULES`` (or a new module added to it) and its tests.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, TypeVar

from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import Method

METHOD_MODULES = ("gifindex.methods.gradient", "gifindex.methods.output", "gifindex.methods.functional")

_METHODS: dict[str, "Method"] = {}
M = TypeVar("M", bound=type)


def register(cls: M) -> M:
    """Class decorator: make an instance of ``cls`` available under ``cls.name``."""
    _METHODS[cls.name] = cls()
    return cls


def _loaded() -> dict[str, "Method"]:
    for module in METHOD_MODULES:
        importlib.import_module(module)  # plug-in discovery; a no-op once imported
    return _METHODS


def method_names() -> tuple[str, ...]:
    """Names of the registered methods: by their module's place in METHOD_MODULES, then in registration order
    (modelgif first), whichever method module happened to be imported first."""
    def rank(name: str) -> int:
        module = type(_METHODS[name]).__module__
        return METHOD_MODULES.index(module) if module in METHOD_MODULES else len(METHOD_MODULES)

    return tuple(sorted(_loaded(), key=rank))


def get_method(name: str) -> "Method":
    """The method called ``name``; an unknown name is a one-line ConfigError listing the known ones."""
    methods = _loaded()
    if name not in methods:
        raise ConfigError(f"invalid method {name!r}: expected one of {', '.join(method_names())}")
    return methods[name]
