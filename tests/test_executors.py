"""Executors: a model that hangs or crashes its worker is a recorded failure; the ingest goes on."""
from __future__ import annotations

import torch

from gifindex.config import SignatureConfig
from gifindex.executors import InlineExecutor, LocalExecutor
from gifindex.index import Index
from gifindex.manifest import ModelEntry

from helpers import CrashNet, HangNet, SmoothNet


def test_hanging_and_crashing_models_are_isolated(tmp_path):
    torch.save(HangNet(), tmp_path / "hang.pt")
    torch.save(CrashNet(), tmp_path / "crash.pt")
    torch.save(SmoothNet(seed=1), tmp_path / "good.pt")
    entries = [ModelEntry(ref=str(tmp_path / f"{n}.pt"), name=n, trust=True, input_size=16)
               for n in ("hang", "crash", "good")]
    config = SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=16)
    with Index.create(tmp_path / "idx", config) as index:
        report = index.ingest(entries, executor=LocalExecutor(timeout=8))
        status = {r.name: (r.status, r.error or "") for r in report.results}
        assert status["hang"][0] == "failed" and "timed out after 8 s" in status["hang"][1]
        assert status["crash"][0] == "failed" and "SIGSEGV" in status["crash"][1]
        assert status["good"][0] == "added"
        assert [r.name for r in index.records()] == ["good"]
        assert {f["name"] for f in index.catalog.failures()} == {"hang", "crash"}


def test_local_and_inline_executors_give_identical_signatures(tmp_path):
    torch.save(SmoothNet(seed=2).state_dict(), tmp_path / "a.pt")
    config = SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=16)
    vectors = []
    for name, executor in (("inline", InlineExecutor()), ("local", LocalExecutor(timeout=120))):
        with Index.create(tmp_path / name, config) as index:
            torch.save(SmoothNet(seed=2), tmp_path / "a_module.pt")
            index.ingest([ModelEntry(ref=str(tmp_path / "a_module.pt"), trust=True, input_size=16)],
                         executor=executor)
            vectors.append(index.vectors()[1])
    assert torch.equal(torch.from_numpy(vectors[0]), torch.from_numpy(vectors[1]))
