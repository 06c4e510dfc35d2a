"""Whether a model's weights are on this machine, decided without building the model.

``ingest --manifest`` counts the entries that would fail for want of weights before it signs anything;
the loaders stay the authority (this is a cheap look at the same caches they read).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from gifindex.errors import GifindexError
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
    if ref.kind in ("file", "hf-folder"):
        return True
    try:
        return _in_cache(ref.kind, ref.name, ref.tag)
    except Exception:  # noqa: BLE001 - an unknown name: the loader will say what is wrong
        return False


def _in_cache(kind: str, name: str, tag: str | None) -> bool:
    import torch

    from gifindex.models import hub

    if kind == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(f"{name}.{tag}" if tag else name)
        return cfg is not None and hub.timm_cached_file(cfg.to_dict()) is not None
    if kind == "torchvision":
        weights = hub.torchvision_weights(name, tag)
        return weights is not None and \
            (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)).is_file()
    if kind == "taskonomy":
        from gifindex.models.taskonomy import cached_encoder_file

        return cached_encoder_file(name) is not None
    if kind == "hf-hub":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str) and \
            hub.timm_cached_file({"hf_hub_id": name}) is not None
    return False
