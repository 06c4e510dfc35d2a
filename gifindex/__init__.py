"""gifindex: functional similarity of trained neural networks with ModelGiF curves.

Data flow: model reference -> load_model -> SharedSpaceAdapter -> make_probes -> compute_curves ->
curve_distance (exact) or signature (compressed) -> Index.

The Python API, one entry point per stage: ``load_model(ref, **opts)``,
``SignatureConfig``, ``make_probes(config)``, ``compute_curves(model, probes, config)``,
``curve_distance(curves_a, curves_b)``, ``signature(model, config, probes)`` and ``distance(a, b, config)``
(models as references, files, ``LoadedModel`` or ``nn.Module``), ``Index.create(path, config)`` /
``Index.open(path)`` with ``index.ingest(refs)``, ``index.nearest(model, k)``, ``index.distance(a, b)``,
``index.matrix()``, ``index.tree()``.

Names are imported on first use (PEP 562), so ``import gifindex`` (and ``gifindex --help``) does not pay
for torch. ``gifindex.distance`` and ``gifindex.signature`` are the API functions; their implementation
modules stay importable as ``from gifindex.distance import curve_distance`` and
``from gifindex.signature import projection_for``.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# public name -> module (relative to this package) that defines it
_EXPORTS = {
    "SharedSpaceAdapter": ".adapter", "Projection": ".compress", "compress": ".compress",
    "SignatureConfig": ".config", "compute_curves": ".api", "curve_distance": ".distance",
    "signature_distance": ".distance", "GifindexError": ".errors", "load_model": ".models",
    "InputSpec": ".models.spec", "LoadedModel": ".models.spec", "Probes": ".probes", "make_probes": ".probes",
    "signature": ".api", "distance": ".api", "as_loaded_model": ".api", "Index": ".index",
    "SearchSpec": ".index",
}
# names that are both an API function and a submodule: the package attribute stays the function
_FUNCTIONS_OVER_MODULES = ("distance", "signature")

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gifindex' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``gifindex.distance`` / ``gifindex.signature`` the functions when their submodules load (the
    import system would set the package attribute to the submodule; sys.modules still holds the module)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FUNCTIONS_OVER_MODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
