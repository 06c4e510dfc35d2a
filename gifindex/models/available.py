"""Whether a model's weights are on this machine, decided without building the model.

``ingest --manifest`` counts the entries that would fail for want of weights before it signs anything;
the loaders stay the authority (this is a cheap look at the same caches they read).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from gifindex.errors import GifindexError
from gifindex.models.sources import get_source
from gifindex.refs import parse_ref

if TYPE_CHECKING:
    from gifindex.manifest import ModelEntry


def has_local_weights(entry: "ModelEntry") -> bool:
    """True when ``entry`` needs no download: random weights asked for, a ``weights`` file or a model file
    that exists, or pretrained weights in the timm / torchvision / Taskonomy / Hugging Face caches."""
    if entry.random_init:
        return True
    if entry.weights:
        return os.path.isfile(os.path.expanduser(entry.weights))
    try:
        ref = parse_ref(entry.ref)
    except GifindexError:
        return False
    try:
        return get_source(ref.kind).has_local_weights(ref)
    except Exception:  # noqa: BLE001 - an unknown name: the loader will say what is wrong
        return False
