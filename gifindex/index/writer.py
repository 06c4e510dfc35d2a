"""The write path of an index: create, ingest (sign, commit), remove (rebuild and repair: maintenance).

Write order (under the writer lock): signatures are buffered, written as a complete shard (atomic),
registered in the catalogue with their models in one transaction, then the search index is updated and
saved (atomic). A crash between steps leaves an unregistered shard (reported by verify) or a stale
search index (detected by its generation number and rebuilt from the shards).
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SignatureConfig
from ..errors import IndexError_
from ..executors import InlineExecutor, Reporter, SignJob
from ..ingest import SignResult, split_unchanged
from ..manifest import ModelEntry
from ..probes import Probes, make_probes
from .atomic import atomic_path, atomic_write_text
from .catalog import Catalog, ModelRecord
from .files import IndexFiles
from .layout import CATALOG_FILE, INDEX_FILE, PROBES_FILE, SHARD_DIR, new_meta, shard_dir, write_failure
from .lock import WriterLock
from .search import SearchSpec, build_index, index_kind
from .shards import file_sha256, write_shard


@dataclass
class IngestReport:
    results: list[SignResult] = field(default_factory=list)

    def by_status(self, status: str) -> list[SignResult]:
        return [r for r in self.results if r.status == status]

    def to_dict(self) -> dict[str, Any]:
        return {"added": len(self.by_status("added")), "skipped": len(self.by_status("skipped")),
                "failed": len(self.by_status("failed")), "models": [r.summary() for r in self.results]}


def create(root: Path, config: SignatureConfig, search: SearchSpec, probes: Probes | None, device: str) -> None:
    """Write a new, empty index at ``root`` (index.json last: it marks the index complete)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / SHARD_DIR).mkdir(exist_ok=True)
    with WriterLock(root):
        probes = probes if probes is not None else make_probes(config, device=device)
        if probes.num_probes != config.num_probes or probes.resolution != config.resolution:
            raise IndexError_("the given probes do not match the configuration's K and resolution")
        with atomic_path(root / PROBES_FILE) as tmp:
            probes.save(tmp)
        Catalog(root / CATALOG_FILE).close()
        meta = new_meta(config.to_dict(), config.hash(), config.signature_dim, file_sha256(root / PROBES_FILE),
                        search.to_dict(), config.seed, time.time())
        files = IndexFiles(root, meta, config, probes)
        try:
            files.save_search(build_index(np.zeros((0, files.dim), np.float32), np.zeros(0, np.int64), search))
        finally:
            files.close()
        atomic_write_text(root / INDEX_FILE, json.dumps(meta, indent=2, sort_keys=True))  # last: marks done


def clean_debris(files: IndexFiles) -> list[str]:
    """Remove what interrupted writers left (temporary files, unregistered shards); needs the lock."""
    removed = []
    registered = set(files.catalog.shards())
    for folder in (files.root, shard_dir(files.root)):
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(files.root)))
    for path in shard_dir(files.root).glob("*.h5"):
        if path.name not in registered:
            path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(files.root)))
    return removed


def commit(files: IndexFiles, results: list[SignResult]) -> None:
    """Write one shard of signed models, register it, update the search index."""
    if not results:
        return
    shard = f"{len(files.catalog.shards()) + 1:05d}-{secrets.token_hex(4)}.h5"
    path = shard_dir(files.root) / shard
    signatures = np.stack([r.signature for r in results]).astype(np.float16)
    kept = "models committed before are kept; free space and rerun the same ingest to add the rest"
    try:
        sha = write_shard(path, [r.name for r in results], signatures, files.config_hash)
    except (OSError, RuntimeError) as exc:
        path.unlink(missing_ok=True)
        raise write_failure(f"shard {shard}", exc, kept) from None
    entries = [{"name": r.name, "ref": r.ref, "weights_sha256": r.weights_sha256, "metadata": r.metadata}
               for r in results]
    index = files.search_index()
    try:
        ids = files.catalog.register_shard(shard, sha, entries)
    except sqlite3.Error as exc:
        path.unlink(missing_ok=True)
        raise write_failure(CATALOG_FILE, exc, kept) from None
    if files.search_spec.resolve(int(index.ntotal) + len(ids), files.dim)[0] != index_kind(index):
        index = files.rebuilt_search()  # auto: the hub crossed the exact-search budget (or came back)
    else:
        index.add_with_ids(signatures.astype(np.float32), np.array(ids, dtype=np.int64))
    files.save_search(index)


def ingest(files: IndexFiles, refs: Iterable[str | ModelEntry], *, device: str = "cpu",
           batch_size: int | None = 32, commit_every: int = 8, commit_seconds: float = 60.0,
           reporter: Reporter | None = None, wait: float = 0.0, executor=None) -> IngestReport:
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
    with files.writer(wait=wait):
        clean_debris(files)
        records = files.records()
        known = {r.weights_sha256 for r in records}
        names = {r.name: r.weights_sha256 for r in records}
        job = SignJob(files.config, files.probes, device=device, batch_size=batch_size,
                      known_sha256=frozenset(known))
        pending: list[SignResult] = []
        last_commit = time.monotonic()
        reporter.start(len(entries))
        entries, unchanged = split_unchanged(entries, records)  # resume: same file, size, mtime: not re-hashed
        for result in unchanged:
            report.results.append(result)
            reporter.model_done(result)
        try:
            for result in executor.map(entries, job, reporter):
                settle(files, result, known, names)
                if result.status == "added":
                    pending.append(result)
                report.results.append(result)
                reporter.model_done(result)
                if len(pending) >= commit_every or (pending and time.monotonic() - last_commit > commit_seconds):
                    commit(files, pending)
                    pending, last_commit = [], time.monotonic()
            commit(files, pending)
        finally:
            reporter.close()
    return report


def settle(files: IndexFiles, result: SignResult, known: set[str], names: dict[str, str]) -> None:
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
        files.catalog.record_failure(result.name, result.ref, result.error or "unknown error")


def remove(files: IndexFiles, name: str) -> ModelRecord:
    """Remove a model from the catalogue and the search index (its shard row becomes garbage)."""
    with files.writer():
        index = files.search_index()
        record = files.catalog.remove(name)
        if record is None:
            raise IndexError_(f"no model named {name!r} in the index")
        try:
            index.remove_ids(np.array([record.id], dtype=np.int64))
            files.save_search(index)
        except RuntimeError:
            files.save_search(files.rebuilt_search())
    return record
