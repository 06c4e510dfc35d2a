"""Executor edges: local workers do not outlive a killed driver; an unreachable Ray cluster fails at once."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gifindex.config import SignatureConfig
from gifindex.index import Index

from helpers import SmoothNet

STARTUP_DEADLINE = 180.0  # seconds a driver may take to start its worker (torch imports on a loaded machine)
EXIT_DEADLINE = 20.0      # seconds the worker (and the resource tracker) may take to go once the driver is killed
CLI_DEADLINE = 120.0      # seconds for the whole `gifindex ingest --executor ray` run to fail

# The driver signs one model (a missing file: it fails at once) on a LocalExecutor, then blocks while asking for
# the next entry. With one job the worker has finished its model and waits on its queue; with two the first
# worker is still starting. It writes the pids of its children (workers, resource tracker) to argv[3] first.
DRIVER = r"""
import json, multiprocessing as mp, os, sys, time
from multiprocessing import resource_tracker
from gifindex.config import SignatureConfig
from gifindex.executors import LocalExecutor, Reporter, SignJob
from gifindex.manifest import ModelEntry

def entries():
    yield ModelEntry(ref=sys.argv[2], name="missing")
    pids = [p.pid for p in mp.active_children()] + [getattr(resource_tracker._resource_tracker, "_pid", None)]
    with open(sys.argv[3] + ".tmp", "w") as f:
        json.dump([p for p in pids if p], f)
    os.replace(sys.argv[3] + ".tmp", sys.argv[3])
    time.sleep(3600)

job = SignJob(SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=16), probes=None)
for _ in LocalExecutor(timeout=None, jobs=int(sys.argv[1])).map(entries(), job, Reporter()):
    pass
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs: a zombie (dead, waiting for init to reap it) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: the signal test is all there is
    return state not in ("Z", "X")


def _wait_for_children(driver: subprocess.Popen, pid_file: Path, stderr: Path) -> list[int]:
    """The pids the driver writes once its worker is up (fails if the driver dies or never gets there)."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    while not pid_file.exists():
        assert driver.poll() is None, f"driver exited early: {stderr.read_text()}"
        assert time.monotonic() < deadline, "driver did not start its worker in time"
        time.sleep(0.1)
    return json.loads(pid_file.read_text())


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
@pytest.mark.parametrize("jobs", [1, 2], ids=["worker-idle", "worker-starting"])
def test_local_workers_exit_when_the_driver_is_killed(tmp_path, jobs):
    pid_file, stderr = tmp_path / "children.json", tmp_path / "driver.err"
    with stderr.open("w") as err:
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(jobs), str(tmp_path / "missing.pt"),
                                   str(pid_file)], stdout=subprocess.DEVNULL, stderr=err)
    children: list[int] = []
    try:
        children = _wait_for_children(driver, pid_file, stderr)
        assert children, "the driver started no worker"
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + EXIT_DEADLINE
        while any(map(_running, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if _running(pid)], "processes outlived their killed driver"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid in children:  # a failed run must not leave them behind either
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_unreachable_ray_address_fails_at_once_in_one_line(tmp_path):
    pytest.importorskip("ray")
    with Index.create(tmp_path / "ix", SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=16)):
        pass
    torch.save(SmoothNet(), tmp_path / "m.pt")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with socket.socket() as port:  # bound, never listening: a connection to it is refused
        port.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{port.getsockname()[1]}"
        proc = subprocess.run([sys.executable, "-c", "from gifindex.cli import main; main()", "ingest",
                               "-i", str(tmp_path / "ix"), str(tmp_path / "m.pt"), "--trust", "--input-size", "16",
                               "--no-progress", "--executor", "ray", "--address", address],
                              capture_output=True, text=True, timeout=CLI_DEADLINE, env=env)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: cannot reach the Ray cluster at {address} (connection refused)"), lines
    assert "GCS" not in proc.stderr


@pytest.mark.parametrize("address, endpoint", [
    ("10.0.0.5:6379", ("10.0.0.5", 6379)), ("ray://head.example:10001", ("head.example", 10001)),
    ("[::1]:6379", ("::1", 6379)), (None, None), ("auto", None), ("local", None), ("nonsense", None)])
def test_ray_endpoint_reads_explicit_addresses_only(address, endpoint):
    from gifindex.executors_ray import _endpoint

    assert _endpoint(address) == endpoint


def test_ray_reachability_check_passes_a_listening_address():
    from gifindex.executors_ray import _check_reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        _check_reachable(f"127.0.0.1:{server.getsockname()[1]}", timeout=5)
