"""The on-disk model index (DESIGN section 4): configuration, probes, catalogue, shards, search index.

Write path (under the writer lock): signatures are buffered, written as a complete shard (atomic),
registered in the catalogue with their models in one transaction, then the search index is updated and
saved (atomic). A crash between steps leaves an unregistered shard (ignored, reported by verify) or a
stale search index (detected by its generation number and rebuilt from the shards).
"""
from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import SignatureConfig
from ..errors import GifindexError, IndexError_
from ..executors import InlineExecutor, Reporter, SignJob
from ..ingest import SignResult, sign_entry
from ..manifest import ModelEntry
from ..probes import Probes, make_probes
from .atomic import atomic_path, atomic_write_text, fsync_dir
from .catalog import Catalog, ModelRecord
from .lock import WriterLock
from .search import APPROXIMATE, SearchSpec, build_index, index_kind, load_index, save_index, search
from .shards import file_sha256, read_shard, write_shard

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
PROBES_FILE = "probes.npz"
CATALOG_FILE = "catalog.sqlite"
SEARCH_FILE = "search.faiss"
SHARD_DIR = "shards"
QUARANTINE_DIR = "quarantine"  # under shards/: corrupt shards moved aside by `verify --repair`
SEARCH_SUM = "search.sha256"  # sha256 of search.faiss as written (a flipped bit is found by verify)


def _write_failure(what: str, exc: BaseException, after: str) -> IndexError_:
    """A failed write (disk full, file size limit, I/O error) as one clear line."""
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    errno_ = getattr(exc, "errno", None)
    if errno_ in (28, 27, 122) or any(w in reason.lower() for w in ("no space", "file too large", "disk is full",
                                                                    "disk full", "quota")):
        reason = f"disk full or over a file size limit: {reason}"
    return IndexError_(f"cannot write {what} ({reason}); {after}")


@dataclass
class Neighbor:
    name: str
    distance: float
    ref: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distance": self.distance, "ref": self.ref}


IngestReporter = Reporter  # progress hooks an ingest calls (see gifindex.executors.Reporter)


@dataclass
class IngestReport:
    results: list[SignResult] = field(default_factory=list)

    def by_status(self, status: str) -> list[SignResult]:
        return [r for r in self.results if r.status == status]

    def to_dict(self) -> dict[str, Any]:
        return {"added": len(self.by_status("added")), "skipped": len(self.by_status("skipped")),
                "failed": len(self.by_status("failed")), "models": [r.summary() for r in self.results]}


def _versions() -> dict[str, str]:
    import faiss
    import torch

    return {"gifindex": __version__, "torch": torch.__version__, "faiss": faiss.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


class Index:
    """A directory of model signatures that answers nearest / distance / matrix / tree queries."""

    def __init__(self, root: Path, meta: dict[str, Any], config: SignatureConfig, probes: Probes):
        self.root = root
        self.meta = meta
        self.config = config
        self.probes = probes
        self.search_spec = SearchSpec.from_dict(meta.get("search"))
        self.catalog = Catalog(root / CATALOG_FILE)
        self._search = None
        self._search_generation = -1

    # ------------------------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | Path, config: SignatureConfig | None = None, search: SearchSpec | None = None,
               probes: Probes | None = None, device: str = "cpu") -> "Index":
        """Create an empty index with a fixed configuration; its probes are drawn now and stored."""
        root = Path(path)
        config = config or SignatureConfig()
        search = search or SearchSpec()
        if (root / INDEX_FILE).exists():
            existing = cls.open(root)
            if existing.config != config:
                raise IndexError_(f"an index with another configuration ({existing.config.hash()}) already "
                                  f"exists at {root}; choose another --index directory")
            raise IndexError_(f"an index already exists at {root} (same configuration); nothing to do")
        if root.exists() and not root.is_dir():
            raise IndexError_(f"{root} exists and is not a directory")
        if root.exists() and any(p for p in root.iterdir() if not p.name.startswith(".")):
            raise IndexError_(f"{root} is not empty and holds no index; choose an empty or new directory")
        root.mkdir(parents=True, exist_ok=True)
        (root / SHARD_DIR).mkdir(exist_ok=True)
        with WriterLock(root):
            probes = probes if probes is not None else make_probes(config, device=device)
            if probes.num_probes != config.num_probes or probes.resolution != config.resolution:
                raise IndexError_("the given probes do not match the configuration's K and resolution")
            with atomic_path(root / PROBES_FILE) as tmp:
                probes.save(tmp)
            Catalog(root / CATALOG_FILE).close()
            meta = {
                "format": "gifindex", "format_version": FORMAT_VERSION, "config": config.to_dict(),
                "config_hash": config.hash(), "probes_sha256": file_sha256(root / PROBES_FILE),
                "projection": {"kind": "gaussian-blocked+point-signs", "seed": config.seed, "block_rows": 4096},
                "search": search.to_dict(),
                "signature_dim": config.signature_dim,
                "created": time.time(), "versions": _versions(),
            }
            index = cls(root, meta, config, probes)
            index._save_search(build_index(np.zeros((0, index.dim), np.float32), np.zeros(0, np.int64), search))
            atomic_write_text(root / INDEX_FILE, json.dumps(meta, indent=2, sort_keys=True))  # last: marks done
        return index

    @classmethod
    def open(cls, path: str | Path) -> "Index":
        """Open an existing index; a missing, foreign, other-version or inconsistent one is a clear error."""
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
        probes = Probes.load(probes_path)
        return cls(root, meta, config, probes)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> "Index":
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

    def _load_vectors(self, records: Sequence[ModelRecord]) -> np.ndarray:
        """Stored signatures of ``records`` (float32, in order), reading each shard once."""
        out = np.zeros((len(records), self.dim), dtype=np.float32)
        by_shard: dict[str, list[tuple[int, ModelRecord]]] = {}
        for position, record in enumerate(records):
            by_shard.setdefault(record.shard, []).append((position, record))
        for shard, items in by_shard.items():
            names, signatures = read_shard(self.root / SHARD_DIR / shard, self.config_hash)
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
        return records, self._load_vectors(records)

    def sign(self, entry: ModelEntry | str, device: str = "cpu", batch_size: int | None = 32) -> SignResult:
        """Sign a model with this index's probes and configuration without adding it."""
        entry = entry if isinstance(entry, ModelEntry) else ModelEntry(ref=entry)
        result = sign_entry(entry, self.config, self.probes, device=device, batch_size=batch_size)
        if result.status != "added":
            raise GifindexError(f"cannot sign {entry.ref}: {result.error}")
        return result

    def entry_for(self, name_or_ref: str | ModelEntry) -> ModelEntry:
        """How to load a model: an indexed name's stored loading options, or the reference itself."""
        if isinstance(name_or_ref, ModelEntry):
            return name_or_ref
        record = self.catalog.by_name(name_or_ref)
        if record is None:
            return ModelEntry(ref=name_or_ref)
        load = dict(record.metadata.get("load") or {"ref": record.ref})
        for key in ("mean", "std"):
            if load.get(key) is not None:
                load[key] = tuple(load[key])
        return ModelEntry(name=record.name, **load)

    def query(self, ref: str | ModelEntry, device: str = "cpu",
              batch_size: int | None = 32) -> tuple[np.ndarray, str, ModelRecord | None]:
        """Signature for an indexed name, or for any model reference signed on the fly (not added)."""
        if isinstance(ref, str):
            record = self.catalog.by_name(ref)
            if record is not None:
                return self._load_vectors([record])[0], record.name, record
            from ..refs import parse_ref

            try:
                parse_ref(ref)
            except GifindexError as exc:
                raise IndexError_(f"{ref!r} is neither an indexed model name nor a model reference ({exc})") from None
        result = self.sign(ref, device=device, batch_size=batch_size)
        return result.signature.astype(np.float16).astype(np.float32), result.name, None  # as stored

    # ---------------------------------------------------------------------------------------- search
    def _save_search(self, index) -> None:
        generation = self.catalog.generation()
        try:
            save_index(index, self.root / SEARCH_FILE, generation, self.search_spec,
                       self.search_spec.resolve(int(index.ntotal), self.dim)[1])
            atomic_write_text(self.root / SEARCH_SUM, json.dumps(
                {"generation": generation, "sha256": file_sha256(self.root / SEARCH_FILE)}))
        except (OSError, RuntimeError) as exc:
            raise _write_failure(SEARCH_FILE, exc, "every committed model is kept in the catalogue and shards; "
                                 "free space and run `gifindex rebuild`") from None
        self._search, self._search_generation = index, generation

    def _clean_debris(self) -> list[str]:
        """Remove what interrupted writers left (temporary files, unregistered shards); needs the lock."""
        removed = []
        registered = set(self.catalog.shards())
        for folder in (self.root, self.root / SHARD_DIR):
            for path in folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)
                removed.append(str(path.relative_to(self.root)))
        for path in (self.root / SHARD_DIR).glob("*.h5"):
            if path.name not in registered:
                path.unlink(missing_ok=True)
                removed.append(str(path.relative_to(self.root)))
        return removed

    def _rebuilt_search(self):
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
            index = self._rebuilt_search()
        self._search, self._search_generation = index, generation
        return index

    def search_status(self) -> dict[str, Any]:
        """The search kind in use and why (``auto`` switches from exact to approximate above its budget)."""
        index = self.search_index()
        return {"active": index_kind(index), "reason": self.search_spec.resolve(int(index.ntotal), self.dim)[1]}

    def nearest(self, ref: str | ModelEntry, k: int = 10, device: str = "cpu",
                batch_size: int | None = 32) -> list[Neighbor]:
        """The k indexed models nearest to ``ref`` (an indexed name is not returned as its own neighbour)."""
        vector, _, record = self.query(ref, device=device, batch_size=batch_size)
        index = self.search_index()
        if index.ntotal == 0:
            return []
        extra = 1 if record is not None else 0
        approximate = index_kind(index) in APPROXIMATE
        distances, ids = search(index, vector, (k + extra) * (4 if approximate else 1))
        by_id = self.catalog.by_ids([int(i) for i in ids[0] if i >= 0])
        if approximate:  # candidates from the approximate index, distances exact from the shards
            found = [int(i) for i in ids[0] if i >= 0 and int(i) in by_id]
            exact = 1.0 - self._load_vectors([by_id[i] for i in found]).astype(np.float64) @ vector.astype(np.float64)
            order = np.argsort(exact, kind="stable")
            distances = np.clip(exact[order], 0.0, 2.0)[None]
            ids = np.array(found, dtype=np.int64)[order][None]
        out = []
        for dist, model_id in zip(distances[0], ids[0]):
            if model_id < 0 or (record is not None and model_id == record.id) or model_id not in by_id:
                continue
            out.append(Neighbor(by_id[model_id].name, float(dist), by_id[model_id].ref))
        return out[:k]

    def distance(self, a: str | ModelEntry, b: str | ModelEntry, device: str = "cpu",
                 batch_size: int | None = 32) -> float:
        """Approximate ModelGiF distance from stored (or freshly signed) compressed signatures."""
        va, _, _ = self.query(a, device=device, batch_size=batch_size)
        vb, _, _ = self.query(b, device=device, batch_size=batch_size)
        return float(np.clip(1.0 - float(va.astype(np.float64) @ vb.astype(np.float64)), 0.0, 2.0))

    def matrix(self, names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """All pairwise distances (float64, symmetric, zero diagonal) among indexed models."""
        records, vectors = self.vectors(names)
        v = vectors.astype(np.float64)
        dist = np.clip(1.0 - v @ v.T, 0.0, 2.0)
        dist = (dist + dist.T) / 2
        np.fill_diagonal(dist, 0.0)
        return [r.name for r in records], dist

    def tree(self, linkage: str = "average"):
        """Hierarchical clustering of every indexed model (see gifindex.tree)."""
        from ..tree import MAX_DENSE_MODELS, build_tree, build_tree_scalable

        if len(self) > MAX_DENSE_MODELS:  # the n x n matrix would not fit: k-means clusters, then dense trees
            records, vectors = self.vectors()
            metadata = {r.name: {"ref": r.ref, **r.metadata.get("tags", {})} for r in records}
            return build_tree_scalable([r.name for r in records], vectors, linkage=linkage, metadata=metadata)
        names, dist = self.matrix()
        if len(names) < 2:
            raise IndexError_(f"a tree needs at least two indexed models; the index holds {len(names)}")
        metadata = {r.name: {"ref": r.ref, **r.metadata.get("tags", {})} for r in self.records()}
        return build_tree(names, dist, linkage=linkage, metadata=metadata)

    # ------------------------------------------------------------------------------------ write path
    def writer(self, wait: float = 0.0) -> WriterLock:
        return WriterLock(self.root, wait=wait)

    def _commit(self, results: list[SignResult]) -> None:
        """Write one shard of signed models, register it, update the search index."""
        if not results:
            return
        shard = f"{len(self.catalog.shards()) + 1:05d}-{secrets.token_hex(4)}.h5"
        signatures = np.stack([r.signature for r in results]).astype(np.float16)
        kept = "models committed before are kept; free space and rerun the same ingest to add the rest"
        try:
            sha = write_shard(self.root / SHARD_DIR / shard, [r.name for r in results], signatures,
                              self.config_hash)
        except (OSError, RuntimeError) as exc:
            (self.root / SHARD_DIR / shard).unlink(missing_ok=True)
            raise _write_failure(f"shard {shard}", exc, kept) from None
        entries = [{"name": r.name, "ref": r.ref, "weights_sha256": r.weights_sha256, "metadata": r.metadata}
                   for r in results]
        index = self.search_index()
        try:
            ids = self.catalog.register_shard(shard, sha, entries)
        except sqlite3.Error as exc:
            (self.root / SHARD_DIR / shard).unlink(missing_ok=True)
            raise _write_failure(CATALOG_FILE, exc, kept) from None
        if self.search_spec.resolve(int(index.ntotal) + len(ids), self.dim)[0] != index_kind(index):
            index = self._rebuilt_search()  # auto: the hub crossed the exact-search budget (or came back)
        else:
            index.add_with_ids(signatures.astype(np.float32), np.array(ids, dtype=np.int64))
        self._save_search(index)

    def ingest(self, refs: Iterable[str | ModelEntry], *, device: str = "cpu", batch_size: int | None = 32,
               commit_every: int = 8, commit_seconds: float = 60.0, reporter: Reporter | None = None,
               wait: float = 0.0, executor=None) -> IngestReport:
        """Sign and add models; skip those already indexed (same content hash); record failures.

        ``executor`` decides where the per-model worker runs (default: in this process; see
        gifindex.executors). Signed models are committed in shards of up to ``commit_every`` models, or
        sooner when ``commit_seconds`` have passed, so an interrupted ingest loses at most that much work
        and a rerun resumes where it stopped.
        """
        entries = [r if isinstance(r, ModelEntry) else ModelEntry(ref=r) for r in refs]
        reporter = reporter or Reporter()
        executor = executor or InlineExecutor()
        report = IngestReport()
        with self.writer(wait=wait):
            self._clean_debris()
            records = self.records()
            known = {r.weights_sha256 for r in records}
            names = {r.name: r.weights_sha256 for r in records}
            job = SignJob(self.config, self.probes, device=device, batch_size=batch_size,
                          known_sha256=frozenset(known))
            pending: list[SignResult] = []
            last_commit = time.monotonic()
            reporter.start(len(entries))
            try:
                for result in executor.map(entries, job, reporter):
                    self._settle(result, known, names)
                    if result.status == "added":
                        pending.append(result)
                    report.results.append(result)
                    reporter.model_done(result)
                    if len(pending) >= commit_every or (pending and time.monotonic() - last_commit > commit_seconds):
                        self._commit(pending)
                        pending, last_commit = [], time.monotonic()
                self._commit(pending)
            finally:
                reporter.close()
        return report

    def _settle(self, result: SignResult, known: set[str], names: dict[str, str]) -> None:
        """Decide a worker's result against the index: duplicates, name clashes, failures to record."""
        if result.status == "added" and result.weights_sha256 in known:
            result.status, result.signature = "skipped", None  # signed twice in one ingest
        elif result.status == "added" and names.get(result.name, result.weights_sha256) != result.weights_sha256:
            result.status, result.signature = "failed", None
            result.error = (f"name {result.name!r} is already used by another model in the index; "
                            "give this one another name (--name or the manifest's name)")
        if result.status == "added":
            known.add(result.weights_sha256)
            names[result.name] = result.weights_sha256
        elif result.status == "failed":
            self.catalog.record_failure(result.name, result.ref, result.error or "unknown error")

    def remove(self, name: str) -> ModelRecord:
        """Remove a model from the catalogue and the search index (its shard row becomes garbage)."""
        with self.writer():
            index = self.search_index()
            record = self.catalog.remove(name)
            if record is None:
                raise IndexError_(f"no model named {name!r} in the index")
            try:
                index.remove_ids(np.array([record.id], dtype=np.int64))
                self._save_search(index)
            except RuntimeError:
                self._save_search(self._rebuilt_search())
        return record

    def rebuild(self) -> int:
        """Recreate ``search.faiss`` from the shards; returns the number of models indexed."""
        with self.writer():
            self._clean_debris()
            bad = self._bad_shards()
            if bad:
                shard, reason = sorted(bad.items())[0]
                raise IndexError_(f"cannot rebuild: shard {shard} is corrupt ({reason}); run `gifindex verify "
                                  "--repair` to quarantine it and see which models to re-ingest")
            index = self._rebuilt_search()
            self._save_search(index)
        return int(index.ntotal)

    def _bad_shards(self) -> dict[str, str]:
        """Registered shards that fail a check, each with what is wrong (a phrase that follows "shard NAME")."""
        bad = {}
        for shard, (rows, sha) in self.catalog.shards().items():
            path = self.root / SHARD_DIR / shard
            if not path.is_file():
                bad[shard] = "is missing"
                continue
            if file_sha256(path) != sha:
                bad[shard] = "differs from its recorded sha256"
                continue
            try:
                names, signatures = read_shard(path, self.config_hash)
            except IndexError_ as exc:
                bad[shard] = str(exc).removeprefix(f"shard {shard} ")
                continue
            if len(names) != rows or signatures.shape != (rows, self.dim):
                bad[shard] = f"holds {signatures.shape} signatures, expected ({rows}, {self.dim})"
            elif not np.isfinite(signatures).all():
                bad[shard] = "holds non-finite signatures"
        return bad

    def repair(self, wait: float = 0.0) -> dict[str, Any]:
        """Quarantine corrupt shards (moved to shards/quarantine/, their models dropped from the catalogue,
        named for re-ingest), remove debris of interrupted writes, and rebuild the search index."""
        with self.writer(wait=wait):
            removed = self._clean_debris()
            quarantined: dict[str, dict[str, Any]] = {}
            for shard, reason in self._bad_shards().items():
                source = self.root / SHARD_DIR / shard
                moved_to = None
                if source.exists():
                    folder = self.root / SHARD_DIR / QUARANTINE_DIR
                    folder.mkdir(exist_ok=True)
                    target = folder / shard
                    os.replace(source, target)
                    fsync_dir(folder)
                    fsync_dir(source.parent)
                    moved_to = str(target.relative_to(self.root))
                names = self.catalog.drop_shard(shard)
                quarantined[shard] = {"reason": reason, "moved_to": moved_to, "reingest": names}
            index = self._rebuilt_search()
            self._save_search(index)
        return {"quarantined": quarantined, "removed": removed, "models": int(index.ntotal),
                "reingest": sorted(n for q in quarantined.values() for n in q["reingest"])}

    def verify(self) -> dict[str, Any]:
        """Check every file: catalogue integrity, shard checksums and rows, search index consistency."""
        problems: list[str] = []
        notes: list[str] = []
        integrity = self.catalog.integrity()
        if integrity != "ok":
            problems.append(f"catalog.sqlite integrity check: {integrity}")
        registered = self.catalog.shards()
        records = self.records()
        for shard, reason in self._bad_shards().items():
            holds = sorted(r.name for r in records if r.shard == shard)
            problems.append(f"shard {shard} {reason} (holds {', '.join(map(repr, holds)) or 'no live models'}; "
                            "`gifindex verify --repair` quarantines it and names the models to re-ingest)")
        for record in records:
            if record.shard not in registered:
                problems.append(f"model {record.name!r} points to unregistered shard {record.shard}")
        on_disk = {p.name for p in (self.root / SHARD_DIR).glob("*.h5")}
        for orphan in sorted(on_disk - set(registered)):
            notes.append(f"shard {orphan} is not registered (left by an interrupted ingest; harmless, removed "
                         "by the next ingest, rebuild or verify --repair)")
        for folder in (self.root, self.root / SHARD_DIR):
            for tmp in sorted(folder.glob(".*.tmp")):
                notes.append(f"{tmp.relative_to(self.root)} is a temporary file left by an interrupted write "
                             "(harmless, removed by the next ingest, rebuild or verify --repair)")
        quarantine = self.root / SHARD_DIR / QUARANTINE_DIR
        if quarantine.is_dir() and any(quarantine.iterdir()):
            notes.append(f"{len(list(quarantine.iterdir()))} quarantined shard(s) in {SHARD_DIR}/{QUARANTINE_DIR} "
                         "(their models were dropped; re-ingest them, then delete the folder)")
        self._verify_search(records, problems, notes)
        return {"ok": not problems, "models": len(records), "shards": len(registered), "problems": problems,
                "notes": notes}

    def _search_matches(self, index, records: Sequence[ModelRecord]) -> bool:
        """Whether ``index`` holds exactly the catalogue's models with their shard signatures."""
        if index.ntotal != len(records) or index.d != self.dim:
            return False
        if set(int(i) for i in faiss_ids(index)) != {r.id for r in records}:
            return False
        try:
            stored = self._load_vectors(records).astype(np.float16)
            held = np.stack([index.reconstruct(int(r.id)) for r in records]).astype(np.float16) if records \
                else stored
        except (IndexError_, RuntimeError):
            return False
        return bool(np.array_equal(stored, held))

    def _verify_search(self, records: Sequence[ModelRecord], problems: list[str], notes: list[str]) -> None:
        """search.faiss: intact (its sha256 as recorded when written) or, if not, equal to the shards.

        Writes go search.faiss -> search.json -> search.sha256, each atomic, and always after the catalogue,
        so a kill leaves either an intact older file (a stale index: rebuilt when queried; a note) or a new
        file matching the catalogue whose checksum record was not written yet (a note). Anything else is
        corruption (a problem)."""
        path = self.root / SEARCH_FILE
        import faiss

        try:
            index = faiss.read_index(str(path))
        except (RuntimeError, OSError) as exc:
            problems.append(f"{SEARCH_FILE} is missing or unreadable ({' '.join(str(exc).split())[:100]}); "
                            "run `gifindex rebuild`")
            return
        try:
            recorded = json.loads((self.root / SEARCH_SUM).read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            recorded = None
        matches = self._search_matches(index, records)
        if recorded is not None and recorded == file_sha256(path):
            if not matches:
                notes.append(f"{SEARCH_FILE} is behind the catalogue (an interrupted write); it is rebuilt from "
                             "the shards when queried, or now with `gifindex rebuild`")
        elif matches:
            notes.append(f"{SEARCH_FILE} matches the shards but its checksum record was not written (an "
                         "interrupted write); `gifindex rebuild` rewrites both")
        else:
            problems.append(f"{SEARCH_FILE} differs from its recorded sha256 and from the shards (corrupt); run "
                            "`gifindex rebuild`")

    def info(self) -> dict[str, Any]:
        records = self.records()
        shards = self.catalog.shards()
        bytes_on_disk = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return {
            "path": str(self.root), "format_version": self.meta["format_version"],
            "config": self.config.to_dict(), "config_hash": self.config_hash, "models": len(records),
            "shards": len(shards), "signature_dim": self.dim, "bytes_per_model": self.dim * 2,
            "search": {**(self.meta.get("search") or {}), **self.search_status()}, "bytes_on_disk": bytes_on_disk,
            "failures": len(self.catalog.failures()), "created": self.meta.get("created"),
            "versions": self.meta.get("versions"),
        }


def faiss_ids(index) -> np.ndarray:
    """The ids held by an IndexIDMap(2)."""
    import faiss

    return faiss.vector_to_array(index.id_map)
