"""The write path of an index: create, ingest (sign, commit), remove (rebuild and repair: maintenance).

Write order (under the writer lock): signatures are buffered, written as a complete shard (atomic) that
records each model's name, reference, content hash and metadata, registered in the catalogue with their
models in one transaction, then the search index is updated and saved (atomic). A crash between steps
leaves an unregistered shard (kept: it is evidence; verify reports it, ``verify --repair`` registers its
models) or a stale search index (detected by its generation number and rebuilt from the shards).
Nothing an ingest writes is ever deleted by a later command except temporary files of interrupted writes.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SignatureConfig
from ..errors import GifindexError, IndexError_
from ..executors import InlineExecutor, Reporter, SignJob
from ..ingest import SignResult, name_taken, split_unchanged
from ..manifest import ModelEntry
from ..models.files import check_path
from ..probes import Probes, make_probes
from ..refs import FILE_SUFFIXES
from ..safefs import read_bytes
from ..text import printable, text_problem
from .atomic import atomic_path, atomic_write_text, current_umask, fsync_dir
from .catalog import Catalog, ModelRecord
from .files import IndexFiles
from .layout import (CATALOG_FILE, INDEX_FILE, PROBES_FILE, SHARD_DIR, TOMBSTONES, new_meta, shard_dir,
                     write_failure)
from .lock import WriterLock
from .search import SearchSpec, add, build_index, needs_rebuild
from .shards import file_sha256, read_shard_entries, write_shard

MAX_TOMBSTONE_BYTES = 1 << 30  # removed.json: about ten million removals
FAILURE_FLUSH = 256       # failures buffered before they are written to the log (one transaction)


@dataclass
class IngestReport:
    results: list[SignResult] = field(default_factory=list)

    def by_status(self, status: str) -> list[SignResult]:
        return [r for r in self.results if r.status == status]

    def to_dict(self) -> dict[str, Any]:
        return {"added": len(self.by_status("added")), "skipped": len(self.by_status("skipped")),
                "failed": len(self.by_status("failed")), "models": [r.summary() for r in self.results]}


# ------------------------------------------------------------------------------------------------ create
def create(root: Path, config: SignatureConfig, search: SearchSpec, probes: Probes | None, device: str) -> None:
    """Build a new, empty index in a temporary folder beside ``root`` and rename it into place: the index
    exists whole or not at all (a failed or killed init leaves only a hidden temporary folder)."""
    root = Path(os.path.abspath(root))
    root.parent.mkdir(parents=True, exist_ok=True)
    probes = probes if probes is not None else make_probes(config, device=device)
    if probes.num_probes != config.num_probes or probes.resolution != config.resolution:
        raise IndexError_("the given probes do not match the configuration's K and resolution")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.init-", dir=root.parent))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700: the index folder follows the umask
    except OSError as exc:
        raise write_failure(f"a new index next to {root}", exc, "nothing was created") from None
    try:
        _fill(tmp, config, search, probes)
        _move_into_place(tmp, root)
    except OSError as exc:
        raise write_failure(f"the index {root}", exc, "nothing was created") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fill(folder: Path, config: SignatureConfig, search: SearchSpec, probes: Probes) -> None:
    (folder / SHARD_DIR).mkdir()
    with WriterLock(folder):  # leaves the lock file in place, as every writer does
        _fill_locked(folder, config, search, probes)


def _fill_locked(folder: Path, config: SignatureConfig, search: SearchSpec, probes: Probes) -> None:
    with atomic_path(folder / PROBES_FILE) as tmp:
        probes.save(tmp)
    catalog = Catalog(folder / CATALOG_FILE, create=True)
    try:
        catalog.set_state("config_hash", config.hash())
    finally:
        catalog.close()
    meta = new_meta(config.to_dict(), config.hash(), config.signature_dim, file_sha256(folder / PROBES_FILE),
                    search.to_dict(), config.seed, time.time())
    files = IndexFiles(folder, meta, config, probes)
    try:
        files.use_catalog(Catalog(folder / CATALOG_FILE))
        files.save_search(build_index(np.zeros((0, files.dim), np.float32), np.zeros(0, np.int64), search))
    finally:
        files.close()
    atomic_write_text(folder / INDEX_FILE, json.dumps(meta, indent=2, sort_keys=True))  # last: marks done


def _move_into_place(tmp: Path, root: Path) -> None:
    try:
        os.rename(tmp, root)  # atomic; replaces an empty directory
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or (root / INDEX_FILE).exists():
            if (root / INDEX_FILE).exists():
                raise IndexError_(f"an index was created at {root} by another process meanwhile") from None
            raise
        # root holds only hidden files (checked by the caller): move the files in, index.json last
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == INDEX_FILE):
            os.rename(item, root / item.name)
    fsync_dir(root.parent)
    fsync_dir(root)


# ------------------------------------------------------------------------------------------------ ingest
def clean_debris(files: IndexFiles) -> list[str]:
    """Remove temporary files of interrupted writes (needs the lock). Unregistered shards are kept: they are
    complete, and hold models the catalogue may have lost (``verify --repair`` registers them)."""
    removed = []
    for folder in (files.root, shard_dir(files.root)):
        for path in folder.glob(".*.tmp"):
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
    now = time.time()  # the models' added time, in the shard too (a recreated catalogue keeps it)
    entries = [{"name": r.name, "ref": r.ref, "weights_sha256": r.weights_sha256, "metadata": r.metadata,
                "added": now} for r in results]
    kept = "models committed before are kept; free space and rerun the same ingest to add the rest"
    try:
        sha = write_shard(path, [r.name for r in results], signatures, files.config_hash, entries)
    except (OSError, RuntimeError) as exc:
        path.unlink(missing_ok=True)
        raise write_failure(f"shard {shard}", exc, kept) from None
    index = files.search_index(writable=True)
    try:
        ids = files.catalog.register_shard(shard, sha, entries)
    except sqlite3.Error as exc:
        path.unlink(missing_ok=True)  # never registered: nothing refers to it
        raise write_failure(CATALOG_FILE, exc, kept) from None
    if needs_rebuild(index, files.search_spec, int(index.ntotal) + len(ids), files.dim):
        index = files.rebuilt_search()  # auto crossed a size limit, or ivf's lists were made for a smaller hub
    else:
        add(index, signatures, np.array(ids, dtype=np.int64), files.search_spec)
    files.save_search(index)


class _Failures:
    """The failure log, written in batches (with each commit, every FAILURE_FLUSH failures, and at the end)."""

    def __init__(self, files: IndexFiles):
        self.files = files
        self.pending: list[tuple[str | None, str, str]] = []

    def add(self, result: SignResult) -> None:
        self.pending.append((result.name, result.ref, result.error or "unknown error"))
        if len(self.pending) >= FAILURE_FLUSH:
            self.flush()

    def flush(self) -> None:
        self.files.catalog.record_failures(self.pending)
        self.pending = []


def ingest(files: IndexFiles, refs: Iterable[str | ModelEntry], *, device: str = "cpu",
           batch_size: int | None = 32, commit_every: int = 8, commit_seconds: float = 60.0,
           reporter: Reporter | None = None, wait: float = 0.0, executor=None) -> IngestReport:
    """Sign and add models; skip those already indexed (same content hash); record failures.

    ``executor`` decides where the per-model worker runs (default: in this process; see
    gifindex.executors). Signed models are committed in shards of up to ``commit_every`` models, or
    sooner when ``commit_seconds`` have passed, so an interrupted ingest loses at most that much work
    and a rerun resumes where it stopped. A model that fails (to load, sign, or be named or reported)
    is that model's failure: the others go on and what was signed is committed.
    """
    if not isinstance(commit_every, int) or commit_every < 1:
        raise IndexError_(f"commit_every must be a positive number of models, got {commit_every!r}")
    entries = [r if isinstance(r, ModelEntry) else ModelEntry(ref=r) for r in refs]
    reporter = reporter or Reporter()
    executor = executor or InlineExecutor()
    report = IngestReport()
    with files.writer(wait=wait):
        clean_debris(files)
        adopt_shards(files, files.catalog)  # complete an interrupted ingest's last commit
        records = files.records()
        known = {r.weights_sha256: r.name for r in records}
        names = {r.name: r.weights_sha256 for r in records}
        job = SignJob(files.config, files.probes, device=device, batch_size=batch_size,
                      known_sha256=dict(known), taken_names=dict(names))
        pending: list[SignResult] = []
        failures = _Failures(files)
        last_commit = time.monotonic()
        reporter.start(len(entries))
        entries, refused = _screen(entries, names)
        entries, unchanged = split_unchanged(entries, records)  # resume: same file, size, mtime: not re-hashed
        for result in refused + unchanged:
            report.results.append(result)
            _report(reporter, result)
            if result.status == "failed":
                failures.add(result)
        try:
            for result in executor.map(entries, job, reporter):
                settle(result, known, names)
                report.results.append(result)
                if result.status == "added":   # pending before it is reported: what was said added is committed
                    pending.append(result)
                elif result.status == "failed":
                    failures.add(result)
                _report(reporter, result)
                if len(pending) >= commit_every or (pending and time.monotonic() - last_commit > commit_seconds):
                    batch, pending = pending, []
                    commit(files, batch)
                    failures.flush()
                    last_commit = time.monotonic()
        finally:
            try:
                batch, pending = pending, []
                commit(files, batch)  # what was signed is kept, whatever stopped the loop
            finally:
                failures.flush()
                reporter.close()
    return report


def _screen(entries: list[ModelEntry], indexed: Collection[str] = ()) -> tuple[list[ModelEntry], list[SignResult]]:
    """Entries whose name or reference cannot be stored or printed (control characters, invalid UTF-8, a new
    name with blanks around it; one an older index already holds is kept) fail here, each on its own, before any
    work; the rest go on."""
    good, refused = [], []
    for entry in entries:
        name = entry.name
        problem = (text_problem(entry.ref, "reference") or
                   (text_problem(name, "name", stored=name in indexed) if name is not None else None) or
                   _missing_file(entry))
        if problem:
            refused.append(SignResult(name=printable(entry.name or entry.ref), ref=printable(entry.ref),
                                      status="failed", error=problem))
        else:
            good.append(entry)
    return good, refused


def _missing_file(entry: ModelEntry) -> str | None:
    """The loader's own error for a model file that does not exist (found here, in the driver: a hub manifest
    with thousands of missing files fails each at once instead of a worker round trip per file)."""
    if Path(entry.ref).suffix.lower() not in FILE_SUFFIXES or os.path.lexists(entry.ref):
        return None
    try:
        check_path(entry.ref)
    except GifindexError as exc:
        return str(exc)
    return None


def _report(reporter: Reporter, result: SignResult) -> None:
    """Tell the reporter; a reporter that cannot print this model (e.g. its name on a non-UTF-8 terminal)
    must not end the ingest: it is told again with the name escaped."""
    try:
        reporter.model_done(result)
    except (UnicodeError, ValueError, OSError):
        result.name = printable(result.name)
        result.error = printable(result.error) if result.error else result.error
        try:
            reporter.model_done(result)
        except (UnicodeError, ValueError, OSError):
            pass


def settle(result: SignResult, known: dict[str, str], names: dict[str, str]) -> None:
    """Decide a worker's result against the index: bad names, duplicates, name clashes."""
    if result.status == "added":
        problem = text_problem(result.name, "name", stored=result.name in names) or \
            text_problem(result.ref, "reference")
        if problem:
            result.status, result.signature, result.error = "failed", None, problem
    held = result.held_in(known)
    if result.status == "added" and held is not None:   # signed twice in one ingest
        result.status, result.signature, result.same_as = "skipped", None, known[held]
    elif result.status == "added" and result.held_in({names.get(result.name, result.weights_sha256)}) is None:
        result.status, result.signature, result.error = "failed", None, name_taken(result.name)
    if result.status == "added":
        known[result.weights_sha256] = result.name
        names[result.name] = result.weights_sha256


# ------------------------------------------------------------------------------------------------ remove
def read_tombstones(root: Path) -> list[dict[str, Any]]:
    """Models removed from the index, as (shard, row, name, weights_sha256) records."""
    path = root / TOMBSTONES
    if not path.is_file():
        return []
    try:
        data = json.loads(read_bytes(path, "list of removed models", MAX_TOMBSTONE_BYTES, IndexError_))
    except (IndexError_, ValueError, RecursionError) as exc:
        raise IndexError_(f"{path} is damaged ({' '.join(str(exc).split())[:120]}); it lists removed models; "
                          "while the catalogue is sound `gifindex verify --repair` rewrites it from the catalogue, "
                          "else restore it from a backup or delete it (removed models would then come back in a "
                          "recreated catalogue)") from None
    if not isinstance(data, list):
        raise IndexError_(f"{path} is damaged (not a list of removed models); while the catalogue is sound "
                          "`gifindex verify --repair` rewrites it from the catalogue, else restore it from a backup")
    return [d for d in data if isinstance(d, dict)]


def remove(files: IndexFiles, name: str, wait: float = 0.0) -> ModelRecord:
    """Remove a model from the catalogue and the search index. Its shard row stays (shards are written once)
    and is listed in removed.json first, so a catalogue recreated from the shards does not bring it back."""
    with files.writer(wait=wait):
        record = files.catalog.by_name(name)
        if record is None:
            raise files.no_model(name)
        index = files.search_index(writable=True)
        before = read_tombstones(files.root)
        tombstones = [t for t in before   # a rerun of an interrupted remove: listed once
                      if (t.get("shard"), t.get("row")) != (record.shard, record.row)]
        tombstones.append({"shard": record.shard, "row": record.row, "name": record.name,
                           "weights_sha256": record.weights_sha256, "time": time.time()})
        try:
            atomic_write_text(files.root / TOMBSTONES, json.dumps(tombstones, indent=1))
        except OSError as exc:
            raise write_failure(TOMBSTONES, exc, "nothing was removed") from None
        try:
            files.catalog.remove(name)
        except (sqlite3.Error, OSError) as exc:   # a full disk at the commit: take back the removed.json entry
            try:
                atomic_write_text(files.root / TOMBSTONES, json.dumps(before, indent=1))
            except OSError:
                pass   # left listed while indexed: verify names it, --repair keeps the model
            raise write_failure(CATALOG_FILE, exc, "nothing was removed") from None
        try:
            index.remove_ids(np.array([record.id], dtype=np.int64))
        except RuntimeError:
            index = files.rebuilt_search()
        files.save_search(index, after=f"{record.name!r} is removed all the same (the catalogue and {TOMBSTONES} "
                          "say so, and queries rebuild the search index in memory until then); free space and run "
                          "`gifindex rebuild`")
    return record


# ------------------------------------------------------------------------------------------ adopt shards
def adopt_shards(files: IndexFiles, catalog: Catalog, added_before: dict[str, float] | None = None) -> dict[str, Any]:
    """Register every complete shard on disk that ``catalog`` does not know (left by an interrupted ingest,
    or all of them for a recreated catalogue). Models already indexed (same content hash or name) and
    removed ones (removed.json) are not registered again; unreadable shards are left as they are. Each model
    keeps the added time its shard records, else the one ``added_before`` gives its content hash (a readable
    old catalogue), else now."""
    added_before = added_before or {}
    registered = set(catalog.shards())
    orphans = sorted(p for p in shard_dir(files.root).glob("*.h5") if p.name not in registered)
    out: dict[str, Any] = {"shards": [], "models": [], "left": {}}
    if not orphans:
        return out
    removed = {(t.get("shard"), t.get("row")) for t in read_tombstones(files.root)}
    records = catalog.models()
    known, names = {r.weights_sha256 for r in records}, {r.name for r in records}
    for path in orphans:
        try:
            entries, signatures = read_shard_entries(path, files.config_hash)
        except IndexError_ as exc:
            out["left"][path.name] = str(exc)
            continue
        if signatures.shape[1] != files.dim or not np.isfinite(signatures).all():
            out["left"][path.name] = f"holds {signatures.shape} or non-finite signatures"
            continue
        live = []
        for row, entry in enumerate(entries):
            sha = entry.weights_sha256 or f"unknown:{path.name}:{row}"
            if (path.name, row) in removed or sha in known or entry.name in names or \
                    text_problem(entry.name, "name", stored=True):
                continue
            known.add(sha)
            names.add(entry.name)
            live.append({"row": row, "name": entry.name, "ref": entry.ref or entry.name, "weights_sha256": sha,
                         "metadata": entry.metadata, "added": entry.added or added_before.get(sha)})
        catalog.register_shard(path.name, file_sha256(path), live, rows=len(entries))
        out["shards"].append(path.name)
        out["models"] += [e["name"] for e in live]
    return out
