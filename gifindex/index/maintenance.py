"""Keeping an index sound: verify (check every file), repair (quarantine corrupt shards), rebuild (recreate
the derived search index from the shards)."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from ..errors import IndexError_
from .atomic import fsync_dir
from .catalog import ModelRecord
from .files import IndexFiles, faiss_ids
from .layout import QUARANTINE_DIR, SEARCH_FILE, SEARCH_SUM, SHARD_DIR, shard_dir
from .shards import file_sha256, read_shard
from .writer import clean_debris


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


def rebuild(files: IndexFiles, wait: float = 0.0) -> int:
    """Recreate ``search.faiss`` from the shards (refused while a shard is corrupt); returns the model count."""
    with files.writer(wait=wait):
        clean_debris(files)
        bad = bad_shards(files)
        if bad:
            shard, reason = sorted(bad.items())[0]
            raise IndexError_(f"cannot rebuild: shard {shard} is corrupt ({reason}); run `gifindex verify "
                              "--repair` to quarantine it and see which models to re-ingest")
        index = files.rebuilt_search()
        files.save_search(index)
    return int(index.ntotal)


def repair(files: IndexFiles, wait: float = 0.0) -> dict[str, Any]:
    """Quarantine corrupt shards (moved to shards/quarantine/, their models dropped from the catalogue,
    named for re-ingest), remove debris of interrupted writes, and rebuild the search index."""
    with files.writer(wait=wait):
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
        index = files.rebuilt_search()
        files.save_search(index)
    return {"quarantined": quarantined, "removed": removed, "models": int(index.ntotal),
            "reingest": sorted(n for q in quarantined.values() for n in q["reingest"])}


def verify(files: IndexFiles) -> dict[str, Any]:
    """Check every file: catalogue integrity, shard checksums and rows, search index consistency."""
    problems: list[str] = []
    notes: list[str] = []
    root = files.root
    integrity = files.catalog.integrity()
    if integrity != "ok":
        problems.append(f"catalog.sqlite integrity check: {integrity}")
    registered = files.catalog.shards()
    records = files.records()
    for shard, reason in bad_shards(files).items():
        holds = sorted(r.name for r in records if r.shard == shard)
        problems.append(f"shard {shard} {reason} (holds {', '.join(map(repr, holds)) or 'no live models'}; "
                        "`gifindex verify --repair` quarantines it and names the models to re-ingest)")
    for record in records:
        if record.shard not in registered:
            problems.append(f"model {record.name!r} points to unregistered shard {record.shard}")
    on_disk = {p.name for p in shard_dir(root).glob("*.h5")}
    for orphan in sorted(on_disk - set(registered)):
        notes.append(f"shard {orphan} is not registered (left by an interrupted ingest; harmless, removed "
                     "by the next ingest, rebuild or verify --repair)")
    for folder in (root, shard_dir(root)):
        for tmp in sorted(folder.glob(".*.tmp")):
            notes.append(f"{tmp.relative_to(root)} is a temporary file left by an interrupted write "
                         "(harmless, removed by the next ingest, rebuild or verify --repair)")
    quarantine = shard_dir(root) / QUARANTINE_DIR
    if quarantine.is_dir() and any(quarantine.iterdir()):
        notes.append(f"{len(list(quarantine.iterdir()))} quarantined shard(s) in {SHARD_DIR}/{QUARANTINE_DIR} "
                     "(their models were dropped; re-ingest them, then delete the folder)")
    _verify_search(files, records, problems, notes)
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


def _verify_search(files: IndexFiles, records: Sequence[ModelRecord], problems: list[str],
                   notes: list[str]) -> None:
    """search.faiss: intact (its sha256 as recorded when written) or, if not, equal to the shards.

    Writes go search.faiss -> search.json -> search.sha256, each atomic, and always after the catalogue,
    so a kill leaves either an intact older file (a stale index: rebuilt when queried; a note) or a new
    file matching the catalogue whose checksum record was not written yet (a note). Anything else is
    corruption (a problem)."""
    path = files.root / SEARCH_FILE
    try:
        index = faiss.read_index(str(path))
    except (RuntimeError, OSError) as exc:
        problems.append(f"{SEARCH_FILE} is missing or unreadable ({' '.join(str(exc).split())[:100]}); "
                        "run `gifindex rebuild`")
        return
    try:
        recorded = json.loads((files.root / SEARCH_SUM).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None
    matches = search_matches(files, index, records)
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
