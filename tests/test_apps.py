"""The applications: suspect (IP protection), unlearning, relatedness."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

from gifindex.apps import load_affinity, spearman_columns, suspect_from_distances
from gifindex.apps.relatedness import score
from gifindex.cli import main
from gifindex.errors import GifindexError

DATA = Path(__file__).resolve().parents[1] / "gifindex" / "data"


def _run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_relatedness_reproduces_the_published_taskonomy_numbers():
    names, affinity, aliases = load_affinity(DATA / "taskonomy_affinity.json")
    authors = json.loads((DATA / "modelgif_taskonomy_distances.json").read_text())
    assert authors["names"] == names and len(names) == 17 and "class_object" in aliases[-1]
    out = score(np.array(authors["distances"]), affinity, names)
    assert out["spearman_with_diagonal"] == pytest.approx(-0.8349192618, abs=1e-9)
    assert out["spearman_without_diagonal"] == pytest.approx(-0.8035, abs=5e-5)


def test_spearman_columns_by_hand():
    d = np.array([[0.0, 1.0, 3.0], [1.0, 0.0, 2.0], [3.0, 2.0, 0.0]])
    aff = np.array([[9.0, 5.0, 1.0], [5.0, 9.0, 4.0], [1.0, 2.0, 9.0]])
    # with the diagonal each column's ranks are exactly reversed -> rho = -1
    assert spearman_columns(d, aff, diagonal=True).tolist() == pytest.approx([-1, -1, -1])
    # without it, two points per column: column 0 (1,3) vs (5,1) -> -1; column 2 (3,2) vs (1,4) -> -1;
    # column 1 (1,2) vs (5,2) -> -1
    assert spearman_columns(d, aff, diagonal=False).tolist() == pytest.approx([-1, -1, -1])
    aff2 = aff.copy()
    aff2[:, 1] = [2.0, 9.0, 5.0]  # column 1 without diagonal: (1, 2) vs (2, 5) -> +1
    assert spearman_columns(d, aff2, diagonal=False)[1] == pytest.approx(1.0)


def test_suspect_calibration():
    population = [0.9, 0.95, 1.0, 1.02, 0.97, 0.93]
    stolen = suspect_from_distances(0.05, population)
    assert stolen["verdict"] == "derived" and stolen["p_value"] == pytest.approx(1 / 7) and stolen["z"] > 10
    unrelated = suspect_from_distances(0.96, population)
    assert unrelated["verdict"] == "unrelated" and unrelated["p_value"] > 0.5
    assert stolen["threshold"]["distance"] < 0.9
    with pytest.raises(GifindexError):
        suspect_from_distances(0.1, [0.9, 1.0])


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """An index with an owner, a slightly perturbed copy of it, and five independent models."""
    root = tmp_path_factory.mktemp("hub")
    files = {}
    for i in range(6):
        torch.manual_seed(i)
        model = timm.create_model("test_resnet", num_classes=4)
        name = "owner" if i == 0 else f"other{i}"
        files[name] = root / f"{name}.pt"
        torch.save(model.state_dict(), files[name])
        if i == 0:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.0 + 0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
            files["copy"] = root / "copy.pt"
            torch.save(model.state_dict(), files["copy"])
    index = root / "idx"
    _run("init", "-i", index, "-K", "6", "-T", "2", "--resolution", "16", "--proj-dim", "128")
    manifest = root / "m.yaml"
    manifest.write_text("".join(f"- name: {n}\n  ref: {p}\n  arch: timm:test_resnet\n  num_classes: 4\n"
                                f"  input_size: 16\n" for n, p in files.items()))
    _run("ingest", "-i", index, "--manifest", manifest, "--no-progress", "--executor", "inline")
    return index, files


def test_suspect_command_flips_between_a_copy_and_an_unrelated_model(hub):
    index, files = hub
    self_check = json.loads(_run("suspect", "-i", index, "owner", "--owner", "owner", "--json").stdout)
    assert self_check["distance"] < 1e-3 and self_check["verdict"] == "derived"
    copy = json.loads(_run("suspect", "-i", index, "copy", "--owner", "owner", "--json").stdout)
    assert copy["verdict"] == "derived" and copy["population"]["n"] == 5
    other = json.loads(_run("suspect", "-i", index, "other3", "--owner", "owner", "--json").stdout)
    assert other["verdict"] == "unrelated" and other["z"] < copy["z"]
    # a file reference is signed on the fly
    fly = json.loads(_run("suspect", "-i", index, files["copy"], "--owner", "owner", "--arch", "timm:test_resnet",
                          "--num-classes", "4", "--input-size", "16", "--json").stdout)
    assert fly["verdict"] == "derived"
    text = _run("suspect", "-i", index, "other3", "--owner", "owner").stdout
    assert "UNRELATED" in text and "z >= 3" in text


def test_suspect_all_judges_every_indexed_model_as_suspect_alone_would(hub):
    index, _ = hub
    scan = json.loads(_run("suspect", "-i", index, "--owner", "owner", "--all", "--json").stdout)
    names = [r["suspect"] for r in scan["models"]]
    assert sorted(names) == ["copy", "other1", "other2", "other3", "other4", "other5"]  # all but the owner
    assert names[0] == "copy" and scan["derived"] == ["copy"] and not scan["fingerprint"]
    zs = [r["z"] for r in scan["models"]]
    assert zs == sorted(zs, reverse=True)
    for r in scan["models"]:  # each verdict is the one-suspect verdict (leave-one-out population)
        alone = json.loads(_run("suspect", "-i", index, r["suspect"], "--owner", "owner", "--json").stdout)
        assert (r["verdict"], r["population"]["n"]) == (alone["verdict"], alone["population"]["n"])
        assert r["z"] == pytest.approx(alone["z"]) and r["distance"] == pytest.approx(alone["distance"])
    excluded = json.loads(_run("suspect", "-i", index, "--owner", "owner", "--all", "--exclude", "other1",
                               "--json").stdout)
    assert "other1" not in [r["suspect"] for r in excluded["models"]] and excluded["derived"] == ["copy"]
    text = _run("suspect", "-i", index, "--owner", "owner", "--all").stdout
    assert "6 indexed models judged by the signature distance" in text and "derived: copy" in text
    assert "note: by the signature alone, independently trained models of the owner's architecture" in text
    assert text.splitlines()[3].split()[:2] == ["copy", "DERIVED"]
    for args in (["copy", "--all"], []):  # one suspect or --all, not both, not neither
        bad = _run("suspect", "-i", index, "--owner", "owner", *args, ok=False)
        assert bad.exit_code == 2 and "name one SUSPECT, or give --all" in bad.output
    from gifindex.apps import scan
    from gifindex.index import Index

    seen = []
    with Index.open(index) as opened:  # from Python, with progress: one call per judged model
        direct = scan(opened, "owner", on_model=lambda name, done, total: seen.append((name, done, total)))
    assert [r["suspect"] for r in direct["models"]] == names and [s[1:] for s in seen] == [(i, 6) for i in range(1, 7)]
    too_few = _run("suspect", "-i", index, "--owner", "owner", "--all", "--exclude", "other1", "--exclude", "other2",
                   "--exclude", "other3", ok=False)
    assert too_few.exit_code == 1 and "a scan needs at least 4 indexed models besides the owner" in too_few.output


def test_suspect_budget_judges_by_rank_among_the_indexed_models(hub):
    """--budget: derived when at most that share of the other models score as high. The copy ranks first; it
    also sits above every unrelated model, so at 0.25 none of them is flagged; with the copy excluded exactly
    floor(0.25 * 5) = 1 of the five is (the share the budget allows among unrelated models)."""
    index, _ = hub
    scan = json.loads(_run("suspect", "-i", index, "--owner", "owner", "--all", "--budget", "0.25",
                           "--json").stdout)
    assert scan["budget"] == 0.25 and scan["derived"] == ["copy"]
    by_name = {r["suspect"]: r for r in scan["models"]}
    copy = by_name.pop("copy")
    assert copy["rank"]["p_value"] == pytest.approx(1 / 6) and copy["rank"]["n"] == 5
    assert copy["verdict"] == copy["z_verdict"] == "derived"
    ranked = sorted(by_name.values(), key=lambda r: -r["z"])
    assert [r["rank"]["p_value"] for r in ranked] == pytest.approx([j / 6 for j in range(2, 7)])
    excluded = json.loads(_run("suspect", "-i", index, "--owner", "owner", "--all", "--budget", "0.25", "--exclude",
                               "copy", "--json").stdout)
    assert excluded["derived"] == [ranked[0]["suspect"]]
    for r in excluded["models"]:
        assert r["rank"]["n"] == 4 and r["z_verdict"] == "unrelated"
    for r in (copy, ranked[0], ranked[3]):  # one suspect alone gets the rank --all gives it
        alone = json.loads(_run("suspect", "-i", index, r["suspect"], "--owner", "owner", "--budget", "0.25",
                                "--json").stdout)
        assert (alone["verdict"], alone["rank"]["p_value"]) == (r["verdict"], pytest.approx(r["rank"]["p_value"]))
        assert alone["z"] == pytest.approx(r["z"])
    text = _run("suspect", "-i", index, ranked[3]["suspect"], "--owner", "owner", "--budget", "0.25").stdout
    assert "rank          4 of 5 other indexed models score as high" in text
    assert "verdict       UNRELATED  (by rank among the indexed models" in text and text.count("verdict ") == 1
    assert "1 of the ranked models score z >= 3 (likely copies of the owner)" in text
    listed = _run("suspect", "-i", index, "--owner", "owner", "--all", "--budget", "0.25").stdout
    assert "rank p" in listed and "derived when at most 0.25 of the other models score as high" in listed
    assert "note: 1 of the ranked models score z >= 3" in listed
    assert ranked[3]["rank"]["at_or_above_z_threshold"] == 1 and copy["rank"]["at_or_above_z_threshold"] == 0
    small = _run("suspect", "-i", index, "copy", "--owner", "owner", "--budget", "0.05", ok=False)
    assert small.exit_code == 1 and "at least 19 other indexed models (found 5)" in small.output
    assert "Traceback" not in small.output
    bad = _run("suspect", "-i", index, "copy", "--owner", "owner", "--budget", "1.5", ok=False)
    assert bad.exit_code == 2 and "--budget" in bad.output


def test_leave_one_out_matches_the_exact_verdicts_at_scale():
    """Above LOO_EXACT_MAX the scan shares the population statistics: p-values stay exact, z moves by O(1/n)."""
    from gifindex.apps.suspect import leave_one_out

    rng = np.random.default_rng(0)
    d = np.concatenate([rng.normal(0.95, 0.03, 4990), rng.uniform(0.05, 0.9, 10)])
    fast = leave_one_out(d, exact_max=100)
    slow = leave_one_out(d[:150], exact_max=1000)  # the exact path, on a smaller population
    assert slow[0]["population"]["leave_one_out"] == "exact" and fast[0]["population"]["n"] == len(d) - 1
    for k in list(range(0, 4990, 250)) + list(range(4990, 5000)):
        exact = suspect_from_distances(float(d[k]), np.delete(d, k))
        assert fast[k]["p_value"] == pytest.approx(exact["p_value"], abs=1e-12)
        assert fast[k]["z"] == pytest.approx(exact["z"], abs=0.01 * max(1.0, abs(exact["z"])))
        assert fast[k]["verdict"] == exact["verdict"] and fast[k]["distance"] == d[k]
    assert sum(r["verdict"] == "derived" for r in fast) >= 10  # the ten planted copies
    for k in range(150):
        assert slow[k]["z"] == suspect_from_distances(float(d[k]), np.delete(d[:150], k))["z"]
    with pytest.raises(GifindexError, match="no spread"):
        leave_one_out(np.full(3000, 0.9), exact_max=100)


def test_unlearning_command(hub, tmp_path):
    index, files = hub
    forget = tmp_path / "forget.npy"
    np.save(forget, np.random.default_rng(0).random((8, 16, 16)).astype(np.float32))
    out = json.loads(_run("unlearning", "-i", index, "owner", "copy", "--forget", forget, "--control", "other2",
                          "--json").stdout)
    assert out["num_probes"] == 6 and out["verdict"] == "not-forgotten"
    assert out["original_candidate"] < out["original_control"]
    same = json.loads(_run("unlearning", "-i", index, "owner", "other2", "--forget", forget, "--control", "other2",
                           "--json").stdout)
    assert same["verdict"] == "forgotten" and same["ratio"] == pytest.approx(1.0)


def test_relatedness_command_matches_names(hub, tmp_path):
    index, _ = hub
    names = ["owner", "copy", "other1", "other2"]
    truth = tmp_path / "truth.json"
    # affinity: owner and copy transfer well to each other, the rest poorly
    m = [[1, 0.9, 0.1, 0.2], [0.9, 1, 0.15, 0.1], [0.1, 0.2, 1, 0.3], [0.2, 0.1, 0.3, 1]]
    truth.write_text(json.dumps({"names": names, "matrix": m}))
    out = json.loads(_run("relatedness", "-i", index, "--truth", truth, "--json").stdout)
    assert out["tasks"] == 4 and out["missing"] == []
    assert out["spearman_with_diagonal"] < 0
    text = _run("relatedness", "-i", index, "--truth", DATA / "taskonomy_affinity.json", ok=False)
    assert text.exit_code == 1  # none of the Taskonomy tasks are indexed


def test_applications_warn_about_random_weights(hub, tmp_path):
    """Issue 12 point 5: random (untrained) weights never pass silently through an application."""
    index, files = hub
    forget = tmp_path / "forget.npy"
    np.save(forget, np.random.default_rng(0).random((4, 16, 16)).astype(np.float32))
    args = ["unlearning", "-i", index, "owner", "timm:test_resnet", "--random-init", "--num-classes", "4",
            "--input-size", "16", "--forget", forget]
    assert json.loads(_run(*args, "--json").stdout)["random_init"] == ["candidate"]
    assert "WARNING: random (untrained) weights: candidate" in _run(*args).stdout
    rand = tmp_path / "rand"
    _run("init", "-i", rand, "-K", "4", "-T", "2", "--resolution", "16", "--proj-dim", "16")
    manifest = tmp_path / "r.yaml"
    manifest.write_text("".join(f"- name: t{i}\n  ref: timm:test_resnet\n  num_classes: 4\n" for i in range(4)))
    _run("ingest", "-i", rand, "--manifest", manifest, "--random-init", "--no-progress", "--executor", "inline")
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"names": [f"t{i}" for i in range(4)],
                                 "matrix": np.random.default_rng(1).random((4, 4)).tolist()}))
    out = json.loads(_run("relatedness", "-i", rand, "--truth", truth, "--json").stdout)
    assert out["random_init"] == ["t0", "t1", "t2", "t3"]
    assert "WARNING: random (untrained) weights: t0, t1, t2, t3" in _run("relatedness", "-i", rand, "--truth",
                                                                        truth).stdout
    plain = json.loads(_run("suspect", "-i", index, "copy", "--owner", "owner", "--json").stdout)
    assert plain["random_init"] == [] and plain["p_value_floor"] == pytest.approx(1 / 6)
