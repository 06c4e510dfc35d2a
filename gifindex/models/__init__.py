"""Loading models: one entry point, :func:`load_model`, for every kind of model reference.

The result is always a :class:`LoadedModel` whose module is in eval mode, has every parameter frozen
(``requires_grad=False``) and sits on the requested device, with the input convention it expects.
"""
from __future__ import annotations

import logging
import numbers
import os
from pathlib import Path
from typing import Sequence

import torch.nn as nn

from gifindex.errors import ConfigError
from gifindex.models.files import check_path
from gifindex.models.sources import get_source
from gifindex.models.spec import Built, InputSpec, LoadedModel, input_channels, read_weights
from gifindex.refs import _PREFIXES, FILE_SUFFIXES, ModelRef, parse_ref

__all__ = ["Built", "InputSpec", "LoadedModel", "load_model", "read_weights"]

log = logging.getLogger(__name__)


def load_model(ref: "str | ModelRef", *, arch: str | None = None, weights: str | None = None,
               num_classes: int | None = None, input_size: int | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               trust: bool = False, random_init: bool = False, device: str = "cpu") -> LoadedModel:
    """Build the model named by ``ref`` with its weights, ready to be signed.

    ``weights`` is a state-dict file for a named architecture; ``arch`` names the architecture of
    a state-dict file given as ``ref`` (detected from its keys when omitted); ``random_init`` asks
    for untrained weights (seed the RNG first); ``trust`` allows files whose loading runs code.
    ``input_size``/``mean``/``std`` override the model's own input convention; a model whose input layer takes one
    channel reads the images' luma (``InputSpec.channels``, ``input_channels``).
    """
    _check_file_ref(ref)
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral)
                                    or num_classes < 0):
        raise ConfigError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    r = parse_ref(ref)
    source = get_source(r.kind)
    if weights is not None and random_init:
        raise ConfigError("--weights and --random-init exclude each other")
    if arch is not None and not source.takes_arch:
        raise ConfigError(f"--arch applies to state-dict files only, not to {r.canonical()}")
    if (weights is not None or random_init) and source.refuses_weights:
        raise ConfigError(source.refuses_weights)
    built = source.load(r, arch=arch, weights=weights, num_classes=num_classes, random_init=random_init,
                        trust=trust)
    spec = built.spec.with_overrides(input_size, tuple(mean) if mean is not None else None,
                                     tuple(std) if std is not None else None)
    spec = spec.with_overrides(channels=input_channels(built.module, spec.size))
    module = built.module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    log.info("loaded %s as %s: input %dx%d%s, mean %s, std %s", r.canonical(), built.arch, spec.size[0],
             spec.size[1], " grey" if spec.channels == 1 else "", spec.mean, spec.std)
    return LoadedModel(module=module, spec=spec, ref=r.canonical(), name=source.model_name(r), source=r.kind,
                       arch=built.arch, weights_sha256=built.weights_sha256,
                       num_outputs=built.meta.pop("num_outputs", None) or num_outputs(built.module),
                       meta=built.meta)


def _check_file_ref(ref: object) -> None:
    """A reference that names a local path: refuse FIFOs, devices, directories, outside symlinks (files.py)."""
    if not isinstance(ref, (str, os.PathLike)):
        return
    text = os.path.expanduser(os.fspath(ref).strip())
    prefixed = text.partition(":")[0].lower() in _PREFIXES and ":" in text
    if os.path.isdir(text) and os.path.isfile(os.path.join(text, "config.json")):
        return  # a Hugging Face model folder: parse_ref checks its layout, the loader its files
    if os.path.lexists(text) or (not prefixed and Path(text).suffix.lower() in FILE_SUFFIXES):
        check_path(text)


def num_outputs(module: nn.Module) -> int | None:
    """The class count of a classifier (timm's ``num_classes`` or the last Linear), else None."""
    n = getattr(module, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    if n == 0:  # timm's backbone without a classifier: not a classifier
        return None
    if module.__class__.__name__ == "TaskonomyEncoder":
        return None
    last = None
    for m in module.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last.out_features if last is not None else None
