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
import shutil
import time
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from ..errors import IndexError_
from ..safefs import check_file, read_bytes
from ..text import text_problem
from .atomic import atomic_write_bytes, atomic_write_text, fsync_dir
from .catalog import Catalog, CatalogDamaged, ModelRecord
from .files import (CATALOG_FIX, MAX_PROBES_BYTES, MAX_SEARCH_BYTES, MAX_SIDECAR_BYTES, SEARCH_META, IndexFiles,
                    faiss_ids)
from .layout import (CATALOG_FILE, INDEX_FILE, PROBES_FILE, QUARANTINE_DIR, SEARCH_FILE, SEARCH_SUM, SHARD_DIR,
                     TOMBSTONES, shard_dir)
from .lock import writer_active
from .search import APPROXIMATE, FAISS_READ_ERRORS, comparable_rows, index_kind, read_sidecar
from .shards import file_sha256, read_shard, read_shard_labels, shard_config_hash
from .writer import adopt_shards, clean_debris, read_tombstones

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
    added_before, old_catalog = _salvage(path)
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
        adopted = adopt_shards(files, catalog, added_before)
        failures = 0
        if old_catalog is not None:
            try:
                failures = catalog.copy_failures(old_catalog)
            except IndexError_:
                failures = 0
    finally:
        catalog.close()
        if old_catalog is not None:
            old_catalog.close()
    os.replace(tmp, path)
    fsync_dir(files.root)
    adopted["kept_damaged"] = str(kept.relative_to(files.root)) if kept else None
    adopted["failures_kept"] = failures
    log.warning("recreated %s from %d shard(s): %d model(s); %s", CATALOG_FILE, len(adopted["shards"]),
                len(adopted["models"]), f"{failures} logged failure(s) of past ingests kept" if failures else
                "the old catalogue logged no failed ingest" if old_catalog is not None else
                "the failure log of past ingests is not recoverable")
    return adopted


def _salvage(path) -> tuple[dict[str, float], Catalog | None]:
    """From an old catalogue that can still be read (one that disagrees with the shards): each content hash's
    added time, and the catalogue itself (to copy its failure log); ({}, None) when it cannot be read."""
    if not path.is_file():
        return {}, None
    try:
        old = Catalog(path, readonly=True)
    except IndexError_:
        return {}, None
    try:
        rows = old._read("SELECT weights_sha256, added FROM models")
        return {sha: float(t) for sha, t in rows if isinstance(sha, str) and isinstance(t, (int, float))}, old
    except IndexError_:
        old.close()
        return {}, None


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
        probes_rewritten = False
        if _probes_problem(files):  # the index opened: the probes it holds are the recorded ones (sha256 checked)
            data = files.probes.to_bytes()
            if hashlib.sha256(data).hexdigest() == files.meta["probes_sha256"]:
                atomic_write_bytes(files.root / PROBES_FILE, data)
                probes_rewritten = True
                log.warning("rewrote %s: the configuration redraws exactly the recorded probes", PROBES_FILE)
        tombstones_rewritten = _rewrite_tombstones(files)
        kept_removals = _settle_interrupted_removals(files)
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
        mismatched, unlisted = catalogue_disagreements(files, files.records(), files.catalog.shards(), set())
        if recreated is None and (mismatched or unlisted):  # the shards are the record: the catalogue follows
            files.catalog.close()
            files.use_catalog(None)
            recreated = recreate_catalog(files)
            files.use_catalog(Catalog(files.root / CATALOG_FILE))
        adopted = adopt_shards(files, files.catalog)
        index = files.rebuilt_search()
        files.save_search(index)
    return {"quarantined": quarantined, "removed": removed, "models": int(index.ntotal),
            "reingest": sorted(n for q in quarantined.values() for n in q["reingest"]),
            "adopted": adopted, "recreated_catalog": recreated, "rewrote_removed": tombstones_rewritten,
            "rewrote_probes": probes_rewritten, "kept_interrupted_removals": kept_removals}


def interrupted_removals(files: IndexFiles, records: Sequence[ModelRecord]) -> list[dict[str, Any]]:
    """Entries of removed.json whose shard row the catalogue still holds: a ``remove`` killed between writing
    removed.json and the catalogue (the model is live, but a recreated catalogue would leave it out)."""
    live = {(r.shard, r.row) for r in records}
    try:
        return [t for t in read_tombstones(files.root) if (t.get("shard"), t.get("row")) in live]
    except IndexError_:
        return []


def _settle_interrupted_removals(files: IndexFiles) -> list[str]:
    """Drop the entries of interrupted removals from removed.json: the model stays, as the catalogue holds it (the
    user saw ``remove`` fail; running it again removes the model). Returns their names."""
    interrupted = interrupted_removals(files, files.records())
    if not interrupted:
        return []
    drop = {(t.get("shard"), t.get("row")) for t in interrupted}
    kept = [t for t in read_tombstones(files.root) if (t.get("shard"), t.get("row")) not in drop]
    atomic_write_text(files.root / TOMBSTONES, json.dumps(kept, indent=1))
    names = sorted(str(t.get("name")) for t in interrupted)
    log.warning("kept %s: an interrupted remove had listed them in %s but left them indexed; run `gifindex remove` "
                "again to remove them", ", ".join(map(repr, names)), TOMBSTONES)
    return names


def _rewrite_tombstones(files: IndexFiles) -> dict[str, Any] | None:
    """A damaged or missing removed.json, rewritten from the (sound) catalogue: every row of a readable registered
    shard that the catalogue does not hold is recorded as removed, so a catalogue recreated later is this one (a
    registered shard's rows enter the catalogue in one transaction, so a sound catalogue that counts removals lacks
    only removed ones). A damaged file is kept beside it. None when removed.json is sound, or missing while the
    catalogue counts no removal (rows it lacks were then lost, not removed)."""
    path = files.root / TOMBSTONES
    missing = not path.exists()
    if missing and not files.catalog.removals():
        return None   # nothing was removed: rows the catalogue lacks were lost, and the repair brings them back
    if not missing:
        try:
            read_tombstones(files.root)
            return None
        except IndexError_:
            pass
    live = {(r.shard, r.row) for r in files.records()}
    tombstones = []
    for shard in sorted(files.catalog.shards()):
        try:
            names, hashes = read_shard_labels(shard_dir(files.root) / shard, files.config_hash)
        except IndexError_:
            continue  # a damaged shard: quarantined next, its rows are gone anyway
        for row, name in enumerate(names):
            if (shard, row) not in live:
                tombstones.append({"shard": shard, "row": row, "name": name,
                                   "weights_sha256": hashes[row] if hashes else None, "time": time.time()})
    if missing and not tombstones:
        return None
    kept = None
    if not missing:   # copied aside, not moved: a write cut short leaves the damaged file, never none
        kept = path.with_name(f"{TOMBSTONES}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, kept)
    atomic_write_text(path, json.dumps(tombstones, indent=1))
    log.warning("rewrote %s from the catalogue (%d removed row(s)); %s", TOMBSTONES, len(tombstones),
                "it was missing" if missing else f"the damaged file is kept as {kept.name}")
    return {"removed_rows": len(tombstones), "kept_damaged": kept.name if kept else None, "was_missing": missing}


def catalogue_disagreements(files: IndexFiles, records: Sequence[ModelRecord], registered: dict,
                            damaged: set[str], removed: set[tuple[str, int]] | None = None
                            ) -> tuple[list[str], list[str]]:
    """Where the catalogue and the (readable, registered) shards disagree: (models whose shard row holds another
    model, as "'NAME' (the row holds 'OTHER')"; models a shard records that are neither in the catalogue nor
    removed, nor a duplicate of an indexed model). ``removed`` None: read removed.json (unreadable: no second
    list, the damaged file is its own problem)."""
    if removed is None:
        try:
            removed = {(t.get("shard"), t.get("row")) for t in read_tombstones(files.root)}
        except IndexError_:
            removed = None
    live = {(r.shard, r.row): r for r in records}
    names, shas = {r.name for r in records}, {r.weights_sha256 for r in records}
    mismatched: list[str] = []
    unlisted: list[str] = []
    rows_of: dict[str, int] = {}
    for shard in sorted(registered):
        if shard in damaged:
            continue
        try:
            held, hashes = read_shard_labels(shard_dir(files.root) / shard, files.config_hash)
        except IndexError_:
            continue  # bad_shards names it
        rows_of[shard] = len(held)
        for row, name in enumerate(held):
            sha = hashes[row] if hashes else None
            record = live.get((shard, row))
            if record is not None:
                if record.name != name or (sha is not None and record.weights_sha256 != sha):
                    mismatched.append(f"{record.name!r} (the row holds {name!r})")
            elif removed is not None and (shard, row) not in removed and name not in names \
                    and (sha is None or sha not in shas) and not text_problem(name, "name", stored=True):
                unlisted.append(repr(name))
    for record in records:
        if record.shard in rows_of and not 0 <= record.row < rows_of[record.shard]:
            mismatched.append(f"{record.name!r} (shard {record.shard} has no row {record.row})")
    return mismatched, unlisted


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
            removals = files.catalog.removals()
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
    try:
        read_tombstones(root)
    except IndexError_:
        problems.append(f"{TOMBSTONES} is damaged (it lists the removed models a recreated catalogue leaves out); "
                        f"`gifindex verify --repair` rewrites it from the catalogue (the damaged file is kept beside "
                        "it), or restore it from a backup")
    interrupted = interrupted_removals(files, records)
    if interrupted:
        names = ", ".join(sorted(repr(str(t.get("name"))) for t in interrupted))
        problems.append(f"{TOMBSTONES} lists {names} as removed, but the catalogue still holds them (a `remove` was "
                        "interrupted; a recreated catalogue would lose them): `gifindex verify --repair` keeps them, "
                        "and `gifindex remove NAME` again removes one")
    mismatched, unlisted = catalogue_disagreements(files, records, registered, set(damaged))
    if mismatched:
        problems.append(f"{CATALOG_FILE} disagrees with the shards: {_some(mismatched)} point(s) to shard rows "
                        f"holding other models; {CATALOG_FIX}")
    if unlisted and not (root / TOMBSTONES).exists() and removals:
        problems.append(f"{TOMBSTONES} is missing, and the shards hold {len(unlisted)} model(s) the catalogue does not "
                        f"list ({_some(unlisted)}): models removed before it was lost, while the catalogue is sound; "
                        f"`gifindex verify --repair` rewrites {TOMBSTONES} from the catalogue, keeping them removed "
                        "(ingest one again to bring it back)")
    elif unlisted:
        problems.append(f"the shards hold {len(unlisted)} model(s) that {CATALOG_FILE} lost (neither indexed nor "
                        f"in {TOMBSTONES}: {_some(unlisted)}); {CATALOG_FIX}")
    for orphan in sorted(on_disk - set(registered)):
        notes.append(f"shard {orphan} is not registered in the catalogue (left by an interrupted ingest, or its "
                     "catalogue entry was lost); it is kept: the next ingest or `gifindex verify --repair` "
                     "registers the models it holds that are not indexed")
    for folder in (root, shard_dir(root)):
        for tmp in sorted(folder.glob(".*.tmp")):
            notes.append(f"{tmp.relative_to(root)} is a temporary file left by an interrupted write "
                         "(harmless, removed by the next ingest, rebuild or verify --repair)")
    if _probes_problem(files):
        problems.append(f"{PROBES_FILE} is missing or altered; the configuration redraws exactly the recorded "
                        "probes (sha256 checked), which this command used: `gifindex verify --repair` writes them "
                        "back")
    quarantine = shard_dir(root) / QUARANTINE_DIR
    if quarantine.is_dir() and any(quarantine.iterdir()):
        notes.append(f"{len(list(quarantine.iterdir()))} quarantined shard(s) in {SHARD_DIR}/{QUARANTINE_DIR} "
                     "(their models were dropped; re-ingest them, then delete the folder)")
    _verify_search(files, problems, notes, set(damaged))
    return {"ok": not problems, "models": len(records), "shards": len(registered), "problems": problems,
            "notes": notes}


def _probes_problem(files: IndexFiles) -> bool:
    """Whether probes.npz differs from its recorded sha256 (the index opened on redrawn, verified probes)."""
    try:
        check_file(files.root / PROBES_FILE, "probe file", MAX_PROBES_BYTES, IndexError_)  # no FIFO, no giant
        return file_sha256(files.root / PROBES_FILE) != files.meta["probes_sha256"]
    except (OSError, IndexError_):
        return True


def _some(items: list[str], shown: int = 5) -> str:
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def search_matches(files: IndexFiles, index, records: Sequence[ModelRecord],
                   damaged: set[str] = frozenset()) -> bool | None:
    """Whether ``index`` holds exactly the catalogue's models with their shard signatures (those in ``damaged``
    shards: by id only, their signatures cannot be read); None when the catalogue's rows cannot be read from
    the shards (a problem verify names on its own)."""
    if index.ntotal != len(records) or index.d != files.dim:
        return False
    if set(int(i) for i in faiss_ids(index)) != {r.id for r in records}:
        return False
    records = [r for r in records if r.shard not in damaged]
    try:
        stored = files.load_vectors(records)
    except IndexError_:
        return None  # the shards and the catalogue disagree (named on their own): nothing to compare with
    try:
        expected, held = comparable_rows(index, stored, [r.id for r in records])
    except (RuntimeError, KeyError):
        return False
    if index_kind(index) in APPROXIMATE and expected.shape[1] != files.dim:  # compared after the PCA: float32
        return bool(np.allclose(expected, held, rtol=1e-2, atol=1e-3))   # rounding of the projection aside
    return bool(np.array_equal(expected.astype(np.float16), held.astype(np.float16)))


def _read_sum(files: IndexFiles) -> str | None:
    try:
        recorded = json.loads(read_bytes(files.root / SEARCH_SUM, "search checksum", MAX_SIDECAR_BYTES, IndexError_))
        return recorded.get("sha256") if isinstance(recorded, dict) else None
    except (IndexError_, ValueError):
        return None


def _verify_search(files: IndexFiles, problems: list[str], notes: list[str], damaged: set[str] = frozenset()) -> None:
    """search.faiss, read again while a concurrent writer changes it under verify (a race, not corruption). A
    problem is dropped only if the files were seen to change: one that stays the same over every reading is
    reported, a writer active or not (a pid file left by a killed writer, or an ingest not committing, changes
    nothing)."""
    ever_changed = False
    for attempt in range(VERIFY_ATTEMPTS):
        generation, recorded = files.catalog.generation(), _read_sum(files)
        found_problems: list[str] = []
        found_notes: list[str] = []
        _check_search(files, files.records(), recorded, found_problems, found_notes, damaged)
        changed = generation != files.catalog.generation() or recorded != _read_sum(files)
        ever_changed = ever_changed or changed
        if not found_problems or not (changed or writer_active(files.root)):
            break
        time.sleep(0.25 * (attempt + 1))
    else:
        if ever_changed:
            found_notes.append(f"{SEARCH_FILE} kept changing while verify read it (an ingest is writing it); "
                               "run verify again when the writer has finished")
            found_problems = []
        else:
            found_notes.append(f"a writer holds the index, but {SEARCH_FILE} did not change while verify read it: "
                               "the problem above is not a write in progress")
    problems += found_problems
    notes += found_notes


def _check_search(files: IndexFiles, records: Sequence[ModelRecord], recorded: str | None, problems: list[str],
                  notes: list[str], damaged: set[str] = frozenset()) -> None:
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
    matches = search_matches(files, index, records, damaged)
    try:
        sidecar = read_sidecar(path)
    except IndexError_ as exc:
        problems.append(str(exc))
        return
    if matches and (sidecar["generation"] != files.catalog.generation() or sidecar["ntotal"] != int(index.ntotal)):
        notes.append(f"{SEARCH_META} records generation {sidecar['generation']} ({sidecar['ntotal']} models), not "
                     f"the catalogue's {files.catalog.generation()} (an interrupted write): queries rebuild the "
                     "search index in memory until `gifindex rebuild` rewrites it")
    intact = recorded is not None and recorded == hashlib.sha256(data).hexdigest()
    if matches is None:  # the catalogue disagrees with the shards: only the checksum can be judged
        if not intact:
            problems.append(f"{SEARCH_FILE} differs from its recorded sha256; run `gifindex rebuild` once the "
                            "catalogue is repaired")
        return
    if intact:
        if not matches:
            notes.append(f"{SEARCH_FILE} is behind the catalogue (an interrupted write); it is rebuilt from "
                         "the shards when queried, or now with `gifindex rebuild`")
    elif matches:
        notes.append(f"{SEARCH_FILE} matches the shards but its checksum record was not written (an "
                     "interrupted write); `gifindex rebuild` rewrites both")
    else:
        problems.append(f"{SEARCH_FILE} differs from its recorded sha256 and from the shards (corrupt); run "
                        "`gifindex rebuild`")
