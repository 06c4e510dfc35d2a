"""Trust and loader edges: a manifest cannot trust itself, a stored --trust holds only for the bytes trusted,
int8 / complex weights into a python: class, training wrappers pickled whole (DataParallel, DDP, torch.compile),
--num-classes for whole modules, classes pickled from a script's __main__, --input-size's cap and the
out-of-memory hint, checkpoints in a folder ingest, and detection models' outputs."""
from __future__ import annotations

import importlib
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from click.testing import CliRunner

from gifindex.adapter import SharedSpaceAdapter
from gifindex.cli import main
from gifindex.config import SignatureConfig
from gifindex.curves import compute_curves
from gifindex.errors import ConfigError, IndexError_, ModelLoadError, SignatureError
from gifindex.index import Index
from gifindex.ingest import content_hashes
from gifindex.manifest import ManifestError, ModelEntry, parse_manifest, with_defaults
from gifindex.models import load_model
from gifindex.models.spec import InputSpec
from gifindex.probes import make_probes
from gifindex.refs import folder_left_out, folder_models

from helpers import SmoothNet, wrap

CONFIG = SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=32, seed=3)
SMALL = {"input_size": 16, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
NETS = """import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)
        self.f = nn.Linear(4, 5)

    def forward(self, x):
        return self.f(torch.tanh(self.c(x)).mean((2, 3)))
"""


class WritesMarker:
    """Unpickling it creates a file: the proof that a pickle's code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _cli(args: list) -> tuple[int, str]:
    """Run the command line in this process: (exit code, stdout and stderr as printed)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    text = result.output   # click 8.2+: both streams, interleaved
    assert "Traceback" not in text, text
    return result.exit_code, text


def _index(tmp_path: Path) -> Path:
    root = tmp_path / "idx"
    Index.create(root, CONFIG).close()
    return root


def _timm(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=4).eval()


# 1. a manifest cannot opt itself into running code --------------------------------------------------------------
def test_manifest_trust_needs_the_command_lines(tmp_path):
    root, marker = _index(tmp_path), tmp_path / "PWNED"
    torch.save({"w": WritesMarker(marker)}, tmp_path / "evil.pt")
    torch.save(_timm().state_dict(), tmp_path / "good.pt")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("- name: evil\n  ref: evil.pt\n  trust: true\n"
                        "- name: good\n  ref: good.pt\n  arch: timm:test_resnet\n  num_classes: 4\n  input_size: 16\n")
    code, text = _cli(["ingest", "-i", root, "--manifest", manifest, "--executor", "inline", "--no-progress"])
    assert code == 1 and not marker.exists(), text
    failed = [line for line in text.splitlines() if line.startswith("failed")]
    assert len(failed) == 1 and "evil" in failed[0] and "trust: true" in failed[0] and "--trust" in failed[0], text
    with Index.open(root) as index:
        assert [r.name for r in index.records()] == ["good"]   # the other entries go on

    # the command line's --trust grants it (and trusts every entry, as before); stored as any trusted entry
    entry = parse_manifest("- ref: m.pt\n  trust: true\n", base=tmp_path)[0]
    assert not entry.trust and entry.trust_asked
    with pytest.raises(ManifestError, match="--trust"):
        entry.load_kwargs()
    granted = with_defaults(entry, {"trust": True})
    assert granted.load_kwargs()["trust"] and granted.to_dict() == {"ref": str(tmp_path / "m.pt"), "trust": True}
    torch.save(SmoothNet(seed=1), tmp_path / "net.pt")
    manifest.write_text("- name: net\n  ref: net.pt\n  trust: true\n  input_size: 16\n")
    code, text = _cli(["ingest", "-i", root, "--manifest", manifest, "--trust", "--executor", "inline",
                       "--no-progress"])
    assert code == 0 and "added    net" in text, text

    # the Python API's own ModelEntry(trust=True) works as before
    torch.save(SmoothNet(seed=2), tmp_path / "api.pt")
    with Index.open(root) as index:
        report = index.ingest([ModelEntry(ref=str(tmp_path / "api.pt"), name="api", trust=True, **SMALL)])
    assert report.by_status("added")[0].name == "api"


# 2. a stored --trust holds only for the bytes that were trusted -------------------------------------------------
def test_stored_trust_refused_for_a_changed_file(tmp_path):
    root, marker = _index(tmp_path), tmp_path / "PWNED"
    for name, seed in (("m", 1), ("n", 2)):
        torch.save(SmoothNet(seed=seed), tmp_path / f"{name}.pt")
    with Index.open(root) as index:
        index.ingest([ModelEntry(ref=str(tmp_path / f"{n}.pt"), name=n, trust=True, **SMALL) for n in "mn"])
    code, text = _cli(["distance", "-i", root, "m", "n", "--exact"])
    assert code == 0, text   # unchanged: the stored trust applies

    torch.save({"w": WritesMarker(marker)}, tmp_path / "m.pt")   # same path, other bytes
    code, text = _cli(["distance", "-i", root, "m", "n", "--exact"])
    assert code == 1 and not marker.exists(), text
    assert "changed since it was indexed" in text and "--trust" in text and len(text.strip().splitlines()) == 1, text
    with Index.open(root) as index:
        with pytest.raises(IndexError_, match="changed since it was indexed"):
            index.entry_for("m")
        with pytest.raises(IndexError_, match="its stored signature is of the old bytes"):   # trusted, still not m
            index.entry_for("m", trust=True)


def test_stored_trust_covers_the_class_file_it_ran(tmp_path, monkeypatch):
    """A stored --trust ran a python:FILE.py:Class file again whatever it had become: an edited class ran unasked. A
    whole pickle's classes, imported by name as Python finds them, are not pinned (a moved project still loads)."""
    project = tmp_path / "project"
    project.mkdir()
    module = f"trusted_{uuid.uuid4().hex[:8]}"
    (project / f"{module}.py").write_text(NETS)
    (project / "nets.py").write_text(NETS)
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    torch.save(importlib.import_module(module).Net(), project / "whole.pt")    # a pickle importing `module` by name
    for name in "ab":
        torch.save(importlib.import_module(module).Net().state_dict(), project / f"{name}.pt")
    root = _index(tmp_path)
    with Index.open(root) as index:
        index.ingest([ModelEntry(ref=str(project / f"{n}.pt"), name=n, arch="python:nets.py:Net", trust=True,
                                 **SMALL) for n in "ab"] +
                     [ModelEntry(ref=str(project / "whole.pt"), name="whole", trust=True, **SMALL)])
        assert list(index.catalog.by_name("a").metadata["code_sha256"]) == [str((project / "nets.py").resolve())]
        assert "code_sha256" not in index.catalog.by_name("whole").metadata
    assert _cli(["distance", "-i", root, "a", "whole", "--exact"])[0] == 0    # as trusted: the stored trust holds

    with (project / "nets.py").open("a") as edited:                       # the class file edited since
        edited.write("\nEDITED = True\n")
    code, text = _cli(["distance", "-i", root, "a", "b", "--exact"])
    assert code == 1 and "its class file" in text and "changed since it was indexed" in text, text
    assert len(text.strip().splitlines()) == 1, text
    assert _cli(["distance", "-i", root, "whole", "a", "--exact"])[0] == 1     # a is refused, whichever side
    assert _cli(["distance", "-i", root, "whole", "whole", "--exact"])[0] == 0
    code, text = _cli(["distance", "-i", root, project / "a.pt", project / "b.pt", "--exact", "--trust"])  # as now
    assert code == 0, text
    code, text = _cli(["ingest", "-i", root, project / "a.pt", "--name", "a", "--arch", "python:nets.py:Net",
                       "--trust", "--input-size", 16, "--mean", 0.5, "--std", 0.5, "--executor", "inline",
                       "--no-progress"])                # not skipped as unchanged: its class is another model now
    assert "0 skipped" in text and "name 'a' is already used by another model" in text, text


def test_an_indexed_state_dict_whose_file_changed_is_refused_by_name(tmp_path):
    """A changed state-dict file was loaded silently by --exact, the fingerprint checks and unlearning: a copy
    of other weights judged under the indexed model's name (and cached so)."""
    root = _index(tmp_path)
    names = "mnpqr"
    for seed, name in enumerate(names, 1):
        torch.save(_timm(seed).state_dict(), tmp_path / f"{name}.pt")
    with Index.open(root) as index:
        index.ingest([ModelEntry(ref=str(tmp_path / f"{n}.pt"), name=n, arch="timm:test_resnet", num_classes=4,
                                 **SMALL) for n in names])
    torch.save(_timm(9).state_dict(), tmp_path / "m.pt")          # same path, other weights
    code, text = _cli(["distance", "-i", root, "m", "n", "--exact"])
    assert code == 1 and "changed since it was indexed" in text and "another name" in text, text
    code, text = _cli(["distance", "-i", root, tmp_path / "m.pt", "n", "--exact"])   # the file itself: as it is now
    assert code == 0, text
    # what needs only the stored signatures (no fingerprint to load the suspect for) still answers by name
    for args in (["suspect", "-i", root, "m", "--owner", "n"], ["suspect", "-i", root, "n", "--owner", "m"],
                 ["distance", "-i", root, "m", "n"], ["nearest", "-i", root, "m"]):
        code, text = _cli(args)
        assert code == 0 and "changed since" not in text, (args, text)


# 3. a python: class refuses weights it would have to cast -------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int8, torch.complex64])
def test_python_class_refuses_integer_and_complex_weights(tmp_path, monkeypatch, dtype):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(NETS)
    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    sd = {"c.weight": torch.ones(4, 3, 3, 3, dtype=dtype), "c.bias": torch.zeros(4),
          "f.weight": torch.zeros(5, 4), "f.bias": torch.zeros(5)}
    del net
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(ModelLoadError, match="c.weight .*are not real floating-point values"):
        load_model(str(tmp_path / "w.pt"), arch="python:nets.py:Net", trust=True, **SMALL)


# 4. training wrappers saved whole are the model they wrap -------------------------------------------------------
def _ddp(module: nn.Module, path: Path) -> None:
    """Save ``module`` wrapped in DistributedDataParallel (a one-process gloo group, gone afterwards)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path.parent / 'pg'}", rank=0, world_size=1)
    try:
        torch.save(nn.parallel.DistributedDataParallel(module), path)
    finally:
        dist.destroy_process_group()


def test_wrappers_pickled_whole_load_as_the_inner_model(tmp_path):
    model = _timm()
    torch.save(model, tmp_path / "plain.pt")
    torch.save(nn.DataParallel(model), tmp_path / "dp.pt")
    torch.save(torch.compile(model), tmp_path / "compiled.pt")
    _ddp(model, tmp_path / "ddp.pt")
    plain = load_model(str(tmp_path / "plain.pt"), trust=True)
    for name in ("dp", "compiled", "ddp"):
        loaded = load_model(str(tmp_path / f"{name}.pt"), trust=True)
        assert type(loaded.module) is type(model), name   # not compiled again when it runs
        assert (loaded.arch, loaded.spec) == (plain.arch, plain.spec) == ("timm:test_resnet", plain.spec), name
        assert content_hashes(loaded, "norm")[0] == content_hashes(plain, "norm")[0], name

    root = _index(tmp_path)
    with Index.open(root) as index:
        report = index.ingest([ModelEntry(ref=str(tmp_path / f"{n}.pt"), name=n, trust=True, input_size=16)
                               for n in ("plain", "dp")])
    assert report.by_status("skipped")[0].same_as == "plain"


# 5. --num-classes for whole modules; a non-negative count -------------------------------------------------------
def test_num_classes_for_whole_modules_and_negative_counts(tmp_path):
    torch.save(_timm(), tmp_path / "whole.pt")
    with pytest.raises(ConfigError, match="4 outputs.*--num-classes 3 does not apply"):
        load_model(str(tmp_path / "whole.pt"), trust=True, num_classes=3)
    assert load_model(str(tmp_path / "whole.pt"), trust=True, num_classes=4).num_outputs == 4   # its own: fine
    torch.jit.script(SmoothNet()).save(str(tmp_path / "script.pt"))
    with pytest.raises(ConfigError, match="TorchScript archive.*--num-classes 5 does not apply"):
        load_model(str(tmp_path / "script.pt"), trust=True, num_classes=5)

    args = ["distance", "timm:test_resnet", "timm:test_resnet", "--random-init", "--resolution", 16, "-K", 1, "-T", 1,
            "--input-size", 16]
    code, text = _cli([*args, "--num-classes", "-3"])
    assert code == 2 and "--num-classes" in text, text
    code, text = _cli([*args, "--num-classes", "0"])   # headless: still allowed
    assert code == 0, text


# 6. a module pickled from a script's __main__ -------------------------------------------------------------------
def test_module_pickled_from_a_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "savemain.py").write_text(NETS)
    space: dict = {"__name__": "savemain_as_run"}
    exec(compile(NETS, str(tmp_path / "savemain.py"), "exec"), space)
    net_class = space["Net"]
    net_class.__module__ = "__main__"   # as `python savemain.py` defines it
    with monkeypatch.context() as patch:
        patch.setattr(sys.modules["__main__"], "Net", net_class, raising=False)
        torch.save(net_class(), tmp_path / "main_whole.pt")
    script = r"defined in a script's __main__.*state_dict\(\).*--arch python:FILE.py:Net"
    with pytest.raises(ModelLoadError, match=script):
        load_model("main_whole.pt", trust=True)
    loaded = load_model("main_whole.pt", trust=True, arch="python:savemain.py:Net", **SMALL)
    assert type(loaded.module).__name__ == "Net" and type(loaded.module).__module__ != "__main__"


# 7. --input-size is capped; running out of memory names the native size -----------------------------------------
def test_input_size_capped_and_out_of_memory_names_the_size(tmp_path):
    code, text = _cli(["distance", "a.pt", "b.pt", "--input-size", 60000])
    assert code == 2 and "8192" in text, text
    with pytest.raises(ManifestError, match="above the 8192 px limit"):
        parse_manifest("- ref: timm:test_resnet\n  input_size: 60000\n")
    from gifindex.api import as_loaded_model
    from gifindex.errors import ConfigError

    with pytest.raises(ConfigError, match="60000 px is above the 8192 px limit"):   # the Python API too
        as_loaded_model(nn.Linear(3, 2), input_size=60000)

    class AlwaysOOM(nn.Module):
        def forward(self, x):
            raise RuntimeError("CUDA out of memory")

    spec = InputSpec(size=(48, 40))
    with pytest.raises(SignatureError, match="one image per batch at the model's native input size 48x40 px.*"
                                             "--input-size"):
        compute_curves(wrap(AlwaysOOM(), spec), make_probes(CONFIG), CONFIG, batch_size=2)


# 8. a folder's checkpoints are ingested; what is left out is said -----------------------------------------------
def test_folder_ingest_takes_checkpoints_and_says_what_it_leaves_out(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    torch.save({"state_dict": {f"model.{k}": v for k, v in _timm(1).state_dict().items()}, "epoch": 3},
               folder / "lightning.ckpt")
    torch.save({"state_dict": _timm(2).state_dict(), "epoch": 9}, folder / "resumed.pth.tar")
    (folder / "notes.txt").write_text("x")
    (folder / "README").write_text("y")
    with tarfile.open(folder / "notes.tar", "w") as archive:   # an archive, not a checkpoint: left out, not failed
        archive.add(folder / "notes.txt", arcname="notes.txt")
    assert [Path(f).name for f in folder_models(str(folder))] == ["lightning.ckpt", "resumed.pth.tar"]
    assert folder_left_out(str(folder)) == {".txt": 1, "": 1, ".tar": 1}
    root = _index(tmp_path)
    code, text = _cli(["ingest", "-i", root, folder, "--arch", "timm:test_resnet", "--num-classes", 4, "--input-size",
                       16, "--executor", "inline", "--no-progress"])
    assert code == 0, text
    assert text.count("left out 3 other files") == 1 and ".txt" in text and "without extension" in text, text
    with Index.open(root) as index:
        assert sorted(r.name for r in index.records()) == ["lightning", "resumed"]
    torch.save({"state_dict": _timm(3).state_dict()}, tmp_path / "checkpoint.tar")   # PyTorch's tutorials' name
    code, text = _cli(["ingest", "-i", root, tmp_path / "checkpoint.tar", "--arch", "timm:test_resnet",
                       "--num-classes", 4, "--input-size", 16, "--executor", "inline", "--no-progress"])
    assert code == 0 and "added    checkpoint " in text, text     # named directly: loaded, named by its stem


# 9. detection models' outputs -----------------------------------------------------------------------------------
def test_detection_outputs_refused_in_one_line():
    class Detector(nn.Module):
        def forward(self, x):
            return [{"boxes": x.new_zeros(0, 4), "labels": x.new_zeros(0), "scores": x.new_zeros(0)} for _ in x]

    class Empty(nn.Module):
        def forward(self, x):
            return x.new_zeros(0, 4)

    for module, why in ((Detector(), "a dict per image"), (Empty(), "an empty tensor")):
        adapter = SharedSpaceAdapter(module, InputSpec(size=(16, 16)))
        with pytest.raises(SignatureError, match=f"{why}.*one output tensor per image"):
            adapter.logits(torch.rand(2, 3, 16, 16))
    loaded = load_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", random_init=True)
    with pytest.raises(SignatureError, match="one output tensor per image"):
        SharedSpaceAdapter(loaded.module, loaded.spec).logits(torch.rand(1, 3, 16, 16))
