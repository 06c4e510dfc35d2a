"""End-to-end index tests through the command line (click's runner) on tiny models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

from gifindex.cli import main
from gifindex.distance import signature_distance
from gifindex.config import SignatureConfig
from gifindex.curves import compute_curves
from gifindex.distance import curve_distance
from gifindex.index import Index, IngestReporter
from gifindex.manifest import ModelEntry
from gifindex.models import load_model

LOAD = ["--num-classes", "4", "--input-size", "32"]
TINY = ["-K", "3", "-T", "2", "--resolution", "16", "--proj-dim", "256", "--seed", "1"]


def _save(module: torch.nn.Module, path: Path) -> Path:
    torch.save(module.state_dict(), path)
    return path


def _noisy(module: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    return module


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Two families: resnet10t a (+ a_ft, a noisy copy) and b; mobilenet c (+ c_ft)."""
    root = tmp_path_factory.mktemp("zoo")
    out = {}
    for name, arch, seed in (("a", "resnet10t", 0), ("b", "resnet10t", 1), ("c", "mobilenetv3_small_050", 2)):
        torch.manual_seed(seed)
        model = timm.create_model(arch, num_classes=4)
        out[name] = (_save(model, root / f"{name}.pt"), f"timm:{arch}")
        if name != "b":
            out[f"{name}_ft"] = (_save(_noisy(model, 0.02, seed), root / f"{name}_ft.pt"), f"timm:{arch}")
    return out


def _run(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output + (result.stderr if hasattr(result, "stderr") else "")
    return result


def _manifest(zoo: dict, path: Path, names=None) -> Path:
    lines = []
    for name in names or zoo:
        file, arch = zoo[name]
        lines += [f"- name: {name}", f"  ref: {file}", f"  arch: {arch}", "  num_classes: 4", "  input_size: 32",
                  f"  tags: {{family: {name[0]}}}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_end_to_end(zoo, tmp_path):
    index = tmp_path / "idx"
    _run("init", "-i", index, *TINY)
    manifest = _manifest(zoo, tmp_path / "zoo.yaml")
    out = _run("ingest", "-i", index, "--manifest", manifest, "--no-progress", "--json")
    report = json.loads(out.stdout)
    assert (report["added"], report["skipped"], report["failed"]) == (5, 0, 0)

    listed = json.loads(_run("list", "-i", index, "--json").stdout)
    assert sorted(m["name"] for m in listed) == sorted(zoo)

    near = json.loads(_run("nearest", "-i", index, "a", "-k", "2", "--json").stdout)["neighbors"]
    assert near[0]["name"] == "a_ft" and len(near) == 2
    near_c = json.loads(_run("nearest", "-i", index, "c_ft", "--json").stdout)["neighbors"]
    assert near_c[0]["name"] == "c"
    # a model reference that is not indexed is signed on the fly and not added
    file, arch = zoo["a"]
    fly = json.loads(_run("nearest", "-i", index, str(file), "--arch", arch, *LOAD, "--json").stdout)
    assert fly["neighbors"][0]["name"] == "a" and fly["neighbors"][0]["distance"] < 1e-3
    assert len(json.loads(_run("list", "-i", index, "--json").stdout)) == 5

    newick = _run("tree", "-i", index).stdout.strip()
    assert newick.endswith(";") and all(name in newick for name in ("a", "b", "c"))
    tree_json = json.loads(_run("tree", "-i", index, "--format", "json").stdout)
    assert tree_json["n"] == 5
    for fmt in ("png", "svg", "html"):
        target = tmp_path / f"tree.{fmt}"
        _run("tree", "-i", index, "-o", target)
        assert target.stat().st_size > 1000

    matrix_csv = _run("matrix", "-i", index).stdout.splitlines()
    assert len(matrix_csv) == 6
    _run("matrix", "-i", index, "-o", tmp_path / "m.npy")
    assert np.load(tmp_path / "m.npy").shape == (5, 5)

    _run("remove", "-i", index, "b")
    assert "b" not in [m["name"] for m in json.loads(_run("list", "-i", index, "--json").stdout)]
    verified = json.loads(_run("verify", "-i", index, "--json").stdout)
    assert verified["ok"] and verified["models"] == 4
    info = json.loads(_run("info", "-i", index, "--json").stdout)
    assert info["models"] == 4 and info["bytes_per_model"] == 3 * 2 * 256 * 2


def test_duplicate_weights_add_nothing(zoo, tmp_path):
    index = tmp_path / "idx"
    _run("init", "-i", index, *TINY)
    file, arch = zoo["a"]
    _run("ingest", "-i", index, file, "--arch", arch, *LOAD, "--no-progress", "--executor", "inline")
    again = json.loads(_run("ingest", "-i", index, file, "--arch", arch, *LOAD, "--name", "a-again",
                            "--json", "--executor", "inline").stdout)
    assert (again["added"], again["skipped"]) == (0, 1)
    # the same weights saved as safetensors hash the same: skipped too
    from safetensors.torch import save_file

    state = torch.load(file, weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "a.safetensors"))
    third = json.loads(_run("ingest", "-i", index, tmp_path / "a.safetensors", "--arch", arch, *LOAD,
                            "--json", "--executor", "inline").stdout)
    assert third["skipped"] == 1
    with Index.open(index) as opened:
        assert len(opened) == 1 and len(opened.catalog.shards()) == 1


CONFIG = SignatureConfig(resolution=16, num_probes=3, steps=2, proj_dim=256, seed=1)


def _entries(zoo: dict) -> list[ModelEntry]:
    return [ModelEntry(ref=str(zoo[n][0]), name=n, arch=zoo[n][1], num_classes=4, input_size=32) for n in sorted(zoo)]


class _Interrupt(IngestReporter):
    def __init__(self, after: int):
        self.after, self.done = after, 0

    def model_done(self, result) -> None:
        self.done += 1
        if self.done == self.after:
            raise KeyboardInterrupt


def test_interrupted_ingest_resumes_to_the_same_index(zoo, tmp_path):
    config, entries = CONFIG, _entries(zoo)
    with Index.create(tmp_path / "full", config) as full:
        full.ingest(entries)
        names_full, vectors_full = full.vectors()
    with Index.create(tmp_path / "resumed", config) as resumed:
        with pytest.raises(KeyboardInterrupt):
            resumed.ingest(entries, commit_every=1, reporter=_Interrupt(after=3))
    with Index.open(tmp_path / "resumed") as resumed:
        assert len(resumed) == 3  # two committed before; the third, signed when the interrupt came, on the way out
        assert resumed.verify()["ok"]
        report = resumed.ingest(entries)
        assert len(report.by_status("skipped")) == 3 and len(report.by_status("added")) == 2
        names_resumed, vectors_resumed = resumed.vectors()
    order = {r.name: i for i, r in enumerate(names_resumed)}
    assert sorted(order) == sorted(r.name for r in names_full)
    for i, record in enumerate(names_full):
        np.testing.assert_array_equal(vectors_full[i], vectors_resumed[order[record.name]])


def test_nearest_equals_brute_force_and_compressed_tracks_exact(zoo, tmp_path):
    config, entries = CONFIG, _entries(zoo)
    with Index.create(tmp_path / "idx", config) as index:
        index.ingest(entries)
        records, vectors = index.vectors()
        for position, record in enumerate(records):
            got = index.nearest(record.name, k=4)
            sims = vectors.astype(np.float64) @ vectors[position].astype(np.float64)
            sims[position] = -np.inf
            expected = [records[i].name for i in np.argsort(-sims)[:4]]
            assert [n.name for n in got] == expected
            np.testing.assert_allclose([n.distance for n in got], 1 - np.sort(sims)[::-1][:4], atol=1e-5)
        # compressed vs exact distances, on this index's probes
        curves = {e.name: compute_curves(load_model(e.ref, **e.load_kwargs()), index.probes, config)
                  for e in entries}
        names, matrix = index.matrix()
        errors = [abs(matrix[i, j] - curve_distance(curves[a], curves[b]))
                  for i, a in enumerate(names) for j, b in enumerate(names) if i < j]
        # JL bound for proj_dim=256 (one effective sample per pair: ~3/sqrt(256)); the measured table is in
        # the README (tools/bench_compression.py); float16 storage adds < 1e-3.
        assert max(errors) < 3 / np.sqrt(256)
        assert np.mean(errors) < 0.06
        stored = dict(zip([r.name for r in records], vectors))
        assert signature_distance(stored["a"], stored["a"]) == pytest.approx(0.0, abs=2e-3)


def test_index_refusals(zoo, tmp_path):
    index = tmp_path / "idx"
    _run("init", "-i", index, *TINY)
    again = _run("init", "-i", index, *TINY)   # idempotent: the same configuration again is nothing to do
    assert again.exit_code == 0 and "already exists" in again.stdout and "nothing to do" in again.stdout
    searched = _run("init", "-i", index, *TINY, "--search", "hnsw", ok=False)
    assert searched.exit_code == 1 and "other search settings" in searched.stderr
    other = _run("init", "-i", index, "-K", "5", ok=False)
    assert other.exit_code == 1 and "another configuration" in other.stderr
    (tmp_path / "notindex").mkdir()
    (tmp_path / "notindex" / "x.txt").write_text("x")
    missing = _run("list", "-i", tmp_path / "notindex", ok=False)
    assert missing.exit_code == 1 and "no gifindex index" in missing.stderr
    meta = json.loads((index / "index.json").read_text())
    meta["format_version"] = 99
    (index / "index.json").write_text(json.dumps(meta))
    wrong = _run("list", "-i", index, ok=False)
    assert wrong.exit_code == 1 and "format version 99" in wrong.stderr
    assert "Traceback" not in wrong.output


def test_manifest_errors_listed_with_lines_before_any_work(tmp_path):
    index = tmp_path / "idx"
    _run("init", "-i", index, *TINY)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: a\n  ref: timm:resnet18\n- name: a\n  ref: timm:resnet10t\n"
                   "- name: c\n  wieghts: x.pt\n  ref: timm:resnet18\n- name: d\n")
    result = _run("ingest", "-i", index, "--manifest", bad, ok=False)
    assert result.exit_code == 1
    assert "line 3: duplicate name 'a' (first on line 1)" in result.stderr
    assert "line 5: unknown field 'wieghts' (did you mean 'weights'?)" in result.stderr
    assert "line 8: missing 'ref'" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("- name: a\n  ref: [unclosed\n")
    result = _run("ingest", "-i", index, "--manifest", broken, ok=False)
    assert result.exit_code == 1 and "not valid YAML" in result.stderr
    from gifindex.manifest import parse_manifest  # one number for mean / std is every channel's, as on the CLI
    (grey,) = parse_manifest("- ref: timm:resnet18\n  mean: 0.1307\n  std: [0.3081]\n  input_size: 28\n")
    assert (grey.mean, grey.std, grey.input_size) == ((0.1307,), (0.3081,), 28)
    bad.write_text("- ref: timm:resnet18\n  mean: [0.5, 0.5]\n  std: yes\n")
    result = _run("ingest", "-i", index, "--manifest", bad, ok=False)
    assert "line 1: 'mean' must be three numbers (or one, for every channel)" in result.stderr
    assert "line 1: 'std' must be three numbers" in result.stderr


def test_failed_model_is_reported_and_the_rest_go_on(zoo, tmp_path):
    index = tmp_path / "idx"
    _run("init", "-i", index, *TINY)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    file, arch = zoo["b"]
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"- {{name: junk, ref: {junk}, arch: {arch}}}\n"
                        f"- {{name: b, ref: {file}, arch: {arch}, num_classes: 4, input_size: 32}}\n")
    result = _run("ingest", "-i", index, "--manifest", manifest, "--json", ok=False)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["added"], report["failed"]) == (1, 1)
    failure = [m for m in report["models"] if m["status"] == "failed"][0]
    assert failure["name"] == "junk" and "junk.pt" in failure["error"]
    info = json.loads(_run("info", "-i", index, "--json").stdout)
    assert info["models"] == 1 and info["failures"] == 1


def test_absurd_options_fail_fast_with_one_line(tmp_path):
    index = tmp_path / "idx"
    for args, fragment in ((["-K", "1000000"], "invalid num_probes 1000000"),
                           (["--resolution", "100000"], "invalid resolution 100000"),
                           (["--proj-dim", "1000000000"], "invalid proj_dim 1000000000"),
                           (["-K", "4096", "-T", "1024"], "exceed the 16,777,216-value limit"),
                           (["--device", "bogus"], "unknown --device 'bogus'")):
        result = _run("init", "-i", index, *args, ok=False)
        assert result.exit_code != 0 and fragment in result.output, result.output
        assert not index.exists()
    _run("init", "-i", index, *TINY)
    for args, fragment in ((["ingest", "timm:resnet10t", "--timeout", "-5"], "-5"),
                           (["ingest", "timm:resnet10t", "--device", "bogus"], "unknown --device 'bogus'"),
                           (["ingest", "timm:resnet10t", "--commit-every", "0"], "0"),
                           (["nearest", "x", "-k", "0"], "0"), (["nearest", "x", "-k", "-1"], "-1"),
                           (["remove", "x", "--wait", "-1"], "-1")):
        result = _run(args[0], "-i", index, *args[1:], ok=False)
        assert result.exit_code != 0 and fragment in result.output and "Traceback" not in result.output, result.output
    with Index.open(index) as opened:
        assert len(opened) == 0 and not opened.catalog.failures()  # nothing was attempted


def _parse_cpu_seconds(tmp_path: Path, n: int) -> float:
    import time

    from gifindex.manifest import read_manifest

    path = tmp_path / f"m{n}.yaml"
    path.write_text("models:\n" + "".join(
        f"  - {{name: m{i}, ref: /nowhere/m{i}.pt, arch: 'timm:resnet18', num_classes: 10, tags: {{f: {i % 7}}}}}\n"
        for i in range(n)))
    started = time.process_time()
    assert len(read_manifest(path)) == n
    return time.process_time() - started


def test_large_manifest_parses_in_linear_time(tmp_path):
    small, large = _parse_cpu_seconds(tmp_path, 2_000), _parse_cpu_seconds(tmp_path, 40_000)
    assert large < 40 * small and large < 20, (small, large)  # 20x the entries: about 20x the CPU time


def test_many_missing_files_fail_fast_and_are_all_logged(tmp_path):
    from gifindex.executors import InlineExecutor

    class Counting(InlineExecutor):
        """The inline executor, counting the entries sent to a worker."""

        sent = 0

        def map(self, entries, job, reporter):
            for entry in entries:
                Counting.sent += 1
                yield from super().map([entry], job, reporter)

    with Index.create(tmp_path / "idx", SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=4)) as index:
        entries = [ModelEntry(ref=str(tmp_path / f"missing{i}.pt"), arch="timm:resnet10t") for i in range(3000)]
        report = index.ingest(entries, executor=Counting())
        assert report.to_dict()["failed"] == 3000
        assert all("model file not found" in r.error for r in report.results)
        assert len(index.catalog.failures()) == 3000  # every one logged
    assert Counting.sent == 0  # failed in the driver: no worker round trip (or process start) per missing file
