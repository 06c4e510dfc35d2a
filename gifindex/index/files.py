"""The files layer of an index: opening it (meta, configuration, probes), the catalogue, reading stored
signatures, the search file and its generation, and the writer lock. No policy: the writer and
maintenance modules decide what to write; the facade (``store.Index``) answers queries.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SignatureConfig
from ..errors import IndexError_
from ..probes import Probes
from .atomic import atomic_write_text
from .catalog import Catalog, ModelRecord
from .layout import (CATALOG_FILE, FORMAT_VERSION, INDEX_FILE, PROBES_FILE, SEARCH_FILE, SEARCH_SUM, shard_dir,
                     write_failure)
from .lock import WriterLock
from .search import SearchSpec, build_index, index_kind, load_index, save_index
from .shards import file_sha256, read_shard


class IndexFiles:
    """An opened index directory: its configuration, probes, catalogue, shards and search file."""

    def __init__(self, root: Path, meta: dict[str, Any], config: SignatureConfig, probes: Probes):
        self.root = root
        self.meta = meta
        self.config = config
        self.probes = probes
        self.search_spec = SearchSpec.from_dict(meta.get("search"))
        self.catalog = Catalog(root / CATALOG_FILE)
        self._search = None
        self._search_generation = -1

    @staticmethod
    def read(path: str | Path) -> tuple[Path, dict[str, Any], SignatureConfig, Probes]:
        """Read and check index.json and probes.npz; a missing, foreign, other-version or inconsistent index
        is a clear error."""
        root = Path(path)
        meta_path = root / INDEX_FILE
        if not meta_path.is_file():
            raise IndexError_(f"no gifindex index at {root} (missing {INDEX_FILE}); create one with "
                              "`gifindex init -i DIR`")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise IndexError_(f"{meta_path} is unreadable: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != "gifindex":
            raise IndexError_(f"{meta_path} is not a gifindex index file")
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexError_(f"index at {root} has format version {meta.get('format_version')}, this gifindex "
                              f"reads version {FORMAT_VERSION}; use a matching gifindex release")
        config = SignatureConfig.from_dict(meta["config"])
        if config.hash() != meta.get("config_hash"):
            raise IndexError_(f"index at {root}: stored configuration does not match its hash "
                              f"({meta.get('config_hash')} vs {config.hash()}); the index.json was edited")
        probes_path = root / PROBES_FILE
        if not probes_path.is_file() or file_sha256(probes_path) != meta.get("probes_sha256"):
            raise IndexError_(f"index at {root}: {PROBES_FILE} is missing or altered; the index cannot sign "
                              "new models consistently")
        return root, meta, config, Probes.load(probes_path)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def dim(self) -> int:
        return self.config.signature_dim

    @property
    def config_hash(self) -> str:
        return str(self.meta["config_hash"])

    def writer(self, wait: float = 0.0) -> WriterLock:
        """The writer lock (one writer at a time; ``wait`` seconds for another to finish)."""
        return WriterLock(self.root, wait=wait)

    # ------------------------------------------------------------------------------------ signatures
    def records(self) -> list[ModelRecord]:
        return self.catalog.models()

    def __len__(self) -> int:
        return self.catalog.count()

    def load_vectors(self, records: Sequence[ModelRecord]) -> np.ndarray:
        """Stored signatures of ``records`` (float32, in order), reading each shard once."""
        out = np.zeros((len(records), self.dim), dtype=np.float32)
        by_shard: dict[str, list[tuple[int, ModelRecord]]] = {}
        for position, record in enumerate(records):
            by_shard.setdefault(record.shard, []).append((position, record))
        for shard, items in by_shard.items():
            names, signatures = read_shard(shard_dir(self.root) / shard, self.config_hash)
            for position, record in items:
                if record.row >= len(names) or names[record.row] != record.name:
                    raise IndexError_(f"shard {shard} row {record.row} does not hold {record.name!r}; "
                                      "run `gifindex verify`")
                out[position] = signatures[record.row].astype(np.float32)
        return out

    def vectors(self, names: Sequence[str] | None = None) -> tuple[list[ModelRecord], np.ndarray]:
        """(records, signatures) for the given names, or for every indexed model."""
        if names is None:
            records = self.records()
        else:
            records = []
            for name in names:
                record = self.catalog.by_name(name)
                if record is None:
                    raise IndexError_(f"no model named {name!r} in the index")
                records.append(record)
        return records, self.load_vectors(records)

    # ---------------------------------------------------------------------------------------- search
    def save_search(self, index) -> None:
        """Write search.faiss (+ search.json, search.sha256), each atomically, at the catalogue's generation."""
        generation = self.catalog.generation()
        try:
            save_index(index, self.root / SEARCH_FILE, generation, self.search_spec,
                       self.search_spec.resolve(int(index.ntotal), self.dim)[1])
            atomic_write_text(self.root / SEARCH_SUM, json.dumps(
                {"generation": generation, "sha256": file_sha256(self.root / SEARCH_FILE)}))
        except (OSError, RuntimeError) as exc:
            raise write_failure(SEARCH_FILE, exc, "every committed model is kept in the catalogue and shards; "
                                "free space and run `gifindex rebuild`") from None
        self._search, self._search_generation = index, generation

    def rebuilt_search(self):
        """A search index built in memory from the shards."""
        records, vectors = self.vectors()
        return build_index(vectors, np.array([r.id for r in records], dtype=np.int64), self.search_spec)

    def search_index(self):
        """The FAISS index, loaded from disk; rebuilt in memory if it is stale or unreadable."""
        generation = self.catalog.generation()
        if self._search is not None and self._search_generation == generation:
            return self._search
        try:
            index, meta = load_index(self.root / SEARCH_FILE)
            stale = meta.get("generation") != generation or index.ntotal != self.catalog.count()
        except IndexError_:
            index, stale = None, True
        if stale:
            index = self.rebuilt_search()
        self._search, self._search_generation = index, generation
        return index

    def search_status(self) -> dict[str, Any]:
        """The search kind in use and why (``auto`` switches from exact to approximate above its budget)."""
        index = self.search_index()
        return {"active": index_kind(index), "reason": self.search_spec.resolve(int(index.ntotal), self.dim)[1]}


def faiss_ids(index) -> np.ndarray:
    """The ids held by an IndexIDMap(2)."""
    import faiss

    return faiss.vector_to_array(index.id_map)
