"""Building an index at its edges: what counts as the same model (weights, architecture, convention), resuming a
manifest with named random models, what the catalogue records (detected architecture, headless backbones), what
a one-off signing says, and a demo folder whose zoo changed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

from gifindex.cli import main
from gifindex.config import SignatureConfig
from gifindex.index import Index
from gifindex.manifest import ModelEntry

CONFIG = SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=16)
NETS = '''import torch.nn as nn
class Tiny(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.{act}(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                 nn.Linear(16, num_classes))

    def forward(self, x):
        return self.net(x)
'''
OPTS = ["--trust", "--input-size", "16", "--mean", "0", "--std", "1", "--executor", "inline", "--no-progress"]


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def twins(tmp_path) -> Path:
    """One state dict (t0.pt) and two classes that take it: a ReLU net (relu.py) and its Tanh twin (tanh.py)."""
    (tmp_path / "relu.py").write_text(NETS.format(act="ReLU"))
    (tmp_path / "tanh.py").write_text(NETS.format(act="Tanh"))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(16, 4))
    torch.save({f"net.{k}": v for k, v in net.state_dict().items()}, tmp_path / "t0.pt")
    _cli("init", "-i", tmp_path / "ix", "-K", "2", "-T", "2", "--resolution", "16", "--proj-dim", "16")
    return tmp_path


def test_same_weights_in_another_architecture_is_another_model(twins):
    ix, t0 = twins / "ix", twins / "t0.pt"
    relu = _cli("ingest", "-i", ix, t0, "--arch", f"python:{twins / 'relu.py'}:Tiny", "--name", "relu", *OPTS)
    tanh = _cli("ingest", "-i", ix, t0, "--arch", f"python:{twins / 'tanh.py'}:Tiny", "--name", "tanh", *OPTS)
    assert relu.exit_code == 0 and tanh.exit_code == 0, tanh.output
    assert "1 added" in tanh.output          # was "skipped tanh (already indexed: same weights)"
    with Index.open(ix) as index:
        assert sorted(r.name for r in index.records()) == ["relu", "tanh"]
        assert index.distance("relu", "tanh") > 0.01
    again = _cli("ingest", "-i", ix, t0, "--arch", f"python:{twins / 'relu.py'}:Tiny", "--name", "relu2", *OPTS,
                 "--json")
    model = json.loads(again.stdout)["models"][0]
    assert (model["status"], model["same_as"]) == ("skipped", "relu")
    said = _cli("ingest", "-i", ix, t0, "--arch", f"python:{twins / 'relu.py'}:Tiny", "--name", "relu3", *OPTS)
    assert "already indexed as 'relu'" in said.output


def test_an_index_made_before_still_recognises_its_models(twins, monkeypatch):
    """Indexes made before the architecture was part of the content hash hold the older hash: a model they hold
    is still skipped, not refused as a name clash."""
    import gifindex.ingest as ingest

    current = ingest.content_hashes
    monkeypatch.setattr(ingest, "content_hashes", lambda loaded, output: (current(loaded, output)[1][0], ()))
    arch = f"python:{twins / 'relu.py'}:Tiny"
    assert _cli("ingest", "-i", twins / "ix", twins / "t0.pt", "--arch", arch, "--name", "old", *OPTS).exit_code == 0
    monkeypatch.setattr(ingest, "content_hashes", current)
    (twins / "t0.pt").touch()   # a new mtime: the resume shortcut does not apply, the content hash decides
    again = _cli("ingest", "-i", twins / "ix", twins / "t0.pt", "--arch", arch, "--name", "old", *OPTS)
    assert again.exit_code == 0 and "0 added, 1 skipped" in again.output, again.output


def _pickled_twins(folder: Path) -> tuple[Path, Path]:
    """The same weights pickled whole (torch.save of the module) in a ReLU net and in its Tanh twin."""
    torch.manual_seed(0)
    relu = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(16, 4))
    tanh = torch.nn.Sequential(*[torch.nn.Tanh() if isinstance(m, torch.nn.ReLU) else m for m in relu])
    torch.save(relu, folder / "relu_whole.pt")
    torch.save(tanh, folder / "tanh_whole.pt")
    return folder / "relu_whole.pt", folder / "tanh_whole.pt"


def test_pickled_whole_modules_are_told_apart_by_their_module_tree(twins):
    relu, tanh = _pickled_twins(twins)
    ix = twins / "ix"
    first = _cli("ingest", "-i", ix, relu, "--name", "relu", *OPTS)
    second = _cli("ingest", "-i", ix, tanh, "--name", "tanh", *OPTS)
    assert first.exit_code == 0 and second.exit_code == 0 and "1 added" in second.output, second.output
    with Index.open(ix) as index:
        assert index.distance("relu", "tanh") > 0.01
    again = _cli("ingest", "-i", ix, relu, "--name", "relu2", *OPTS)
    assert "already indexed as 'relu'" in again.output, again.output


def test_an_index_made_before_the_module_tree_still_recognises_a_pickled_model(twins, monkeypatch):
    """An index whose pickled model was hashed with its top class alone (before the module tree) still skips it."""
    import gifindex.ingest as ingest

    relu, _ = _pickled_twins(twins)
    current = ingest.content_hashes
    monkeypatch.setattr(ingest, "content_hashes", lambda loaded, output: (current(loaded, output)[1][-1], ()))
    assert _cli("ingest", "-i", twins / "ix", relu, "--name", "old", *OPTS).exit_code == 0
    monkeypatch.setattr(ingest, "content_hashes", current)
    relu.touch()
    again = _cli("ingest", "-i", twins / "ix", relu, "--name", "old", *OPTS)
    assert again.exit_code == 0 and "0 added, 1 skipped" in again.output, again.output


def test_a_manifest_with_named_random_models_resumes(tmp_path):
    manifest = tmp_path / "zoo.yaml"
    manifest.write_text("models:\n"
                        "  - {name: c, ref: 'timm:test_resnet', random_init: true, num_classes: 5, input_size: 16}\n"
                        "  - {name: d, ref: 'timm:test_resnet', random_init: true, num_classes: 5, input_size: 16}\n")
    _cli("init", "-i", tmp_path / "ix", "-K", "2", "-T", "2", "--resolution", "16", "--proj-dim", "16")
    first = _cli("ingest", "-i", tmp_path / "ix", "--manifest", manifest, "--executor", "inline", "--no-progress")
    assert first.exit_code == 0 and "2 added" in first.output, first.output
    again = _cli("ingest", "-i", tmp_path / "ix", "--manifest", manifest, "--executor", "inline", "--no-progress",
                 "--json")
    assert again.exit_code == 0, again.output
    assert [(m["name"], m["status"]) for m in json.loads(again.stdout)["models"]] == [("c", "skipped"),
                                                                                       ("d", "skipped")]
    said = _cli("ingest", "-i", tmp_path / "ix", "--manifest", manifest, "--executor", "inline", "--no-progress")
    assert "skipped  c  (already indexed: its random weights were drawn once)" in said.output, said.output


def test_catalogue_records_detection_and_headless_backbones(tmp_path):
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "backbone.pt")
    with Index.create(tmp_path / "ix", CONFIG) as index:
        index.ingest(str(tmp_path / "backbone.pt"))
        meta = index.records()[0].metadata
    assert meta["headless"] is True
    assert meta["detected"]["arch"] == "torchvision:resnet18" and "timm:resnet18" in meta["detected"]["also_fits"]


def test_signing_on_the_fly_warns_of_the_other_architecture(tmp_path):
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), tmp_path / "suspect.pt")
    ix = tmp_path / "ix"
    with Index.create(ix, CONFIG) as index:
        index.ingest([ModelEntry(ref="timm:test_resnet", name="r", random_init=True, num_classes=10,
                                 input_size=16)])
    result = _cli("nearest", "-i", ix, tmp_path / "suspect.pt", "--json")
    signed = json.loads(result.stdout)["signed"]
    assert signed["also_fits"] == ["timm:resnet18"]
    assert result.stderr.count("timm:resnet18 exactly too") == 1 and "--arch" in result.stderr   # once, not twice


def test_random_models_are_flagged_in_every_json(tmp_path):
    ix = tmp_path / "ix"
    _cli("init", "-i", ix, "-K", "2", "-T", "2", "--resolution", "16", "--proj-dim", "16")
    ingested = _cli("ingest", "-i", ix, "timm:test_resnet", "--random-init", "--num-classes", "4", "--input-size",
                    "16", "--name", "r", "--executor", "inline", "--no-progress", "--json")
    assert json.loads(ingested.stdout)["models"][0]["random_init"] is True
    torch.manual_seed(1)
    torch.save(timm.create_model("test_resnet", num_classes=4).state_dict(), tmp_path / "t.pt")
    _cli("ingest", "-i", ix, tmp_path / "t.pt", "--arch", "timm:test_resnet", "--input-size", "16", "--name", "t",
         "--executor", "inline", "--no-progress")
    matrix = json.loads(_cli("matrix", "-i", ix, "--json").stdout)
    assert dict(zip(matrix["names"], matrix["random_init"])) == {"r": True, "t": False}
    distance = json.loads(_cli("distance", "-i", ix, "r", "t", "--json").stdout)
    assert distance["random_init"] == [True, False]


def test_pgd_settings_without_pgd_probes_warn(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        Index.create(tmp_path / "ix", CONFIG.replace(pgd_anchor="timm:test_resnet")).close()
    assert "--pgd-anchor only applies to --probe-kind pgd" in caplog.text


def test_a_model_failing_at_the_default_size_is_told_to_give_input_size():
    from gifindex.adapter import model_failed

    error = model_failed(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x98568 and 1352x10)"),
                         torch.zeros(4, 1, 224, 224))
    assert "it ran at 224x224 px" in str(error) and "--input-size" in str(error)


def test_demo_index_is_rebuilt_when_its_zoo_changed(tmp_path):
    from gifindex.demo import PROBES_NAME, demo_index_config, open_demo_index

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    np.save(zoo / PROBES_NAME, np.random.default_rng(0).integers(0, 255, (16, 16, 16, 3), dtype=np.uint8))
    files = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        files[seed] = zoo / f"m{seed}.pt"
        torch.save(timm.create_model("test_resnet", num_classes=10).state_dict(), files[seed])
    config = demo_index_config(zoo)
    entries = [{"name": "m", "ref": str(files[0])}]
    index = open_demo_index(tmp_path / "index", config, entries)
    index.ingest([ModelEntry(ref=str(files[0]), name="m", arch="timm:test_resnet", num_classes=10, input_size=16)])
    index.close()
    with open_demo_index(tmp_path / "index", config, entries) as same:   # the same zoo: reused
        assert len(same) == 1
    with open_demo_index(tmp_path / "index", config, [{"name": "m", "ref": str(files[1])}]) as changed:
        assert len(changed) == 0                                        # another model named m: made afresh


def test_init_and_ingest_refuse_options_that_cannot_apply(tmp_path):
    for bad in ("-5", "nan", "inf"):
        result = _cli("init", "-i", tmp_path / "ix", "--flat-budget-mb", bad)
        assert result.exit_code == 2 and "--flat-budget-mb" in result.output, result.output
    assert not (tmp_path / "ix").exists()
    _cli("init", "-i", tmp_path / "ix", "-K", "2", "-T", "2", "--resolution", "16", "--proj-dim", "16")
    result = _cli("ingest", "-i", tmp_path / "ix", "timm:test_resnet", "--random-init", "--address", "127.0.0.1:1")
    assert result.exit_code == 1 and "--executor ray" in result.output


SLOW = '''import time
import torch.nn as nn
class Slow(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, num_classes))

    def forward(self, x):
        time.sleep(0.2)
        return self.net(x)
'''


def test_sigterm_during_ingest_keeps_what_was_signed(tmp_path):
    """A terminated ingest ends as an interrupted one: the models it reported added are committed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "slow.py").write_text(SLOW)
    for seed in range(6):
        torch.manual_seed(seed)
        torch.save({"net.1.weight": torch.randn(4, 768), "net.1.bias": torch.randn(4)}, tmp_path / f"s{seed}.pt")
    _cli("init", "-i", tmp_path / "ix", "-K", "2", "-T", "2", "--resolution", "16", "--proj-dim", "16")
    command = [str(Path(sys.executable).parent / "gifindex"), "ingest", "-i", str(tmp_path / "ix"),
               "--commit-every", "100", "--arch", f"python:{tmp_path / 'slow.py'}:Slow", *OPTS,
               *[str(tmp_path / f"s{seed}.pt") for seed in range(6)]]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 300
        line = ""
        while not line.startswith("added") and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line or process.poll() is None, "ingest ended before adding a model"
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
    assert process.returncode == 1 and "interrupted" in output, output
    with Index.open(tmp_path / "ix") as index:
        held = len(index)
        assert held >= 1, output  # at least the model it said it added (commit-every 100: none before)
    # the last line says what was kept and how to go on
    assert output.strip().splitlines()[-1] == (
        f"error: interrupted; every model signed before it is committed (the index holds {held} "
        f"model{'' if held == 1 else 's'}): run the same command again to resume"), output
    assert _cli("verify", "-i", tmp_path / "ix").exit_code == 0


def test_a_recreated_catalogue_keeps_names_stored_before_the_whitespace_rule(tmp_path, monkeypatch):
    """Names with a trailing blank are refused now; an index that holds one from before keeps it when its
    catalogue is recreated from the shards (`rebuild`), rather than dropping the model."""
    import gifindex.index.writer as writer
    import gifindex.text as text

    current = text.text_problem
    monkeypatch.setattr(writer, "text_problem", lambda value, what, stored=False: current(value, what, stored=True))
    with Index.create(tmp_path / "ix", CONFIG) as index:
        index.ingest([ModelEntry(ref="timm:test_resnet", name="old ", random_init=True, num_classes=4,
                                 input_size=16)])
    monkeypatch.setattr(writer, "text_problem", current)
    (tmp_path / "ix" / "catalog.sqlite").unlink()
    assert _cli("rebuild", "-i", tmp_path / "ix").exit_code == 0
    with Index.open(tmp_path / "ix") as index:
        assert [r.name for r in index.records()] == ["old "]


def test_a_moved_project_keeps_its_models_and_its_demo_index(twins, tmp_path):
    """A `python:` class is known by its file's content, not its path: the project moved elsewhere re-ingests as
    already indexed (not a name clash); a demo folder moved elsewhere reuses its index."""
    import shutil

    from gifindex.demo import PROBES_NAME, demo_index_config, open_demo_index

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(twins / "relu.py", project)
    shutil.copy(twins / "t0.pt", project)
    ingest = ["ingest", "-i", twins / "ix", "--name", "relu", *OPTS]
    first = _cli(*ingest[:3], project / "t0.pt", "--arch", f"python:{project / 'relu.py'}:Tiny", *ingest[3:])
    assert first.exit_code == 0, first.output
    moved = tmp_path / "moved"
    project.rename(moved)
    again = _cli(*ingest[:3], moved / "t0.pt", "--arch", f"python:{moved / 'relu.py'}:Tiny", *ingest[3:])
    assert again.exit_code == 0 and "1 skipped" in again.output, again.output

    demo = tmp_path / "demo"
    (demo / "zoo").mkdir(parents=True)
    np.save(demo / "zoo" / PROBES_NAME, np.random.default_rng(0).integers(0, 255, (16, 16, 16, 3), dtype=np.uint8))
    shutil.copy(twins / "t0.pt", demo / "zoo" / "m.pt")
    with open_demo_index(demo / "index", demo_index_config(demo / "zoo"), []) as index:
        index.ingest([ModelEntry(ref=str(demo / "zoo" / "m.pt"), name="m", arch=f"python:{twins / 'relu.py'}:Tiny",
                                 trust=True, input_size=16)])
    demo.rename(tmp_path / "demo2")
    zoo = tmp_path / "demo2" / "zoo"
    with open_demo_index(tmp_path / "demo2" / "index", demo_index_config(zoo),
                         [{"name": "m", "ref": str(zoo / "m.pt")}]) as index:
        assert len(index) == 1


def test_suspect_takes_loading_options_for_an_owner_file(twins):
    """Loading options apply to the owner when it is a file, even when the suspect is indexed."""
    ix, arch = twins / "ix", f"python:{twins / 'relu.py'}:Tiny"
    _cli("ingest", "-i", ix, twins / "t0.pt", "--arch", arch, "--name", "relu", *OPTS)
    result = _cli("suspect", "-i", ix, "relu", "--owner", twins / "t0.pt", "--arch", arch, "--trust", "--input-size",
                  "16", "--mean", "0", "--std", "1", "--no-fingerprint")
    assert "indexed name" not in result.output, result.output


def test_a_timm_model_saved_whole_is_its_state_dict(tmp_path):
    """A timm model pickled whole carries its architecture's name: it is the same model as its state dict."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=4)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    torch.save(model, tmp_path / "whole.pt")
    _cli("init", "-i", tmp_path / "ix", "-K", "2", "-T", "2", "--resolution", "16", "--proj-dim", "16")
    _cli("ingest", "-i", tmp_path / "ix", tmp_path / "sd.pt", "--arch", "timm:test_resnet", "--executor", "inline")
    whole = _cli("ingest", "-i", tmp_path / "ix", tmp_path / "whole.pt", "--trust", "--executor", "inline")
    assert "already indexed as 'sd'" in whole.output, whole.output


def test_taskonomy_weights_are_one_model_whatever_task_their_file_name_says():
    """Every Taskonomy task's encoder is one architecture: the same weights read as 'normal' from one file name
    and as 'encoder' from another hash alike (they were two models); the earlier hash, task named, still counts."""
    from gifindex.ingest import content_hashes
    from gifindex.models.spec import InputSpec, LoadedModel

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten())
    hashes = [content_hashes(LoadedModel(module=module, spec=InputSpec(), ref="f", name="f", source="file",
                                         arch=f"taskonomy:{task}"), "norm") for task in ("normal", "encoder")]
    assert hashes[0][0] == hashes[1][0]
    assert hashes[0][1][-1] != hashes[1][1][-1]            # the earlier form named the task


def test_a_convention_given_in_part_says_where_the_rest_came_from(tmp_path):
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=4).state_dict(), tmp_path / "m.pt")
    said = _cli("distance", tmp_path / "m.pt", tmp_path / "m.pt", "--arch", "timm:test_resnet", "--input-size", "16",
                "-K", "2", "-T", "2", "--resolution", "16")
    assert said.exit_code == 0, said.output
    # was "(given)", though the mean and std were ImageNet's, the architecture's default
    assert "(input size given; mean, std: its architecture's default: a weights file carries none)" in said.stderr
