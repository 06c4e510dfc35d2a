"""A bare state dict of the user's own class (``--arch python:FILE.py:Class``): built by importing that code, only
with --trust; the path recorded absolute so the index loads it again from anywhere; mismatches named in one line."""
from __future__ import annotations

import json
import os
import textwrap

import pytest
import torch

from gifindex.errors import ConfigError, ModelLoadError, UntrustedFileError
from gifindex.models import load_model

NET = textwrap.dedent('''
    import pathlib
    import torch.nn as nn

    pathlib.Path(__file__).with_suffix(".imported").write_text("ran")  # a side effect: the code ran

    class LeNetish(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 5)
            self.fc = nn.Linear(4 * 24 * 24, num_classes)

        def forward(self, x):
            return self.fc(self.conv(x).relu().flatten(1))

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(28 * 28, 3)

        def forward(self, x):
            return self.fc(x.flatten(1))

    NOT_A_MODEL = dict
''')


@pytest.fixture()
def user_code(tmp_path):
    """netdefs.py (the user's class) and a state dict of LeNetish with 7 classes, saved bare."""
    code = tmp_path / "netdefs.py"
    code.write_text(NET)
    namespace: dict = {"__file__": str(tmp_path / "scratch.py")}
    exec(compile(NET, "netdefs", "exec"), namespace)
    torch.manual_seed(0)
    weights = tmp_path / "lenetish.pt"
    torch.save(namespace["LeNetish"](num_classes=7).state_dict(), weights)
    (tmp_path / "scratch.imported").unlink()
    return code, weights, namespace


def test_a_bare_state_dict_loads_into_the_users_class(user_code, tmp_path):
    code, weights, namespace = user_code
    loaded = load_model(str(weights), arch=f"python:{code}:LeNetish", num_classes=7, trust=True, input_size=28)
    assert loaded.arch == f"python:{code.resolve()}:LeNetish" and loaded.num_outputs == 7
    assert loaded.spec.channels == 1  # a grey first convolution, detected as for any model
    reference = namespace["LeNetish"](num_classes=7)
    reference.load_state_dict(torch.load(weights))
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded.module(x), reference(x))
    # saved from inside a training wrapper (``self.net = LeNetish(...)``): the wrapper's prefix is peeled
    torch.save({f"net.{k}": v for k, v in reference.state_dict().items()}, tmp_path / "wrapped.pt")
    wrapped = load_model(str(tmp_path / "wrapped.pt"), arch=f"python:{code}:LeNetish", num_classes=7, trust=True,
                         input_size=28)
    assert torch.equal(wrapped.module(x), reference(x))
    # num_classes is passed only to a class that takes it
    torch.save(namespace["Fixed"]().state_dict(), tmp_path / "fixed.pt")
    fixed = load_model(str(tmp_path / "fixed.pt"), arch=f"python:{code}:Fixed", num_classes=3, trust=True)
    assert fixed.num_outputs == 3


def test_without_trust_the_users_code_never_runs(user_code):
    code, weights, _ = user_code
    with pytest.raises(UntrustedFileError, match="runs its code; pass --trust"):
        load_model(str(weights), arch=f"python:{code}:LeNetish", num_classes=7)
    assert not code.with_suffix(".imported").exists()


def test_mistakes_are_named_in_one_line(user_code, tmp_path):
    code, weights, _ = user_code
    with pytest.raises(ModelLoadError, match=r"missing fc.bias|shape fc.weight \(7, 2304\) vs \(10, 2304\)"):
        load_model(str(weights), arch=f"python:{code}:LeNetish", trust=True)  # the class's default: 10 classes
    with pytest.raises(ModelLoadError, match="defines no 'LeNet5'"):
        load_model(str(weights), arch=f"python:{code}:LeNet5", trust=True)
    with pytest.raises(ModelLoadError, match="built a type, not a torch.nn.Module|NOT_A_MODEL.*failed|not a torch"):
        load_model(str(weights), arch=f"python:{code}:NOT_A_MODEL", trust=True)
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(str(weights), arch=f"python:{tmp_path / 'absent.py'}:LeNetish", trust=True)
    with pytest.raises(ConfigError, match="python:FILE.py:Class"):
        load_model(str(weights), arch="python:netdefs.py", trust=True)
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ModelLoadError, match="cannot import .*ModuleNotFoundError"):
        load_model(str(weights), arch=f"python:{broken}:LeNetish", trust=True)
    with pytest.raises(ModelLoadError, match="missing conv.weight, conv.bias, fc.weight"):
        torch.save({"other.weight": torch.zeros(1)}, tmp_path / "other.pt")
        load_model(str(tmp_path / "other.pt"), arch=f"python:{code}:LeNetish", num_classes=7, trust=True)


def test_a_package_module_is_imported_from_the_working_folder(user_code, tmp_path, monkeypatch):
    code, weights, _ = user_code
    package = tmp_path / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "lenet.py").write_text(code.read_text())
    monkeypatch.chdir(tmp_path)
    loaded = load_model(str(weights), arch="python:mynets.lenet:LeNetish", num_classes=7, trust=True)
    assert loaded.arch == "python:mynets.lenet:LeNetish"


def test_the_command_line_indexes_it_and_loads_it_again_from_anywhere(user_code, tmp_path, monkeypatch):
    """ingest records the class by its absolute path (from the command line or a manifest beside the file), and the
    index loads the model again from another folder."""
    from test_newuser import TINY, _run

    code, weights, namespace = user_code
    for i in range(4):
        torch.manual_seed(10 + i)
        torch.save(namespace["LeNetish"](num_classes=7).state_dict(), tmp_path / f"indep{i}.pt")
    monkeypatch.chdir(tmp_path)
    load = ["--arch", "python:netdefs.py:LeNetish", "--trust", "--num-classes", "7", "--input-size", "28"]
    index = tmp_path / "hub"
    _run("init", "-i", index, *TINY)
    for name in ("lenetish", "indep0", "indep1", "indep2", "indep3"):
        _run("ingest", "-i", index, tmp_path / f"{name}.pt", "--name", name, *load)
    listed = {m["name"]: m for m in json.loads(_run("list", "-i", index, "--json").stdout)}
    assert listed["lenetish"]["metadata"]["arch"] == f"python:{code.resolve()}:LeNetish"
    untrusted = _run("ingest", "-i", index, weights, "--name", "again", "--arch", "python:netdefs.py:LeNetish",
                     "--num-classes", "7", code=1)
    assert "pass --trust" in untrusted.output and "Traceback" not in untrusted.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    same = json.loads(_run("distance", weights, weights, *load[:1], f"python:{code}:LeNetish", *load[2:], *TINY,
                           "--json").stdout)
    assert same["distance"] == pytest.approx(0.0, abs=1e-6)
    from gifindex.index import Index

    with Index.open(index) as opened:  # what fit-probes and suspect --all do to load an indexed model again
        entry = opened.entry_for("lenetish")
        assert entry.arch == f"python:{code.resolve()}:LeNetish"
        again = load_model(entry.ref, **entry.load_kwargs())
    assert again.arch == entry.arch and torch.equal(again.module.fc.weight, torch.load(weights)["fc.weight"])
    # a manifest names the file beside itself
    torch.manual_seed(99)
    torch.save(namespace["LeNetish"](num_classes=7).state_dict(), tmp_path / "fresh.pt")
    (tmp_path / "m.yaml").write_text("- name: viaManifest\n  ref: fresh.pt\n  arch: python:netdefs.py:LeNetish\n"
                                     "  num_classes: 7\n  input_size: 28\n  trust: true\n")
    _run("ingest", "-i", index, "--manifest", tmp_path / "m.yaml", "--no-progress", "--executor", "inline",
         "--trust")   # a manifest's own trust: true needs the command line's too
    listed = {m["name"]: m for m in json.loads(_run("list", "-i", index, "--json").stdout)}
    assert listed["viaManifest"]["metadata"]["load"]["arch"] == f"python:{code.resolve()}:LeNetish"
