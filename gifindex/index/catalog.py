"""The SQLite catalogue: one row per indexed model, the shards, and the failures of past ingests.

The catalogue is the source of truth for which models are in the index: a shard's rows count only once
the shard is registered here, in the same transaction as its models.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IndexError_

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


class Catalog:
    """Thin typed access to ``catalog.sqlite`` (durable: WAL journal, synchronous=FULL)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.db = sqlite3.connect(str(path), timeout=60.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise IndexError_(f"cannot open the catalogue {path} ({exc}): the disk may be full, over a file size "
                              "limit or read-only, or the file is not a catalogue; free space (or fix the "
                              "permissions) and retry; nothing was changed") from None

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------------------------------ reads
    @staticmethod
    def _record(row: tuple) -> ModelRecord:
        return ModelRecord(id=row[0], name=row[1], ref=row[2], weights_sha256=row[3], shard=row[4], row=row[5],
                           added=row[6], metadata=json.loads(row[7] or "{}"))

    _COLUMNS = "id, name, ref, weights_sha256, shard, row, added, metadata"

    def models(self) -> list[ModelRecord]:
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM models ORDER BY id").fetchall()
        return [self._record(r) for r in rows]

    def by_name(self, name: str) -> ModelRecord | None:
        row = self.db.execute(f"SELECT {self._COLUMNS} FROM models WHERE name = ?", (name,)).fetchone()
        return self._record(row) if row else None

    def by_sha(self, sha: str) -> ModelRecord | None:
        row = self.db.execute(f"SELECT {self._COLUMNS} FROM models WHERE weights_sha256 = ?", (sha,)).fetchone()
        return self._record(row) if row else None

    def by_ids(self, ids: list[int]) -> dict[int, ModelRecord]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM models WHERE id IN ({marks})", ids).fetchall()
        return {r[0]: self._record(r) for r in rows}

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM models").fetchone()[0])

    def shards(self) -> dict[str, tuple[int, str]]:
        return {name: (rows, sha) for name, rows, sha in
                self.db.execute("SELECT name, rows, sha256 FROM shards ORDER BY name")}

    def failures(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT name, ref, error, time FROM failures ORDER BY id").fetchall()
        return [{"name": n, "ref": r, "error": e, "time": t} for n, r, e, t in rows]

    def generation(self) -> int:
        """A counter bumped by every change to the set of models (to detect a stale search index)."""
        row = self.db.execute("SELECT value FROM state WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    # ----------------------------------------------------------------------------------------- writes
    def _bump(self) -> None:
        self.db.execute("INSERT INTO state(key, value) VALUES('generation', '1') ON CONFLICT(key) "
                        "DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    def register_shard(self, shard: str, sha256: str, entries: list[dict[str, Any]]) -> list[int]:
        """Register a complete shard and its models in one transaction; returns the new model ids."""
        now = time.time()
        ids = []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("INSERT INTO shards(name, rows, sha256, added) VALUES(?, ?, ?, ?)",
                            (shard, len(entries), sha256, now))
            for row, entry in enumerate(entries):
                cursor = self.db.execute(
                    "INSERT INTO models(name, ref, weights_sha256, shard, row, added, metadata) "
                    "VALUES(?, ?, ?, ?, ?, ?, ?)",
                    (entry["name"], entry["ref"], entry["weights_sha256"], shard, row, now,
                     json.dumps(entry.get("metadata", {}), sort_keys=True, default=str)))
                ids.append(int(cursor.lastrowid))
                self.db.execute("DELETE FROM failures WHERE name = ? OR ref = ?", (entry["name"], entry["ref"]))
            self._bump()
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return ids

    def remove(self, name: str) -> ModelRecord | None:
        record = self.by_name(name)
        if record is None:
            return None
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("DELETE FROM models WHERE id = ?", (record.id,))
        self._bump()
        self.db.execute("COMMIT")
        return record

    def drop_shard(self, shard: str) -> list[str]:
        """Forget a (corrupt) shard and its models; returns the names that must be re-ingested."""
        names = [r[0] for r in self.db.execute("SELECT name FROM models WHERE shard = ?", (shard,))]
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("DELETE FROM models WHERE shard = ?", (shard,))
        self.db.execute("DELETE FROM shards WHERE name = ?", (shard,))
        self._bump()
        self.db.execute("COMMIT")
        return names

    def record_failure(self, name: str | None, ref: str, error: str) -> None:
        self.db.execute("INSERT INTO failures(name, ref, error, time) VALUES(?, ?, ?, ?)",
                        (name, ref, error, time.time()))

    def integrity(self) -> str:
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])
