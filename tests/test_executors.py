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


class PidNet(SmoothNet):
    """SmoothNet that appends its worker's process id to a file on every forward pass."""

    def __init__(self, seed: int, log: str):
        super().__init__(seed=seed)
        self.log = log

    def forward(self, x):
        import os

        with open(self.log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return super().forward(x)


def test_jobs_sign_in_parallel_and_give_the_same_index_as_one_job(tmp_path):
    entries = []
    for seed in range(4):
        torch.save(PidNet(seed, str(tmp_path / f"pids{seed}.txt")), tmp_path / f"m{seed}.pt")
        entries.append(ModelEntry(ref=str(tmp_path / f"m{seed}.pt"), name=f"m{seed}", trust=True, input_size=16))
    torch.save(CrashNet(), tmp_path / "crash.pt")
    entries.insert(2, ModelEntry(ref=str(tmp_path / "crash.pt"), name="crash", trust=True, input_size=16))
    config = SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=16)
    outcomes = []
    for jobs in (1, 2):
        for seed in range(4):
            (tmp_path / f"pids{seed}.txt").unlink(missing_ok=True)
        with Index.create(tmp_path / f"j{jobs}", config) as index:
            report = index.ingest(entries, executor=LocalExecutor(timeout=120, threads=1, jobs=jobs), commit_every=2)
            records, vectors = index.vectors()
            outcomes.append(([(r.name, r.status, "SIGSEGV" in (r.error or "")) for r in report.results],
                             [(r.name, r.shard.split("-")[0], r.row) for r in records], vectors,
                             sorted(f["name"] for f in index.catalog.failures())))
        pids = [(tmp_path / f"pids{seed}.txt").read_text().split()[0] for seed in range(4)]
        if jobs == 1:  # one worker, replaced after the crash
            assert pids[0] == pids[1] != pids[2] == pids[3]
        else:  # the first two models run in two workers at once
            assert pids[0] != pids[1]
    (results1, layout1, vectors1, failed1), (results2, layout2, vectors2, failed2) = outcomes
    assert results1 == results2 and ("crash", "failed", True) in results1
    assert layout1 == layout2 and failed1 == failed2 == ["crash"]
    assert torch.equal(torch.from_numpy(vectors1), torch.from_numpy(vectors2))


def test_cli_ingest_jobs_option(tmp_path):
    from click.testing import CliRunner

    from gifindex.cli import main

    for seed in range(2):
        torch.save(SmoothNet(seed=seed), tmp_path / f"s{seed}.pt")
    Index.create(tmp_path / "idx", SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=16)).close()
    refs = [str(tmp_path / f"s{seed}.pt") for seed in range(2)]
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", "-i", str(tmp_path / "idx"), "-j", "2", "--trust", "--input-size", "16",
                                  "--no-progress", *refs])
    assert result.exit_code == 0, result.output
    assert "2 added" in result.output
    refused = runner.invoke(main, ["ingest", "-i", str(tmp_path / "idx"), "-j", "2", "--executor", "inline", *refs])
    assert refused.exit_code == 1 and "applies to the local executor" in refused.output
