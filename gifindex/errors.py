"""User-facing errors: each one is a single line that names the problem and the fix.

The command line prints ``str(error)`` on stderr and exits with code 1; it never shows a traceback
for a :class:`GifindexError`.
"""
from __future__ import annotations


class GifindexError(Exception):
    """Base class for every error meant for the user (one line, no traceback)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class RefError(GifindexError):
    """A model reference that cannot be parsed or names something unknown."""


class ModelLoadError(GifindexError):
    """A model that cannot be built or whose weights cannot be read."""


class MissingWeightsError(ModelLoadError):
    """Pretrained weights are not in any local cache and were not given with --weights."""


class UntrustedFileError(ModelLoadError):
    """A file whose loading would execute code (pickled module, TorchScript) without --trust."""


class ArchitectureError(ModelLoadError):
    """A state dict that matches no known architecture, or does not fit the requested one."""


class ConfigError(GifindexError):
    """An invalid signature configuration or option value."""


class ProbeError(GifindexError):
    """Probe source that cannot be read or is malformed."""


class SignatureError(GifindexError):
    """A model whose signature cannot be computed (non-finite output or gradients, bad output type)."""


class IndexError_(GifindexError):
    """An index directory that is missing, damaged, of another format, or used inconsistently (the trailing
    underscore keeps it from shadowing the builtin ``IndexError``)."""
