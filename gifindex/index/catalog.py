"""The SQLite catalogue: one row per indexed model, the shards, and the failures of past ingests.

The catalogue is the source of truth for which models are in the index: a shard's rows count only once
the shard is registered here, in the same transaction as its models.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IndexError_
from ..text import printable
from .layout import CATALOG_FILE

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    ref TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL UNIQUE,
    shard TEXT NOT NULL,
    row INTEGER NOT NULL,
    added REAL NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS shards (
    name TEXT PRIMARY KEY,
    rows INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY,
    name TEXT,
    ref TEXT NOT NULL,
    error TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass
class ModelRecord:
    id: int
    name: str
    ref: str
    weights_sha256: str
    shard: str
    row: int
    added: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "ref": self.ref, "weights_sha256": self.weights_sha256,
                "shard": self.shard, "row": self.row, "added": self.added, "metadata": self.metadata}


class CatalogDamaged(IndexError_):
    """The catalogue file is missing, not a catalogue, or fails SQLite's checks: recreate it from the shards."""


def read_only_storage(folder: Path) -> bool:
    """Whether ``folder`` is on a read-only mount or has no write permission bits (a published snapshot)."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return True
        return not (folder.stat().st_mode & 0o222) or not os.access(folder, os.W_OK)
    except OSError:
        return True


class Catalog:
    """Thin typed access to ``catalog.sqlite`` (durable: WAL journal, synchronous=FULL).

    ``readonly``: no schema change and no write from this connection; on read-only storage (a read-only
    mount, or a folder without write permission bits) it is opened ``mode=ro&immutable=1``, so that
    reading creates no file at all. ``create`` makes a new, empty catalogue; without it a
    missing file is an error (never silently an empty catalogue: the shards would look unregistered).
    """

    def __init__(self, path: Path, readonly: bool = False, create: bool = False):
        self.path = path
        self.readonly = readonly
        if not create and not path.is_file():
            raise CatalogDamaged(f"{path} is missing: the index's catalogue was deleted or moved; `gifindex "
                              "rebuild` recreates it from the shards (nothing else was changed)")
        try:
            if readonly:
                self.db = self._connect_readonly(path)
            else:
                self.db = sqlite3.connect(str(path), timeout=60.0, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.executescript(SCHEMA)
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # damaged text decodes as neither
            raise self.damaged(exc) from None
        if not {"models", "shards", "failures", "state"} <= tables:
            raise CatalogDamaged(f"{path} is not a gifindex catalogue (tables: {', '.join(sorted(tables)) or 'none'}); "
                              "`gifindex rebuild` recreates it from the shards")

    @staticmethod
    def _connect_readonly(path: Path) -> sqlite3.Connection:
        """A connection that only reads. On writable storage SQLite still keeps its WAL scratch files (and
        removes them on close), so a reader and a concurrent writer see consistent snapshots; on read-only
        storage the file is opened immutable and nothing at all is written."""
        quoted = urllib.parse.quote(str(path.resolve()))
        wal = path.with_name(path.name + "-wal")
        pending = wal.is_file() and wal.stat().st_size > 0   # commits a writer killed before its checkpoint left
        read_only = read_only_storage(path.parent)
        if not read_only:
            modes = ["mode=rw", "mode=ro&immutable=1"]
        else:   # immutable ignores the WAL: its commits would vanish, so only where there are none
            modes = ["mode=ro"] if pending else ["mode=ro&immutable=1"]
        for number, mode in enumerate(modes):
            db = sqlite3.connect(f"file:{quoted}?{mode}", uri=True, timeout=60.0, isolation_level=None)
            try:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return db
            except sqlite3.OperationalError:  # a WAL catalogue on storage we cannot write: read it as is
                db.close()
                if number < len(modes) - 1:
                    continue
                if pending and read_only:
                    raise IndexError_(f"the catalogue {path} has commits in {wal.name} (a writer stopped before "
                                      "folding them in) that read-only storage cannot read; run any gifindex "
                                      "command on the index where it is writable (`gifindex verify`), then copy or "
                                      "publish it again; nothing was changed") from None
                raise
        raise AssertionError("unreachable")

    def damaged(self, exc: BaseException) -> IndexError_:
        """A catalogue that SQLite cannot use, as one line naming the file and the fix: an I/O problem
        (disk full, read-only, unreadable) or a damaged file."""
        reason = " ".join(str(exc).split())[:160]
        if isinstance(exc, sqlite3.OperationalError):
            return IndexError_(f"cannot open the catalogue {self.path} ({reason}): the disk may be full, over a file "
                               "size limit or read-only, or the file is not a catalogue; free space (or fix the "
                               "permissions) and retry; nothing was changed")
        return CatalogDamaged(f"{self.path} is damaged or not a catalogue ({reason}); `gifindex rebuild` recreates it "
                           "from the shards (the damaged file is kept beside it)")

    def _read(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        try:
            return self.db.execute(sql, args).fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise self.damaged(exc) from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees one state of the catalogue, though a writer commits meanwhile (one read
        transaction: under WAL the first read fixes the snapshot). Checks that compare the shards with the
        models need it: read apart, a commit in between makes a new model's shard look unregistered."""
        if self.db.in_transaction:
            yield
            return
        try:
            self.db.execute("BEGIN")
        except sqlite3.DatabaseError as exc:
            raise self.damaged(exc) from None
        try:
            yield
        finally:
            if self.db.in_transaction:  # nothing was written: ending the read is all that is left
                self.db.execute("ROLLBACK")

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction: committed whole, or rolled back with the error that stopped it (SQLite may
        have rolled back itself on a full disk: a second ROLLBACK's "no transaction is active" must not hide why)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    # ------------------------------------------------------------------------------------------ reads
    @staticmethod
    def _record(row: tuple) -> ModelRecord:
        try:
            metadata = json.loads(row[7] or "{}")
        except (TypeError, ValueError, RecursionError):
            metadata = None
        if not isinstance(metadata, dict) or not isinstance(row[0], int) or not isinstance(row[1], str) \
                or not isinstance(row[5], int):
            raise CatalogDamaged(f"{CATALOG_FILE}: the row of model {row[1]!r} is damaged; `gifindex rebuild` "
                                 "recreates the catalogue from the shards")
        return ModelRecord(id=row[0], name=row[1], ref=row[2], weights_sha256=row[3], shard=row[4], row=row[5],
                           added=row[6], metadata=metadata)

    _COLUMNS = "id, name, ref, weights_sha256, shard, row, added, metadata"

    def models(self) -> list[ModelRecord]:
        return [self._record(r) for r in self._read(f"SELECT {self._COLUMNS} FROM models ORDER BY id")]

    def by_name(self, name: str) -> ModelRecord | None:
        rows = self._read(f"SELECT {self._COLUMNS} FROM models WHERE name = ?", (name,))
        return self._record(rows[0]) if rows else None

    def by_sha(self, sha: str) -> ModelRecord | None:
        rows = self._read(f"SELECT {self._COLUMNS} FROM models WHERE weights_sha256 = ?", (sha,))
        return self._record(rows[0]) if rows else None

    def by_file_sha(self, sha: str) -> ModelRecord | None:
        """The first model ingested from a file with these bytes (``file_sha256`` in its metadata)."""
        rows = self._read(f"SELECT {self._COLUMNS} FROM models WHERE json_extract(metadata, '$.file_sha256') = ? "
                          "ORDER BY id LIMIT 1", (sha,))
        return self._record(rows[0]) if rows else None

    def by_ids(self, ids: list[int]) -> dict[int, ModelRecord]:
        if not ids:
            return {}
        out: dict[int, ModelRecord] = {}
        for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            out.update({r[0]: self._record(r) for r in
                        self._read(f"SELECT {self._COLUMNS} FROM models WHERE id IN ({marks})", chunk)})
        return out

    def ids(self) -> list[int]:
        ids = [r[0] for r in self._read("SELECT id FROM models ORDER BY id")]
        if not all(isinstance(i, int) for i in ids):  # a damaged page can read back as NULL ids
            raise CatalogDamaged(f"{CATALOG_FILE}: model ids are damaged; `gifindex rebuild` recreates the "
                                 "catalogue from the shards")
        return ids

    def count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM models")[0][0])

    def shards(self) -> dict[str, tuple[int, str]]:
        rows = self._read("SELECT name, rows, sha256 FROM shards ORDER BY name")
        return {name: (count, sha) for name, count, sha in rows}

    def failures(self) -> list[dict[str, Any]]:
        rows = self._read("SELECT name, ref, error, time FROM failures ORDER BY id")
        return [{"name": n, "ref": r, "error": e, "time": t} for n, r, e, t in rows]

    def state(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM state WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def generation(self) -> int:
        """A counter bumped by every change to the set of models (to detect a stale search index)."""
        return self._counter("generation")

    def _counter(self, key: str) -> int:
        value = self.state(key)
        return int(value) if value is not None else 0

    # ----------------------------------------------------------------------------------------- writes
    def _bump(self) -> None:
        self._count("generation")

    def _count(self, key: str) -> None:
        """Add one to the counter ``key`` of the state table (inside the caller's write transaction)."""
        self.db.execute("INSERT INTO state(key, value) VALUES(?, '1') ON CONFLICT(key) "
                        "DO UPDATE SET value = CAST(value AS INTEGER) + 1", (key,))

    def register_shard(self, shard: str, sha256: str, entries: list[dict[str, Any]],
                       rows: int | None = None) -> list[int]:
        """Register a complete shard and its models in one transaction; returns the new model ids. An entry
        may name its ``row`` (a shard adopted with only some of its rows live; ``rows``: the shard's total)."""
        now = time.time()
        ids = []
        with self._writing():
            self.db.execute("INSERT INTO shards(name, rows, sha256, added) VALUES(?, ?, ?, ?)",
                            (shard, len(entries) if rows is None else rows, sha256, now))
            for position, entry in enumerate(entries):
                row = entry.get("row", position)
                cursor = self.db.execute(
                    "INSERT INTO models(name, ref, weights_sha256, shard, row, added, metadata) "
                    "VALUES(?, ?, ?, ?, ?, ?, ?)",
                    (entry["name"], entry["ref"], entry["weights_sha256"], shard, row, entry.get("added") or now,
                     json.dumps(entry.get("metadata", {}), sort_keys=True, default=str)))
                ids.append(int(cursor.lastrowid))
            self._bump()
        return ids

    def remove(self, name: str) -> ModelRecord | None:
        record = self.by_name(name)
        if record is None:
            return None
        with self._writing():
            self.db.execute("DELETE FROM models WHERE id = ?", (record.id,))
            self._count("removals")
            self._bump()
        return record

    def removals(self) -> int:
        """How many models were removed through this catalogue (counted since catalogues count them): with none, a
        shard row the catalogue does not hold was lost, not removed, whatever removed.json says or lacks."""
        return self._counter("removals")

    def drop_shard(self, shard: str) -> list[str]:
        """Forget a (corrupt) shard and its models; returns the names that must be re-ingested."""
        names = [r[0] for r in self.db.execute("SELECT name FROM models WHERE shard = ?", (shard,))]
        with self._writing():
            self.db.execute("DELETE FROM models WHERE shard = ?", (shard,))
            self.db.execute("DELETE FROM shards WHERE name = ?", (shard,))
            self._bump()
        return names

    def record_failure(self, name: str | None, ref: str, error: str) -> None:
        """Append to the failure log (never pruned: every failure of every ingest is kept)."""
        self.record_failures([(name, ref, error)])

    def record_failures(self, failures: list[tuple[str | None, str, str]]) -> None:
        """Append several failures in one transaction (one fsync, not one per failure)."""
        now = time.time()
        self._insert_failures([(printable(n) if n is not None else None, printable(r), printable(e), now)
                               for n, r, e in failures])

    def copy_failures(self, other: "Catalog") -> int:
        """Append ``other``'s failure log, times kept (a recreated catalogue keeps a readable old one's log)."""
        rows = [(f["name"], f["ref"], f["error"], f["time"]) for f in other.failures()]
        self._insert_failures(rows)
        return len(rows)

    def _insert_failures(self, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        with self._writing():
            self.db.executemany("INSERT INTO failures(name, ref, error, time) VALUES(?, ?, ?, ?)", rows)

    def set_state(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO state(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
                        (key, value, value))

    def integrity(self) -> str:
        return str(self._read("PRAGMA integrity_check")[0][0])

    def integrity_ok(self) -> None:
        """Raise (naming the file) unless SQLite's quick check passes."""
        result = str(self._read("PRAGMA quick_check")[0][0])
        if result != "ok":
            raise CatalogDamaged(f"{self.path} fails SQLite's integrity check ({' '.join(result.split())[:120]}); "
                              "`gifindex rebuild` recreates it from the shards")
