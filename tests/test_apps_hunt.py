"""Bugs a tester found in the applications (fit-probes, suspect and its tables, unlearning): a fingerprint is stored
only for the weights it was fitted for, a model signed from a file is never taken for an indexed one by its file
name, tables show and warn of the query-log part, helper architectures are checked before training, and errors name
the file they are about. Small random models, nothing trained: seconds."""
from __future__ import annotations

import importlib
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

from gifindex.cli import main
from gifindex.errors import GifindexError

from helpers import five_model_hub

CLASSES = 4
LOAD = ["--arch", "timm:test_resnet", "--num-classes", str(CLASSES), "--input-size", "16", "--mean", "0.5", "0.5",
        "0.5", "--std", "0.5", "0.5", "0.5"]
suspect_module = importlib.import_module("gifindex.apps.suspect")  # (gifindex.apps.suspect is the function)
fitprobes_module = importlib.import_module("gifindex.apps.fitprobes")


def _run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def _error_line(result, *parts):
    """A refusal: exit 1, its last line one error naming ``parts``, no traceback or Python exception name."""
    text = result.output.strip()
    assert result.exit_code == 1, text
    last = text.splitlines()[-1]
    assert last.startswith("error: ") and all(part in last for part in parts), text
    for leak in ("Traceback", "TypeError", "ValueError", "RuntimeError", "AttributeError"):
        assert leak not in text, text
    return last


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} in JSON output")
    return json.loads(text, parse_constant=refuse)


def _save(path, seed: int) -> None:
    torch.manual_seed(seed)
    torch.save(timm.create_model("test_resnet", num_classes=CLASSES).state_dict(), path)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """An index of five random test_resnet models of CLASSES classes at 16 px (mean/std 0.5), ingested from files,
    owner data (40 labelled images) and a forget set."""
    root = tmp_path_factory.mktemp("hunt")
    index, files = five_model_hub(root, CLASSES, _run)
    data = root / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((40, 3, 16, 16)).astype(np.float32), y=np.arange(40) % CLASSES)
    forget = root / "forget.npy"
    np.save(forget, rng.random((8, 3, 16, 16)).astype(np.float32))
    return SimpleNamespace(root=root, index=index, files=files, data=data, forget=forget)


def _copy(hub, tmp_path):
    shutil.copytree(hub.index, tmp_path / "idx")
    return tmp_path / "idx"


# 1 ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("race", ["removed", "replaced"])
def test_fit_probes_stores_nothing_when_the_owner_changes_while_it_trains(hub, tmp_path, monkeypatch, race):
    """The owner removed (or other weights indexed under its name) while the helpers train: the fingerprint would be
    of weights the index no longer holds under the name; refused in one line, nothing stored."""
    index = _copy(hub, tmp_path)
    other = tmp_path / "zzz.pt"
    _save(other, 99)

    def racing_training(*args, **kwargs):
        _run("remove", "-i", index, "owner")
        if race == "replaced":
            _run("ingest", "-i", index, other, "--name", "owner", "--executor", "inline", *LOAD)
        return SimpleNamespace(count=0)

    monkeypatch.setattr(fitprobes_module, "train_helpers", racing_training)
    monkeypatch.setattr(fitprobes_module, "fit_fingerprint", lambda *args, **kwargs: SimpleNamespace(recipe={}))
    refused = _run("fit-probes", "-i", index, "owner", "--data", hub.data, "--helper-arch", "owner", ok=False)
    _error_line(refused, "'owner'", "nothing stored", "removed" if race == "removed" else "now holds other weights")
    assert not list((index / "fingerprints").glob("*.npz")) if (index / "fingerprints").is_dir() else True


# 2, 3 ---------------------------------------------------------------------------------------------------------------
def test_an_owner_file_uses_a_fingerprint_only_if_it_holds_that_models_weights(hub, tmp_path, monkeypatch):
    """--owner FILE named like an indexed model but of other weights: no indexed fingerprint is its, and the indexed
    model of that name stays in the population; a byte copy of the indexed owner's file under any name is that model:
    its fingerprint is asked for, and it leaves the population."""
    asked: list[str] = []
    monkeypatch.setattr(suspect_module, "owner_fingerprint", lambda index, name: asked.append(name))
    (tmp_path / "files").mkdir()
    impostor = tmp_path / "files" / "owner.pt"
    _save(impostor, 42)
    out = _strict(_run("suspect", "-i", hub.index, "other1", "--owner", impostor, *LOAD, "--json").stdout)
    assert asked == [] and out["owner"] == str(impostor) and out["population"]["n"] == 4  # owner, other2-4
    copy = tmp_path / "files" / "mine.pt"
    shutil.copyfile(hub.files["owner"], copy)
    out = _strict(_run("suspect", "-i", hub.index, "other1", "--owner", copy, "--json").stdout)
    assert asked == ["owner"] and out["owner"] == "mine" and out["population"]["n"] == 3
    scanned = _strict(_run("suspect", "-i", hub.index, "--owner", impostor, "--all", *LOAD, "--json").stdout)
    assert asked == ["owner"] and "owner" in [r["suspect"] for r in scanned["models"]]


def test_a_suspect_file_named_like_an_indexed_model_leaves_it_in_the_population(hub, tmp_path):
    (tmp_path / "files").mkdir()
    named = tmp_path / "files" / "other1.pt"
    _save(named, 43)
    out = _strict(_run("suspect", "-i", hub.index, named, "--owner", "owner", *LOAD, "--json").stdout)
    assert out["population"]["n"] == 4 and out["suspect"] == str(named)  # other1 judged among the others
    assert "other1" in [c["name"] for c in out["closest_population"]]
    plain = tmp_path / "files" / "zzz.pt"
    shutil.copyfile(named, plain)
    out = _strict(_run("suspect", "-i", hub.index, plain, "--owner", "owner", *LOAD, "--json").stdout)
    assert out["population"]["n"] == 4 and out["suspect"] == "zzz"


# 4 ------------------------------------------------------------------------------------------------------------------
def _verdict(name: str, z: float, query_z: float | None, reviewed: bool | None, **extra) -> dict:
    """A fingerprint verdict as scan/screen return it (the parts the tables read)."""
    fp = {"decision_z": 0.2, "output_z": 0.4, "owner_data_z": 0.5, "query_z": query_z, "queries_reviewed": reviewed,
          "agreement": 0.5, "off_task": False}
    return {"suspect": name, "owner": "owner", "verdict": "derived" if z >= 3 else "unrelated", "z": z,
            "evidence": "fingerprint", "distance": 0.7, "signature_z": 0.1, "random_init": [], "fingerprint": fp,
            **extra}


def test_tables_show_the_query_z_and_warn_of_an_unreviewed_log_once(hub, monkeypatch):
    import gifindex.apps as apps

    models = [_verdict("other1", 4.2, 4.5, False), _verdict("other2", 3.5, 3.9, False),
              _verdict("other3", 1.0, 1.2, False)]
    monkeypatch.setattr(apps, "scan", lambda *a, **k: {"owner": "owner", "method": "modelgif", "z_threshold": 3.0,
                                                       "budget": None, "fingerprint": True, "models": models,
                                                       "derived": ["other1", "other2"]})
    text = _run("suspect", "-i", hub.index, "--owner", "owner", "--all").stdout
    header = text.splitlines()[1]
    assert "query z" in header and "4.50" in text and "3.90" in text
    assert text.count("unreviewed query log") == 1 and "unreviewed query log: other1, other2:" in text
    assert _strict(_run("suspect", "-i", hub.index, "--owner", "owner", "--all", "--json").stdout)["models"][0][
        "fingerprint"]["query_z"] == 4.5

    owners = [dict(_verdict("other1", 3.4, 4.0, False), owner="owner")]
    monkeypatch.setattr(apps, "screen", lambda *a, **k: {"suspect": "other1", "owners_checked": 1, "z_threshold": 3.0,
                                                         "owner_z_threshold": 3.0, "budget": None, "owner_budget": None,
                                                         "owners": owners, "derived_from": ["owner"], "errors": []})
    text = _run("suspect", "-i", hub.index, "other1").stdout
    assert "query z" in text and "4.00" in text and text.count("unreviewed query log") == 1

    # audit: the real pairing of scans, each owner's scan as above; the pairs carry their query z in --json too
    monkeypatch.setattr(suspect_module, "protected_owners", lambda index: ["owner"])
    monkeypatch.setattr(suspect_module, "stale_owners", lambda index: [])
    monkeypatch.setattr(suspect_module, "_fill_caches", lambda *a, **k: {})
    monkeypatch.setattr(suspect_module, "scan", apps.scan)
    audited = _strict(_run("suspect", "-i", hub.index, "--all", "--json").stdout)
    assert [(d["model"], d["query_z"]) for d in audited["derived"]] == [("other1", 4.5), ("other2", 3.9)]
    text = _run("suspect", "-i", hub.index, "--all").stdout
    assert "query z" in text and text.count("unreviewed query log") == 1 and "other2 from owner" in text
    reviewed = [_verdict("other1", 4.2, 4.5, True)]  # a reviewed log: the column, no warning
    monkeypatch.setattr(apps, "scan", lambda *a, **k: {"owner": "owner", "method": "modelgif", "z_threshold": 3.0,
                                                       "budget": None, "fingerprint": True, "models": reviewed,
                                                       "derived": ["other1"]})
    text = _run("suspect", "-i", hub.index, "--owner", "owner", "--all").stdout
    assert "query z" in text and "unreviewed" not in text


# 5 ------------------------------------------------------------------------------------------------------------------
def test_helper_architectures_are_checked_before_any_training(hub, tmp_path, monkeypatch):
    fit = importlib.import_module("gifindex.fingerprint.fit")

    def trained(*args, **kwargs):
        raise AssertionError("a helper was trained before every architecture was checked")

    monkeypatch.setattr(fit, "train_surrogate", trained)
    monkeypatch.setattr(fit, "train_reference", trained)
    index = _copy(hub, tmp_path)
    refused = _run("fit-probes", "-i", index, "owner", "--data", hub.data, "--helper-arch", "owner",
                   "--helper-arch", "bogus", ok=False)
    _error_line(refused, "helper architecture 'bogus' cannot be built")

    from gifindex.models.spec import InputSpec, LoadedModel

    def build(arch: str, num_classes: int) -> LoadedModel:  # taskonomy: a dense-prediction network
        module = (torch.nn.Conv2d(3, 3, 1) if arch.startswith("taskonomy:") else
                  timm.create_model("test_resnet", num_classes=num_classes))
        return LoadedModel(module=module.eval(), spec=InputSpec(size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3),
                           ref=arch, name=arch, source="test")

    fit.check_helper_archs(["timm:test_resnet"], build, CLASSES, torch.rand(1, 3, 16, 16))
    with pytest.raises(GifindexError, match="'taskonomy:normal' is not a classifier of the owner's 4 classes: its "
                                            "output on one image is "):
        fit.check_helper_archs(["timm:test_resnet", "taskonomy:normal"], build, CLASSES, torch.rand(1, 3, 16, 16))


# 6, 7 ---------------------------------------------------------------------------------------------------------------
def test_query_log_shares_are_rounded_up_and_a_dropped_reviewed_log_says_why():
    from gifindex.cli.apps import _dropped_log, _query_power, share_up

    assert share_up(0.932) == "93.2%" and share_up(0.9301) == "93.1%" and share_up(0.93) == "93.0%"
    assert "93.1%" in _query_power({"timm:test_resnet": 0.9301})  # a suspect repeating 93.0% is not flagged
    reviewed = {"reviewed_queries": 300, "recipe": {"query_answers_found": 2}}
    assert _dropped_log(reviewed) == "only 2 wrong answers among the 300 reviewed, fewer than 8"
    unreviewed = {"reviewed_queries": 0, "recipe": {"query_answers_found": 5}}
    assert _dropped_log(unreviewed) == "only 5; fewer than 8 answers differ from the references'"


# 8 ------------------------------------------------------------------------------------------------------------------
def test_configuration_options_keep_the_indexed_names(hub):
    """-K with -i INDEX: the indexed names are still the index's models, signed with the configuration given."""
    out = _strict(_run("unlearning", "-i", hub.index, "owner", "other1", "--forget", hub.forget, "-K", "4",
                       "--json").stdout)
    assert out["num_probes"] == 4 and out["original_candidate"] > 0
    assert [s["ref"] for s in out["signed"]] == [str(hub.files["owner"]), str(hub.files["other1"])]
    assert all(s["input_size"] == [16, 16] for s in out["signed"])  # as indexed
    far = _strict(_run("distance", "-i", hub.index, "owner", "other1", "-K", "4", "--json").stdout)
    assert far["kind"] == "exact" and far["config"]["num_probes"] == 4 and far["distance"] > 0


# 9 ------------------------------------------------------------------------------------------------------------------
def test_screening_the_only_protected_model_says_so(hub, tmp_path):
    from gifindex.index import Index
    from gifindex.index.layout import fingerprint_path

    index = _copy(hub, tmp_path)
    with Index.open(index) as opened:
        sha = opened.catalog.by_name("owner").weights_sha256
    path = fingerprint_path(index, "owner")
    path.parent.mkdir(exist_ok=True)
    np.savez(path, meta=np.array(json.dumps({"recipe": {"index_weights_sha256": sha}})))
    _error_line(_run("suspect", "-i", index, "owner", ok=False), "'owner' is the only protected model",
                "not screened against itself")


# 10 -----------------------------------------------------------------------------------------------------------------
def test_bad_query_logs_and_owner_data_name_the_file_and_its_role(hub, tmp_path):
    nan = tmp_path / "qnan.npy"
    x = np.random.default_rng(0).random((4, 3, 16, 16)).astype(np.float32)
    x[1, 0, 0, 0] = np.nan
    np.save(nan, x)
    deep = tmp_path / "q5d.npy"
    np.save(deep, np.zeros((2, 1, 3, 16, 16), np.float32))
    out = tmp_path / "review.npz"
    for log, message in ((nan, "images contain NaN or Inf values"), (deep, "cannot interpret an array of shape")):
        last = _error_line(_run("review-queries", "-i", hub.index, "owner", "--queries", log, "--out", out, ok=False),
                           f"{log} (the query log)", message)
        assert "probe" not in last
    negative = tmp_path / "neg.npz"
    np.savez(negative, x=x[[0] * 24], y=np.array([-1] + [0, 1, 2, 3] * 5 + [0, 1, 2]))
    _error_line(_run("fit-probes", "-i", hub.index, "owner", "--data", negative, ok=False),
                f"{negative}: owner data labels must be integers >= 0")
    _error_line(_run("unlearning", "-i", hub.index, "owner", "other1", "--forget", nan, ok=False),
                f"{nan} (the forget data)")
