"""Ray executor: a local two-worker Ray cluster gives the same index as the local executor."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gifindex.config import SignatureConfig
from gifindex.executors import LocalExecutor
from gifindex.index import Index
from gifindex.manifest import ModelEntry

from helpers import CrashNet, SmoothNet

ray = pytest.importorskip("ray")
from gifindex.executors_ray import RayExecutor  # noqa: E402

CONFIG = SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=16)


@pytest.fixture(scope="module")
def cluster():
    # Two worker slots; the workers import tests/helpers.py (the pickled test models' classes live there).
    tests_dir = str(Path(__file__).parent)
    path = os.pathsep.join([tests_dir] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def _entries(tmp_path):
    for seed in range(4):
        torch.save(SmoothNet(seed=seed), tmp_path / f"m{seed}.pt")
    torch.save(CrashNet(), tmp_path / "crash.pt")
    entries = [ModelEntry(ref=str(tmp_path / f"m{s}.pt"), name=f"m{s}", trust=True, input_size=16) for s in range(4)]
    entries.append(ModelEntry(ref=str(tmp_path / "missing.pt"), name="missing"))
    entries.append(ModelEntry(ref=str(tmp_path / "crash.pt"), name="crash", trust=True, input_size=16))
    return entries


def _contents(index):
    records, vectors = index.vectors()
    return {r.name: v for r, v in zip(records, vectors)}


# Generous per-model limits where timing out is not what is tested: a Ray worker's first task imports torch, which
# on a loaded 2-core machine has taken over 60 s (the timeout itself is tested below).
LIMIT = 600


def test_ray_equals_local_and_records_failures_and_resumes(tmp_path, cluster):
    entries = _entries(tmp_path)
    with Index.create(tmp_path / "local", CONFIG) as index:
        index.ingest(entries, executor=LocalExecutor(timeout=LIMIT))
        local, local_failures = _contents(index), {f["name"] for f in index.catalog.failures()}

    with Index.create(tmp_path / "ray", CONFIG) as index:
        # First run: only part of the models (an interrupted ingest), committed one by one.
        report = index.ingest(entries[:2], executor=RayExecutor(timeout=LIMIT), commit_every=1)
        assert {r.name for r in report.by_status("added")} == {"m0", "m1"}, [(r.name, r.error) for r in report.results]
        report = index.ingest(entries, executor=RayExecutor(timeout=LIMIT), commit_every=2)
        status = {r.name: (r.status, r.error or "") for r in report.results}
        assert status["m0"][0] == status["m1"][0] == "skipped"          # resumed, not signed again
        assert status["m2"][0] == status["m3"][0] == "added"
        assert status["missing"][0] == "failed"
        assert status["crash"][0] == "failed" and "Ray worker failed" in status["crash"][1]
        remote = _contents(index)
        assert {f["name"] for f in index.catalog.failures()} == local_failures == {"missing", "crash"}
        assert index.verify()["ok"]

    assert sorted(remote) == sorted(local) == ["m0", "m1", "m2", "m3"]
    for name in local:
        np.testing.assert_array_equal(remote[name], local[name])


def test_ray_timeout_is_a_recorded_failure(tmp_path, cluster):
    """A model that never returns fails with the time limit and is recorded; the rest of the index is kept.
    Independent of machine load: the hanging model would outlast any limit, and the good model is signed
    under a limit no busy machine reaches."""
    from helpers import HangNet

    torch.save(HangNet(), tmp_path / "hang.pt")
    torch.save(SmoothNet(seed=7), tmp_path / "good.pt")
    hang, good = (ModelEntry(ref=str(tmp_path / f"{n}.pt"), name=n, trust=True, input_size=16) for n in ("hang", "good"))
    with Index.create(tmp_path / "idx", CONFIG) as index:
        assert index.ingest([good], executor=RayExecutor(timeout=3600)).results[0].status == "added"
        report = index.ingest([hang], executor=RayExecutor(timeout=5))  # HangNet sleeps 600 s: always too long
        status = {r.name: (r.status, r.error or "") for r in report.results}
        assert status == {"hang": ("failed", status["hang"][1])} and "timed out after 5 s" in status["hang"][1]
        assert [r.name for r in index.records()] == ["good"]
        assert [f["name"] for f in index.catalog.failures()] == ["hang"]
        assert index.verify()["ok"]
