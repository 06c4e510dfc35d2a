"""Model sources: where a kind of model reference comes from, one registered ``ModelSource`` per kind.

A source knows, in one place, how to build an architecture by name without weights (``constructor``,
used on the meta device by architecture detection), how to load a reference (``load``: module, weights,
and the input convention it was trained with, as a ``Built``), and the version of the library behind it
(which keys detection's fingerprint cache). The modules that define sources are imported on the first
lookup (``SOURCE_MODULES``); a source registers itself with ``@register_source``. Adding a source
(open_clip, a transformers vision model, ...): one module with one class, added to ``SOURCE_MODULES``.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch.nn as nn

from gifindex.errors import RefError

if TYPE_CHECKING:
    from gifindex.models.spec import Built
    from gifindex.refs import ModelRef

SOURCE_MODULES = ("gifindex.models.hub", "gifindex.models.taskonomy", "gifindex.models.hf_folder",
                  "gifindex.models.local")


class ModelSource(ABC):
    """One kind of model reference (``kind`` as gifindex.refs parses it)."""

    kind: ClassVar[str]
    takes_arch: ClassVar[bool] = False  # --arch applies (state-dict files)
    # why --weights / --random-init do not apply, or None when they do
    refuses_weights: ClassVar[str | None] = None

    @abstractmethod
    def load(self, ref: "ModelRef", *, arch: str | None, weights: Any, num_classes: int | None,
             random_init: bool, trust: bool) -> "Built":
        """Build ``ref`` with its weights (``weights``: a path or an already read ``(state_dict, sha)``)."""

    def constructor(self, name: str) -> Callable[..., nn.Module]:
        """The builder of architecture ``name`` (keyword ``num_classes`` where it has a classifier);
        KeyError when this source builds no such architecture."""
        raise KeyError(f"{self.kind}:{name}")

    def version(self) -> str:
        """Version of the library the architectures come from ("0" when they are gifindex's own)."""
        return "0"

    def model_name(self, ref: "ModelRef") -> str:
        """The default name of a model loaded from ``ref``."""
        return ref.canonical()

    def has_local_weights(self, ref: "ModelRef") -> bool:
        """Whether ``ref``'s pretrained weights are on this machine (a cheap look at the caches ``load``
        reads; raises for an unknown name). Sources whose references are local paths hold their weights."""
        return ref.path is not None


_SOURCES: dict[str, ModelSource] = {}
S = TypeVar("S", bound=type)


def register_source(cls: S) -> S:
    """Class decorator: make an instance of ``cls`` the source of references of kind ``cls.kind``."""
    _SOURCES[cls.kind] = cls()
    return cls


def _loaded() -> dict[str, ModelSource]:
    for module in SOURCE_MODULES:
        importlib.import_module(module)  # plug-in discovery; a no-op once imported
    return _SOURCES


def get_source(kind: str) -> ModelSource:
    """The source of references of kind ``kind``."""
    sources = _loaded()
    if kind not in sources:
        raise RefError(f"no model source for references of kind {kind!r}; known: {', '.join(sources)}")
    return sources[kind]


def source_kinds() -> tuple[str, ...]:
    return tuple(_loaded())
