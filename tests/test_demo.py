"""The demo zoo: plain state dicts, a manifest that round-trips, caching, and family structure."""
from __future__ import annotations

import time

import pytest
import torch
import yaml

from gifindex.config import SignatureConfig
from gifindex.curves import compute_curves
from gifindex.demo import OWNER_DATA_NAME, DemoZooConfig, augment, build_arch, build_demo_zoo, normalise, write_manifest
from gifindex.distance import curve_distance
from gifindex.models.spec import InputSpec, LoadedModel
from gifindex.probes import make_probes

SMALL = DemoZooConfig(bases=("timm:test_resnet", "timm:test_efficientnet"),
                      students=("timm:test_efficientnet", "timm:test_resnet"),
                      relations=("base", "finetuned", "pruned", "distilled"), epochs=3, finetune_epochs=1,
                      distill_epochs=2)


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
    assert [e["tags"]["relation"] for e in entries] == ["base", "finetuned", "pruned", "distilled"] * 2
    distilled = [e for e in entries if e["tags"]["relation"] == "distilled"]
    assert [e["arch"] for e in distilled] == list(SMALL.students)
    for entry in entries:
        state = torch.load(entry["ref"], weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        assert 0.0 <= entry["tags"]["test_accuracy"] <= 1.0
        assert entry["num_classes"] == 10 and entry["input_size"] == SMALL.image_size
    assert all(e["tags"]["test_accuracy"] >= 0.7 for e in entries if e["tags"]["relation"] == "base")
    assert all(e["tags"]["test_accuracy"] >= 0.5 for e in distilled)
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


def test_owner_data_is_the_training_digits_as_the_owner_saw_them(zoo):
    """digits_train.npz is what `fit-probes --data` reads: the base models' training digits in [0, 1] with their
    labels, so read through the fingerprint's own loader and the owner's convention the owner classifies them."""
    from gifindex.adapter import SharedSpaceAdapter
    from gifindex.fingerprint import load_owner_data

    out, entries, _ = zoo
    data = load_owner_data(out / OWNER_DATA_NAME, SMALL.image_size)
    assert data.x.shape[1:] == (3, SMALL.image_size, SMALL.image_size) and 0.0 <= data.x.min() <= data.x.max() <= 1.0
    assert sorted(data.y.unique().tolist()) == list(range(10))
    owner = SharedSpaceAdapter.of(_load(entries[0])).eval()
    with torch.no_grad():
        accuracy = float((owner.logits(data.x).argmax(1) == data.y).float().mean())
    assert accuracy >= max(0.8, entries[0]["tags"]["test_accuracy"] - 0.05), accuracy
    (out / OWNER_DATA_NAME).unlink()     # a cached zoo without it (built before it was written) gets it back
    build_demo_zoo(out, SMALL)
    assert torch.equal(load_owner_data(out / OWNER_DATA_NAME, SMALL.image_size).x, data.x)


def test_default_config_has_every_relation_and_a_torchvision_base():
    config = DemoZooConfig()
    assert set(config.relations) == {"base", "finetuned", "pruned", "distilled", "reseeded"}
    assert any(b.startswith("timm:") for b in config.bases)
    assert any(b.startswith("torchvision:") for b in config.bases)
    assert all(s != b for s, b in zip(config.students, config.bases))


def test_augment_keeps_shape_and_pixel_range():
    x = normalise(torch.rand(8, 3, 16, 16))
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    raw = out * torch.tensor(0.324) + torch.tensor(0.305)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0)))


def test_derived_models_nearer_their_parent(zoo):
    out, entries, _ = zoo
    config = SignatureConfig(resolution=16, num_probes=8, steps=4, probe_source=str(out / "digit_probes.npy"))
    probes = make_probes(config)
    curves = {e["name"]: compute_curves(_load(e), probes, config) for e in entries}
    bases = [e["name"] for e in entries if e["tags"]["relation"] == "base"]
    for entry in entries:
        if entry["tags"]["relation"] not in ("finetuned", "pruned"):  # distilled/reseeded: see DemoZooConfig
            continue
        parent = entry["tags"]["parent"]
        other = next(b for b in bases if b != parent)
        d_parent = curve_distance(curves[entry["name"]], curves[parent])
        d_other = curve_distance(curves[entry["name"]], curves[other])
        assert d_parent < d_other, (entry["name"], d_parent, d_other)


def test_distilled_students_land_next_to_their_teacher_with_outputs(zoo):
    """modelgif+outputs (the demo's method): every distilled student is nearer its teacher than any model of
    another family, and ModelGiF's fine-tuned/pruned relations still hold under it."""
    from gifindex.methods import feature_distance, features

    out, entries, _ = zoo
    config = SignatureConfig(method="modelgif+outputs", resolution=16, num_probes=8, steps=4,
                             probe_source=str(out / "digit_probes.npy"))
    probes = make_probes(config)
    feats = {e["name"]: features(_load(e), probes, config) for e in entries}
    family = {e["name"]: e["tags"]["family"] for e in entries}
    for entry in entries:
        parent = entry["tags"].get("parent")
        if parent is None:
            continue
        name = entry["name"]
        d_parent = feature_distance(feats[name], feats[parent], config.method)
        others = [feature_distance(feats[name], feats[o], config.method) for o in feats if family[o] != family[name]]
        assert d_parent < min(others), (name, d_parent, min(others))
