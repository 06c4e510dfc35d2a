"""Edges of what gifindex prints and writes: relatedness pairs each indexed model with one task at most, every JSON
output is strict (NaN tags as null) at any tree depth, --json never prints another format, names with leading or
trailing whitespace are refused, and a one-model tree page shows no made-up distance scale. Seconds."""
from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from gifindex.apps.relatedness import match_names, relatedness
from gifindex.cli import main
from gifindex.cli.options import emit_json
from gifindex.manifest import ModelEntry, parse_manifest
from gifindex.text import json_text, text_problem
from gifindex.tree import build_tree, save_tree, to_html, to_json, to_newick, tree_json_text

MANIFEST = "".join(f"- name: {name}\n  ref: timm:test_resnet\n  num_classes: 4\n  input_size: 16\n"
                   f"  tags: {{family: {family}, score: {score}}}\n"
                   for name, family, score in (("m1", "a", ".nan"), ("m2", "a", ".inf"), ("m3", "b", "0.5")))


def _run(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def _strict(text: str):
    """json.loads that fails on NaN, Infinity and -Infinity (Python accepts them; JSON.parse and jq do not)."""
    def refuse(constant):
        raise AssertionError(f"{constant} in JSON output")
    return json.loads(text, parse_constant=refuse)


def _chain(n: int):
    """A single-linkage tree n levels deep (each model joins the clade of all before it)."""
    x = np.cumsum(np.linspace(1, 2, n))
    d = np.abs(x[:, None] - x[None])
    return build_tree([f"m{i}" for i in range(n)], d / d.max(), linkage="single")


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """Three random test_resnet models; m1's score tag is .nan and m2's .inf (YAML's NaN and infinity)."""
    root = tmp_path_factory.mktemp("outputs")
    manifest = root / "m.yaml"
    manifest.write_text(MANIFEST)
    _run("init", "-i", root / "idx", "-K", "2", "-T", "2", "--resolution", "16", "--proj-dim", "16")
    _run("ingest", "-i", root / "idx", "--manifest", manifest, "--random-init", "--no-progress", "--executor", "inline")
    return root / "idx"


# ------------------------------------------------------------------------------------------ 1. relatedness

@pytest.mark.parametrize("aliases, indexed, expected", [
    ([["b5"], ["b5c"], ["b2"], ["b3"], ["b4"]], ["b5c", "b2", "b3", "b4"], [None, 0, 1, 2, 3]),  # b5c is b5c's
    ([["m1"], ["M1"]], ["m1"], [0, None]),                                   # M1's loose match is taken
    ([["M1"], ["m1"]], ["m1"], [None, 0]),                                   # whatever the task order
    ([["seg"]], ["seg-a", "seg-b"], [None]),                                 # two prefixes fit: no guess
    ([["res"], ["net"]], ["res-net"], [None, None]),                         # two tasks fit one model: neither
    ([["depth"], ["depth_euclid"]], ["depth-v2", "depth_euclid-v2"], [None, 1]),   # one fit: not blocked by
    #                                                                        a task that fits it among others
    ([["curvature", "curvature", "Curvature"], ["edge2d", "edge_texture", "Edge 2D"]],
     ["taskonomy-curvature", "Edge-2D"], [0, 1]),                            # the fallbacks still work
])
def test_each_indexed_model_serves_one_task(aliases, indexed, expected):
    assert match_names(aliases, indexed) == expected


def test_relatedness_reports_a_task_whose_only_candidate_is_taken_as_missing(tmp_path):
    """The tester's case: b5 is not indexed and b5c is, so b5 is missing (it used to take b5c too)."""
    names = ["b5", "b5c", "b2", "b3", "b4"]
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"names": names, "matrix": np.random.default_rng(0).random((5, 5)).tolist()}))
    indexed = ["b5c", "b2", "b3", "b4", "m1"]
    d = np.random.default_rng(1).random((5, 5))
    index = SimpleNamespace(matrix=lambda: (indexed, (d + d.T) * (1 - np.eye(5))), records=lambda: [],
                            config=SimpleNamespace(method="modelgif"))
    out = relatedness(index, truth)
    assert out["matched"] == {"b5c": "b5c", "b2": "b2", "b3": "b3", "b4": "b4"}
    assert out["missing"] == ["b5"] and out["tasks"] == 4


# ------------------------------------------------------------------------------------------ 2. strict JSON

def test_json_text_makes_non_finite_numbers_null_and_keeps_the_others():
    value = {"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf"), "d": (np.float32(0.25), np.nan)}],
             "e": np.array([1.0, np.nan]), "f": 0.1, "g": 10 ** 20, "h": np.int64(3)}
    for indent in (None, 2):
        assert _strict(json_text(value, indent=indent)) == {
            "a": None, "b": [1.5, None, {"c": None, "d": [0.25, None]}], "e": [1.0, None], "f": 0.1, "g": 10 ** 20,
            "h": 3}
    plain = {"x": [0.1, 1e-300, 2.0], "y": {"z": "é"}}
    assert json_text(plain, indent=2) == json.dumps(plain, indent=2)        # layout and numbers as before
    assert json_text(plain) == json.dumps(plain, separators=(",", ":"))


def test_emit_json_is_strict():
    out = io.StringIO()
    with redirect_stdout(out):
        emit_json({"tags": {"score": float("nan"), "list": [float("inf")]}})
    assert _strict(out.getvalue()) == {"tags": {"score": None, "list": [None]}}


def test_list_and_tree_json_write_nan_tags_as_null(index, tmp_path):
    listed = {m["name"]: m for m in _strict(_run("list", "-i", index, "--json").stdout)}
    assert [listed[m]["metadata"]["tags"]["score"] for m in ("m1", "m2", "m3")] == [None, None, 0.5]
    printed = _run("tree", "-i", index, "--json").stdout
    _run("tree", "-i", index, "-o", tmp_path / "t.json")
    written = (tmp_path / "t.json").read_text()
    assert printed == written                              # one writer for both
    leaves = {}
    stack = [_strict(written)["root"]]
    while stack:
        node = stack.pop()
        stack += node.get("children", [])
        if "name" in node:
            leaves[node["name"]] = node["metadata"]["score"]
    assert leaves == {"m1": None, "m2": None, "m3": 0.5}


# ------------------------------------------------------------------------------------------ 3. --json and --format

def test_tree_json_with_another_format_on_stdout_is_a_usage_error(index, tmp_path):
    for fmt in ("newick", "png", "html"):
        result = _run("tree", "-i", index, "--json", "--format", fmt, code=2)
        assert "Error: --json prints the tree as JSON on stdout, not " + fmt in result.output
        assert "(" not in result.stdout                    # no Newick printed
    assert _strict(_run("tree", "-i", index, "--json", "--format", "json").stdout)["n"] == 3
    wrote = _strict(_run("tree", "-i", index, "--json", "--format", "newick", "-o", tmp_path / "t.nwk").stdout)
    assert wrote["format"] == "newick" and (tmp_path / "t.nwk").read_text().strip().endswith(";")


# ------------------------------------------------------------------------------------------ 4. deep trees

def test_deep_tree_json_prints_as_it_is_written(tmp_path):
    tree = _chain(800)
    out = io.StringIO()
    with redirect_stdout(out):
        emit_json(to_json(tree))                           # the tester's repro: RecursionError
    text = tree_json_text(tree)
    save_tree(tree, tmp_path / "deep.json")
    assert (tmp_path / "deep.json").read_text() == text + "\n"
    assert out.getvalue().count('"name"') == text.count('"name"') == 800
    assert not re.search(r"NaN|Infinity", text)


def test_very_deep_tree_exports_without_recursion(tmp_path):
    tree = _chain(3000)
    assert to_newick(tree).count(",") == 2999
    text = tree_json_text(tree)
    assert text.count('"children"') == 2999 and text.endswith("]}" * 2999 + "}")
    nested: list = []
    for _ in range(50_000):
        nested = [nested, float("nan")]
    assert json_text(nested) == "[" * 50_000 + "[]" + ",null]" * 50_000


# ------------------------------------------------------------------------------------------ 5. whitespace in names

@pytest.mark.parametrize("name", ["m1 ", " m1", "m1\u00a0", "\u3000m1"])
def test_names_with_leading_or_trailing_whitespace_are_refused(name):
    problem = text_problem(name, "name")
    assert problem and "starts or ends with whitespace" in problem and "\n" not in problem
    assert text_problem("m 1", "name") is None and text_problem(name, "reference") is None
    assert text_problem(name, "name", stored=True) is None     # one an older index holds is still its name
    entry = parse_manifest(f"- name: {json.dumps(name)}\n  ref: timm:test_resnet\n")[0]   # judged at ingest
    assert entry.name == name
    assert ModelEntry(ref="/x/resnet .pt").display_name() == "resnet"   # a name from a file: stripped


def test_ingest_refuses_a_name_with_a_trailing_blank(index):
    result = _run("ingest", "-i", index, "timm:test_resnet", "--random-init", "--num-classes", "4", "--name", "m1 ",
                  "--no-progress", "--executor", "inline", code=1)
    assert "starts or ends with whitespace" in result.output
    assert sorted(m["name"] for m in _strict(_run("list", "-i", index, "--json").stdout)) == ["m1", "m2", "m3"]


# ------------------------------------------------------------------------------------------ 6. one-model page

def _page_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="gif-data">(.*?)</script>', page, re.S)
    return _strict(found.group(1))


def test_one_model_page_has_no_legend_ticks():
    data = _page_data(to_html(build_tree(["only"], np.zeros((1, 1)))))
    assert data["cond"] == [] and data["ticks"] == []


def test_legend_ticks_are_the_quartiles_of_the_pairs():
    d = np.array([[0, 0.2, 0.4, 0.9], [0.2, 0, 0.5, 0.6], [0.4, 0.5, 0, 0.7], [0.9, 0.6, 0.7, 0]])
    data = _page_data(to_html(build_tree(["a", "b", "c", "d"], d)))
    pairs = d[np.triu_indices(4, 1)]
    assert data["ticks"] == [[f, pytest.approx(float(np.quantile(pairs, f)), abs=1e-6)]
                             for f in (0.0, 0.25, 0.5, 0.75, 1.0)]


def test_color_by_needs_a_coloured_output(tmp_path):
    """--color-by colours png/svg/html: with Newick or JSON it is a usage error, not silently ignored."""
    from click.testing import CliRunner

    from gifindex.cli import main
    from gifindex.config import SignatureConfig
    from gifindex.index import Index
    from gifindex.manifest import ModelEntry

    with Index.create(tmp_path / "ix", SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=16)) as index:
        index.ingest([ModelEntry(ref="timm:test_resnet", name="r", random_init=True, num_classes=4, input_size=16)])
    for args in ([], ["-o", tmp_path / "t.nwk"], ["--json"]):
        result = CliRunner().invoke(main, ["tree", "-i", str(tmp_path / "ix"), "--color-by", "family",
                                           *map(str, args)])
        assert result.exit_code == 2 and "--color-by" in result.output, (args, result.output)
    unknown = CliRunner().invoke(main, ["tree", "-i", str(tmp_path / "ix"), "--color-by", "family", "-o",
                                        str(tmp_path / "t.html")])
    assert unknown.exit_code == 1 and "tags present: none" in unknown.output


def test_a_manifest_resumes_a_name_an_older_index_holds_with_blanks(tmp_path, monkeypatch):
    """An index from before the rule may hold "m1 ": its manifest still resumes (the entry is skipped as indexed),
    while a new name with blanks fails on its own."""
    import gifindex.index.writer as writer
    import gifindex.text as text

    rule = text.text_problem
    _run("init", "-i", tmp_path / "ix", "-K", "2", "-T", "2", "--resolution", "16", "--proj-dim", "16")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("- {name: 'm1 ', ref: 'timm:test_resnet', random_init: true, num_classes: 4, input_size: 16}\n")
    monkeypatch.setattr(writer, "text_problem", lambda value, what, stored=False: rule(value, what, stored=True))
    _run("ingest", "-i", tmp_path / "ix", "--manifest", manifest, "--no-progress", "--executor", "inline")
    monkeypatch.setattr(writer, "text_problem", rule)
    again = _run("ingest", "-i", tmp_path / "ix", "--manifest", manifest, "--no-progress", "--executor", "inline")
    assert "1 skipped" in again.output
    new = _run("ingest", "-i", tmp_path / "ix", "timm:test_resnet", "--random-init", "--num-classes", "4",
               "--input-size", "16", "--name", " m2", "--no-progress", "--executor", "inline", code=1)
    assert "starts or ends with whitespace" in new.output
