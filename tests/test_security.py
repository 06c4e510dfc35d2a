"""Hostile and broken inputs (issue 5): each is refused with one clear line naming the file and the fix,
exit code 1, no traceback, and the index unchanged (models, shards, search index byte-identical)."""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from click.testing import CliRunner
from safetensors.torch import save_file

from gifindex.cli import main
from gifindex.config import SignatureConfig
from gifindex.curves import compute_curves
from gifindex.errors import GifindexError, IndexError_, ModelLoadError, SignatureError
from gifindex.index import Index
from gifindex.index.search import search
from gifindex.manifest import ManifestError, parse_manifest, read_manifest
from gifindex.models.detect import detect_architecture
from gifindex.models.files import read_weights_file
from gifindex.probes import make_probes

from helpers import SmoothNet, wrap

CONFIG = SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=16, seed=7)
ARCH = ["--arch", "timm:test_resnet", "--num-classes", "4", "--input-size", "16"]
REFIX = "re-download the file or re-save it with torch.save(model.state_dict(), PATH)"


class WritesMarker:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=4)
    torch.save(model.state_dict(), root / "good.pt")
    index = root / "idx"
    Index.create(index, CONFIG).close()
    result = CliRunner().invoke(main, ["ingest", "-i", str(index), str(root / "good.pt"), *ARCH, "--executor",
                                       "inline", "--no-progress"])
    assert result.exit_code == 0, result.output
    return root, model


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith("catalog.sqlite")}


def _models(root: Path):
    with Index.open(root) as index:
        return [(r.name, r.weights_sha256, r.shard, r.row) for r in index.records()]


def refused(hub, args, fragment: str, *, ingest: bool = True) -> str:
    """Run the CLI; assert exit 1, one error line holding ``fragment``, no traceback, index unchanged."""
    root = hub[0] / "idx"
    before, models = _snapshot(root), _models(root)
    argv = (["ingest", "-i", str(root), "--executor", "inline", "--no-progress"] if ingest else []) + \
        [str(a) for a in args]
    result = CliRunner().invoke(main, argv)
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 1, text
    assert fragment in text, text
    assert "Traceback" not in text and not isinstance(result.exception, Exception) or \
        isinstance(result.exception, SystemExit), text
    lines = [line for line in text.splitlines() if fragment in line]
    assert lines and all(len(line) < 600 for line in lines)
    assert _snapshot(root) == before and _models(root) == models
    return text


# 1. code execution through pickle ---------------------------------------------------------------------------
@pytest.mark.parametrize("zipformat", [True, False])
def test_reduce_pickle_never_runs(hub, tmp_path, zipformat):
    marker, evil = tmp_path / "PWNED", tmp_path / "evil.pt"
    torch.save({"w": WritesMarker(str(marker))}, evil, _use_new_zipfile_serialization=zipformat)
    refused(hub, [evil], f"{evil} holds a pickled Python object")
    assert "pass --trust if you trust its origin" in refused(hub, [evil], "--trust")
    (tmp_path / "m.yaml").write_text(f"- name: evil\n  ref: {evil}\n")  # a manifest entry without trust
    refused(hub, ["--manifest", tmp_path / "m.yaml"], "holds a pickled Python object")
    raw = tmp_path / "raw.pkl.pt"  # a bare pickle (no torch container) too
    raw.write_bytes(pickle.dumps(WritesMarker(str(marker)), protocol=2))
    refused(hub, [raw], "holds a pickled Python object")
    assert not marker.exists()


# 2. whole modules and TorchScript ----------------------------------------------------------------------------
def test_whole_module_and_torchscript_need_trust(hub, tmp_path):
    torch.save(SmoothNet(), tmp_path / "module.pt")
    refused(hub, [tmp_path / "module.pt"], "holds a pickled Python object (e.g. a whole nn.Module)")
    torch.jit.script(SmoothNet()).save(str(tmp_path / "scripted.pt"))
    refused(hub, [tmp_path / "scripted.pt"], f"{tmp_path / 'scripted.pt'} is a TorchScript archive; loading it "
                                             "runs code from the file; pass --trust")


# 3. unreadable files -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, fragment", [
    ("truncated", "corrupt or truncated"),
    ("random", f"not a PyTorch, TorchScript or safetensors file (unrecognised content); {REFIX}"),
    ("html", "is an HTML page (a download error or login page saved as a model file), not weights; download"),
    ("lfs", "is a Git LFS pointer (133 bytes), not the weights; run `git lfs pull`"),
    ("empty", f"the file is empty; {REFIX}"),
])
def test_unreadable_files(hub, tmp_path, kind, fragment):
    path = tmp_path / "bad.pt"
    good = (hub[0] / "good.pt").read_bytes()
    path.write_bytes({
        "truncated": good[: len(good) // 3],
        "random": bytes(np.random.default_rng(0).integers(1, 127, 4096, dtype=np.uint8)),
        "html": b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>",
        "lfs": b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 46827520\n",
        "empty": b"",
    }[kind])
    if kind == "random":
        path.write_bytes(b"\x13" + path.read_bytes()[1:])
    text = refused(hub, [path, *ARCH], fragment)
    assert str(path) in text


# 4. wrong extension: the bytes decide --------------------------------------------------------------------------
def test_wrong_extension_detected_by_magic(hub, tmp_path):
    model = hub[1]
    save_file(model.state_dict(), str(tmp_path / "st_named.pt"))
    torch.save(model.state_dict(), tmp_path / "pickle_named.safetensors")
    assert read_weights_file(tmp_path / "st_named.pt").format == "safetensors"
    assert read_weights_file(tmp_path / "pickle_named.safetensors").format == "torch-zip"
    root = hub[0] / "idx"
    before = _snapshot(root)
    result = CliRunner().invoke(main, ["ingest", "-i", str(root), str(tmp_path / "st_named.pt"),
                                       str(tmp_path / "pickle_named.safetensors"), *ARCH[:2], "--num-classes", "4",
                                       "--input-size", "16", "--executor", "inline", "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["skipped"] == 2  # the same weights as good.pt: one model
    assert _snapshot(root) == before


# 5. corrupt safetensors ------------------------------------------------------------------------------------------
def _st(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("blob, fragment", [
    (struct.pack("<Q", 12) + b"{not json!!}" + b"\0" * 8, "header is not valid JSON"),
    (struct.pack("<Q", 1 << 40) + b"{" + b"\0" * 30, "declared header of 1099511627776 bytes exceeds"),
    (_st({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
     "tensor 'w' offsets [0, 16] lie outside the 8-byte data section"),
    (_st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
          "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24), "tensors 'a' and 'b' overlap"),
    (_st({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 16]}}, b"\0" * 16),
     "needs 4.39805e+12 bytes but its offsets span 16"),
    (_st({"w": {"dtype": "X99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "unknown dtype 'X99'"),
])
def test_corrupt_safetensors(hub, tmp_path, blob, fragment):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    text = refused(hub, [path, *ARCH], f"cannot read {path}: corrupt safetensors file (")
    assert fragment in text and REFIX in text


# 6. zip bombs: declared sizes capped before anything is decompressed or allocated ------------------------------
def test_zip_bombs_refused_before_decompression(hub, tmp_path):
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({}))
        z.writestr("archive/data/0", b"\0" * (64 << 20))  # 64 MB of zeros in ~64 KB
    assert bomb.stat().st_size < 200_000
    started = time.monotonic()
    refused(hub, [bomb, *ARCH], "(a zip bomb or a corrupt archive); refusing to decompress it")
    assert time.monotonic() - started < 5
    # a stored archive whose directory claims an entry far larger than the file
    liar = tmp_path / "liar.pt"
    buf = io.BytesIO()
    torch.save({"w": torch.ones(4)}, buf)
    data = bytearray(buf.getvalue())
    cd = data.rfind(b"PK\x01\x02")  # last central-directory entry: patch its uncompressed size
    data[cd + 24:cd + 28] = struct.pack("<I", 0xFFFFFFF0)
    liar.write_bytes(bytes(data))
    refused(hub, [liar, *ARCH], "cannot read")
    with pytest.raises(ModelLoadError, match="zip bomb|corrupt"):
        read_weights_file(liar)


# 7. architectures ----------------------------------------------------------------------------------------------
def test_state_dicts_that_fit_no_architecture(hub, tmp_path):
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "lin.pt")
    text = refused(hub, [tmp_path / "lin.pt", *ARCH], "the state dict does not fit timm:test_resnet: missing: ")
    assert "unexpected: " in text or "bias" in text
    sd = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).state_dict()
    with pytest.raises(GifindexError, match=r"matches no torchvision or timm architecture \(4 tensors\)"):
        detect_architecture(sd, libraries=("torchvision",))


# 8. NaN / Inf -------------------------------------------------------------------------------------------------
def test_nan_weights_outputs_and_gradients_refused(hub, tmp_path):
    sd = {k: v.clone() for k, v in hub[1].state_dict().items()}
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)
    sd[key].view(-1)[0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    refused(hub, [tmp_path / "nan.pt", *ARCH], f"the weights hold NaN or Inf in {key}; the model is refused")
    probes = make_probes(CONFIG)

    class NanOut(nn.Module):
        def forward(self, x):
            return x.flatten(1) * float("nan")

    class InfGrad(nn.Module):
        def forward(self, x):
            return torch.sqrt((x * 0).flatten(1).sum(1, keepdim=True))  # d sqrt(u)/du at u = 0: inf

    with pytest.raises(SignatureError, match="model output is NaN or Inf on the probes"):
        compute_curves(wrap(NanOut()), probes, CONFIG)
    with pytest.raises(SignatureError, match="input gradients are NaN or Inf on the probes"):
        compute_curves(wrap(InfGrad()), probes, CONFIG)


# 9. models that do not fit the pipeline ------------------------------------------------------------------------
def test_wrong_channels_non_tensor_output_and_oom(hub, tmp_path):
    torch.save(nn.Sequential(nn.Conv2d(2, 2, 3), nn.Flatten()), tmp_path / "two.pt")
    refused(hub, [tmp_path / "two.pt", "--trust", "--input-size", "16"],
            "the model accepts neither 3-channel RGB nor 1-channel grey images")

    class Words(nn.Module):
        def forward(self, x):
            return "a string"

    probes = make_probes(CONFIG)
    with pytest.raises(SignatureError, match="model returned str, expected a tensor"):
        compute_curves(wrap(Words()), probes, CONFIG)

    class FakeOOM(nn.Module):
        """Runs out of memory above 2 images per batch (a fake CUDA OOM)."""

        def __init__(self):
            super().__init__()
            self.net = SmoothNet(seed=3)
            self.sizes = []

        def forward(self, x):
            self.sizes.append(len(x))
            if len(x) > 2:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.net(x)

    oom = FakeOOM()
    big = compute_curves(wrap(oom), probes, CONFIG, batch_size=8)
    assert oom.sizes[0] == 4 and oom.sizes[-2:] == [2, 2]  # retried at half the batch size
    small = compute_curves(wrap(SmoothNet(seed=3)), probes, CONFIG, batch_size=1)
    assert torch.allclose(big, small, atol=1e-6)

    class AlwaysOOM(nn.Module):
        def forward(self, x):
            raise RuntimeError("CUDA out of memory")

    with pytest.raises(SignatureError, match="out of memory on cpu even with one image per batch"):
        compute_curves(wrap(AlwaysOOM()), probes, CONFIG, batch_size=4)

    class Words2(nn.Module):  # a text model: its embedding cannot take images
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)

        def forward(self, x):
            return self.embed(x.long())

    torch.jit.save(torch.jit.script(Words2()), tmp_path / "words.ts.pt")
    text = refused(hub, [tmp_path / "words.ts.pt", "--trust", "--input-size", "16"],
                   "images of 3x16x16 (gifindex runs image models on one float image batch): "
                   "RuntimeError: index out of range in self")
    assert "TorchScript interpreter" not in text  # the interpreter's traceback is not the reason

    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return self.bias.expand(len(x), 3)

    torch.jit.save(torch.jit.script(Constant()), tmp_path / "constant.ts.pt")
    refused(hub, [tmp_path / "constant.ts.pt", "--trust", "--input-size", "16"],
            "the model's output does not depend on its input")


# 10. paths that are not plain files ------------------------------------------------------------------------------
def test_symlinks_fifos_devices_directories_missing(hub, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "real.pt").write_bytes((hub[0] / "good.pt").read_bytes())
    inside = tmp_path / "zoo"
    inside.mkdir()
    (inside / "link.pt").symlink_to(outside / "real.pt")
    refused(hub, [inside / "link.pt", *ARCH], "is a symbolic link to")
    refused(hub, [inside / "link.pt", *ARCH], "outside its folder")
    (inside / "dangling.pt").symlink_to(tmp_path / "nothing.pt")
    refused(hub, [inside / "dangling.pt", *ARCH], "is a broken symbolic link")
    os.mkfifo(inside / "fifo.pt")
    refused(hub, [inside / "fifo.pt", *ARCH], f"{inside / 'fifo.pt'} is a FIFO (named pipe), not a regular file; "
                                             "refusing to read it")
    refused(hub, ["/dev/zero"], "/dev/zero is a device file, not a regular file")
    (inside / "dir.pt").mkdir()
    refused(hub, [inside / "dir.pt", *ARCH], "is a directory, not a model file; give the weights file inside it")
    refused(hub, [inside / "missing.pt", *ARCH], f"model file not found: {inside / 'missing.pt'}; check the path")
    refused(hub, ["timm:test_resnet", "--weights", inside / "fifo.pt", "--num-classes", "4"], "is a FIFO")


# 11. index directories and queries -------------------------------------------------------------------------------
def test_bad_index_directories_and_query_dimensions(hub, tmp_path):
    (tmp_path / "notindex").mkdir()
    (tmp_path / "notindex" / "x.txt").write_text("hi")
    refused(hub, ["list", "-i", tmp_path / "notindex"], "no gifindex index at", ingest=False)
    for key, value, fragment in (("format_version", 99, "has format version 99, this gifindex reads version 1"),
                                 ("config", "edit", "stored configuration does not match its hash"),
                                 ("format", "other", "is not a gifindex index file")):
        copy = tmp_path / f"copy-{key}"
        Index.create(copy, CONFIG).close()
        meta = json.loads((copy / "index.json").read_text())
        if value == "edit":
            meta["config"]["steps"] = 3
        else:
            meta[key] = value
        (copy / "index.json").write_text(json.dumps(meta))
        refused(hub, ["verify", "-i", copy], fragment, ingest=False)
    other = tmp_path / "other"
    with pytest.raises(IndexError_, match="another configuration"):
        Index.create(hub[0] / "idx", CONFIG.replace(steps=3))
    with Index.open(hub[0] / "idx") as index:
        with pytest.raises(IndexError_, match=r"query has dimension 5, the index holds 64-dimensional"):
            search(index.search_index(), np.zeros(5, np.float32), 1)
    del other


# 12. manifests -----------------------------------------------------------------------------------------------------
def test_malformed_manifests_listed_before_any_work(hub, tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save(SmoothNet(), evil)  # would run if loaded with trust; the manifest's errors stop it first
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"- name: a\n  ref: {evil}\n  trust: true\n"
                        f"- name: a\n  ref: {evil}\n"
                        "- name: b\n  ref: timm:test_resnet\n  archh: x\n"
                        "- name: c\n  ref: timm:test_resnet\n  num_classes: -2\n")
    text = refused(hub, ["--manifest", manifest], f"manifest {manifest} has 3 error(s): ")
    assert "line 4: duplicate name 'a' (first on line 1)" in text
    assert "line 6: unknown field 'archh' (did you mean 'arch'?)" in text
    assert "line 9: 'num_classes' must be a non-negative integer, got -2" in text
    assert not marker.exists()
    manifest.write_text("- name: a\n  ref: [unclosed\n")
    refused(hub, ["--manifest", manifest], f"manifest {manifest} is not valid YAML: line 3")
    with pytest.raises(ManifestError, match="expected a list of models"):
        parse_manifest("just a string")
    # 0 classes is the backbone alone, as --num-classes 0 is on the command line
    assert parse_manifest("- ref: timm:test_resnet\n  num_classes: 0\n")[0].num_classes == 0


# 13. issue 11: names, encodings, symlinked folders, files that hang or exhaust memory, coerced weights -------------
def test_one_bad_file_name_fails_alone_and_the_signed_model_is_committed(hub, tmp_path):
    import shutil

    root = tmp_path / "idx"
    shutil.copytree(hub[0] / "idx", root)
    folder = os.fsencode(tmp_path)
    bad = os.path.join(folder, b"bad\xff.pt")  # a file name that is not UTF-8
    torch.manual_seed(3)
    with open(bad, "wb") as handle:
        torch.save(timm.create_model("test_resnet", num_classes=4).state_dict(), handle)
    torch.manual_seed(4)
    torch.save(timm.create_model("test_resnet", num_classes=4).state_dict(), tmp_path / "good2.pt")
    result = CliRunner().invoke(main, ["ingest", "-i", str(root), os.fsdecode(bad), str(tmp_path / "good2.pt"),
                                       *ARCH, "--executor", "inline", "--no-progress", "--commit-every", "8"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "not valid UTF-8" in result.output
    with Index.open(root) as index:
        assert sorted(r.name for r in index.records()) == ["good", "good2"]  # what was signed is committed
        assert any("not valid UTF-8" in f["error"] for f in index.catalog.failures())


def test_names_with_newlines_or_control_characters_refused(hub, tmp_path):
    for name in ("two\nlines", "bell\x07", "rtl\u202eoverride"):
        text = refused(hub, [hub[0] / "good.pt", *ARCH, "--name", name], "control or invisible characters")
        assert "\n" not in [line for line in text.splitlines() if "invisible" in line][0]
        with pytest.raises(ManifestError, match="line 1: the name .* holds control or invisible characters"):
            parse_manifest(json.dumps([{"name": name, "ref": str(hub[0] / "good.pt")}]))


def test_symlinked_parent_folder_treated_like_a_symlinked_file(hub, tmp_path, monkeypatch):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "real.pt").write_bytes((hub[0] / "good.pt").read_bytes())
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "linked").symlink_to(outside, target_is_directory=True)
    manifest = zoo / "m.yaml"
    manifest.write_text("- {name: x, ref: linked/real.pt, arch: 'timm:test_resnet', num_classes: 4}\n")
    refused(hub, ["--manifest", manifest], "linked is a symbolic link to")
    monkeypatch.chdir(zoo)
    refused(hub, ["linked/real.pt", *ARCH], "outside its folder")


def test_fifos_devices_and_directories_as_manifest_or_probe_file_refused_at_once(hub, tmp_path):
    os.mkfifo(tmp_path / "fifo.yaml")
    os.mkfifo(tmp_path / "fifo.npy")
    (tmp_path / "dir.yaml").mkdir()
    refused(hub, ["--manifest", tmp_path / "fifo.yaml"], "is a FIFO (named pipe), not a regular file")
    refused(hub, ["--manifest", "/dev/zero"], "is a device file, not a regular file")
    with pytest.raises(ManifestError, match="dir.yaml is a directory, not a regular file"):
        read_manifest(tmp_path / "dir.yaml")
    for source, fragment in ((tmp_path / "fifo.npy", "is a FIFO"), ("/dev/zero.npy", "not found")):
        result = CliRunner().invoke(main, ["init", "-i", str(tmp_path / "new"), "--probes", str(source),
                                           "-K", "2", "-T", "2", "--resolution", "16"])
        assert result.exit_code == 1 and fragment in result.output, result.output
        assert not (tmp_path / "new").exists()


def test_large_junk_file_refused_without_reading_it(hub, tmp_path, monkeypatch):
    junk = tmp_path / "junk.pt"
    with open(junk, "wb") as handle:  # 2 GB, sparse: junk header, then zeros
        handle.write(b"JUNK" * 256)
        handle.truncate(2 << 30)
    reads = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or original(self))
    refused(hub, [junk, *ARCH], "not a PyTorch, TorchScript or safetensors file (unrecognised content)")
    assert junk not in reads


def test_yaml_alias_bomb_refused_before_expansion(tmp_path):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(1, 9):  # 10^9 strings once expanded
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    lines.append("models:\n  - {ref: 'timm:test_resnet', tags: {x: *a8}}")
    started = time.process_time()
    with pytest.raises(ManifestError, match="aliases .* are not allowed"):
        parse_manifest("\n".join(lines))
    assert time.process_time() - started < 5


def test_complex_and_integer_weights_refused_not_coerced(hub, tmp_path):
    model = timm.create_model("test_resnet", num_classes=4)
    for dtype in (torch.complex64, torch.int8):
        sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
        path = tmp_path / f"{str(dtype).split('.')[-1]}.pt"
        torch.save(sd, path)
        refused(hub, [path, *ARCH], "are not real floating-point values")


class Constant(nn.Module):
    """A model whose output does not depend on its input: a zero gradient field everywhere."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 4) + 0 * x.flatten(1)[:, :1]


def test_zero_gradient_model_refused_and_suspect_refuses_degenerate_calibration(hub, tmp_path):
    from gifindex.apps.suspect import suspect_from_distances

    torch.jit.save(torch.jit.script(Constant()), tmp_path / "constant.ts.pt")
    refused(hub, [tmp_path / "constant.ts.pt", "--trust", "--input-size", "16"], "gradient is zero at every probe point")
    with pytest.raises(GifindexError, match="cannot calibrate: .* no spread"):
        suspect_from_distances(0.3, [1.0, 1.0, 1.0, 1.0, 1.0])
    assert suspect_from_distances(0.3, [0.9, 1.0, 1.1, 0.95, 1.05])["verdict"] == "derived"


def test_damaged_index_files_are_named(hub, tmp_path):
    for text, fragment in (('{"format": "gifindex", "format_version": 1}', "field 'config' is missing"),
                           ("{not json", "not valid JSON"), ("[]", "is not a gifindex index file")):
        copy = tmp_path / f"copy{len(text)}"
        Index.create(copy, CONFIG).close()
        (copy / "index.json").write_text(text)
        out = refused(hub, ["list", "-i", copy], fragment, ingest=False)
        assert "index.json" in out and "KeyError" not in out


def test_index_files_replaced_by_fifos_never_hang_a_reader(hub, tmp_path):
    import shutil
    import signal

    root = tmp_path / "idx"
    shutil.copytree(hub[0] / "idx", root)
    for name in ("search.json", "search.sha256", ".lock.owner"):
        (root / name).unlink(missing_ok=True)
        os.mkfifo(root / name)
    hung = []   # TimeoutError is an OSError, which readers may catch: record that the alarm fired as well

    def alarm(*_):
        hung.append(True)
        raise TimeoutError("a read hung on a FIFO")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    try:
        with Index.open(root) as index:
            assert [n.name for n in index.nearest("good", k=1)] == []  # one model: searched, not hung
            assert index.verify()["models"] == 1
        result = CliRunner().invoke(main, ["info", "-i", str(root)])
        assert result.exit_code == 0, result.output
    finally:
        signal.alarm(0)
    assert not hung, "a read hung on a FIFO until the alarm"
