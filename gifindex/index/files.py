"""The files layer of an index: opening it (meta, configuration, probes, and their agreement with the
catalogue and shards), the catalogue connection, reading stored signatures, the search file and its
generation, and the writer lock. No policy: the writer and maintenance modules decide what to write; the
facade (``store.Index``) answers queries.

Readers never write: the catalogue is opened read-only (``mode=ro``; ``immutable`` on read-only storage),
and a search file that is stale or does not belong to the catalogue is rebuilt in memory, not on disk.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..config import SignatureConfig
from ..errors import GifindexError, IndexError_
from ..probes import Probes
from ..safefs import check_file, read_bytes
from .atomic import atomic_write_text
from .catalog import Catalog, ModelRecord, read_only_storage
from .layout import (CATALOG_FILE, INDEX_FILE, PROBES_FILE, SEARCH_FILE, SEARCH_SUM, index_uid, read_meta,
                     shard_dir, write_failure)
from .lock import WriterLock
from .search import (APPROXIMATE, MAX_SIDECAR_BYTES, SearchSpec, build_index, for_search, index_kind, load_index,
                     save_index, search)
from .shards import file_sha256, read_shard_rows, shard_config_hash

log = logging.getLogger(__name__)
MAX_PROBES_BYTES = 1 << 32   # 4 GiB: far above any probe set a valid configuration makes
MAX_SEARCH_BYTES = 1 << 40   # 1 TiB: far above any search file gifindex writes
SEARCH_META = "search.json"
SPOT_CHECKS = 4              # stored signatures a loaded search index must find (it belongs to these shards)
SHARD_FIX = ("`gifindex verify --repair` quarantines the shard and names the models to re-ingest (`gifindex verify` "
             "lists every problem first)")
CATALOG_FIX = "`gifindex verify --repair` recreates the catalogue from the shards (the old one is kept beside it)"


class IndexFiles:
    """An opened index directory: its configuration, probes, catalogue, shards and search file."""

    def __init__(self, root: Path, meta: dict[str, Any], config: SignatureConfig, probes: Probes):
        self.root = root
        self.meta = meta
        self.config = config
        self.probes = probes
        self.search_spec = search_spec(meta, root / INDEX_FILE)
        self._catalog: Catalog | None = None
        self._search = None
        self._search_generation = -1
        self._searcher: tuple[int, Any] | None = None  # (generation, the index queries use: a GPU copy or _search)

    @staticmethod
    def read(path: str | Path) -> tuple[Path, dict[str, Any], SignatureConfig, Probes]:
        """Read and cross-check index.json, probes.npz, the catalogue and the shards; a missing, foreign,
        other-version or inconsistent index is a one-line error naming the file that disagrees."""
        root = Path(path)
        meta = read_meta(root)
        meta_path = root / INDEX_FILE
        try:
            config = SignatureConfig.from_dict(meta["config"])
        except (GifindexError, TypeError) as exc:
            raise IndexError_(f"{meta_path} is damaged: its configuration is invalid ({exc})") from None
        if config.hash() != meta["config_hash"]:
            raise IndexError_(f"index at {root}: stored configuration does not match its hash "
                              f"({meta['config_hash']} vs {config.hash()}); the index.json was edited: restore it "
                              "from a backup")
        probes_path = root / PROBES_FILE
        try:
            check_file(probes_path, "probe file", MAX_PROBES_BYTES, IndexError_)
            on_disk = file_sha256(probes_path)
        except (IndexError_, OSError):
            on_disk = None
        if on_disk == meta["probes_sha256"]:
            try:
                probes = Probes.load(probes_path)
            except GifindexError as exc:
                raise IndexError_(f"{probes_path} is damaged ({exc})") from None
        else:
            probes = _redrawn_probes(root, config, meta["probes_sha256"], on_disk)
        if (probes.num_probes, probes.resolution) != (config.num_probes, config.resolution):
            raise IndexError_(f"{meta_path} disagrees with {PROBES_FILE}: it says K={config.num_probes}, "
                              f"R={config.resolution}, the probes are K={probes.num_probes}, R={probes.resolution}; "
                              "index.json was edited: restore it (the probes and shards are untouched)")
        if meta.get("signature_dim", config.signature_dim) != config.signature_dim:
            raise IndexError_(f"{meta_path} is inconsistent: signature_dim {meta['signature_dim']} but its "
                              f"configuration makes {config.signature_dim}; index.json was edited: restore it")
        _check_shards_agree(root, meta)
        return root, meta, config, probes

    # ----------------------------------------------------------------------------------- catalogue
    @property
    def catalog(self) -> Catalog:
        """The catalogue: read-only, except inside :meth:`writer`."""
        if self._catalog is None:
            self._catalog = Catalog(self.root / CATALOG_FILE, readonly=True)
        return self._catalog

    @contextlib.contextmanager
    def writer(self, wait: float = 0.0, open_catalog: bool = True) -> Iterator[WriterLock]:
        """Hold the writer lock (``wait`` seconds for another writer) with the catalogue open for writing.
        ``open_catalog=False``: the caller opens it (to recreate a missing one)."""
        if read_only_storage(self.root):
            raise IndexError_(f"the index at {self.root} is read-only (read-only storage or no write permission); "
                              "reading commands work, writing ones need a writable copy")
        with WriterLock(self.root, wait=wait) as lock:
            previous, self._catalog = self._catalog, None
            try:
                if open_catalog:
                    self._catalog = Catalog(self.root / CATALOG_FILE)
                yield lock
            finally:
                if self._catalog is not None:
                    self._catalog.close()
                self._catalog = previous

    def use_catalog(self, catalog: Catalog) -> None:
        """Inside :meth:`writer` with ``open_catalog=False``: the (recreated) catalogue to write to."""
        self._catalog = catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

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
            try:
                names, signatures = read_shard_rows(shard_dir(self.root) / shard, [r.row for _, r in items],
                                                    self.config_hash)
            except IndexError_ as exc:
                raise IndexError_(f"{exc}; {SHARD_FIX}") from None
            if signatures.shape[1] != self.dim:
                raise IndexError_(f"shard {shard} holds {signatures.shape[1]}-dimensional signatures, the index "
                                  f"{self.dim}; {SHARD_FIX}")
            for (position, record), name, signature in zip(items, names, signatures):
                if name != record.name:
                    raise IndexError_(f"shard {shard} row {record.row} holds {name!r}, not {record.name!r}: the "
                                      f"catalogue disagrees with the shards; {CATALOG_FIX}")
                out[position] = signature.astype(np.float32)
        return out

    def vectors(self, names: Sequence[str] | None = None) -> tuple[list[ModelRecord], np.ndarray]:
        """(records, signatures) for the given names, or for every indexed model."""
        if names is None:
            records = self.records()
        else:
            if isinstance(names, str):
                raise IndexError_(f"names is a list of indexed names, not one string ({names!r})")
            records = []
            for name in names:
                record = self.catalog.by_name(name)
                if record is None:
                    raise self.no_model(name)
                records.append(record)
        return records, self.load_vectors(records)

    def similar_names(self, text: str, n: int = 3) -> list[str]:
        """Indexed names close to ``text`` (for "did you mean" hints), closest first."""
        return difflib.get_close_matches(text, [r.name for r in self.records()], n=n, cutoff=0.6)

    def no_model(self, name: str) -> IndexError_:
        """The error for a name the index does not hold, with the indexed names close to it."""
        close = self.similar_names(name)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return IndexError_(f"no model named {name!r} in the index{hint}")

    # ---------------------------------------------------------------------------------------- search
    def save_search(self, index, after: str = "every committed model is kept in the catalogue and shards; free "
                                              "space and run `gifindex rebuild`") -> None:
        """Write search.faiss (+ search.json, search.sha256), each atomically, at the catalogue's generation;
        ``after``: what a failed write's error says of the index's state."""
        generation = self.catalog.generation()
        try:
            save_index(index, self.root / SEARCH_FILE, generation, self.search_spec,
                       self.search_spec.resolve(int(index.ntotal), self.dim)[1])
            atomic_write_text(self.root / SEARCH_SUM, json.dumps(
                {"generation": generation, "sha256": file_sha256(self.root / SEARCH_FILE),
                 "index": index_uid(self.meta)}))
        except (OSError, RuntimeError) as exc:
            raise write_failure(SEARCH_FILE, exc, after) from None
        self._search, self._search_generation = index, generation

    def rebuilt_search(self):
        """A search index built in memory from the shards."""
        records, vectors = self.vectors()
        return build_index(vectors, np.array([r.id for r in records], dtype=np.int64), self.search_spec)

    def search_index(self, writable: bool = False):
        """The FAISS index from disk when it belongs to the catalogue; else rebuilt in memory from the shards
        (stale, unreadable, or another index's file: never answered from). Queries get its faiss-gpu copy
        when faiss has GPU support, a GPU is visible and the search spec's device allows it; ``writable``:
        always the CPU index (what writers extend and save)."""
        index = self._cpu_search_index()
        if writable:
            return index
        if self._searcher is None or self._searcher[0] != self._search_generation:
            self._searcher = (self._search_generation, for_search(index, self.search_spec))
        return self._searcher[1]

    def _cpu_search_index(self):
        with self.catalog.snapshot():  # the generation, the ids checked and a rebuild: one catalogue state
            return self._load_search_index()

    def _load_search_index(self):
        generation = self.catalog.generation()
        if self._search is not None and self._search_generation == generation:
            return self._search
        try:
            for name, limit in ((SEARCH_FILE, MAX_SEARCH_BYTES), (SEARCH_META, MAX_SIDECAR_BYTES)):
                check_file(self.root / name, "search file", limit, IndexError_)  # no FIFO, no giant
            index, meta = load_index(self.root / SEARCH_FILE)
        except IndexError_ as exc:
            index, problem = None, str(exc)
        else:
            problem = self._search_problem(index, meta, generation)  # a damaged shard is its own error
        if problem:
            index = self.rebuilt_search()  # a damaged shard stops here, with its own error and fix
            (log.debug if problem.startswith("stale") else log.warning)(
                "%s; searching an index rebuilt in memory from the shards (`gifindex rebuild` saves it)",
                problem.removesuffix("; run `gifindex rebuild`"))
        self._search, self._search_generation = index, generation
        return index

    def _search_problem(self, index, meta: dict[str, Any], generation: int) -> str | None:
        """Why a loaded search index cannot answer for this catalogue (None when it can)."""
        if meta.get("generation") != generation:
            return f"stale: {SEARCH_FILE} is of generation {meta.get('generation')}, the catalogue {generation}"
        if index.d != self.dim:
            return f"{SEARCH_FILE} holds {index.d}-dimensional vectors, the index {self.dim}"
        try:
            record = json.loads(read_bytes(self.root / SEARCH_SUM, "search checksum", MAX_SIDECAR_BYTES, IndexError_))
        except (IndexError_, ValueError):
            record = {}
        if isinstance(record, dict) and record.get("index") not in (None, index_uid(self.meta)):
            return f"{SEARCH_FILE} belongs to another index"
        ids = self.catalog.ids()
        if int(index.ntotal) != len(ids) or set(faiss_ids(index).tolist()) != set(ids):
            return f"{SEARCH_FILE} holds other models than the catalogue"
        if ids and index_kind(index) not in APPROXIMATE:
            picks = sorted({ids[0], ids[-1], ids[len(ids) // 2], ids[len(ids) // 3]})[:SPOT_CHECKS]
            records, vectors = [], []
            for record in self.catalog.by_ids(picks).values():
                try:  # a damaged shard is no fault of the search file: checked with the others
                    vectors.append(self.load_vectors([record])[0])
                    records.append(record)
                except IndexError_:
                    continue
            if records:
                _, found = search(index, np.stack(vectors), min(10, len(ids)))
                if any(r.id not in set(row.tolist()) for r, row in zip(records, found)):
                    return f"{SEARCH_FILE} does not find the shards' signatures (another index's file?)"
        return None

    def search_status(self) -> dict[str, Any]:
        """The search kind in use and why (``auto`` switches from exact to approximate above its budget)."""
        try:
            index = self.search_index()
        except IndexError_ as exc:  # a damaged shard: `info` still shows the rest, and says what is wrong
            return {"active": "unavailable", "reason": f"unavailable: {exc}"}
        return {"active": index_kind(index), "reason": self.search_spec.resolve(int(index.ntotal), self.dim)[1]}


def search_spec(meta: dict[str, Any], path: Path) -> SearchSpec:
    """The search settings of index.json, each field of the type SearchSpec gives it (else named as damaged)."""
    data = meta.get("search") or {}
    defaults = SearchSpec()
    for key, value in data.items():
        default = getattr(defaults, key, None)
        expected = float if isinstance(default, float) else type(default)
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
              if expected in (int, float) else isinstance(value, expected))
        if default is not None and (not ok or expected is int and not isinstance(value, int)):
            raise IndexError_(f"{path} is damaged: search setting {key!r} is {value!r}; restore it from a backup")
    try:
        return SearchSpec.from_dict(data)
    except (GifindexError, TypeError, ValueError) as exc:
        raise IndexError_(f"{path} is damaged: {exc}") from None


def _check_shards_agree(root: Path, meta: dict[str, Any]) -> None:
    """index.json's configuration hash against the catalogue's record of it and the first registered shard
    (cheap: one query, one HDF5 attribute). A missing or damaged catalogue is left to the commands that
    need it (verify reports it, rebuild recreates it)."""
    path = root / CATALOG_FILE
    if not path.is_file():
        return
    try:
        catalog = Catalog(path, readonly=True)
    except IndexError_:
        return
    try:
        recorded = catalog.state("config_hash")
        shards = list(catalog.shards())
    except IndexError_:
        return
    finally:
        catalog.close()
    others = recorded
    source = f"the catalogue ({CATALOG_FILE})"
    if others is None and shards:
        others = shard_config_hash(shard_dir(root) / shards[0])
        source = f"the shards ({shards[0]})"
    if others is not None and others != meta["config_hash"]:
        raise IndexError_(f"{root / INDEX_FILE} disagrees with {source}: it holds configuration "
                          f"{meta['config_hash']}, the index was made with {others}; index.json was edited or "
                          "replaced: restore it (the catalogue and shards are consistent and were not changed)")


def _redrawn_probes(root: Path, config: SignatureConfig, recorded: str, on_disk: str | None) -> Probes:
    """probes.npz is missing or altered: the probes the configuration draws when they are bit for bit the ones
    recorded (their sha256 is index.json's; the index then works as before, and `verify --repair` writes them
    back), else a one-line error saying to restore the file."""
    from ..probes import make_probes

    state = "missing or unreadable" if on_disk is None else "altered (it differs from the sha256 index.json records)"
    lost = f"index at {root}: {PROBES_FILE} is {state}; the index cannot sign new models consistently"
    if config.probe_kind == "pgd":
        raise IndexError_(f"{lost}; restore it from a backup (pgd probes depend on the anchor model and the device: "
                          "they are not redrawn)")
    try:
        probes = make_probes(config)
        drawn = hashlib.sha256(probes.to_bytes()).hexdigest()
    except (GifindexError, OSError, ValueError) as exc:
        raise IndexError_(f"{lost}; restore it from a backup (redrawing them from the configuration failed: "
                          f"{' '.join(str(exc).split())[:120]})") from None
    if drawn != recorded:
        if drawn == on_disk:
            raise IndexError_(f"{root / INDEX_FILE} records another probes sha256 than {PROBES_FILE}, which holds "
                              "exactly the probes its configuration draws: index.json was edited; restore it from a "
                              "backup")
        raise IndexError_(f"{lost}; restore it from a backup (the configuration's seed draws other probes here, "
                          "e.g. a changed probe source or library version: they cannot be redrawn)")
    log.warning("%s; using the probes the configuration draws, identical to those recorded (sha256 checked); "
                "`gifindex verify --repair` writes them back", lost.split(": ", 1)[1].split(";")[0])
    return probes


def faiss_ids(index) -> np.ndarray:
    """The ids held by an IndexIDMap(2)."""
    return faiss.vector_to_array(index.id_map)
