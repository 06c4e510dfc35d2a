"""HDF5 shards of signatures: (n, K*T*proj_dim) float16 with fletcher32 checksums, plus, per model, the name,
reference, content hash and metadata, so the catalogue can be recreated from the shards alone."""
from __future__ import annotations

import hashlib
import io
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import IndexError_
from .atomic import atomic_write_bytes

MAX_SHARD_BYTES = 1 << 36  # 64 GiB: a shard file larger than this is not one gifindex wrote


@dataclass
class ShardEntry:
    """What a shard records about one model (enough to re-register it in a lost catalogue)."""

    name: str
    ref: str | None
    weights_sha256: str | None
    metadata: dict[str, Any]
    added: float | None = None   # when it was committed (shards written before this was recorded: None)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(path: Path, names: list[str], signatures: np.ndarray, config_hash: str,
                entries: list[dict[str, Any]] | None = None) -> str:
    """Write a complete shard atomically; returns its sha256. ``entries`` (name, ref, weights_sha256,
    metadata per model) are stored beside the signatures."""
    if signatures.ndim != 2 or signatures.shape[0] != len(names):
        raise ValueError(f"{len(names)} names but signatures shaped {signatures.shape}")
    # Built in memory, then written with plain file I/O: a full disk is one clean OSError, and HDF5 never
    # holds a half-written file open.
    buffer = io.BytesIO()
    strings = h5py.string_dtype()
    with h5py.File(buffer, "w") as handle:
        handle.create_dataset("signatures", data=signatures.astype(np.float16), fletcher32=True,
                              chunks=(1, signatures.shape[1]))
        handle.create_dataset("names", data=np.array(names, dtype=object), dtype=strings)
        if entries is not None:
            for key in ("ref", "weights_sha256"):
                handle.create_dataset(f"{key}s", data=np.array([str(e[key]) for e in entries], dtype=object),
                                      dtype=strings)
            handle.create_dataset("metadata", data=np.array(
                [json.dumps(e.get("metadata", {}), sort_keys=True, default=str) for e in entries], dtype=object),
                dtype=strings)
            if all(isinstance(e.get("added"), (int, float)) for e in entries):  # when each model was committed
                handle.create_dataset("added", data=np.array([float(e["added"]) for e in entries], np.float64))
        handle.attrs["config_hash"] = config_hash
        handle.attrs["format"] = "gifindex-shard-1"
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _strings(handle: h5py.File, key: str, rows: int) -> list[str] | None:
    if key not in handle:
        return None
    dataset = handle[key]
    if dataset.shape != (rows,):
        raise ValueError(f"dataset {key!r} has shape {dataset.shape}, expected ({rows},)")
    return [_text(v) for v in dataset[:]]


def _open(path: Path) -> h5py.File:
    size = path.stat().st_size
    if size > MAX_SHARD_BYTES:
        raise ValueError(f"{size} bytes, more than any shard gifindex writes")
    return h5py.File(path, "r")


def _checked(handle: h5py.File) -> int:
    """Rows of a shard whose layout is as gifindex writes it (checked before anything is read)."""
    signatures = handle["signatures"]
    if signatures.ndim != 2 or signatures.dtype != np.float16:
        raise ValueError(f"signatures are {signatures.dtype} shaped {signatures.shape}, expected 2-D float16")
    if handle["names"].shape != (signatures.shape[0],):
        raise ValueError(f"{handle['names'].shape} names for {signatures.shape[0]} signatures")
    return int(signatures.shape[0])


@contextmanager
def _reading(path: Path, config_hash: str | None):
    """(open handle, rows) of a shard checked as :func:`read_shard` promises: configuration and layout
    checked before anything is read, every read failure one IndexError_ naming the shard."""
    try:
        with _open(path) as handle:
            if config_hash is not None and handle.attrs.get("config_hash") != config_hash:
                raise IndexError_(f"shard {path.name} was made with configuration "
                                  f"{handle.attrs.get('config_hash')!r}, the index uses {config_hash!r}")
            yield handle, _checked(handle)
    except IndexError_:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise IndexError_(f"shard {path.name} is unreadable or corrupt: {' '.join(str(exc).split())}") from None


def read_shard(path: Path, config_hash: str | None = None) -> tuple[list[str], np.ndarray]:
    """Read names and float16 signatures; checksum, layout or configuration mismatch -> IndexError_."""
    with _reading(path, config_hash) as (handle, rows):
        return _strings(handle, "names", rows) or [], handle["signatures"][:]


def read_shard_rows(path: Path, rows: list[int], config_hash: str | None = None) -> tuple[list[str], np.ndarray]:
    """Names and float16 signatures of the given rows only (each row is its own checksummed HDF5 chunk, so
    a query's own row costs one chunk, not the shard); rows past the end -> IndexError_."""
    wanted = sorted(set(rows))
    with _reading(path, config_hash) as (handle, total):
        if wanted and (wanted[0] < 0 or wanted[-1] >= total):
            raise IndexError_(f"shard {path.name} has {total} rows, not row {wanted[-1]}; run `gifindex verify`")
        if len(wanted) * 8 >= total:  # most of the shard: one read is faster than many
            names_all = _strings(handle, "names", total) or []
            names, block = [names_all[r] for r in wanted], handle["signatures"][:][wanted]
        else:
            names = [_text(handle["names"][r]) for r in wanted]
            block = np.stack([handle["signatures"][r] for r in wanted]) if wanted else \
                np.zeros((0, handle["signatures"].shape[1]), np.float16)
    where = {r: i for i, r in enumerate(wanted)}
    return [names[where[r]] for r in rows], block[[where[r] for r in rows]]


def shard_config_hash(path: Path) -> str | None:
    """The configuration hash a shard was written under (None when unreadable)."""
    try:
        with _open(path) as handle:
            value = handle.attrs.get("config_hash")
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return value.decode() if isinstance(value, bytes) else (str(value) if value is not None else None)


def read_shard_entries(path: Path, config_hash: str) -> tuple[list[ShardEntry], np.ndarray]:
    """Every model a shard records, with its signatures (to re-register it in a recreated catalogue)."""
    names, signatures = read_shard(path, config_hash)
    try:
        with _open(path) as handle:
            refs = _strings(handle, "refs", len(names))
            hashes = _strings(handle, "weights_sha256s", len(names))
            metadata = _strings(handle, "metadata", len(names))
            added = _times(handle, len(names))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise IndexError_(f"shard {path.name} is unreadable or corrupt: {' '.join(str(exc).split())}") from None
    entries = []
    for row, name in enumerate(names):
        try:
            meta = json.loads(metadata[row]) if metadata else {}
        except ValueError:
            meta = {}
        entries.append(ShardEntry(name, refs[row] if refs else None, hashes[row] if hashes else None,
                                  meta if isinstance(meta, dict) else {}, added[row] if added else None))
    return entries, signatures


def _times(handle: h5py.File, rows: int) -> list[float | None] | None:
    """The ``added`` times of a shard's rows (None where absent or not a plausible time)."""
    if "added" not in handle:
        return None
    dataset = handle["added"]
    if dataset.shape != (rows,) or dataset.dtype.kind != "f":
        return None
    return [float(t) if np.isfinite(t) and t > 0 else None for t in dataset[:]]


def read_shard_labels(path: Path, config_hash: str | None = None) -> tuple[list[str], list[str] | None]:
    """The names and weights sha256 (None for shards that do not record them) of a shard's rows, without its
    signatures (what verify compares with the catalogue)."""
    with _reading(path, config_hash) as (handle, rows):
        return _strings(handle, "names", rows) or [], _strings(handle, "weights_sha256s", rows)
