"""Local model files and folders: a whole module carries its own architecture (--arch refused, not ignored) and is
signed in float32; the user's class files import what lies beside them or in their package, and a dotted one is
recorded where it was found; trusted pickles find their classes' modules as Python would; a Hugging Face folder
that does not fit says why in one line; input conventions (options, API, config.json) are validated."""
from __future__ import annotations

import copy
import json
import sys
import textwrap
import uuid

import pytest
import torch
import torch.nn as nn

from gifindex.errors import ConfigError, ModelLoadError
from gifindex.models import load_model
from gifindex.models.spec import convention_problem

SMALL = textwrap.dedent('''
    import torch
    import torch.nn as nn

    class Small(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))
''')


def _cli(*args, code: int = 0):
    from click.testing import CliRunner

    from gifindex.cli import main
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


@pytest.fixture()
def small_module(tmp_path):
    """A module file with a unique name (so no other test has it imported) holding Small; the class, the module's
    name, and Small saved as a state dict, whole (pickled) and as TorchScript. Afterwards the module is neither
    imported nor importable: what a fresh process finds."""
    name = f"nets_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(SMALL)
    sys.path.insert(0, str(folder))
    try:
        module = __import__(name)
        torch.manual_seed(0)
        net = module.Small().eval()
        torch.save(net.state_dict(), tmp_path / "small_sd.pt")
        torch.save(net, tmp_path / "small_whole.pt")
        torch.jit.script(net).save(str(tmp_path / "small_script.pt"))
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)
    return net, folder / f"{name}.py", name


def _timm(num_classes: int = 10) -> nn.Module:
    import timm

    torch.manual_seed(1)
    return timm.create_model("test_resnet", num_classes=num_classes).eval()


# ------------------------------------------------------------------ 1. --arch with a whole module

def test_arch_for_a_whole_module_is_refused_unless_it_names_that_module(small_module, tmp_path, monkeypatch):
    _, code, _ = small_module
    monkeypatch.chdir(code.parent)
    for file, what in (("small_script.pt", "a TorchScript archive"), ("small_whole.pt", "a whole pickled module")):
        with pytest.raises(ConfigError, match=f"is {what} \\(class 'Small'\\): it carries its own architecture.*"
                                              "drop --arch"):
            load_model(str(tmp_path / file), arch="timm:resnet50", trust=True)
        # naming its own class (a state dict beside it in `distance` needs it) is accepted; the real class recorded
        loaded = load_model(str(tmp_path / file), arch=f"python:{code}:Small", trust=True)
        assert loaded.arch == "Small"
        with pytest.raises(ConfigError, match="names another class, 'Other'"):
            load_model(str(tmp_path / file), arch=f"python:{code}:Other", trust=True)
    result = _cli("distance", tmp_path / "small_script.pt", tmp_path / "small_script.pt", "--trust", "--arch",
                  "timm:resnet50", "--resolution", "16", "-K", "2", "-T", "2", code=1)
    assert "carries its own architecture" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_pickled_timm_module_keeps_its_own_convention(tmp_path):
    model = _timm()
    torch.save(model, tmp_path / "whole.pt")
    loaded = load_model(str(tmp_path / "whole.pt"), trust=True, arch="timm:test_resnet")  # its own name: accepted
    cfg = model.pretrained_cfg
    assert loaded.spec.size == tuple(cfg["input_size"][-2:]) and loaded.spec.mean == tuple(cfg["mean"])
    assert loaded.meta["convention_from"] == "model"
    with pytest.raises(ConfigError, match="carries its own architecture"):
        load_model(str(tmp_path / "whole.pt"), trust=True, arch="timm:resnet18")


# ------------------------------------------------------------------ 2. fp16 / fp64 / bf16 whole modules

@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_whole_modules_of_other_precisions_are_signed_in_float32(tmp_path, dtype):
    model = _timm()
    other = copy.deepcopy(model).to(dtype)
    torch.save(other, tmp_path / "pickled.pt")
    torch.jit.script(copy.deepcopy(other)).save(str(tmp_path / "script.pt"))
    x = torch.rand(2, 3, 32, 32)
    expected = copy.deepcopy(other).float()(x)
    for file in ("pickled.pt", "script.pt"):
        loaded = load_model(str(tmp_path / file), trust=True)
        assert all(t.dtype == torch.float32 for t in (*loaded.module.parameters(), *loaded.module.buffers())
                   if t.is_floating_point())
        with torch.no_grad():
            assert torch.allclose(loaded.module(x), expected, atol=1e-5)


# ------------------------------------------------------------------ 3. the user's class files

HELPED = textwrap.dedent('''
    import torch.nn as nn
    from {imp} import block

    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.c = block()
            self.fc = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.fc(self.c(x).mean(dim=(2, 3)))
''')
HELPER = "import torch.nn as nn\n\ndef block():\n    return nn.Conv2d(3, 4, 3)\n"


def _helped_state_dict(tmp_path) -> str:
    torch.manual_seed(2)
    net = nn.Module()
    net.c, net.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 10)
    torch.save(net.state_dict(), tmp_path / "net_sd.pt")
    return str(tmp_path / "net_sd.pt")


def test_a_class_file_imports_a_module_beside_it(tmp_path):
    weights = _helped_state_dict(tmp_path)
    side = tmp_path / "side"
    side.mkdir()
    helper = f"helper_{uuid.uuid4().hex[:8]}"
    (side / f"{helper}.py").write_text(HELPER)
    (side / "mynet.py").write_text(HELPED.format(imp=helper))
    before = list(sys.path)
    loaded = load_model(weights, arch=f"python:{side / 'mynet.py'}:Net", trust=True, input_size=16)
    assert sys.path == before  # its folder was on sys.path only while it was imported
    assert loaded.module(torch.rand(1, 3, 16, 16)).shape == (1, 10)  # and the class still works
    assert torch.equal(loaded.module.c.weight, torch.load(weights)["c.weight"])


def test_a_file_in_a_package_and_the_dotted_form_load_from_anywhere(tmp_path, monkeypatch):
    weights = _helped_state_dict(tmp_path)
    package = f"pkg_{uuid.uuid4().hex[:8]}"
    proj = tmp_path / "proj"
    (proj / package).mkdir(parents=True)
    (proj / package / "__init__.py").write_text("")
    (proj / package / "helper.py").write_text(HELPER)
    (proj / package / "models.py").write_text(HELPED.format(imp=".helper"))
    try:
        # the file form, relative import included: imported as that package's module
        loaded = load_model(weights, arch=f"python:{proj / package / 'models.py'}:Net", trust=True, input_size=16)
        assert type(loaded.module).__module__ == f"{package}.models"
        # the dotted form from the folder above the package: the index records the file, loadable from anywhere
        from gifindex.ingest import absolute_entry
        from gifindex.manifest import ModelEntry

        monkeypatch.chdir(proj)
        entry = absolute_entry(ModelEntry(ref=weights, arch=f"python:{package}.models:Net", trust=True))
        assert entry.arch == f"python:{(proj / package / 'models.py').resolve()}:Net"
        monkeypatch.chdir(tmp_path)
        again = load_model(entry.ref, **entry.load_kwargs())
        assert torch.equal(again.module.fc.weight, loaded.module.fc.weight)
    finally:
        for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
            del sys.modules[key]
    # a relative import in a folder that is no package: one line saying what to do
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "m.py").write_text(HELPED.format(imp=".helper"))
    with pytest.raises(ModelLoadError, match="not a package \\(no __init__.py\\).*python:package.module:Class"):
        load_model(weights, arch=f"python:{tmp_path / 'loose' / 'm.py'}:Net", trust=True)


# ------------------------------------------------------------------ 4. trusted pickles find their classes

def test_a_trusted_pickle_finds_its_class_in_the_working_folder_or_beside_the_named_file(small_module, tmp_path,
                                                                                          monkeypatch):
    net, code, name = small_module
    whole = str(tmp_path / "small_whole.pt")
    x = torch.rand(1, 3, 16, 16)
    monkeypatch.chdir(tmp_path)  # not where the class lives: one line naming the module
    with pytest.raises(ModelLoadError, match=f"needs module '{name}'.*must be importable"):
        load_model(whole, trust=True)
    assert name not in sys.modules
    try:
        # beside the class file named with --arch (as `distance SD WHOLE --arch python:FILE:Small` gives both)
        named = load_model(whole, trust=True, arch=f"python:{code}:Small")
        assert torch.equal(named.module(x), net(x))
        sys.modules.pop(name, None)
        monkeypatch.chdir(code.parent)  # in the working folder, as `python` run there finds it
        result = _cli("distance", tmp_path / "small_sd.pt", whole, "--arch", f"python:{code.name}:Small", "--trust",
                      "--input-size", "16", "--resolution", "16", "-K", "2", "-T", "2")
        assert float(result.output.strip().splitlines()[-1]) == pytest.approx(0.0, abs=1e-6)
    finally:
        sys.modules.pop(name, None)
    assert str(code.parent) not in sys.path


# ------------------------------------------------------------------ 5. a Hugging Face folder that does not fit

def test_a_hugging_face_folder_with_another_class_count_says_so(tmp_path):
    import timm

    folder = tmp_path / "hf"
    timm.models.save_for_hf(_timm(10), str(folder))
    with pytest.raises(ModelLoadError, match="the file has 10 classes, --num-classes says 7$"):
        load_model(str(folder), num_classes=7)
    config = json.loads((folder / "config.json").read_text())
    config["model_args"]["num_classes"] = 7
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="the file has 10 classes, its config.json says 7$"):
        load_model(str(folder))


# ------------------------------------------------------------------ 6. input conventions validated

@pytest.mark.parametrize("option", [["--input-size", "0"], ["--input-size", "-5"], ["--std", "0"], ["--std", "inf"],
                                    ["--mean", "nan"], ["--std", "1", "1", "0"], ["--mean", "0.5,0.5"]])
def test_bad_convention_options_are_usage_errors(tmp_path, option):
    result = _cli("distance", tmp_path / "a.pt", tmp_path / "b.pt", *option, code=2)
    assert option[0] in result.output


def test_the_api_and_a_folders_config_are_validated(tmp_path):
    import timm

    assert convention_problem("mean", [0.5, 0.5, 0.5]) is None and convention_problem("std", 0.3) is None
    assert "finite" in convention_problem("mean", [float("nan")])
    assert "above zero" in convention_problem("std", [1, 0, 1])
    assert "three numbers" in convention_problem("mean", "0.5")
    assert convention_problem("input_size", 0) and convention_problem("input_size", True)
    folder = tmp_path / "hf"
    timm.models.save_for_hf(_timm(10), str(folder))
    with pytest.raises(ConfigError, match="std: a standard deviation must be above zero"):
        load_model(str(folder), std=(0.0,))
    with pytest.raises(ConfigError, match="input size"):
        load_model(str(folder), input_size=0)
    for bad in (-3, 2.5, True):   # the CLI's --num-classes takes 0 (the backbone alone) and up, the API the same
        with pytest.raises(ConfigError, match="num_classes must be a non-negative integer"):
            load_model(str(folder), num_classes=bad)
    original = json.loads((folder / "config.json").read_text())
    for field, value, message in (("mean", [0.5, 0.5], "three numbers"), ("mean", "0.5", "three numbers"),
                                  ("std", [0, 1, 1], "above zero"),
                                  ("input_size", [3, 0, 0], "three positive integers")):
        config = copy.deepcopy(original)
        config["pretrained_cfg"][field] = value
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(ModelLoadError, match=f"config.json: pretrained_cfg.{field}: .*{message}"):
            load_model(str(folder))
