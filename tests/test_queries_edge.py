"""The query side at its edges: a model is at distance 0 from itself however it is named (indexed name, its own
file, --exact), loading options that would be ignored are refused, mistyped names get "did you mean" before
anything is signed, the API refuses what is not a query, and the search kind reported is the one that runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

from gifindex.cli import main
from gifindex.config import SignatureConfig
from gifindex.distance import distance_matrix, signature_distances
from gifindex.errors import GifindexError
from gifindex.index import Index, SearchSpec
from gifindex.manifest import ModelEntry

CONFIG = SignatureConfig(resolution=16, num_probes=3, steps=2)
LOAD = dict(arch="timm:test_resnet", num_classes=10, input_size=16)


def _cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """Three tiny test_resnet models indexed at 16 px (their architecture's default is 160 px)."""
    root = tmp_path_factory.mktemp("q")
    files = {}
    for i in range(3):
        torch.manual_seed(i)
        files[f"m{i}"] = root / f"m{i}.pt"
        torch.save(timm.create_model("test_resnet", num_classes=10).state_dict(), files[f"m{i}"])
    with Index.create(root / "idx", CONFIG) as idx:
        idx.ingest([ModelEntry(ref=str(p), name=n, **LOAD) for n, p in files.items()])
    return root / "idx", files


def test_same_signature_is_distance_zero_in_every_form():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((4, 64))
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)  # as stored
    assert 1.0 - float(v[1] @ v[1]) != 0.0   # float16 storage: the inner product alone says ~1e-4
    twice = np.vstack([v, v[1:2]])
    d = distance_matrix(twice)
    assert d[1, 4] == d[4, 1] == 0.0 and d[0, 4] > 0.5
    assert signature_distances(twice, v[1]).tolist().count(0.0) == 2


def test_indexed_model_against_itself_and_its_own_file(index):
    path, files = index
    for args in (["m0", "m0"], [files["m0"], "m0"], ["m0", "m0", "--exact"], [files["m0"], "m0", "--exact"]):
        result = _cli("distance", "-i", path, *args)
        assert result.exit_code == 0, result.output
        assert float(result.output.strip().splitlines()[-1]) == 0.0, (args, result.output)
    exact = _cli("distance", "-i", path, "m0", "m1", "--exact")
    compressed = _cli("distance", "-i", path, files["m0"], "m1")
    assert abs(float(exact.output.splitlines()[-1]) - float(compressed.output.splitlines()[-1])) < 0.02
    with Index.open(path) as idx:
        assert idx.distance("m1", "m1") == 0.0
        assert idx.matrix(["m1", "m2", "m1"])[1][0, 2] == 0.0
        first = idx.nearest(str(files["m2"]), k=1)[0]
        assert (first.name, first.distance) == ("m2", 0.0)


def test_exact_signed_line_says_stored_options(index):
    path, files = index
    result = _cli("distance", "-i", path, "m0", files["m1"], "--exact", "--json")
    import json

    signed = json.loads(result.stdout)["signed"]
    assert "stored options of indexed model 'm0'" in signed[0]["convention_from"]
    assert signed[1]["reused_from"] == "m1" and signed[1]["input_size"] == [16, 16]


def test_loading_options_for_indexed_names_are_refused(index):
    path, files = index
    for args in (["nearest", "-i", path, "m0", "--input-size", "99"],
                 ["distance", "-i", path, "m0", "m1", "--exact", "--arch", "timm:resnet18"],
                 ["suspect", "-i", path, "m1", "--owner", "m0", "--mean", "0.1"]):
        result = _cli(*args)
        assert result.exit_code != 0 and "indexed name" in result.output, (args, result.output)
        assert "Traceback" not in result.output
    ok = _cli("distance", "-i", path, files["m0"], "m0", "--input-size", "16", "--arch", "timm:test_resnet",
              "--num-classes", "10")   # the options apply to the file
    assert ok.exit_code == 0 and float(ok.output.splitlines()[-1]) == 0.0, ok.output


def test_mistyped_name_fails_before_signing_with_did_you_mean(index):
    path, _ = index
    result = _cli("distance", "-i", path, "m0", "m00", "--exact")
    assert result.exit_code != 0 and "did you mean 'm0'" in result.output
    assert "signed" not in result.output       # nothing was signed first
    removed = _cli("remove", "-i", path, "m00")
    assert removed.exit_code != 0 and "did you mean" in removed.output


def test_api_refuses_what_is_not_a_query(index):
    path, _ = index
    with Index.open(path) as idx:
        assert sorted(n.name for n in idx.nearest("m0", k=np.int64(2))) == ["m1", "m2"]
        for bad in (None, 5, 2.5):
            with pytest.raises(GifindexError, match="a query is"):
                idx.nearest(bad)
        with pytest.raises(GifindexError, match="list of indexed names"):
            idx.matrix("m1")
        vector = idx.vectors(["m0"])[1][0]
        assert idx.nearest(vector, k=1)[0].distance == 0.0
        for scale in (0.0, 10.0):
            with pytest.raises(GifindexError, match="norm"):
                idx.nearest(vector * scale, k=1)


def test_search_kind_reported_is_the_one_built():
    spec = SearchSpec(kind="ivfpq")
    kind, reason = spec.resolve(50, 512)
    assert kind == "flat" and "ivfpq" in reason and "64" in reason
    assert spec.resolve(500, 512)[0] == "ivfpq"


def test_small_ivfpq_builds_without_faiss_warnings(capfd):
    from gifindex.index.search import build_index, index_kind

    rng = np.random.default_rng(0)
    v = rng.standard_normal((100, 256)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    built = build_index(v.astype(np.float16), np.arange(100), SearchSpec(kind="ivfpq"))
    assert index_kind(built) == "ivfpq"
    assert "WARNING" not in capfd.readouterr().err


def test_scalable_tree_keeps_random_init(tmp_path, monkeypatch):
    import gifindex.index.store as store
    from gifindex.tree import to_json

    with Index.create(tmp_path / "idx", CONFIG) as idx:
        idx.ingest([ModelEntry(ref="timm:test_resnet", name=f"r{i}", random_init=True, **{
            k: v for k, v in LOAD.items() if k != "arch"}) for i in range(3)])
        monkeypatch.setattr(store, "MAX_DENSE_MODELS", 2)
        tree = to_json(idx.tree())
    text = str(tree)
    assert text.count("'random_init': True") == 3
