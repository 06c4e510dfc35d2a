"""The demo zoo: plain state dicts, a manifest that round-trips, caching, and family structure."""
from __future__ import annotations

import time

import pytest
import torch
import yaml

from gifindex.config import SignatureConfig
from gifindex.curves import compute_curves
from gifindex.demo import DemoZooConfig, build_arch, build_demo_zoo, write_manifest
from gifindex.distance import curve_distance
from gifindex.models.spec import InputSpec, LoadedModel
from gifindex.probes import make_probes

SMALL = DemoZooConfig(bases=("timm:test_resnet", "timm:test_convnext"),
                      students=("timm:test_convnext", "timm:test_resnet"),
                      relations=("base", "finetuned", "pruned"), epochs=2, finetune_epochs=1)


def _load(entry: dict) -> LoadedModel:
    module = build_arch(entry["arch"], entry["num_classes"])
    module.load_state_dict(torch.load(entry["ref"], weights_only=True))
    spec = InputSpec(size=(entry["input_size"],) * 2, mean=tuple(entry["mean"]), std=tuple(entry["std"]))
    return LoadedModel(module=module.eval(), spec=spec, ref=entry["ref"], name=entry["name"], source="file")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    started = time.perf_counter()
    entries = build_demo_zoo(out, SMALL)
    return out, entries, time.perf_counter() - started


def test_zoo_files_and_manifest(zoo, tmp_path):
    out, entries, _ = zoo
    assert [e["tags"]["relation"] for e in entries] == ["base", "finetuned", "pruned"] * 2
    for entry in entries:
        state = torch.load(entry["ref"], weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        assert 0.0 <= entry["tags"]["test_accuracy"] <= 1.0
        assert entry["num_classes"] == 10 and entry["input_size"] == 32
    assert all(e["tags"]["test_accuracy"] >= 0.7 for e in entries if e["tags"]["relation"] == "base")
    pruned = [e for e in entries if e["tags"]["relation"] == "pruned"]
    assert all(e["tags"]["sparsity"] >= SMALL.prune_amount * 0.95 for e in pruned)
    path = write_manifest(entries, tmp_path / "demo.yaml", relative_to=out)
    loaded = yaml.safe_load(path.read_text())["models"]
    assert [m["name"] for m in loaded] == [e["name"] for e in entries]
    assert all((out / m["ref"]).is_file() for m in loaded)
    assert loaded[0]["mean"] == entries[0]["mean"] and loaded[1]["tags"]["parent"] == entries[0]["name"]


def test_cache_reuse(zoo):
    out, entries, seconds = zoo
    hashes = {p.name: p.read_bytes() for p in out.glob("*.pt")}
    started = time.perf_counter()
    again = build_demo_zoo(out, SMALL)
    assert time.perf_counter() - started < seconds / 3
    assert again == entries
    assert {p.name: p.read_bytes() for p in out.glob("*.pt")} == hashes


def test_derived_models_nearer_their_parent(zoo):
    out, entries, _ = zoo
    config = SignatureConfig(resolution=32, num_probes=8, steps=4, probe_source=str(out / "digit_probes.npy"))
    probes = make_probes(config)
    curves = {e["name"]: compute_curves(_load(e), probes, config) for e in entries}
    bases = [e["name"] for e in entries if e["tags"]["relation"] == "base"]
    for entry in entries:
        if entry["tags"]["relation"] == "base":
            continue
        parent = entry["tags"]["parent"]
        other = next(b for b in bases if b != parent)
        d_parent = curve_distance(curves[entry["name"]], curves[parent])
        d_other = curve_distance(curves[entry["name"]], curves[other])
        assert d_parent < d_other, (entry["name"], d_parent, d_other)
