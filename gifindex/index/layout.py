"""The index directory's layout: file names, the metadata file (``index.json``) and what it must hold.

Every path of an index is named here and nowhere else (DESIGN section 4)::

    INDEX/index.json        configuration, its hash, probes checksum, search settings (written last)
    INDEX/probes.npz        the K probes every signature is computed on
    INDEX/catalog.sqlite    which models are indexed, in which shard row; failures of past ingests
    INDEX/shards/*.h5       signatures (float16), written once, never modified
    INDEX/search.faiss      search index over the signatures (+ search.json, search.sha256): derived
    INDEX/fingerprints/*.npz owners' fitted decision fingerprints (gifindex fit-probes), written once each
                            (+ *.helpers.pt: the helper models they were fitted with, when kept;
                            + *.evidence.json: indexed models' evidence against that owner, a cache for
                            `suspect --budget` and `--all`, rebuilt whenever missing or stale)
    INDEX/.lock             the writer lock
"""
from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import IndexError_
from ..safefs import read_bytes

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
PROBES_FILE = "probes.npz"
CATALOG_FILE = "catalog.sqlite"
SEARCH_FILE = "search.faiss"
SEARCH_SUM = "search.sha256"  # sha256 of search.faiss as written (a flipped bit is found by verify)
SHARD_DIR = "shards"
QUARANTINE_DIR = "quarantine"  # under shards/: corrupt shards moved aside by `verify --repair`
FINGERPRINT_DIR = "fingerprints"  # owners' decision fingerprints (gifindex.fingerprint.store)
TOMBSTONES = "removed.json"   # (shard, row) of removed models: a catalogue recreated from shards skips them
MAX_META_BYTES = 1 << 20
META_FIELDS = {"format": str, "format_version": int, "config": dict, "config_hash": str, "probes_sha256": str}


def index_exists(path: str | Path) -> bool:
    """Whether ``path`` holds a gifindex index (its metadata file is written last, so a half-made one does not)."""
    return (Path(path) / INDEX_FILE).is_file()


def shard_dir(root: Path) -> Path:
    return root / SHARD_DIR


def fingerprint_path(index_root: str | Path, owner: str) -> Path:
    """Where the fingerprint of the indexed model ``owner`` is stored (a name-derived, file-safe stem)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in owner)[:80]
    digest = hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return Path(index_root) / FINGERPRINT_DIR / f"{safe}-{digest}.npz"


def stored_fingerprints(index_root: str | Path) -> set[str]:
    """The file names of the fingerprints stored in the index (those of removed models included: `remove` keeps
    them)."""
    folder = Path(index_root) / FINGERPRINT_DIR
    return {p.name for p in folder.glob("*.npz")} if folder.is_dir() else set()


def stale_fingerprint(index_root: str | Path, file_name: str, indexed: Callable[[str], bool]) -> bool:
    """Whether a stored fingerprint file is known to belong to no indexed model (kept by `remove`): its stem names
    the owner exactly (the name's hash matches) and ``indexed(name)`` says no such model. A name with characters
    the stem replaced cannot be read back: such a file is not known to be stale."""
    stem = file_name[:-len(".npz")].rsplit("-", 1)[0] if file_name.endswith(".npz") else ""
    return bool(stem) and fingerprint_path(index_root, stem).name == file_name and not indexed(stem)


def fingerprinted(index_root: str | Path, names: Iterable[str]) -> list[str]:
    """Those of ``names`` with a fingerprint stored in the index (the models it protects), in their order: one
    listing of the fingerprint folder, not a file check per name."""
    stored = stored_fingerprints(index_root)
    if not stored:
        return []
    return [name for name in names if fingerprint_path(index_root, name).name in stored]


def helpers_path(index_root: str | Path, owner: str) -> Path:
    """Where the helper models of ``owner``'s fingerprint are kept (beside it)."""
    return fingerprint_path(index_root, owner).with_suffix(".helpers.pt")


def evidence_cache_path(index_root: str | Path, owner: str) -> Path:
    """Where indexed models' fingerprint evidence against ``owner`` is cached (beside its fingerprint)."""
    return fingerprint_path(index_root, owner).with_suffix(".evidence.json")


def versions() -> dict[str, str]:
    """Library versions: recorded in index.json when an index is created, and those running now (`info`)."""
    import faiss
    import timm
    import torch
    import torchvision

    return {"gifindex": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "faiss": faiss.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def write_failure(what: str, exc: BaseException, after: str) -> IndexError_:
    """A failed write (disk full, file size limit, I/O error) as one clear line."""
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    errno_ = getattr(exc, "errno", None)
    if errno_ in (28, 27, 122) or any(w in reason.lower() for w in ("no space", "file too large", "disk is full",
                                                                    "disk full", "quota")):
        reason = f"disk full or over a file size limit: {reason}"
    return IndexError_(f"cannot write {what} ({reason}); {after}")


def new_meta(config_dict: dict[str, Any], config_hash: str, signature_dim: int, probes_sha256: str,
             search: dict[str, Any], seed: int, created: float) -> dict[str, Any]:
    """The content of a new index.json."""
    return {
        "format": "gifindex", "format_version": FORMAT_VERSION, "config": config_dict,
        "config_hash": config_hash, "probes_sha256": probes_sha256,
        "projection": {"kind": "gaussian-blocked+point-signs", "seed": seed, "block_rows": 4096},
        "search": search, "signature_dim": signature_dim, "created": created, "versions": versions(),
    }


def read_meta(root: Path) -> dict[str, Any]:
    """index.json, read with a size cap and checked field by field; every problem names the file."""
    path = root / INDEX_FILE
    if not path.is_file() and not path.exists():
        held = [name for name in (CATALOG_FILE, SHARD_DIR, PROBES_FILE) if (root / name).exists()]
        if held:   # the rest of an index is there: its configuration file was deleted, not never made
            raise IndexError_(f"{root} holds an index ({', '.join(held)}) but its {INDEX_FILE} is missing; restore it "
                              "from a backup: the configuration it records cannot be rebuilt from the shards")
        raise IndexError_(f"no gifindex index at {root} (missing {INDEX_FILE}); create one with "
                          "`gifindex init -i DIR`")
    data = read_bytes(path, "index file", MAX_META_BYTES, IndexError_)
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise IndexError_(f"{path} is damaged: not valid JSON ({' '.join(str(exc).split())[:120]}); restore it "
                          "from a backup") from None
    if not isinstance(meta, dict) or meta.get("format") != "gifindex":
        raise IndexError_(f"{path} is not a gifindex index file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexError_(f"index at {root} has format version {meta.get('format_version')!r}, this gifindex "
                          f"reads version {FORMAT_VERSION}; use a matching gifindex release ({path})")
    for key, kind in META_FIELDS.items():
        if not isinstance(meta.get(key), kind):
            raise IndexError_(f"{path} is damaged: field {key!r} is missing or not a {kind.__name__}; restore it "
                              "from a backup")
    for key, kind in (("search", dict), ("signature_dim", int)):
        if key in meta and not isinstance(meta[key], kind):
            raise IndexError_(f"{path} is damaged: field {key!r} is not a {kind.__name__}")
    return meta


def index_uid(meta: dict[str, Any]) -> str:
    """An identity of one index (its configuration and creation time): derived files record it."""
    return f"{meta.get('config_hash')}:{meta.get('created')}"
