"""Faults survived, with real processes killed by SIGKILL (issue 5).

A zygote process (tests/fault_worker.py) imports gifindex once and forks one real child per operation, so
20+ kill trials fit in the test budget; the children are killed with SIGKILL at random moments.
"""
from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from gifindex.config import SignatureConfig
from gifindex.executors import InlineExecutor
from gifindex.index import Index
from gifindex.index.search import load_index
from gifindex.manifest import ModelEntry

HERE = Path(__file__).parent
CONFIG = SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=16, seed=5)
N_MODELS = 6
KILL_TRIALS = int(os.environ.get("GIFINDEX_KILL_TRIALS", "22"))


class Zygote:
    def __init__(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fault_worker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self._line() == "ready"

    def _line(self) -> str:
        line = self.proc.stdout.readline().strip()
        assert line, "fault worker died"
        return line

    def start(self, **cmd) -> int:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        kind, pid = self._line().split()
        assert kind == "pid"
        return int(pid)

    def wait(self) -> int:
        kind, _, code = self._line().split()
        assert kind == "done"
        return int(code)

    def reap(self, pid: int) -> int:
        self.proc.stdin.write(json.dumps({"op": "wait", "pid": pid}) + "\n")
        self.proc.stdin.flush()
        return self.wait()

    def run(self, **cmd) -> int:
        self.start(**cmd)
        return self.wait()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faultzoo")
    lines = []
    for i in range(N_MODELS):
        torch.manual_seed(100 + i)
        torch.save(timm.create_model("test_resnet", num_classes=4).state_dict(), root / f"m{i}.pt")
        lines += [f"- name: m{i}", f"  ref: m{i}.pt", "  arch: timm:test_resnet", "  num_classes: 4",
                  "  input_size: 16"]
    (root / "bad.pt").write_bytes(b"<html><body>404 Not Found</body></html>")  # a failure, recorded
    lines += ["- name: bad", "  ref: bad.pt"]
    (root / "zoo.yaml").write_text("\n".join(lines) + "\n")
    return root


def _state(root: Path) -> dict[str, tuple[str, bytes]]:
    with Index.open(root) as index:
        records, vectors = index.vectors()
        names = [r.name for r in records]
        assert len(names) == len(set(names)) == index.search_index().ntotal
        return {r.name: (r.weights_sha256, v.astype(np.float16).tobytes()) for r, v in zip(records, vectors)}


def _verify_ok(root: Path) -> dict:
    with Index.open(root) as index:
        report = index.verify()
    assert report["ok"], report["problems"]
    return report


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(zoo, zygote, tmp_path_factory) -> tuple[dict, float]:
    """An uninterrupted run (in a forked child like every trial) and how long its ingest took."""
    root = tmp_path_factory.mktemp("ref") / "idx"
    Index.create(root, CONFIG).close()
    started = time.monotonic()
    assert zygote.run(op="ingest", index=str(root), manifest=str(zoo / "zoo.yaml")) == 0
    elapsed = time.monotonic() - started
    state = _state(root)
    assert sorted(state) == [f"m{i}" for i in range(N_MODELS)]
    _verify_ok(root)
    return state, elapsed


@pytest.mark.slow
def test_killed_at_random_moments_during_ingest(zoo, zygote, reference, tmp_path):
    ref_state, elapsed = reference
    rng = random.Random(1234)
    committed_counts = []
    for trial in range(KILL_TRIALS):
        root = tmp_path / f"t{trial}"
        Index.create(root, CONFIG).close()
        pid = zygote.start(op="ingest", index=str(root), manifest=str(zoo / "zoo.yaml"))
        time.sleep(rng.uniform(0.0, elapsed))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        code = zygote.wait()
        # the index opens and verifies; what was committed is there exactly once, bit-identical
        _verify_ok(root)
        partial = _state(root)
        committed_counts.append((code, len(partial)))
        for name, value in partial.items():
            assert value == ref_state[name], f"trial {trial}: {name} differs from the uninterrupted run"
        # rerunning the same ingest finishes the rest: identical to the uninterrupted run
        assert zygote.run(op="ingest", index=str(root), manifest=str(zoo / "zoo.yaml")) == 0
        assert _state(root) == ref_state
        report = _verify_ok(root)
        assert not any("tmp" in n or "not registered" in n for n in report["notes"]), report["notes"]
    killed_mid = [n for code, n in committed_counts if code == -signal.SIGKILL]
    # the kills really landed during ingests (not all before or after)
    assert len(killed_mid) >= KILL_TRIALS // 2, committed_counts
    assert any(0 < n < N_MODELS for n in killed_mid), committed_counts


def test_killed_while_rebuild_writes_search_index(zoo, zygote, reference, tmp_path):
    root = tmp_path / "idx"
    Index.create(root, CONFIG).close()
    assert zygote.run(op="ingest", index=str(root), manifest=str(zoo / "zoo.yaml")) == 0
    before = (root / "search.faiss").read_bytes()
    ready = tmp_path / "ready"
    pid = zygote.start(op="rebuild_hang", index=str(root), ready=str(ready))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    assert zygote.wait() == -signal.SIGKILL
    assert (root / "search.faiss").read_bytes() == before  # the old one, complete and readable
    index, _ = load_index(root / "search.faiss")
    assert index.ntotal == N_MODELS
    report = _verify_ok(root)
    assert any("temporary file left by an interrupted write" in n for n in report["notes"])
    with Index.open(root) as idx:
        assert [n.name for n in idx.nearest("m0", k=2)]
        assert idx.rebuild() == N_MODELS
    assert not list(root.glob(".*.tmp"))
    assert _state(root) == reference[0]


@pytest.mark.slow
def test_command_line_killed_at_random_moments_during_remove_rebuild_and_repair(zoo, zygote, reference, tmp_path):
    """`remove`, `rebuild` and `verify --repair` run as the command line does and SIGKILLed at random moments: every
    model but the one removed is kept bit-identical; the removed one is there or gone, never half; the index verifies,
    or verify names what the kill left and `verify --repair` settles it."""
    ref_state, _ = reference
    base = tmp_path / "base"
    Index.create(base, CONFIG).close()
    assert zygote.run(op="ingest", index=str(base), manifest=str(zoo / "zoo.yaml")) == 0
    rng = random.Random(99)
    commands = {"remove": ["remove", "m3"], "rebuild": ["rebuild"], "repair": ["verify", "--repair"]}

    def cli(args: list[str], root: Path, tag: str) -> dict:
        return dict(op="cli", args=[args[0], "-i", str(root), *args[1:]], stdout=str(tmp_path / f"{tag}.out"),
                    stderr=str(tmp_path / f"{tag}.err"))

    for label, args in commands.items():
        timing = tmp_path / f"{label}-timing"
        shutil.copytree(base, timing)
        started = time.monotonic()
        assert zygote.run(**cli(args, timing, label)) == 0
        elapsed = time.monotonic() - started
        killed = 0
        for trial in range(max(4, KILL_TRIALS // 2)):
            root = tmp_path / f"{label}{trial}"
            shutil.copytree(base, root)
            if label == "repair":
                (root / "search.faiss").unlink()   # work for the repair to do
            pid = zygote.start(**cli(args, root, f"{label}{trial}"))
            time.sleep(rng.uniform(0.0, elapsed))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed += zygote.wait() == -signal.SIGKILL
            with Index.open(root) as index:
                report = index.verify()
            if not report["ok"]:
                assert zygote.run(**cli(["verify", "--repair"], root, f"{label}{trial}-repair")) == 0, report
                _verify_ok(root)
            state = _state(root)
            assert set(ref_state) - set(state) <= ({"m3"} if label == "remove" else set()), (label, trial)
            assert all(state[name] == ref_state[name] for name in state), (label, trial)
        assert killed >= 2, (label, killed)   # the kills landed while the command ran, not only after it


def test_second_writer_refused_or_waits_and_stale_lock_recovered(zoo, zygote, reference, tmp_path):
    root = tmp_path / "idx"
    Index.create(root, CONFIG).close()
    ready = tmp_path / "ready"
    holder = zygote.start(op="hold_lock", index=str(root), ready=str(ready), background=True)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # it is a kernel (flock) lock: another open file description cannot take it while the holder lives
    fd = os.open(root / ".lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    before = _snapshot(root)
    # a second ingest process refuses at once, naming the holder and the fix; nothing written
    out, err = tmp_path / "out", tmp_path / "err"
    code = zygote.run(op="cli", stdout=str(out), stderr=str(err),
                      args=["ingest", "-i", str(root), "--manifest", str(zoo / "zoo.yaml"), "--executor", "inline",
                            "--no-progress"])
    assert code == 1
    assert err.read_text() == (f"error: the index at {root} is being written by another process (pid {holder}); "
                               "wait for it to finish, or pass --wait SECONDS\n")
    assert _snapshot(root) == before
    # with --wait, a second ingest waits; the holder is SIGKILLed: its lock is released by the kernel
    waiter = zygote.start(op="cli", stdout=str(out), stderr=str(err), background=True,
                          args=["ingest", "-i", str(root), "--manifest", str(zoo / "zoo.yaml"), "--executor",
                                "inline", "--no-progress", "--wait", "120"])
    time.sleep(1.0)
    assert not (root / "shards").glob("*.h5").__next__ if False else True
    assert not list((root / "shards").glob("*.h5"))  # still waiting
    assert (root / ".lock.owner").read_text() == str(holder)
    os.kill(holder, signal.SIGKILL)
    assert zygote.reap(holder) == -signal.SIGKILL
    assert zygote.reap(waiter) == 1  # 1: the zoo's bad.pt failed (recorded); every good model added
    assert "6 added, 0 skipped, 1 failed" in out.read_text()
    assert _state(root) == reference[0]
    _verify_ok(root)
    # a stale lock file left by a killed holder (owner pid of a dead process) does not block anyone
    holder = zygote.start(op="hold_lock", index=str(root), ready=str(ready), background=True)
    ready.unlink()
    while not (root / ".lock.owner").exists() or (root / ".lock.owner").read_text() != str(holder):
        time.sleep(0.05)
    os.kill(holder, signal.SIGKILL)
    zygote.reap(holder)
    assert (root / ".lock.owner").read_text() == str(holder)  # stale: left behind by the dead process
    fd = os.open(root / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: the kernel released it
    os.close(fd)
    with Index.open(root) as index:
        assert index.rebuild() == N_MODELS  # takes the lock at once (wait=0)


@pytest.mark.parametrize("fsize, expected", [
    (4096, "error: cannot open the catalogue "),   # SQLite cannot even make its shared-memory file
    (48000, "error: cannot write shard "),          # the catalogue works; the 64 KB shard does not fit
])
def test_disk_full_clear_error_previous_files_intact(zoo, zygote, tmp_path, fsize, expected):
    from gifindex.manifest import read_manifest

    root = tmp_path / "idx"
    Index.create(root, CONFIG.replace(proj_dim=8192)).close()  # 64 KB signatures: bigger than the limit
    manifest = tmp_path / "one.yaml"
    manifest.write_text(f"- {{name: m0, ref: {zoo / 'm0.pt'}, arch: 'timm:test_resnet', num_classes: 4, "
                        "input_size: 16}\n")
    before = _snapshot(root)
    out, err = tmp_path / "out", tmp_path / "err"
    code = zygote.run(op="cli", stdout=str(out), stderr=str(err), fsize=fsize,
                      args=["ingest", "-i", str(root), "--manifest", str(manifest), "--executor", "inline",
                            "--no-progress"])
    text = err.read_text()
    assert code == 1, text
    assert "Traceback" not in text and "Exception ignored" not in text, text
    message = text.splitlines()[-1]  # (an "added m0" progress line may come first)
    assert message.startswith(expected), text
    assert "disk may be full" in message or "disk full or over a file size limit" in message
    assert "nothing was changed" in message or "models committed before are kept; free space and rerun" in message
    transient = ("catalog.sqlite-wal", "catalog.sqlite-shm")  # SQLite's own scratch files, empty here
    assert {k: v for k, v in _snapshot(root).items() if k not in transient} == before  # byte-identical
    _verify_ok(root)
    with Index.open(root) as index:
        assert len(index) == 0
        assert index.ingest(read_manifest(manifest)).to_dict()["added"] == 1


def test_flipped_bits_found_search_rebuilt_shard_quarantined(zoo, zygote, reference, tmp_path):
    from click.testing import CliRunner

    from gifindex.cli import main

    root = tmp_path / "idx"
    Index.create(root, CONFIG).close()
    assert zygote.run(op="ingest", index=str(root), manifest=str(zoo / "zoo.yaml"), commit_every=3) == 0
    _verify_ok(root)
    runner = CliRunner()
    # 1. a flipped bit in search.faiss: verify names it (and only it); rebuild repairs it
    faiss_path = root / "search.faiss"
    good = faiss_path.read_bytes()
    data = bytearray(good)
    data[len(data) - 40] ^= 0x10
    faiss_path.write_bytes(bytes(data))
    result = runner.invoke(main, ["verify", "-i", str(root)])
    assert result.exit_code == 1
    problems = [l for l in result.output.splitlines() if "problem:" in l]
    assert len(problems) == 1 and "search.faiss" in problems[0] and "rebuild" in problems[0], result.output
    assert runner.invoke(main, ["rebuild", "-i", str(root)]).exit_code == 0
    assert runner.invoke(main, ["verify", "-i", str(root)]).exit_code == 0
    # 2. a flipped bit in one shard: verify names exactly that shard and its models
    with Index.open(root) as index:
        shards = sorted(index.catalog.shards())
        victim = shards[0]
        victims = sorted(r.name for r in index.records() if r.shard == victim)
    assert len(shards) == 2 and victims
    path = root / "shards" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = runner.invoke(main, ["verify", "-i", str(root)])
    assert result.exit_code == 1
    problems = [l for l in result.output.splitlines() if "problem:" in l]
    assert len(problems) == 1 and victim in problems[0] and shards[1] not in problems[0]
    assert all(repr(n) in problems[0] for n in victims) and "verify --repair" in problems[0]
    result = runner.invoke(main, ["rebuild", "-i", str(root)])  # refuses to build from a corrupt shard
    assert result.exit_code == 1 and f"shard {victim} is corrupt" in result.output
    # 3. verify --repair quarantines it and names the models to re-ingest
    result = runner.invoke(main, ["verify", "-i", str(root), "--repair"])
    assert result.exit_code == 0, result.output
    assert f"quarantined shard {victim}" in result.output
    assert f"re-ingest: {', '.join(victims)}" in result.output
    assert (root / "shards" / "quarantine" / victim).read_bytes() == bytes(data)
    with Index.open(root) as index:
        assert sorted(r.name for r in index.records()) == sorted(set(reference[0]) - set(victims))
    # 4. re-ingesting restores exactly the uninterrupted result
    assert zygote.run(op="ingest", index=str(root), manifest=str(zoo / "zoo.yaml")) == 0
    assert _state(root) == reference[0]


# ---------------------------------------------------------------------------------------------------------------
# Issue 11: nothing lost, nothing silently wrong. Each test below fails on the code before that issue.
@pytest.fixture(scope="module")
def built(zoo, zygote, tmp_path_factory) -> Path:
    """An index of the zoo's six models in three shards (copied by each test that changes it)."""
    root = tmp_path_factory.mktemp("built") / "idx"
    Index.create(root, CONFIG).close()
    assert zygote.run(op="ingest", index=str(root), manifest=str(zoo / "zoo.yaml"), commit_every=2) == 0
    return root


def _copy(built: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "idx"
    shutil.copytree(built, target)
    return target


def _cli(*args):
    from click.testing import CliRunner

    from gifindex.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "Traceback" not in text, text
    return result.exit_code, text


def _shard_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "shards").rglob("*.h5"))}


def test_deleted_catalogue_is_an_error_keeps_every_shard_and_rebuild_recreates_it(built, zoo, tmp_path):
    root = _copy(built, tmp_path)
    Index.open(root).remove("m5")  # a removed model must not come back from its shard row
    before, shards = _state(root), _shard_bytes(root)
    for path in root.glob("catalog.sqlite*"):
        path.unlink()
    code, text = _cli("verify", "-i", root)
    assert code == 1 and "catalog.sqlite is missing" in text and "gifindex rebuild" in text, text
    for args in (["list"], ["nearest", "m0"], ["ingest", "--executor", "inline", "--no-progress",
                                               "--manifest", zoo / "zoo.yaml"]):
        code, text = _cli(args[0], "-i", root, *args[1:])
        assert code == 1 and "catalog.sqlite is missing" in text, text
    assert _shard_bytes(root) == shards  # evidence, not debris: nothing deleted
    code, text = _cli("rebuild", "-i", root)
    assert code == 0, text
    assert _state(root) == before  # names, hashes and signatures back; m5 stays removed
    with Index.open(root) as index:
        assert index.entry_for("m0").ref == str(zoo / "m0.pt") and index.verify()["ok"]


def test_garbage_catalogue_named_and_recreated_aside(built, tmp_path):
    root = _copy(built, tmp_path)
    before = _state(root)
    for path in root.glob("catalog.sqlite-*"):
        path.unlink()
    (root / "catalog.sqlite").write_bytes(b"this is not a database" * 100)
    code, text = _cli("list", "-i", root)
    assert code == 1 and "catalog.sqlite is damaged or not a catalogue" in text and "rebuild" in text, text
    assert _cli("rebuild", "-i", root)[0] == 0
    assert _state(root) == before
    assert [p.name for p in root.glob("catalog.sqlite.damaged-*")]  # kept beside it, not deleted


def test_edited_configuration_is_named_and_repair_quarantines_nothing(built, tmp_path):
    root = _copy(built, tmp_path)
    original = (root / "index.json").read_text()
    shards = _shard_bytes(root)
    for field, value, fragment in (("num_probes", 3, "disagrees with probes.npz"),
                                   ("seed", 6, "disagrees with the catalogue")):
        meta = json.loads(original)
        meta["config"][field] = value
        meta["config_hash"] = SignatureConfig.from_dict(meta["config"]).hash()  # a consistent-looking edit
        (root / "index.json").write_text(json.dumps(meta))
        for args in (["verify", "--repair"], ["verify"], ["list"], ["rebuild"]):
            code, text = _cli(args[0], "-i", root, *args[1:])
            assert code == 1 and "index.json" in text and fragment in text and "restore it" in text, text
        assert _shard_bytes(root) == shards and not (root / "shards" / "quarantine").exists()
    (root / "index.json").write_text(original)
    _verify_ok(root)
    assert len(_state(root)) == N_MODELS


def test_search_file_of_another_index_is_not_answered_from(built, zoo, zygote, tmp_path):
    import shutil

    root = _copy(built, tmp_path)
    other = tmp_path / "other"
    Index.create(other, CONFIG).close()
    manifest = tmp_path / "rev.yaml"  # the same models in another order: other ids for other signatures
    entries = []
    for i in reversed(range(N_MODELS)):
        entries.append(f"- {{name: m{i}, ref: {zoo / f'm{i}.pt'}, arch: 'timm:test_resnet', num_classes: 4, "
                       "input_size: 16}")
    manifest.write_text("\n".join(entries) + "\n")
    assert zygote.run(op="ingest", index=str(other), manifest=str(manifest), commit_every=2) == 0  # same generation
    for name in ("search.faiss", "search.json", "search.sha256"):
        shutil.copy(other / name, root / name)
    with Index.open(root) as index:
        records, vectors = index.vectors()
        for record, vector in zip(records, vectors):
            exact = sorted((float(1 - vector.astype(np.float64) @ v.astype(np.float64)), r.name)
                           for r, v in zip(records, vectors) if r.name != record.name)
            found = index.nearest(record.name, k=3)
            assert [n.name for n in found] == [name for _, name in exact[:3]]


def test_init_is_atomic_when_killed_or_failing(zygote, tmp_path, monkeypatch):
    import gifindex.index.writer as writer_module

    root = tmp_path / "new"
    monkeypatch.setattr(writer_module, "build_index",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(Exception, match="No space left|disk full"):
        Index.create(root, CONFIG)
    assert not root.exists()
    monkeypatch.undo()
    out, err = tmp_path / "out", tmp_path / "err"
    rng = random.Random(7)
    for trial in range(3):  # killed at random moments: the index is there whole, or not at all
        target = tmp_path / f"k{trial}"
        pid = zygote.start(op="cli", stdout=str(out), stderr=str(err), background=True,
                           args=["init", "-i", str(target), "-K", "2", "-T", "2", "--resolution", "16",
                                 "--proj-dim", "8"])
        time.sleep(rng.uniform(0.0, 0.6))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        zygote.reap(pid)
        assert not target.exists() or (target / "index.json").is_file()
        if target.exists():
            _verify_ok(target)
        else:
            Index.create(target, CONFIG).close()  # the next init is not refused
            _verify_ok(target)


def test_read_only_index_serves_every_read_command_and_changes_nothing(built, tmp_path):
    root = _copy(built, tmp_path)

    def tree_state() -> dict[str, tuple]:
        return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_mode,
                                           p.read_bytes() if p.is_file() else None)
                for p in sorted([root, *root.rglob("*")])}

    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        before = tree_state()
        for args in (["list"], ["info"], ["nearest", "m0", "-k", "2"], ["distance", "m0", "m1"], ["matrix"],
                     ["tree"], ["verify"], ["list", "--json"], ["nearest", "m1", "--json"]):
            code, text = _cli(args[0], "-i", root, *args[1:])
            assert code == 0, (args, text)
            assert tree_state() == before, args  # no file created, written or touched
        for args in (["remove", "m0"], ["rebuild"], ["verify", "--repair"]):
            code, text = _cli(args[0], "-i", root, *args[1:])
            assert code == 1 and "is read-only" in text, text
            assert tree_state() == before, args
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def test_verify_during_ingest_reports_no_corruption(zoo, zygote, tmp_path):
    root = tmp_path / "idx"
    Index.create(root, CONFIG).close()
    pid = zygote.start(op="ingest", index=str(root), manifest=str(zoo / "zoo.yaml"), commit_every=1,
                       background=True)
    reports = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with Index.open(root) as index:
            reports.append(index.verify())
        if len(reports) >= 4 and len(_shard_bytes(root)) >= N_MODELS:
            break
    assert zygote.reap(pid) == 0
    assert len(reports) >= 4
    assert all(r["ok"] for r in reports), [r["problems"] for r in reports if not r["ok"]]


def test_verify_reads_one_state_of_the_catalogue(built, tmp_path, monkeypatch):
    """A commit landing between verify's read of the shards and its read of the models (the race the test
    above meets at random) must not make the new model look as if it pointed to an unregistered shard."""
    from gifindex.index.catalog import Catalog

    root = _copy(built, tmp_path)
    committed = []
    with Index.open(root) as index:
        listed_shards = index.catalog.shards

        def shards_then_commit():
            listed = listed_shards()
            if not committed:
                writer = Catalog(root / "catalog.sqlite")
                committed.extend(writer.register_shard("99999-late.h5", "0" * 64, [
                    {"name": "late", "ref": "late.pt", "weights_sha256": "f" * 64}]))
                writer.close()
            return listed

        monkeypatch.setattr(index.catalog, "shards", shards_then_commit)
        report = index.verify()
        assert committed and index.catalog.by_name("late") is not None  # the commit happened mid-verify
    assert not any("unregistered" in p for p in report["problems"]), report
    assert report["models"] == N_MODELS and report["shards"] == 3, report


def test_every_writing_command_waits_for_the_writer(built, zygote, tmp_path):
    root = _copy(built, tmp_path)
    ready = tmp_path / "ready"
    for args in (["remove", "m0"], ["rebuild"], ["verify", "--repair"],
                 ["ingest", "--executor", "inline", "--no-progress", "timm:test_resnet", "--random-init",
                  "--num-classes", "4"]):
        holder = zygote.start(op="hold_lock", index=str(root), ready=str(ready), background=True)
        while not ready.exists():
            time.sleep(0.05)
        ready.unlink()
        code, text = _cli(args[0], "-i", root, *args[1:])
        assert code == 1 and "--wait SECONDS" in text, text
        code, text = _cli(args[0], "-i", root, *args[1:], "--wait", "0.2")
        assert code == 1 and "being written by another process" in text, text
        os.kill(holder, signal.SIGKILL)
        zygote.reap(holder)
        code, text = _cli(args[0], "-i", root, *args[1:], "--wait", "30")
        assert code == 0, (args, text)


def test_failure_log_keeps_every_failure(built, tmp_path):
    root = _copy(built, tmp_path)
    torch.manual_seed(999)
    fresh = tmp_path / "fresh.pt"
    torch.save(timm.create_model("test_resnet", num_classes=4).state_dict(), fresh)
    options = {"ref": str(fresh), "arch": "timm:test_resnet", "num_classes": 4, "input_size": 16}
    with Index.open(root) as index:
        before = index.catalog.failures()
        for _ in range(2):  # m0 names another model: refused and logged, each time
            report = index.ingest([ModelEntry(name="m0", **options)], executor=InlineExecutor())
            assert report.to_dict()["failed"] == 1
        assert index.ingest([ModelEntry(name="fresh", **options)], executor=InlineExecutor()).to_dict()["added"] == 1
        failures = index.catalog.failures()
    assert failures[:len(before)] == before
    refusals = [f for f in failures[len(before):] if "already used by another model" in f["error"]]
    assert len(refusals) == 2 and all(f["name"] == "m0" for f in refusals), failures
