"""Damage and recovery of an index: every search kind from its first model, verify naming what other commands
refuse (and --repair fixing it), damaged shards, probes and index.json, added times, file modes."""
from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner

from gifindex.cli import main
from gifindex.config import SignatureConfig
from gifindex.index import Index, SearchSpec
from gifindex.manifest import ModelEntry
from gifindex.probes import Probes

CONFIG = SignatureConfig(resolution=16, num_probes=4, steps=2)
LOAD = dict(arch="timm:test_resnet", num_classes=10, input_size=16)
NAMES = [f"m{i:02d}" for i in range(6)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Six tiny test_resnet state dicts: m00..m02 and their near copies m03..m05 (m03 is m00 nudged)."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for i, name in enumerate(NAMES):
        torch.manual_seed(i % 3)
        model = timm.create_model("test_resnet", num_classes=10)
        if i >= 3:
            g = torch.Generator().manual_seed(100 + i)
            with torch.no_grad():
                for p in model.parameters():
                    if p.numel() > 1:
                        p.add_(torch.randn(p.shape, generator=g) * 0.01 * p.std())
        out[name] = root / f"{name}.pt"
        torch.save(model.state_dict(), out[name])
    return out


def _entries(models: dict[str, Path], names) -> list[ModelEntry]:
    return [ModelEntry(ref=str(models[n]), name=n, **LOAD) for n in names]


def _cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def signed(models, tmp_path_factory) -> dict:
    """Each model signed once (SignResults), to commit into several indexes without signing again."""
    with Index.create(tmp_path_factory.mktemp("sign") / "idx", CONFIG) as index:
        return {e.name: index.sign(e) for e in _entries(models, NAMES)}


def _commit(index: Index, signed: dict, names) -> None:
    with index.writer():
        index._commit([signed[n] for n in names])


@pytest.fixture(scope="module")
def built(signed, tmp_path_factory) -> Path:
    """A flat index of the six models in three shards (two models each)."""
    root = tmp_path_factory.mktemp("built") / "idx"
    with Index.create(root, CONFIG) as index:
        for start in range(0, 6, 2):
            _commit(index, signed, NAMES[start:start + 2])
    return root


def _copy(built: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "idx"
    shutil.copytree(built, target)
    return target


# ------------------------------------------------------------------------------------------ 1. search kinds
def test_hnsw_index_takes_its_first_ingest(models, tmp_path):
    root = tmp_path / "h"
    assert _cli("init", "-i", root, "--resolution", "16", "-K", "4", "-T", "2", "--search", "hnsw").exit_code == 0
    result = _cli("ingest", "-i", root, models["m00"], "--arch", "timm:test_resnet", "--num-classes", "10",
                  "--input-size", "16", "--no-progress", "--executor", "inline")
    assert result.exit_code == 0, result.output
    assert json.loads((root / "search.json").read_text())["generation"] == 1
    result = _cli("verify", "-i", root)
    assert result.exit_code == 0 and "note" not in result.output, result.output


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
def test_every_search_kind_works_from_the_first_model(signed, tmp_path, kind):
    root = tmp_path / "idx"
    with Index.create(root, CONFIG, search=SearchSpec(kind)) as index:
        _commit(index, signed, ["m00"])
        assert json.loads((root / "search.json").read_text())["generation"] == index.catalog.generation() == 1
        assert index.verify() == {"ok": True, "models": 1, "shards": 1, "problems": [], "notes": []}
        assert index.nearest("m00", k=3) == []
        _commit(index, signed, NAMES[1:4])
        _commit(index, signed, NAMES[4:])
        kind_now = json.loads((root / "search.json").read_text())["kind"]
        assert kind_now == ("hnsw" if kind == "hnsw" else "flat")  # too few to cluster
        assert index.nearest("m00", k=1)[0].name == "m03"
        assert index.nearest("m05", k=1)[0].name == "m02"
        assert index.verify() == {"ok": True, "models": 6, "shards": 3, "problems": [], "notes": []}
        assert index.rebuild() == 6
        assert index.verify() == {"ok": True, "models": 6, "shards": 3, "problems": [], "notes": []}
        assert index.nearest("m04", k=1)[0].name == "m01"


# ------------------------------------------------------------------------------- 2. what verify must name
def _verify(root: Path, *extra: str):
    result = _cli("verify", "-i", root, *extra)
    return result.exit_code, result.output


def _names(root: Path) -> list[str]:
    with Index.open(root) as index:
        return sorted(r.name for r in index.records())


def _sql(root: Path, *statements: str) -> None:
    db = sqlite3.connect(root / "catalog.sqlite")
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


def test_damaged_removed_list_is_named_and_rewritten_from_the_catalogue(built, tmp_path):
    root = _copy(built, tmp_path)
    with Index.open(root) as index:
        index.remove("m02")
    (root / "removed.json").write_text("{garbage")
    code, out = _verify(root)
    assert code == 1 and "removed.json is damaged" in out and "verify --repair" in out, out
    code, out = _verify(root, "--repair")
    assert code == 0 and "problem" not in out, out
    assert list(root.glob("removed.json.damaged-*"))
    assert [(t["shard"], t["row"], t["name"]) for t in json.loads((root / "removed.json").read_text())] == \
        [(r.shard, r.row, "m02") for r in [Index.open(built).catalog.by_name("m02")]]
    (root / "catalog.sqlite").unlink()  # the rewritten list still keeps the removed model out
    assert _cli("rebuild", "-i", root).exit_code == 0
    assert _names(root) == ["m00", "m01", "m03", "m04", "m05"]


def test_a_lost_removed_list_is_rewritten_so_removed_models_stay_removed(built, tmp_path, monkeypatch):
    """removed.json gone (by hand, or a repair killed between moving the damaged file aside and writing the new one)
    read as 'nothing removed': verify said the catalogue lost the removed model and --repair brought it back."""
    root = _copy(built, tmp_path)
    with Index.open(root) as index:
        index.remove("m02")
    (root / "removed.json").unlink()
    code, out = _verify(root)
    assert code == 1 and "removed.json is missing" in out and "'m02'" in out and "keeping them removed" in out, out
    code, out = _verify(root, "--repair")
    assert code == 0 and "problem" not in out, out
    assert _names(root) == ["m00", "m01", "m03", "m04", "m05"]
    assert [t["name"] for t in json.loads((root / "removed.json").read_text())] == ["m02"]

    (root / "removed.json").write_text("{garbage")                  # a repair cut short after copying it aside
    import gifindex.index.maintenance as maintenance

    def cut(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(maintenance, "atomic_write_text", cut)
    with pytest.raises(KeyboardInterrupt), Index.open(root) as index:
        index.repair()
    assert (root / "removed.json").read_text() == "{garbage"       # never none: the damaged file stays in place
    monkeypatch.undo()
    assert _verify(root, "--repair")[0] == 0 and _names(root) == ["m00", "m01", "m03", "m04", "m05"]


def test_an_interrupted_remove_is_named_and_settled_so_a_recreated_catalogue_keeps_the_model(built, tmp_path):
    """remove killed after removed.json was written and before the catalogue: the model is live, listed as
    removed. verify said ok and a recreated catalogue then lost the model."""
    root = _copy(built, tmp_path)
    with Index.open(root) as index:
        record = index.catalog.by_name("m02")
    (root / "removed.json").write_text(json.dumps([{"shard": record.shard, "row": record.row, "name": "m02"}]))
    code, out = _verify(root)
    assert code == 1 and "lists 'm02' as removed, but the catalogue still holds" in out, out
    code, out = _verify(root, "--repair")
    assert code == 0 and "problem" not in out, out
    assert json.loads((root / "removed.json").read_text()) == []
    (root / "catalog.sqlite").unlink()
    assert _cli("rebuild", "-i", root).exit_code == 0 and "m02" in _names(root)
    with Index.open(root) as index:   # remove again: listed once
        index.remove("m02")
    assert [t["name"] for t in json.loads((root / "removed.json").read_text())] == ["m02"]


def test_a_damaged_search_file_is_named_though_a_dead_writer_left_its_pid(built, tmp_path):
    """A pid file left by a killed writer (its pid reused by a live process) made verify call a corrupt
    search.faiss 'a writer is writing it' and pass."""
    root = _copy(built, tmp_path)
    (root / "search.faiss").write_bytes((root / "search.faiss").read_bytes()[:40])
    (root / ".lock.owner").write_text(str(os.getpid()))       # alive, but holds no lock
    code, out = _verify(root)
    assert code == 1 and "search.faiss" in out and "kept changing" not in out, out


def test_swapped_catalogue_names_are_named_and_repaired_from_the_shards(built, tmp_path):
    root = _copy(built, tmp_path)
    _sql(root, "UPDATE models SET name = 'tmp' WHERE name = 'm01'", "UPDATE models SET name = 'm01' WHERE name = 'm04'",
         "UPDATE models SET name = 'm04' WHERE name = 'tmp'", "INSERT INTO failures(name, ref, error, time) "
         "VALUES('x', 'x.pt', 'boom', 5.0)")
    result = _cli("nearest", "-i", root, "m04")
    assert result.exit_code == 1 and "verify --repair" in result.output, result.output
    code, out = _verify(root)
    assert code == 1 and "disagrees with the shards" in out and "'m04' (the row holds 'm01')" in out, out
    code, out = _verify(root, "--repair")
    assert code == 0 and "problem" not in out, out
    assert list(root.glob("catalog.sqlite.damaged-*"))  # the old catalogue is kept
    with Index.open(root) as index:
        assert index.nearest("m04", k=1)[0].name == "m01" and index.nearest("m03", k=1)[0].name == "m00"
        assert index.catalog.failures() == [{"name": "x", "ref": "x.pt", "error": "boom", "time": 5.0}]


def test_deleted_catalogue_row_is_named_and_repair_brings_it_back(built, tmp_path):
    root = _copy(built, tmp_path)
    _sql(root, "DELETE FROM models WHERE name = 'm03'")
    code, out = _verify(root)
    assert code == 1 and "lost" in out and "'m03'" in out and "verify --repair" in out, out
    code, out = _verify(root, "--repair")
    assert code == 0, out
    assert _names(root) == NAMES
    with Index.open(root) as index:  # a removed model is not a lost one
        index.remove("m05")
        assert index.verify()["ok"]


def test_damaged_search_sidecar_is_named(built, tmp_path):
    root = _copy(built, tmp_path)
    (root / "search.json").write_text("{garbage")
    code, out = _verify(root)
    assert code == 1 and "search.json" in out and "gifindex rebuild" in out, out
    assert _cli("rebuild", "-i", root).exit_code == 0
    code, out = _verify(root)
    assert code == 0 and "note" not in out, out


# ----------------------------------------------------------------------------------- 3. a damaged shard
def test_damaged_shard_says_how_to_recover_and_info_still_shows_the_index(built, tmp_path):
    root = _copy(built, tmp_path)
    with Index.open(root) as index:
        shard = index.catalog.by_name("m03").shard
    path = root / "shards" / shard
    os.truncate(path, 3000)
    for args in (["nearest", "-i", root, "m03"], ["matrix", "-i", root]):
        result = _cli(*args)
        assert result.exit_code == 1 and "verify --repair" in result.output, result.output
        assert "gifindex rebuild` saves it" not in result.output, result.output
    result = _cli("info", "-i", root)  # search.faiss is sound: info needs no shard
    assert result.exit_code == 0 and "models      6 in 3 shard(s)" in result.output, result.output
    (root / "search.faiss").rename(tmp_path / "search.faiss")  # now it must be rebuilt from the shards
    result = _cli("info", "-i", root)
    assert result.exit_code == 0 and "models      6 in 3 shard(s)" in result.output, result.output
    assert "unavailable" in result.output and "verify --repair" in result.output, result.output
    assert "gifindex rebuild` saves it" not in result.output, result.output
    (tmp_path / "search.faiss").rename(root / "search.faiss")
    code, out = _verify(root)
    assert code == 1 and shard in out and "behind" not in out and "note" not in out, out
    code, out = _verify(root, "--repair")
    assert code == 0 and "re-ingest: m02, m03" in out, out
    assert _names(root) == ["m00", "m01", "m04", "m05"]


# --------------------------------------------------------------------------------- 4. probes, index.json
def test_lost_probes_are_redrawn_only_when_identical_to_the_recorded_ones(built, tmp_path):
    root = _copy(built, tmp_path)
    original = (root / "probes.npz").read_bytes()
    (root / "probes.npz").write_bytes(original[:100])
    with Index.open(root) as index:  # the configuration draws exactly the recorded probes (sha256 checked)
        assert index.nearest("m03", k=1)[0].name == "m00"
    code, out = _verify(root)
    assert code == 1 and "probes.npz is missing or altered" in out and "verify --repair" in out, out
    code, out = _verify(root, "--repair")
    assert code == 0 and "problem" not in out, out
    assert (root / "probes.npz").read_bytes() == original
    # index.json recording other probes: the file is sound, index.json is what changed
    meta = json.loads((root / "index.json").read_text())
    (root / "index.json").write_text(json.dumps({**meta, "probes_sha256": "0" * 64}))
    result = _cli("list", "-i", root)
    assert result.exit_code == 1 and "index.json was edited; restore it from a backup" in result.output, result.output
    (root / "index.json").write_text(json.dumps(meta))
    # probes the configuration does not draw (given at init): lost, they can only be restored
    with Index.open(root) as index:
        drawn = index.probes
    Index.create(tmp_path / "own", CONFIG, probes=Probes(drawn.images.flip(-1).contiguous(), drawn.baseline)).close()
    (tmp_path / "own" / "probes.npz").unlink()
    result = _cli("list", "-i", tmp_path / "own")
    assert result.exit_code == 1 and "restore it from a backup" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------- 5. added times kept
def test_recreated_catalogue_keeps_each_models_added_time(built, tmp_path):
    root = _copy(built, tmp_path)
    with Index.open(root) as index:
        before = {r.name: r.added for r in index.records()}
    assert len(set(before.values())) == 3  # one time per commit
    (root / "catalog.sqlite").unlink()
    assert _cli("rebuild", "-i", root).exit_code == 0
    with Index.open(root) as index:
        assert {r.name: r.added for r in index.records()} == before


# -------------------------------------------------------------------------------------------- 6. file modes
def test_written_files_follow_the_umask(signed, tmp_path):
    old = os.umask(0o022)
    try:
        root = tmp_path / "idx"
        with Index.create(root, CONFIG) as index:
            _commit(index, signed, NAMES[:3])
        assert stat.S_IMODE(root.stat().st_mode) == 0o755
        for path in [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        out = tmp_path / "m.csv"
        assert _cli("matrix", "-i", root, "-o", out).exit_code == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        os.umask(0o077)
        out.unlink()
        assert _cli("matrix", "-i", root, "-o", out).exit_code == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_full_disk_during_a_catalogue_commit_is_named_not_hidden_by_the_rollback(tmp_path):
    """SQLite rolls back by itself on a full disk; the second ROLLBACK's 'no transaction is active' used to
    replace the real reason in the error."""
    import sqlite3 as sql

    from gifindex.index.catalog import Catalog

    catalog = Catalog(tmp_path / "catalog.sqlite", create=True)

    class FullDisk:
        def __init__(self, db):
            self.db = db

        def __getattr__(self, name):
            return getattr(self.db, name)

        def execute(self, statement, *args):
            if statement.startswith("INSERT INTO models"):
                self.db.execute("ROLLBACK")                 # what SQLite does on SQLITE_FULL
                raise sql.OperationalError("database or disk is full")
            return self.db.execute(statement, *args)

    catalog.db = FullDisk(catalog.db)
    with pytest.raises(sql.OperationalError, match="database or disk is full"):
        catalog.register_shard("s.h5", "0" * 64, [{"name": "m", "ref": "r", "weights_sha256": "x"}])
    catalog.db = catalog.db.db
    assert not catalog.shards() and catalog.by_name("m") is None   # nothing half-written


def test_a_writer_is_not_refused_for_a_readers_instant_look_at_the_lock(tmp_path, monkeypatch):
    """verify's writer_active takes the lock for an instant; a writer starting then (--wait 0) was refused, 1 in 4
    under a loop of looks. 'At once' waits WriterLock.GRACE first (here long, so the test does not race a clock)."""
    import threading

    from filelock import FileLock

    from gifindex.index.lock import WriterLock, writer_active

    monkeypatch.setattr(WriterLock, "GRACE", 30.0)
    look = FileLock(str(tmp_path / ".lock"), thread_local=False)   # released by the timer's thread
    look.acquire()                                   # what writer_active holds while it looks
    threading.Timer(0.05, look.release).start()
    with WriterLock(tmp_path, wait=0):
        assert (tmp_path / ".lock.owner").read_text() == str(os.getpid())
    assert not writer_active(tmp_path)


def test_remove_on_a_full_disk_is_whole_or_says_what_it_did(built, tmp_path, monkeypatch):
    """A full disk at the catalogue's commit left removed.json listing a live model and printed a raw sqlite error;
    one while rewriting search.faiss said 'every committed model is kept' of a model that was removed."""
    import sqlite3

    import gifindex.index.catalog as catalog_module
    import gifindex.index.files as files_module
    from gifindex.errors import IndexError_

    root = _copy(built, tmp_path)
    before = (root / "removed.json").read_text() if (root / "removed.json").exists() else None

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(catalog_module.Catalog, "remove", full)
    with Index.open(root) as index, pytest.raises(IndexError_, match=r"cannot write catalog.sqlite \(disk full.*"
                                                                     r"nothing was removed"):
        index.remove("m02")
    monkeypatch.undo()
    assert ((root / "removed.json").read_text() if (root / "removed.json").exists() else None) in (before, "[]")
    assert "m02" in _names(root) and _verify(root)[0] == 0

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(files_module, "save_index", no_room)
    with Index.open(root) as index, pytest.raises(IndexError_, match="'m02' is removed all the same"):
        index.remove("m02")
    monkeypatch.undo()
    assert "m02" not in _names(root)
    with Index.open(root) as index:     # the stale search file is not answered from
        assert "m02" not in [hit.name for hit in index.nearest("m00", k=6)]
    assert _cli("rebuild", "-i", root).exit_code == 0 and _verify(root)[0] == 0


def test_a_read_only_copy_reads_commits_still_in_the_write_ahead_log(built, tmp_path):
    """A writer killed after a commit leaves it in catalog.sqlite-wal; a read-only copy opened the catalogue
    immutable, which ignores that file: committed changes vanished there, and verify said ok."""
    import shutil

    root = _copy(built, tmp_path)
    writer = sqlite3.connect(root / "catalog.sqlite", isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("UPDATE models SET name = 'renamed' WHERE name = 'm05'")   # committed, not yet checkpointed
    assert (root / "catalog.sqlite-wal").stat().st_size > 0
    published = tmp_path / "published"
    shutil.copytree(root, published)                   # as a killed writer left it: the -wal beside the catalogue
    writer.close()
    for path in [published, *published.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        assert "renamed" in _names(published) and "m05" not in _names(published)
    finally:
        for path in [published, *published.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def test_a_deleted_index_file_is_named_as_such(built, tmp_path):
    """Every command said 'no gifindex index here; create one with gifindex init' of a folder holding one."""
    root = _copy(built, tmp_path)
    (root / "index.json").unlink()
    for args in (["verify", "-i", root], ["list", "-i", root], ["nearest", "-i", root, "m00"]):
        result = _cli(*args)
        assert result.exit_code == 1 and "holds an index" in result.output and "index.json is missing" in \
            result.output and "restore it from a backup" in result.output, (args, result.output)
    assert "create one with" in _cli("list", "-i", tmp_path / "empty").output


def test_a_full_disk_does_not_stop_a_writer_at_its_pid_file(built, tmp_path, monkeypatch):
    """Every writing command failed on a full disk with a bare 'OSError: No space left on device' from the pid
    file beside the lock (which only names the holder), and the Python API kept the lock."""
    root = _copy(built, tmp_path)
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == ".lock.owner":
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", full)
    assert _cli("rebuild", "-i", root).exit_code == 0
    with Index.open(root) as index:
        index.remove("m05")
    monkeypatch.undo()
    assert "m05" not in _names(root) and _verify(root)[0] == 0
