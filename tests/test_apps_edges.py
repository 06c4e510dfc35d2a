"""Edges of the applications (suspect, unlearning, relatedness, fit-probes, review-queries): bad input is one clear
line, a weights file runs in the convention it is owed, undefined numbers are JSON null, and a fingerprint fitted
for other weights protects nothing. Small random models, nothing trained: seconds."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gifindex.cli import main
from gifindex.errors import ConfigError, GifindexError, ProbeError
from gifindex.fingerprint import OwnerData, load_owner_data, load_query_log

from helpers import five_model_hub

CLASSES = 4


def _run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def _one_line_error(result, *parts, code=1):
    """A refusal: exit ``code``, one error line (the last: what a command signed before it says so on lines of
    their own) naming ``parts``, no traceback or Python exception name."""
    text = result.output.strip()
    assert result.exit_code == code, text
    last = text.splitlines()[-1]
    for part in parts:
        assert part in last, text
    if code == 1:
        assert last.startswith("error: ") and sum(line.startswith("error") for line in text.splitlines()) == 1, text
    for leak in ("Traceback", "TypeError", "ValueError", "RuntimeError", "allow_pickle"):
        assert leak not in text, text


def _no_nan(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} in JSON output")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """An index of five random test_resnet models of CLASSES classes at 16 px (mean/std 0.5), ingested from files."""
    root = tmp_path_factory.mktemp("edges")
    index, files = five_model_hub(root, CLASSES, _run)
    forget = root / "forget.npy"
    np.save(forget, np.random.default_rng(0).random((8, 3, 16, 16)).astype(np.float32))
    return index, files, forget


def test_unlearning_runs_a_candidate_file_in_the_convention_it_is_owed(hub, tmp_path):
    """The indexed owner's very file (or a byte copy) takes its stored options; the same weights saved anew (other
    bytes, no convention given) take the original's convention, not the architecture's 160 px: distance 0 both
    ways, and the signed line says where the convention came from."""
    index, files, forget = hub
    copy = tmp_path / "owner_copy.pt"
    shutil.copyfile(files["owner"], copy)
    resaved = tmp_path / "resaved.pt"
    torch.save({k: v.clone() for k, v in torch.load(files["owner"]).items()}, resaved)
    for candidate, origin in ((files["owner"], "indexed model 'owner' (same weights file)"),
                              (copy, "indexed model 'owner' (same weights file)"),
                              (resaved, "the original's, 'owner'")):
        out = _no_nan(_run("unlearning", "-i", index, "owner", candidate, "--forget", forget, "--control", "other1",
                           "--json").stdout)
        assert out["original_candidate"] < 1e-6 and out["verdict"] == "not-forgotten", out
        signed = out["signed"][1]
        assert signed["input_size"] == [16, 16] and signed["convention_from"].startswith(origin), signed
    # a convention given is kept: the candidate then runs at 32 px and moves away from the original
    given = _no_nan(_run("unlearning", "-i", index, "owner", resaved, "--forget", forget, "--input-size", "32",
                         "--json").stdout)
    assert given["signed"][1]["convention_from"].startswith("input size given; mean, std: ")
    assert given["original_candidate"] > 1e-3


def test_unlearning_refuses_the_original_as_control(hub, tmp_path):
    index, files, forget = hub
    same = _run("unlearning", "-i", index, "owner", "other2", "--forget", forget, "--control", "owner", ok=False)
    _one_line_error(same, "the control 'owner' is the original itself")
    copy = tmp_path / "owner_copy.pt"
    shutil.copyfile(files["owner"], copy)
    near = _run("unlearning", "-i", index, "owner", "other2", "--forget", forget, "--control", copy, ok=False)
    _one_line_error(near, "the control 'owner_copy' sits at distance", "it is the original (or a copy of it)")


def test_empty_and_foreign_arrays_are_one_clear_line(hub, tmp_path):
    index, _, _ = hub
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 3, 16, 16), np.float32))
    notzip = tmp_path / "notzip.npz"
    notzip.write_text("not an archive")
    _one_line_error(_run("unlearning", "-i", index, "owner", "other1", "--forget", empty, ok=False),
                    "the forget data holds no images")
    _one_line_error(_run("unlearning", "-i", index, "owner", "other1", "--forget", notzip, ok=False),
                    "not an .npz archive")
    out = tmp_path / "review.npz"
    _one_line_error(_run("review-queries", "-i", index, "owner", "--queries", empty, "--out", out, ok=False),
                    "the query log holds no images")
    _one_line_error(_run("review-queries", "-i", index, "owner", "--queries", notzip, "--out", out, ok=False),
                    "not an .npz archive")
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(0).random((40, 3, 16, 16)).astype(np.float32), y=np.arange(40) % CLASSES)
    refused = _run("fit-probes", "-i", index, "owner", "--data", data, "--queries", empty, ok=False)
    assert refused.exit_code == 1 and "the query log holds no images" in refused.output.strip().splitlines()[-1]
    assert "ValueError" not in refused.output
    with pytest.raises(ProbeError, match="the query log holds no images"):
        load_query_log(empty, 16)
    # owner data: an .npy has no labels, an empty array is below the 20 images a fit needs, a text file is no .npz
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((30, 3, 16, 16), np.float32))
    zero = tmp_path / "zero.npz"
    np.savez(zero, x=np.zeros((0, 3, 16, 16), np.float32), y=np.zeros(0, np.int64))
    for source, message in ((x, "owner data needs labels"), (zero, "owner data has 0 labelled images"),
                            (notzip, "not an .npz archive")):
        with pytest.raises(ProbeError, match=message):
            load_owner_data(source, 16)
        _one_line_error(_run("fit-probes", "-i", index, "owner", "--data", source, ok=False), message)


def test_review_labels_past_the_owners_classes_are_refused(hub, tmp_path):
    index, _, _ = hub
    log = tmp_path / "log.npz"
    y = np.full(12, -1)
    y[3] = CLASSES + 11
    np.savez(log, x=np.random.default_rng(1).random((12, 3, 16, 16)).astype(np.float32), y=y)
    refused = _run("review-queries", "-i", index, "owner", "--queries", log, "--out", tmp_path / "r.npz", ok=False)
    _one_line_error(refused, f"review labels 'y' go up to {CLASSES + 11} but the owner has {CLASSES} outputs")
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(0).random((40, 3, 16, 16)).astype(np.float32), y=np.arange(40) % CLASSES)
    refused = _run("fit-probes", "-i", index, "owner", "--data", data, "--queries", log, ok=False)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert refused.output.strip().splitlines()[-1] == (f"error: {log}: review labels 'y' go up to {CLASSES + 11} but "
                                                      f"the owner has {CLASSES} outputs (classes 0-3; -1: not "
                                                      "reviewed)")


def test_owner_data_must_cover_the_owners_classes():
    from gifindex.apps.fitprobes import _folder_note, check_classes

    x = torch.rand(40, 3, 8, 8)
    said: list[str] = []
    with pytest.raises(GifindexError, match=r"holds images of 1 class only \(label 3\)"):
        check_classes(OwnerData(x, torch.full((40,), 3)), 10, said.append)
    with pytest.raises(GifindexError, match="covers 4 of the owner's 10 classes.*at least 5 of its classes"):
        check_classes(OwnerData(x, torch.arange(40) % 4), 10, said.append)
    with pytest.raises(GifindexError, match="labels up to 11 but the owner has 10 outputs"):
        check_classes(OwnerData(x, torch.arange(40) % 12), 10, said.append)
    assert not said
    check_classes(OwnerData(x, torch.arange(40) % 8), 10, said.append)
    assert said == ["warning: owner data covers 8 of the owner's 10 classes (none of class 8, 9): its helpers never "
                    "learn those, so suspects are judged on part of the task; give images of every class"]
    said.clear()
    check_classes(OwnerData(x, torch.arange(40) % 10), 10, said.append)
    assert not said
    # class folders: numbered 0..C-1 and one per output is silent; a missing number shifts every later label
    assert _folder_note([str(i) for i in range(10)], 10) is None
    assert _folder_note([f"{i:02d}" for i in range(12)], 12) is None
    note = _folder_note(["0", "1", "2", "3", "4", "5", "6", "8", "9"], 10)
    assert "folder '8' is label 7, folder '9' is label 8" in note and "9 class folders for the owner's 10" in note
    assert "folder '10' is label 2" in _folder_note([str(i) for i in sorted(range(11), key=str)], 11)
    assert _folder_note(["cat", "dog"], 3) == ("2 class folders for the owner's 3 outputs: name one folder per class "
                                               "of the owner, by its class number (zero-padded: '00'..'15'), with an "
                                               "empty folder for a class you have no images of")


def test_owner_data_folders_keep_their_names(tmp_path):
    from PIL import Image

    for c in ("0", "1", "3"):
        (tmp_path / c).mkdir()
        for i in range(8):
            Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    data = load_owner_data(tmp_path, 8)
    assert data.class_names == ["0", "1", "3"] and data.y.tolist() == [0] * 8 + [1] * 8 + [2] * 8


def test_relatedness_json_has_null_for_undefined_correlations(hub, tmp_path):
    index, _, _ = hub
    names = ["owner", "other1", "other2", "other3"]
    constant = tmp_path / "constant.json"
    constant.write_text(json.dumps({"names": names, "matrix": [[1.0] * 4] * 4}))
    result = CliRunner().invoke(main, ["relatedness", "-i", str(index), "--truth", str(constant), "--json"])
    assert result.exit_code == 0, result.output
    out = _no_nan(result.stdout)
    assert out["spearman_without_diagonal"] is None and out["agreement_with_diagonal"] is None
    assert all(c["without_diagonal"] is None and c["with_diagonal"] is None for c in out["per_column"])
    assert out["undefined_columns"] == names and "undefined for 4 of 4 target columns" in out["notes"][0]
    assert "Warning" not in result.stderr and "Mean of empty slice" not in result.stderr
    text = _run("relatedness", "-i", index, "--truth", constant).stdout
    assert "Spearman without diagonal  undefined" in text and "note: Spearman is undefined" in text
    partly = tmp_path / "partly.json"  # one column constant: left out of the means, the others count
    m = np.random.default_rng(0).random((4, 4))
    m[:, 2] = 0.5
    partly.write_text(json.dumps({"names": names, "matrix": m.tolist()}))
    out = _no_nan(_run("relatedness", "-i", index, "--truth", partly, "--json").stdout)
    assert out["undefined_columns"] == ["other2"] and math.isfinite(out["spearman_with_diagonal"])
    defined = [c["with_diagonal"] for c in out["per_column"] if c["with_diagonal"] is not None]
    assert out["spearman_with_diagonal"] == pytest.approx(float(np.mean(defined)))


@pytest.mark.parametrize("truth, message", [
    ({"names": ["owner", "other1", "other2"], "matrix": [[1, "a", 0.3], [0.2, 1, 0.3], [0.3, 0.2, 1]]},
     "'matrix' holds 'a' at row 0, column 1"),
    ({"names": ["owner", "other1", "other2"], "matrix": [[1, 0.2, 0.3], [0.2, 1], [0.3, 0.2, 1]]},
     "'matrix' rows differ in length (3, 2, 3)"),
    ({"names": "owner", "matrix": [[1]]}, "'names' must be a list of task names, got str 'owner'"),
    ({"names": ["owner", "owner", "other1"], "matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]},
     "'names' names 'owner' more than once"),
    ({"names": ["owner"], "matrix": []}, "'matrix' must be a list of rows"),
])
def test_bad_truth_files_are_one_clear_line(hub, tmp_path, truth, message):
    index, _, _ = hub
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(truth))
    _one_line_error(_run("relatedness", "-i", index, "--truth", path, ok=False), message)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_float_options_are_usage_errors(hub, tmp_path, value):
    index, _, forget = hub
    for args in (["suspect", "-i", index, "other1", "--owner", "owner", "--z-threshold", value],
                 ["suspect", "-i", index, "other1", "--owner", "owner", "--budget", value],
                 ["fit-probes", "-i", index, "owner", "--data", forget, "--eps", value],
                 ["review-queries", "-i", index, "owner", "--queries", forget, "--out", tmp_path / "r.npz",
                  "--share", value]):
        result = _run(*args, ok=False)
        assert result.exit_code == 2 and ("is not a finite number" in result.output
                                          or "is not in the range" in result.output), result.output
    from gifindex.apps import suspect_from_distances
    from gifindex.apps.suspect import check_threshold

    with pytest.raises(ConfigError, match="finite"):
        suspect_from_distances(0.1, [0.9, 0.95, 1.0, 1.02], z_threshold=float(value))
    with pytest.raises(ConfigError, match="between 0 and 1"):
        check_threshold(3.0, float(value))


def test_a_fingerprint_fitted_for_other_weights_protects_nothing(hub, tmp_path):
    """Only the metadata of a fingerprint decides whether it protects the model now indexed under its name."""
    from gifindex.apps.suspect import protected_owners, stale_owners
    from gifindex.fingerprint.store import current_fingerprints, fitted_for
    from gifindex.index import Index
    from gifindex.index.layout import fingerprint_path

    index, _, _ = hub
    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    with Index.open(copy) as opened:
        records = {r.name: r for r in opened.catalog.models()}
        for name, sha in (("owner", "0" * 64), ("other1", records["other1"].weights_sha256)):
            path = fingerprint_path(copy, name)
            path.parent.mkdir(exist_ok=True)
            np.savez(path, meta=np.array(json.dumps({"recipe": {"index_weights_sha256": sha}})))
        assert fitted_for(fingerprint_path(copy, "owner")) == "0" * 64
        assert current_fingerprints(copy, opened.catalog.models()) == ["other1"]
        assert protected_owners(opened) == ["other1"] and stale_owners(opened) == ["owner"]
    listed = {r["name"]: r["protected"] for r in json.loads(_run("list", "-i", copy, "--json").stdout)}
    assert listed["owner"] is False and listed["other1"] is True
    with Index.open(copy) as opened:
        fingerprint_path(copy, "other1").unlink()
    refused = _run("suspect", "-i", copy, "other2", ok=False)  # the stale one alone: nothing protected
    _one_line_error(refused, "no indexed model has a fingerprint to screen the suspect against",
                    "'owner'", "fitted for other weights")


def test_a_scan_with_every_other_model_excluded_says_so(hub):
    index, _, _ = hub
    others = ["other1", "other2", "other3", "other4"]
    excluded = [arg for name in others for arg in ("--exclude", name)]
    refused = _run("suspect", "-i", index, "--owner", "owner", "--all", *excluded, ok=False)
    _one_line_error(refused, "(found 0, 4 more excluded (--exclude))")


def test_output_probes_are_capped_at_the_distinct_images():
    """--output-probes past the data's images takes each image once (and the logged queries, when outputs are
    compared on them), not the same images again."""
    from gifindex.apps.fitprobes import _probe_images_available
    from gifindex.fingerprint import FitConfig

    data = OwnerData(torch.rand(30, 3, 8, 8), torch.arange(30) % 3)
    assert _probe_images_available(data, FitConfig(), None) == 30
    assert _probe_images_available(data, FitConfig(), torch.rand(7, 3, 8, 8)) == 37
    assert _probe_images_available(data, FitConfig(output_probe_source="owner"), torch.rand(7, 3, 8, 8)) == 30
    assert _probe_images_available(data, FitConfig(disjoint=True), None) == 15
