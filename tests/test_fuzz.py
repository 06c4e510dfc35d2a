"""Property and fuzz tests (issue 5): parsers and the file sniffer only ever raise gifindex's own errors;
distances are symmetric, zero on the diagonal and within [0, 2]."""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from gifindex.distance import curve_distance
from gifindex.errors import GifindexError
from gifindex.manifest import FIELDS, ModelEntry, parse_manifest
from gifindex.models.files import read_weights_file, sniff
from gifindex.refs import ModelRef, parse_ref

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.one_of(st.text(max_size=60),
                 st.builds(lambda p, r: p + ":" + r, st.sampled_from(["timm", "tv", "torchvision", "taskonomy",
                                                                      "hf-hub", "TIMM", "x"]), st.text(max_size=30))))
def test_parse_ref_only_raises_ref_errors(text):
    try:
        ref = parse_ref(text)
    except GifindexError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(ref, ModelRef) and ref.kind in ("timm", "torchvision", "taskonomy", "hf-hub", "file")
    assert parse_ref(ref.canonical()) == ref or ref.kind == "file"


scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10 ** 12), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
entries = st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8), st.integers()), values,
                          max_size=6)


@FAST
@given(st.one_of(st.text(max_size=200), st.lists(st.one_of(entries, values), max_size=5).map(
    lambda d: yaml.safe_dump(d)), st.dictionaries(st.sampled_from(["models", "name", "x", 3]), values,
                                                   max_size=3).map(lambda d: yaml.safe_dump(d))))
def test_manifest_parser_only_raises_manifest_errors(text):
    try:
        out = parse_manifest(text, base=tempfile.gettempdir())
    except GifindexError as exc:
        assert "\n" not in str(exc)
        return
    assert all(isinstance(e, ModelEntry) for e in out)
    names = [e.display_name() for e in out]
    assert len(names) == len(set(names))


def _valid_files() -> list[bytes]:
    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2)}
    zipped, legacy = io.BytesIO(), io.BytesIO()
    torch.save(sd, zipped)
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    return [zipped.getvalue(), legacy.getvalue(), st_save(sd)]


VALID = _valid_files()


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            data = data[:pos]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos:pos + len(chunk)] = chunk
    return bytes(data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=512), mutated()))
def test_sniffer_and_reader_never_crash_or_execute(tmp_path_factory, data):
    assert isinstance(sniff(data), str)
    folder = tmp_path_factory.mktemp("fz")
    path = folder / "x.pt"
    path.write_bytes(data)
    cwd = os.getcwd()
    os.chdir(folder)  # anything a payload might create would land here
    try:
        wf = read_weights_file(path)
        assert wf.state_dict is not None and all(isinstance(v, torch.Tensor) for v in wf.state_dict.values())
    except GifindexError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in folder.iterdir()) == ["x.pt"]


curves = st.integers(1, 4).flatmap(lambda n: st.tuples(*(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=n * 6, max_size=n * 6)
    for _ in range(2))).map(lambda ab: tuple(np.array(x, np.float32).reshape(n, 2, 3) for x in ab)))


@FAST
@given(curves)
def test_distance_properties(pair):
    a, b = pair
    d_ab, d_ba = curve_distance(a, b), curve_distance(b, a)
    assert d_ab == pytest.approx(d_ba, abs=1e-12)
    assert 0.0 <= d_ab <= 2.0
    assert curve_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert curve_distance(a, 3.5 * a) == pytest.approx(0.0, abs=1e-9)


# issue 11: every file of an index is checked when read --------------------------------------------------------
@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    from gifindex.config import SignatureConfig
    from gifindex.executors import InlineExecutor
    from gifindex.index import Index

    root = tmp_path_factory.mktemp("fzidx") / "idx"
    with Index.create(root, SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=4)) as index:
        index.ingest([ModelEntry(ref="timm:test_resnet", name=f"r{i}", random_init=True, num_classes=4,
                                 input_size=16) for i in range(3)], executor=InlineExecutor())
        assert len(index) == 3
    return root


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2, 2 ** 40), st.floats(), st.text(max_size=8)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=6)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["format", "format_version", "config", "config_hash", "probes_sha256",
                                           "search", "signature_dim", "config.num_probes", "config.seed",
                                           "config.method", "search.kind", "search.nlist"]),
                          st.one_of(st.just("<delete>"), json_values)), min_size=1, max_size=3))
def test_edited_index_json_is_refused_by_name_or_opens(small_index, tmp_path_factory, edits):
    import json
    import shutil

    from gifindex.index import Index

    root = tmp_path_factory.mktemp("fz") / "idx"
    shutil.copytree(small_index, root)
    meta = json.loads((root / "index.json").read_text())
    for key, value in edits:
        holder, _, field = key.rpartition(".")
        target = meta.get(holder) if holder else meta
        if not isinstance(target, dict):
            continue
        if value == "<delete>":
            target.pop(field, None)
        else:
            target[field] = value
    (root / "index.json").write_text(json.dumps(meta))
    try:
        with Index.open(root) as index:
            index.nearest("r0", k=2)
    except GifindexError as exc:
        assert "\n" not in str(exc) and ("index.json" in str(exc) or str(root) in str(exc)), str(exc)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["catalog.sqlite", "search.faiss", "search.json", "search.sha256", "probes.npz"]),
       st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=6), st.booleans())
@example("catalog.sqlite", [(0.10253077306801475, 32)], False)  # a model id read back as NULL (found by CI)
@example("catalog.sqlite", [(0.09375, 128)], False)  # text that is not UTF-8 (found by --hypothesis-seed=1)
@example("search.faiss", [(0.46875, 6)], False)  # a vector length too large to allocate (found by CI)
def test_damaged_index_files_never_crash_a_read(small_index, tmp_path_factory, name, changes, truncate):
    import shutil

    from gifindex.index import Index

    root = tmp_path_factory.mktemp("fz") / "idx"
    shutil.copytree(small_index, root)
    path = root / name
    data = bytearray(path.read_bytes())
    for where, byte in changes:
        data[int(where * (len(data) - 1))] = byte
    path.write_bytes(bytes(data[: len(data) // 2] if truncate else data))
    try:
        with Index.open(root) as index:
            found = index.nearest("r0", k=2)
            index.verify()
        assert [n.name for n in found] and all(0.0 <= n.distance <= 2.0 for n in found)
    except GifindexError as exc:
        assert "\n" not in str(exc), str(exc)
