"""Issue 12: what a new user trips over. One test (or more) per numbered point, reproducing it first."""
from __future__ import annotations

import json
import struct
import warnings

import pytest
import torch
import torchvision

from gifindex.index import Index


# ---------------------------------------------------------------------------- 1. safetensors sniff order

def _safetensors_starting_with_0x80() -> tuple[bytes, dict[str, torch.Tensor]]:
    """A real safetensors file (written by the library) whose header length's low byte is 0x80."""
    from safetensors.torch import save
    sd = {k: v.contiguous() for k, v in torchvision.models.resnet18(num_classes=3).state_dict().items()}
    for pad in range(512):
        data = save(sd, metadata={"note": "x" * pad})
        if data[0] == 0x80:
            return data, sd
    raise AssertionError("no padding gave a 0x80 first byte")


def test_safetensors_with_pickle_magic_first_byte(tmp_path) -> None:
    from safetensors.torch import load

    from gifindex.models import load_model
    from gifindex.models.files import sniff
    data, sd = _safetensors_starting_with_0x80()
    assert data[0] == 0x80 and struct.unpack("<Q", data[:8])[0] % 256 == 0x80
    assert set(load(data)) == set(sd)                        # safetensors' own reader accepts it
    assert sniff(data) == "safetensors"                     # was "torch-legacy" -> refused as a pickle
    path = tmp_path / "r18.safetensors"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # no torch warning leaks either
        lm = load_model(str(path), arch="tv:resnet18")
    assert lm.meta["format"] == "safetensors" and lm.num_outputs == 3
    torch.testing.assert_close(lm.module.state_dict()["fc.weight"], sd["fc.weight"], rtol=0, atol=0)


def test_pickles_and_broken_safetensors_still_sniffed() -> None:
    import io
    import pickle

    from gifindex.models.files import sniff
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf, _use_new_zipfile_serialization=False)
    assert buf.getvalue()[0] == 0x80 and sniff(buf.getvalue()) == "torch-legacy"
    assert sniff(pickle.dumps({"a": 1}, protocol=4)) == "torch-legacy"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    good = struct.pack("<Q", len(header)) + header + b"\0" * 4
    assert sniff(good) == "safetensors"
    broken = struct.pack("<Q", len(header)) + header[:-3] + b"!!!" + b"\0" * 4   # bad JSON
    assert sniff(broken) == "safetensors"                   # still reported as a corrupt safetensors file
    assert sniff(b"\x80" + broken[1:]) == "torch-legacy"


# ---------------------------------------------------------------------------- the command line, end to end

TINY = ["-K", "2", "-T", "2", "--resolution", "16", "--proj-dim", "16", "--seed", "1"]
ARCH = ["--arch", "timm:test_resnet", "--num-classes", "10"]


def _run(*args, code: int = 0):
    from click.testing import CliRunner

    from gifindex.cli import main
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def _net(seed: int, base: dict | None = None, noise: float = 0.0) -> dict:
    import timm
    torch.manual_seed(seed)
    sd = timm.create_model("test_resnet", num_classes=10).state_dict()
    if base is not None:
        sd = {k: v + noise * torch.randn_like(v) * v.std() if v.is_floating_point() and v.numel() > 1 else v
              for k, v in base.items()}
    return sd


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Five test_resnet state dicts in <tmp>/models: a, a_ft (a + 2% noise) and unrelated b, c, d."""
    root = tmp_path_factory.mktemp("newuser")
    folder = root / "models"
    folder.mkdir()
    a = _net(0)
    sds = {"a": a, "a_ft": _net(0, a, 0.02), "b": _net(1), "c": _net(2), "d": _net(3)}
    for name, sd in sds.items():
        torch.save(sd, folder / f"{name}.pt")
    return root


@pytest.fixture
def hub(models, tmp_path, monkeypatch):
    """An empty tiny index at <tmp>/hub, with the working directory at <tmp>/work."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    _run("init", "-i", tmp_path / "hub", *TINY)
    return tmp_path / "hub"


def _ingest(hub, *args, code: int = 0):
    return _run("ingest", "-i", hub, "--executor", "inline", "--no-progress", *args, code=code)


def _records(hub) -> dict:
    return {r["name"]: r for r in json.loads(_run("list", "-i", hub, "--json").stdout)}


# 2. stored references do not depend on the working directory; missing files are named by hash

def test_refs_are_absolute_and_found_again_by_hash(models, hub, tmp_path, monkeypatch):
    import os
    import shutil
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "m.yaml").write_text("- name: b\n  ref: ../models/b.pt\n  arch: timm:test_resnet\n"
                                      "  num_classes: 10\n")
    shutil.copy(models / "models" / "a.pt", tmp_path / "work" / "a.pt")
    (tmp_path / "models").mkdir()
    shutil.copy(models / "models" / "b.pt", tmp_path / "models" / "b.pt")
    _ingest(hub, "a.pt", *ARCH, "--name", "a")                      # relative to the working directory
    _ingest(hub, "--manifest", os.path.relpath(manifests / "m.yaml"))  # relative to the manifest, with '..'
    records = _records(hub)
    assert records["a"]["ref"] == str((tmp_path / "work" / "a.pt").resolve())
    assert records["b"]["ref"] == str((tmp_path / "models" / "b.pt").resolve()) and ".." not in records["b"]["ref"]
    assert records["a"]["metadata"]["load"]["ref"] == records["a"]["ref"]
    sha = records["a"]["metadata"]["file_sha256"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                                        # another directory: still reloads
    exact = json.loads(_run("distance", "-i", hub, "a", "b", "--exact", "--json").stdout)
    assert exact["kind"] == "exact" and 0.3 < exact["distance"] <= 2
    moved = tmp_path / "copies" / "a.pt"                                # moved next to the index: found by hash
    moved.parent.mkdir()
    (tmp_path / "work" / "a.pt").rename(moved)
    again = json.loads(_run("distance", "-i", hub, "a", "b", "--exact", "--json").stdout)
    assert again["distance"] == pytest.approx(exact["distance"], abs=1e-9)
    moved.unlink()
    gone = _run("distance", "-i", hub, "a", "b", "--exact", code=1)
    assert f"model 'a' was ingested from {records['a']['ref']} (weights sha256 {sha}), which is missing" \
        in gone.output
    assert "manifest" not in gone.output and gone.output.count("\n") == 1


# 3. a file query reuses the convention of the indexed copy of the same file; every on-the-fly signing says
#    what it used

def test_file_query_reuses_the_indexed_convention(models, hub):
    a = models / "models" / "a.pt"
    _ingest(hub, a, *ARCH, "--name", "a", "--input-size", "16", "--mean", "0.5", "0.5", "0.5",
            "--std", "0.25,0.25,0.25")                                  # timm's spaced form and the comma form
    _ingest(hub, models / "models" / "b.pt", *ARCH, "--name", "b")
    meta = _records(hub)["a"]["metadata"]
    assert meta["input_size"] == [16, 16] and meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3
    result = _run("nearest", "-i", hub, a, "-k", "2", "--json")
    doc = json.loads(result.stdout)
    assert doc["signed"]["reused_from"] == "a"
    assert doc["signed"]["input_size"] == [16, 16] and doc["signed"]["mean"] == [0.5] * 3
    assert doc["signed"]["arch"] == "timm:test_resnet"
    import timm   # the resize is part of the convention (timm's and torchvision's resnet18 differ only in it)
    expected = timm.create_model("test_resnet").pretrained_cfg["interpolation"]
    assert meta["interpolation"] == doc["signed"]["interpolation"] == expected
    assert f", {expected} resize" in result.stderr
    assert doc["neighbors"][0]["name"] == "a" and doc["neighbors"][0]["distance"] < 0.01   # was 0.906
    assert "signed " in result.stderr and "indexed model 'a' (same weights file)" in result.stderr
    with Index.open(hub) as index:  # what a second look at the same file (suspect's fingerprint) loads with
        entry = index.loading_entry(str(a))
        assert entry.input_size in (16, (16, 16)) and (entry.mean, entry.std) == ((0.5,) * 3, (0.25,) * 3)
        assert entry.arch == "timm:test_resnet" and index.loading_entry("a").name == "a"
        assert index.loading_entry(str(models / "models" / "c.pt")).input_size is None   # no indexed copy
    other = _run("nearest", "-i", hub, models / "models" / "c.pt", "--json")   # no indexed copy: detected
    signed = json.loads(other.stdout)["signed"]
    assert (signed["arch"], signed["arch_from"], signed["convention_from"]) == ("timm:test_resnet", "detected",
                                                                               "architecture default")
    assert "(its architecture's default: a weights file carries none" in other.stderr
    assert signed["input_size"] and signed["mean"] and signed["std"] and signed["reused_from"] is None
    assert "signing c" in other.stderr                                  # a progress bar on stderr
    text = _run("nearest", "-i", hub, models / "models" / "c.pt", "--input-size", "16").stderr
    assert "input 16 px" in text and "(input size given; mean, std: its architecture's default" in text


# 4. manifest entries take the command line's loading options as defaults; missing weights are counted first

def test_manifest_takes_command_line_flags(models, hub, tmp_path):
    manifest = tmp_path / "hubmodels.yaml"
    manifest.write_text("- name: r1\n  ref: timm:test_resnet\n  num_classes: 10\n"
                        "- name: f1\n  ref: models/d.pt\n")   # resolved against the manifest's folder
    import shutil
    (tmp_path / "models").mkdir()
    shutil.copy(models / "models" / "d.pt", tmp_path / "models" / "d.pt")
    refused = _ingest(hub, "--manifest", manifest, "--arch", "timm:test_resnet", code=1)
    assert "1 of 2 entries have no local weights" in refused.stderr and "(r1)" in refused.stderr
    assert refused.output.count("pass --weights FILE, or --random-init") == 1     # each failure printed once
    done = json.loads(_ingest(hub, "--manifest", manifest, "--random-init", "--json").stdout)
    assert done["added"] == 1 and done["without_local_weights"] == []             # r1 (f1 was added before)
    records = _records(hub)
    assert records["r1"]["random_init"] and not records["f1"]["random_init"]
    assert records["f1"]["metadata"]["arch"] == "timm:test_resnet"                # --arch applied to the file


# 5. random weights are marked everywhere, and a second random draw gets its own name

def test_random_init_is_marked_and_never_clashes(models, hub):
    for _ in range(2):
        _ingest(hub, "timm:test_resnet", "--random-init", "--num-classes", "10")
    _ingest(hub, models / "models" / "a.pt", *ARCH, "--name", "a")
    records = _records(hub)
    randoms = sorted(n for n in records if n.startswith("timm:test_resnet#random-"))
    assert len(randoms) == 2 and all(len(n.rpartition("-")[2]) == 8 for n in randoms)
    assert all(records[n]["random_init"] and records[n]["metadata"]["random_init"] for n in randoms)
    assert not records["a"]["random_init"]
    listing = _run("list", "-i", hub).stdout
    assert listing.count("RANDOM INIT") == 2
    near = json.loads(_run("nearest", "-i", hub, "a", "--json").stdout)["neighbors"]
    assert {n["name"]: n["random_init"] for n in near} == {randoms[0]: True, randoms[1]: True}
    assert "(random init)" in _run("nearest", "-i", hub, "a").stdout
    tree = json.loads(_run("tree", "-i", hub, "--json").stdout)
    leaves = []
    stack = [tree["root"]]
    while stack:
        node = stack.pop()
        stack += node.get("children", [])
        leaves += [node] if "name" in node else []
    assert {leaf["name"] for leaf in leaves if leaf.get("metadata", {}).get("random_init")} == set(randoms)


# 6. -k 0 is a usage error; a mistyped name gets a suggestion

def test_nearest_k_zero_and_mistyped_names(models, hub):
    _ingest(hub, models / "models" / "a.pt", *ARCH, "--name", "a")
    _ingest(hub, models / "models" / "b.pt", *ARCH, "--name", "b")
    bad = _run("nearest", "-i", hub, "a", "-k", "0", code=2)
    assert "Invalid value for '-k'" in bad.output and "the index is empty" not in bad.output
    typo = _run("nearest", "-i", hub, "aa", code=1)
    assert typo.stderr.strip() == "error: no model named 'aa'; did you mean 'a'?"
    typo = _run("distance", "-i", hub, "a", "bb", code=1)
    assert "no model named 'bb'; did you mean 'b'?" in typo.stderr


def test_matrix_of_an_empty_index_says_so_beside_the_empty_table(hub):
    result = _run("matrix", "-i", hub)
    assert result.stdout.strip() == '""'   # the table programs read, with no models in it
    assert result.stderr.strip() == "the index is empty: no distances (ingest some models first)"
    assert json.loads(_run("matrix", "-i", hub, "--json").stdout)["names"] == []


# 7. suspect states the smallest p-value its population can give; --exclude must name indexed models

def test_suspect_p_value_floor_and_exclude(models, hub):
    for name in ("a", "a_ft", "b", "c", "d"):
        _ingest(hub, models / "models" / f"{name}.pt", *ARCH, "--name", name)
    out = _run("suspect", "-i", hub, "a_ft", "--owner", "a").stdout
    assert "the smallest 3 models can give is 1/(n+1) = 0.2500" in out
    doc = json.loads(_run("suspect", "-i", hub, "a_ft", "--owner", "a", "--json").stdout)
    assert doc["p_value_floor"] == pytest.approx(0.25) and doc["p_value"] >= doc["p_value_floor"]
    assert doc["random_init"] == []
    bad = _run("suspect", "-i", hub, "a_ft", "--owner", "a", "--exclude", "dd", code=1)
    assert "--exclude names no indexed model: 'dd' (did you mean 'd'?)" in bad.stderr


# 8. tree and matrix speak JSON; --color-by on the command line

def test_tree_and_matrix_json_and_color_by(models, hub, tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("".join(f"- name: {n}\n  ref: {models / 'models' / n}.pt\n  arch: timm:test_resnet\n"
                                f"  num_classes: 10\n  tags: {{family: {n[0]}}}\n" for n in ("a", "a_ft", "b")))
    _ingest(hub, "--manifest", manifest)
    matrix = json.loads(_run("matrix", "-i", hub, "--json").stdout)
    assert sorted(matrix["names"]) == ["a", "a_ft", "b"] and len(matrix["distances"]) == 3
    tree = json.loads(_run("tree", "-i", hub, "--json").stdout)
    assert tree["n"] == 3 and tree["linkage"] == "average"
    wrote = json.loads(_run("tree", "-i", hub, "-o", tmp_path / "t.html", "--color-by", "family", "--json").stdout)
    assert wrote == {"wrote": str(tmp_path / "t.html"), "format": "html", "n": 3, "linkage": "average",
                     "color_by": "family"}
    assert '"colorBy":"family"' in (tmp_path / "t.html").read_text()
    bad = _run("tree", "-i", hub, "-o", tmp_path / "t.png", "--color-by", "dataset", code=1)
    assert "no model has a tag 'dataset'" in bad.stderr and "family" in bad.stderr


# resume: unchanged files are not read or hashed again

def test_resume_skips_unchanged_files_without_rehashing(models, hub, tmp_path, monkeypatch):
    import os

    import gifindex.models
    manifest = tmp_path / "m.yaml"
    manifest.write_text("".join(f"- name: {n}\n  ref: {models / 'models' / n}.pt\n  arch: timm:test_resnet\n"
                                f"  num_classes: 10\n" for n in ("a", "b")))
    _ingest(hub, "--manifest", manifest)
    real, calls = gifindex.models.load_model, []
    monkeypatch.setattr(gifindex.models, "load_model", lambda ref, **kw: calls.append(ref) or real(ref, **kw))
    again = json.loads(_ingest(hub, "--manifest", manifest, "--json").stdout)
    assert again["skipped"] == 2 and calls == []                      # nothing loaded, nothing hashed
    b = models / "models" / "b.pt"
    stat = b.stat()
    os.utime(b, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))      # touched: hashed again, same content
    try:
        again = json.loads(_ingest(hub, "--manifest", manifest, "--json").stdout)
    finally:
        os.utime(b, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert again["skipped"] == 2 and calls == [str(b.resolve())]


# 8. an output path that cannot be written, and a training checkpoint whose names carry a wrapper's prefix

def test_unwritable_outputs_and_a_lightning_checkpoint(models, hub, tmp_path):
    sd = torch.load(models / "models" / "a.pt")
    ckpt = tmp_path / "last.ckpt.pt"
    torch.save({"epoch": 9, "state_dict": {f"model.{k}": v for k, v in sd.items()}}, ckpt)
    _ingest(hub, models / "models" / "a.pt", *ARCH, "--name", "a")
    _ingest(hub, ckpt, *ARCH, "--name", "a_lightning")  # the same weights: skipped as already indexed
    assert set(_records(hub)) == {"a"}
    assert float(_run("distance", "-i", hub, "a", ckpt, *ARCH).stdout.split()[-1]) < 1e-4
    for command, name in (("tree", "out.nwk"), ("matrix", "out.csv")):
        target = tmp_path / "no" / "such" / name
        missing = _run(command, "-i", hub, "-o", target, code=1)
        assert missing.stderr.strip() == f"error: cannot write {target}: that folder does not exist"
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    result = _run("tree", "-i", hub, "--format", "json", "-o", blocked / "tree.json", code=1)
    assert result.stderr.startswith(f"error: cannot write {blocked / 'tree.json'}: ") and "\n" not in \
        result.stderr.strip()


# 9. a folder of model files is its files (a Hugging Face model folder stays one model)

def test_a_folder_of_model_files_is_ingested_file_by_file(models, hub, tmp_path):
    folder = tmp_path / "zoo"
    folder.mkdir()
    for name in ("b", "c"):
        (folder / f"{name}.pt").write_bytes((models / "models" / f"{name}.pt").read_bytes())
    (folder / "notes.txt").write_text("not a model")
    result = _ingest(hub, folder, *ARCH)
    assert "folder " + str(folder) + ": 2 model files" in result.stderr
    assert set(_records(hub)) == {"b", "c"}
    assert "apply to a single REF (the folder given holds 2 model files)" in \
        _ingest(hub, folder, *ARCH, "--name", "x", code=1).stderr
    (tmp_path / "empty").mkdir()
    assert "is a directory, not a model file" in _ingest(hub, tmp_path / "empty", code=1).output


def test_slips_on_the_ingest_line_are_caught_before_any_work(models, hub, monkeypatch):
    """`--mean 1 2` (two numbers) leaves a number as a model reference; two files with one --name; a name
    another model has fails before the model is signed; a very long name is shortened where it is printed."""
    m = models / "models"
    slip = _ingest(hub, m / "a.pt", *ARCH, "--mean", "1", "2", code=2)
    assert "--mean takes one number (every channel) or three" in slip.output and not _records(hub)
    assert "single REF (2 given)" in _ingest(hub, m / "a.pt", m / "b.pt", *ARCH, "--name", "x", code=1).stderr
    _ingest(hub, m / "a.pt", *ARCH, "--name", "mine")
    import importlib

    signing = importlib.import_module("gifindex.signature")   # the module (gifindex.signature is the function)

    def not_expected(*args, **kwargs):
        raise AssertionError("signed a model whose name was taken")

    monkeypatch.setattr(signing, "signature", not_expected)
    clash = _ingest(hub, m / "b.pt", *ARCH, "--name", "mine", code=1)
    assert "name 'mine' is already used by another model" in clash.stdout + clash.stderr
    long = _ingest(hub, m / "c.pt", *ARCH, "--name", "n" * 5000, code=1)
    line = next(x for x in long.output.splitlines() if x.startswith("failed"))
    assert "(5000 characters)" in line and len(line) < 400


def test_a_png_tree_of_names_without_glyphs_warns_once(tmp_path, caplog):
    import numpy as np

    from gifindex.tree import build_tree, save_dendrogram

    tree = build_tree(["模型一", "モデル", "abc"], np.array([[0, .5, .9], [.5, 0, .8], [.9, .8, 0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # matplotlib's per-glyph UserWarnings do not escape
        save_dendrogram(tree, tmp_path / "t.png")
        save_dendrogram(tree, tmp_path / "t.svg", format="svg")
    said = [r.getMessage() for r in caplog.records if "no glyph" in r.getMessage()]
    assert len(said) == 1 and "6 characters" in said[0] and "t.png" in said[0]
    assert "模型一" in (tmp_path / "t.svg").read_text()


def test_a_closed_pipe_ends_a_command_quietly(models, hub):
    """`gifindex list | head -1`: the reader leaves early; no error line, no traceback."""
    import subprocess
    import sys

    script = ("import sys; from gifindex.cli import main; sys.argv = ['gifindex', 'info', '-i', sys.argv[1]]; main()")
    proc = subprocess.Popen([sys.executable, "-c", script, str(hub)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()   # nobody reads
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and stderr == ""
