"""Keeping an index sound: verify (check every file), repair (quarantine corrupt shards, register complete
shards the catalogue does not know), rebuild (recreate the derived files: the search index, and the
catalogue itself from the shards when it is missing or damaged).

What can be recreated, and from what: ``search.faiss`` from the shards and the catalogue; the catalogue
from the shards (names, references, content hashes, metadata) and ``removed.json`` (models removed since),
losing only the failure log. Shards and ``index.json``/``probes.npz`` are the originals: a damaged one is
named, never rewritten; a corrupt shard is moved to ``shards/quarantine/``, never deleted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from ..errors import IndexError_
from .atomic import fsync_dir
from .catalog import Catalog, CatalogDamaged, ModelRecord
from ..safefs import read_bytes
from .files import MAX_SEARCH_BYTES, MAX_SIDECAR_BYTES, IndexFiles, faiss_ids
from .layout import CATALOG_FILE, INDEX_FILE, QUARANTINE_DIR, SEARCH_FILE, SEARCH_SUM, SHARD_DIR, shard_dir
from .lock import writer_active
from .search import FAISS_READ_ERRORS
from .shards import file_sha256, read_shard, shard_config_hash
from .writer import adopt_shards, clean_debris

log = logging.getLogger(__name__)
VERIFY_ATTEMPTS = 4   # a search file that changes while verify reads it (a concurrent ingest) is read again


def bad_shards(files: IndexFiles) -> dict[str, str]:
    """Registered shards that fail a check, each with what is wrong (a phrase that follows "shard NAME")."""
    bad = {}
    for shard, (rows, sha) in files.catalog.shards().items():
        path = shard_dir(files.root) / shard
        if not path.is_file():
            bad[shard] = "is missing"
            continue
        if file_sha256(path) != sha:
            bad[shard] = "differs from its recorded sha256"
            continue
        try:
            names, signatures = read_shard(path, files.config_hash)
        except IndexError_ as exc:
            bad[shard] = str(exc).removeprefix(f"shard {shard} ")
            continue
        if len(names) != rows or signatures.shape != (rows, files.dim):
            bad[shard] = f"holds {signatures.shape} signatures, expected ({rows}, {files.dim})"
        elif not np.isfinite(signatures).all():
            bad[shard] = "holds non-finite signatures"
    return bad


def recreate_catalog(files: IndexFiles) -> dict[str, Any]:
    """A new catalogue from the shards (the missing or damaged one is kept beside it, renamed); needs the
    writer lock. Returns what adopt_shards registered, plus where the old file went."""
    path = files.root / CATALOG_FILE
    kept = None
    if path.exists():
        kept = path.with_name(f"{CATALOG_FILE}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            old = path.with_name(path.name + suffix)
            if old.exists():
                os.replace(old, kept.with_name(kept.name + suffix))
    tmp = path.with_name(f".{CATALOG_FILE}.recreate.tmp")
    for suffix in ("", "-wal", "-shm", "-journal"):
        tmp.with_name(tmp.name + suffix).unlink(missing_ok=True)
    catalog = Catalog(tmp, create=True)
    try:
        catalog.set_state("config_hash", files.config_hash)
        adopted = adopt_shards(files, catalog)
    finally:
        catalog.close()
    os.replace(tmp, path)
    fsync_dir(files.root)
    adopted["kept_damaged"] = str(kept.relative_to(files.root)) if kept else None
    log.warning("recreated %s from %d shard(s): %d model(s); the failure log of past ingests is not recoverable",
                CATALOG_FILE, len(adopted["shards"]), len(adopted["models"]))
    return adopted


# ----------------------------------------------------------------------------------------------- rebuild
def rebuild(files: IndexFiles, wait: float = 0.0) -> int:
    """Recreate the derived files: the catalogue from the shards when it is missing or damaged, then
    ``search.faiss`` (refused while a registered shard is corrupt). Returns the number of models indexed."""
    with files.writer(wait=wait, open_catalog=False):
        try:
            catalog = Catalog(files.root / CATALOG_FILE)
            catalog.integrity_ok()
        except CatalogDamaged:
            recreate_catalog(files)
            catalog = Catalog(files.root / CATALOG_FILE)
        files.use_catalog(catalog)
        clean_debris(files)
        bad = bad_shards(files)
        if bad:
            shard, reason = sorted(bad.items())[0]
            raise IndexError_(f"cannot rebuild: shard {shard} is corrupt ({reason}); run `gifindex verify "
                              "--repair` to quarantine it and see which models to re-ingest")
        index = files.rebuilt_search()
        files.save_search(index)
    return int(index.ntotal)


def _odd_one_out(files: IndexFiles) -> None:
    """Refuse to repair when the shards agree with each other but not with index.json: the configuration
    file is what changed, and quarantining every shard would drop every model."""
    hashes = {shard_config_hash(shard_dir(files.root) / s) for s in files.catalog.shards()} - {None}
    if len(hashes) == 1 and files.config_hash not in hashes:
        raise IndexError_(f"{files.root / INDEX_FILE} disagrees with every shard (configuration {files.config_hash} "
                          f"vs {hashes.pop()}): index.json was edited; restore it. Nothing was quarantined")


def repair(files: IndexFiles, wait: float = 0.0) -> dict[str, Any]:
    """Quarantine corrupt shards (moved to shards/quarantine/, their models dropped from the catalogue and
    named for re-ingest), register complete shards the catalogue does not know, remove temporary files of
    interrupted writes, and rebuild the search index. A missing or damaged catalogue is recreated first."""
    with files.writer(wait=wait, open_catalog=False):
        recreated = None
        try:
            catalog = Catalog(files.root / CATALOG_FILE)
            catalog.integrity_ok()
        except CatalogDamaged:
            recreated = recreate_catalog(files)
            catalog = Catalog(files.root / CATALOG_FILE)
        files.use_catalog(catalog)
        _odd_one_out(files)
        removed = clean_debris(files)
        quarantined: dict[str, dict[str, Any]] = {}
        for shard, reason in bad_shards(files).items():
            source = shard_dir(files.root) / shard
            moved_to = None
            if source.exists():
                folder = shard_dir(files.root) / QUARANTINE_DIR
                folder.mkdir(exist_ok=True)
                target = folder / shard
                os.replace(source, target)
                fsync_dir(folder)
                fsync_dir(source.parent)
                moved_to = str(target.relative_to(files.root))
            names = files.catalog.drop_shard(shard)
            quarantined[shard] = {"reason": reason, "moved_to": moved_to, "reingest": names}
        adopted = adopt_shards(files, files.catalog)
        index = files.rebuilt_search()
        files.save_search(index)
    return {"quarantined": quarantined, "removed": removed, "models": int(index.ntotal),
            "reingest": sorted(n for q in quarantined.values() for n in q["reingest"]),
            "adopted": adopted, "recreated_catalog": recreated}


# ------------------------------------------------------------------------------------------------ verify
def verify(files: IndexFiles) -> dict[str, Any]:
    """Check every file: catalogue integrity, shard checksums and rows, search index consistency. Reads
    only (works on a read-only index)."""
    problems: list[str] = []
    notes: list[str] = []
    root = files.root
    on_disk = {p.name for p in shard_dir(root).glob("*.h5")}
    try:
        with files.catalog.snapshot():  # a concurrent ingest's commit must not fall between these reads
            integrity = files.catalog.integrity()
            registered = files.catalog.shards()
            records = files.records()
            damaged = bad_shards(files)
    except IndexError_ as exc:
        problems.append(f"{exc} ({len(on_disk)} shard(s) on disk hold the models)")
        return {"ok": False, "models": 0, "shards": 0, "problems": problems, "notes": notes}
    if integrity != "ok":
        problems.append(f"{CATALOG_FILE} integrity check: {integrity}; `gifindex rebuild` recreates it from the shards")
    for shard, reason in damaged.items():
        holds = sorted(r.name for r in records if r.shard == shard)
        problems.append(f"shard {shard} {reason} (holds {', '.join(map(repr, holds)) or 'no live models'}; "
                        "`gifindex verify --repair` quarantines it and names the models to re-ingest)")
    for record in records:
        if record.shard not in registered:
            problems.append(f"model {record.name!r} points to unregistered shard {record.shard}")
    for orphan in sorted(on_disk - set(registered)):
        notes.append(f"shard {orphan} is not registered in the catalogue (left by an interrupted ingest, or its "
                     "catalogue entry was lost); it is kept: the next ingest or `gifindex verify --repair` "
                     "registers the models it holds that are not indexed")
    for folder in (root, shard_dir(root)):
        for tmp in sorted(folder.glob(".*.tmp")):
            notes.append(f"{tmp.relative_to(root)} is a temporary file left by an interrupted write "
                         "(harmless, removed by the next ingest, rebuild or verify --repair)")
    quarantine = shard_dir(root) / QUARANTINE_DIR
    if quarantine.is_dir() and any(quarantine.iterdir()):
        notes.append(f"{len(list(quarantine.iterdir()))} quarantined shard(s) in {SHARD_DIR}/{QUARANTINE_DIR} "
                     "(their models were dropped; re-ingest them, then delete the folder)")
    _verify_search(files, problems, notes)
    return {"ok": not problems, "models": len(records), "shards": len(registered), "problems": problems,
            "notes": notes}


def search_matches(files: IndexFiles, index, records: Sequence[ModelRecord]) -> bool:
    """Whether ``index`` holds exactly the catalogue's models with their shard signatures."""
    if index.ntotal != len(records) or index.d != files.dim:
        return False
    if set(int(i) for i in faiss_ids(index)) != {r.id for r in records}:
        return False
    try:
        stored = files.load_vectors(records).astype(np.float16)
        held = np.stack([index.reconstruct(int(r.id)) for r in records]).astype(np.float16) if records \
            else stored
    except (IndexError_, RuntimeError):
        return False
    return bool(np.array_equal(stored, held))


def _read_sum(files: IndexFiles) -> str | None:
    try:
        recorded = json.loads(read_bytes(files.root / SEARCH_SUM, "search checksum", MAX_SIDECAR_BYTES, IndexError_))
        return recorded.get("sha256") if isinstance(recorded, dict) else None
    except (IndexError_, ValueError):
        return None


def _verify_search(files: IndexFiles, problems: list[str], notes: list[str]) -> None:
    """search.faiss, read again while a concurrent writer changes it under verify (a race, not corruption)."""
    for attempt in range(VERIFY_ATTEMPTS):
        generation, recorded = files.catalog.generation(), _read_sum(files)
        found_problems: list[str] = []
        found_notes: list[str] = []
        _check_search(files, files.records(), recorded, found_problems, found_notes)
        changed = generation != files.catalog.generation() or recorded != _read_sum(files)
        if not found_problems or not (changed or writer_active(files.root)):
            break
        time.sleep(0.25 * (attempt + 1))
    else:
        found_notes.append(f"{SEARCH_FILE} kept changing while verify read it (an ingest is writing it); "
                           "run verify again when the writer has finished")
        found_problems = []
    problems += found_problems
    notes += found_notes


def _check_search(files: IndexFiles, records: Sequence[ModelRecord], recorded: str | None, problems: list[str],
                  notes: list[str]) -> None:
    """search.faiss: intact (its sha256 as recorded when written) or, if not, equal to the shards.

    Writes go search.faiss -> search.json -> search.sha256, each atomic, and always after the catalogue,
    so a kill leaves either an intact older file (a stale index: rebuilt when queried; a note) or a new
    file matching the catalogue whose checksum record was not written yet (a note). Anything else is
    corruption (a problem). The file is read once: its checksum and its content are of the same bytes."""
    path = files.root / SEARCH_FILE
    try:
        data = read_bytes(path, "search file", MAX_SEARCH_BYTES, IndexError_)
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except (*FAISS_READ_ERRORS, OSError, IndexError_) as exc:
        problems.append(f"{SEARCH_FILE} is missing or unreadable ({' '.join(str(exc).split())[:100]}); "
                        "run `gifindex rebuild`")
        return
    matches = search_matches(files, index, records)
    if recorded is not None and recorded == hashlib.sha256(data).hexdigest():
        if not matches:
            notes.append(f"{SEARCH_FILE} is behind the catalogue (an interrupted write); it is rebuilt from "
                         "the shards when queried, or now with `gifindex rebuild`")
    elif matches:
        notes.append(f"{SEARCH_FILE} matches the shards but its checksum record was not written (an "
                     "interrupted write); `gifindex rebuild` rewrites both")
    else:
        problems.append(f"{SEARCH_FILE} differs from its recorded sha256 and from the shards (corrupt); run "
                        "`gifindex rebuild`")
