"""HDF5 shards of signatures: (n, K*T*proj_dim) float16 with fletcher32 checksums, plus model names."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import h5py
import numpy as np

from ..errors import IndexError_
from .atomic import atomic_write_bytes


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(path: Path, names: list[str], signatures: np.ndarray, config_hash: str) -> str:
    """Write a complete shard atomically; returns its sha256."""
    if signatures.ndim != 2 or signatures.shape[0] != len(names):
        raise ValueError(f"{len(names)} names but signatures shaped {signatures.shape}")
    # Built in memory, then written with plain file I/O: a full disk is one clean OSError, and HDF5 never
    # holds a half-written file open.
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        handle.create_dataset("signatures", data=signatures.astype(np.float16), fletcher32=True,
                              chunks=(1, signatures.shape[1]))
        handle.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        handle.attrs["config_hash"] = config_hash
        handle.attrs["format"] = "gifindex-shard-1"
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_shard(path: Path, config_hash: str | None = None) -> tuple[list[str], np.ndarray]:
    """Read names and float16 signatures; checksum or configuration mismatch -> IndexError_."""
    try:
        with h5py.File(path, "r") as handle:
            if config_hash is not None and handle.attrs.get("config_hash") != config_hash:
                raise IndexError_(f"shard {path.name} was made with configuration "
                                  f"{handle.attrs.get('config_hash')!r}, the index uses {config_hash!r}")
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in handle["names"][:]]
            signatures = handle["signatures"][:]
    except IndexError_:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise IndexError_(f"shard {path.name} is unreadable or corrupt: {' '.join(str(exc).split())}") from None
    return names, signatures
