"""Similarity trees: clustering, Newick/JSON/dendrogram/HTML exports, and the page in a real browser."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from gifindex.errors import GifindexError
from gifindex.tree import (FORMATS, LINKAGES, build_tree, save_dendrogram, save_tree, to_html,
                           to_json, to_newick)

HOSTILE = "<script>alert('x')</script>"
TRICKY = ["res net (v1), a:b;c", "it's \"quoted\"", "</script><img src=x onerror=alert(1)>"]


def family_matrix(seed: int = 0) -> tuple[list[str], np.ndarray, list[set[str]]]:
    """Nine models in three obvious families (within ~0.1, between ~1.0), with hostile names."""
    rng = np.random.default_rng(seed)
    names = ["resnet_a", "resnet_b", HOSTILE, "vit_a", TRICKY[0], "vit_c", TRICKY[1], TRICKY[2], "cnx_c"]
    fam = np.repeat([0, 1, 2], 3)
    d = np.where(fam[:, None] == fam[None, :], 0.1, 1.0) + rng.uniform(0, 0.05, (9, 9))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    return names, d, [set(names[3 * k:3 * k + 3]) for k in range(3)]


def random_matrix(n: int, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 5))
    return squareform(np.linalg.norm(x[:, None] - x[None], axis=-1) / 4, checks=False)


def json_clades(node: dict) -> list[set[str]]:
    """Leaf sets of every node of a to_json tree (also checks heights never decrease upward)."""
    if "children" not in node:
        assert node["height"] == 0
        return [{node["name"]}]
    out, mine = [], set()
    for child in node["children"]:
        assert child["height"] <= node["height"] + 1e-12
        sub = json_clades(child)
        out += sub
        mine |= sub[-1]
    assert len(mine) == node["size"]
    return out + [mine]


@pytest.fixture(scope="module")
def families():
    names, d, fams = family_matrix()
    meta = {n: {"ref": f"timm:{n}", "tags": ["demo"]} for n in names}
    return build_tree(names, d, metadata=meta), fams


# ---------------------------------------------------------------------------- clustering, validation

@pytest.mark.parametrize("method", LINKAGES)
def test_families_are_clades(method):
    names, d, fams = family_matrix()
    tree = build_tree(names, d, linkage=method)
    labels = hierarchy.fcluster(tree.linkage_matrix, 3, criterion="maxclust")
    assert {frozenset(n for n, l in zip(names, labels) if l == k) for k in set(labels)} == \
        {frozenset(f) for f in fams}
    clades = json_clades(to_json(tree)["root"])
    assert all(f in clades for f in fams)


def test_validation_errors():
    names, d, _ = family_matrix()
    bad = d.copy(); bad[0, 1] += 0.1
    cases = [(names, bad), (names, d[:8, :8]), (names[:8] + [names[0]], d), ([], np.zeros((0, 0))),
             (names, np.where(np.eye(9) > 0, np.nan, d)), (names, d - 0.5)]
    for nm, m in cases:
        with pytest.raises(GifindexError):
            build_tree(nm, m)
    with pytest.raises(GifindexError, match="linkage"):
        build_tree(names, d, linkage="centroid")
    with pytest.raises(GifindexError, match="limit"):
        build_tree(names, d, max_models=5)
    almost = d.copy(); almost[0, 1] += 1e-8; almost[2, 2] = 1e-4   # tolerated, then cleaned
    t = build_tree(names, almost)
    assert np.array_equal(t.distances, t.distances.T) and np.all(np.diag(t.distances) == 0)


def test_single_model_exports_everywhere(tmp_path):
    tree = build_tree(["only one"], np.zeros((1, 1)))
    assert to_newick(tree) == "'only one';"
    assert to_json(tree)["root"] == {"name": "only one", "height": 0.0, "size": 1}
    for fmt in FORMATS:
        path = save_tree(tree, tmp_path / f"t.{'nwk' if fmt == 'newick' else fmt}")
        assert path.stat().st_size > 8


# ---------------------------------------------------------------------------- Newick and JSON

def test_newick_parses_with_biopython(families):
    from Bio import Phylo  # biopython, in the "test" extra
    tree, fams = families
    text = to_newick(tree)
    parsed = Phylo.read(io.StringIO(text), "newick")
    tips = {t.name: t for t in parsed.get_terminals()}
    assert set(tips) == set(tree.names)
    for tip in tips.values():                           # ultrametric: every tip sits at half the root height
        assert parsed.distance(parsed.root, tip) == pytest.approx(tree.height / 2, abs=1e-8)
    coph = squareform(hierarchy.cophenet(tree.linkage_matrix))
    for i, a in enumerate(tree.names):                  # path between leaves = their linkage distance
        for j, b in enumerate(tree.names[:i]):
            assert parsed.distance(tips[a], tips[b]) == pytest.approx(coph[i, j], abs=1e-8)
    # and for a pair of singletons that merge first, that is exactly their distance in the matrix
    a, b, h, _ = tree.linkage_matrix[0]
    assert parsed.distance(tips[tree.names[int(a)]], tips[tree.names[int(b)]]) == \
        pytest.approx(tree.distances[int(a), int(b)], abs=1e-8) == pytest.approx(h)
    for f in fams:
        assert parsed.is_monophyletic([tips[n] for n in f])


def test_json_structure(families, tmp_path):
    tree, _ = families
    doc = to_json(tree)
    assert doc["linkage"] == "average" and doc["n"] == 9
    assert doc["root"]["height"] == pytest.approx(tree.height)
    assert len(json_clades(doc["root"])) == 2 * 9 - 1
    path = save_tree(tree, tmp_path / "tree.json")
    leaf = json.loads(path.read_text())["root"]
    while "children" in leaf:
        leaf = leaf["children"][0]
    assert leaf["metadata"]["ref"] == f"timm:{leaf['name']}"


def test_deep_chain_does_not_recurse(tmp_path):
    x = np.cumsum(np.arange(1, 1201) * 1e-3)
    tree = build_tree([f"m{i}" for i in range(1200)], np.abs(x[:, None] - x[None]) / x[-1], "single")
    assert to_newick(tree).count(",") == 1199
    text = save_tree(tree, tmp_path / "deep.json").read_text()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)            # json.loads recurses per nesting level, too
    try:
        assert json.loads(text)["n"] == 1200
    finally:
        sys.setrecursionlimit(limit)


# ---------------------------------------------------------------------------- dendrograms

def test_dendrogram_png_and_svg(families, tmp_path):
    from PIL import Image
    tree, _ = families
    svg = save_tree(tree, tmp_path / "tree.svg").read_text()
    assert "ModelGiF distance" in svg and "<svg" in svg
    small = save_dendrogram(tree, tmp_path / "small.png")
    big = build_tree([f"model-{i}" for i in range(120)], squareform(random_matrix(120)), "complete")
    large = save_tree(big, tmp_path / "large.png")
    with Image.open(small) as a, Image.open(large) as b:
        assert a.format == b.format == "PNG" and a.size[0] > 300
        assert b.size[1] > 2 * a.size[1]
        assert len(np.unique(np.asarray(a.convert("RGB")).reshape(-1, 3), axis=0)) > 20


def test_svg_contains_labels(tmp_path):
    names = ["alpha_model", "beta_model", "gamma_model"]
    d = squareform(np.array([0.2, 0.9, 0.8]))
    svg = save_tree(build_tree(names, d), tmp_path / "t.svg").read_text()
    # matplotlib writes text as glyph paths with the string kept in a comment
    assert all(n in svg for n in names)


def test_format_inference(tmp_path, families):
    tree, _ = families
    for suffix, head in [(".newick", "("), (".html", "<!DOCTYPE html>"), (".nwk", "(")]:
        assert save_tree(tree, tmp_path / f"x{suffix}").read_text().startswith(head)
    with pytest.raises(GifindexError, match="format"):
        save_tree(tree, tmp_path / "x.txt")
    with pytest.raises(GifindexError, match="format"):
        save_tree(tree, tmp_path / "x.txt", format="pdf")


# ---------------------------------------------------------------------------- HTML

class _Collect(HTMLParser):
    """Elements by tag, with attributes and text, of a (dumped) HTML document."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self._open: list[dict] = []

    def handle_starttag(self, tag, attrs):
        entry = {"tag": tag, **{k: v or "" for k, v in attrs}, "text": ""}
        self.tags.append((tag, entry))
        if tag not in ("rect", "circle", "path", "line", "stop", "input", "meta", "br", "img"):
            self._open.append(entry)

    def handle_endtag(self, tag):
        if self._open and self._open[-1]["tag"] == tag:
            self._open.pop()

    def handle_data(self, data):
        if self._open:
            self._open[-1]["text"] += data

    def find(self, tag, cls=None):
        return [e for t, e in self.tags if t == tag and (cls is None or cls in e.get("class", "").split())]


def parse(text: str) -> _Collect:
    p = _Collect()
    p.feed(text)
    return p


def test_html_is_self_contained_and_escaped(families):
    tree, _ = families
    page = to_html(tree, title="Zoo <b>&</b>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import", page, re.I)
    assert "<b>&</b>" not in page and "Zoo &lt;b&gt;&amp;&lt;/b&gt;" in page
    for bad in (HOSTILE, TRICKY[2], "</script><img"):
        assert bad not in page
    assert page.lower().count("<script") == 2 and page.lower().count("</script") == 2
    assert not parse(page).find("img")
    data = re.search(r'<script type="application/json" id="gif-data">(.*?)</script>', page, re.S)
    assert json.loads(data.group(1))["names"] == tree.names


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or \
        (Path("/usr/bin/chromium").exists() and "/usr/bin/chromium")
    if not exe:
        pytest.fail("chromium is needed to test the HTML page: apt-get update && apt-get install -y chromium")
    return exe


def run_chromium(tmp: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", "--window-size=1400,1000",
           "--virtual-time-budget=3000", *extra, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def page(families, tmp_path_factory):
    tree, _ = families
    tmp = tmp_path_factory.mktemp("html")
    path = save_tree(tree, tmp / "tree.html")
    return tree, tmp, path


def test_html_renders_in_chromium(page):
    from PIL import Image
    tree, tmp, path = page
    shot = tmp / "shot.png"
    run_chromium(tmp, path.as_uri(), f"--screenshot={shot}")
    print(f"\nscreenshot of the tree page: {shot}")
    assert shot.exists()
    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    colours = len(np.unique(px, axis=0))
    ink = np.mean(px.min(axis=1) < 200)                        # text, links, heatmap
    vivid = np.mean(px.max(axis=1) - px.min(axis=1) > 80)      # viridis heatmap cells
    assert colours > 100, f"page looks blank ({colours} colours)"
    assert ink > 0.03 and vivid > 0.02, f"page looks blank ({ink:.1%} ink, {vivid:.1%} colour)"


def test_html_dom_after_scripts(page):
    tree, tmp, path = page
    dom = parse(run_chromium(tmp, path.as_uri(), "--dump-dom").stdout)
    assert sorted(e["text"] for e in dom.find("text", "leaf-label")) == sorted(tree.names)
    assert len(dom.find("rect", "cell")) == tree.n ** 2
    assert {e["text"] for e in dom.find("text", "hm-label")} >= set(tree.names)
    assert len(dom.find("script")) == 2 and not dom.find("img")   # hostile names stayed text
    assert dom.find("svg") and dom.find("lineargradient")          # tree, heatmap, legend


def test_html_collapse_and_search(page):
    """Click the root (collapses everything), then search; the page must redraw accordingly."""
    tree, tmp, path = page
    probe = ("<script>addEventListener('load',function(){"
             "document.querySelector('#tree-svg circle.node').dispatchEvent(new MouseEvent('click',{bubbles:true}));"
             "var s=document.getElementById('search');s.value='vit';s.dispatchEvent(new Event('input'));"
             "});</script></body>")
    driven = tmp / "driven.html"
    driven.write_text(path.read_text().replace("</body>", probe))
    dom = parse(run_chromium(tmp, driven.as_uri(), "--dump-dom").stdout)
    assert not dom.find("text", "leaf-label")
    [clade] = dom.find("text", "clade-label")
    assert clade["text"].startswith(f"{tree.n} models (2 matches)") and "hit" in clade["class"]
    assert [e["text"] for e in dom.find("span") if e.get("id") == "hits"] == ["2 matches"]
    assert {e["data-name"] for e in dom.find("text", "hm-label") if "hit" in e["class"]} == {"vit_a", "vit_c"}


# ---------------------------------------------------------------------------- colour by a tag

ARTIFACTS = Path(__file__).parent / "artifacts"
FAMILY_OF = {0: "resnet", 1: "vit", 2: "convnext"}


@pytest.fixture(scope="module")
def tagged():
    """The nine-model families tree with a ``family`` tag (top level) and a ``relation`` tag (nested)."""
    names, d, fams = family_matrix()
    meta = {n: {"ref": f"timm:{n}", "family": FAMILY_OF[i // 3], "tags": {"relation": "base" if i % 3 == 0
                                                                          else "derived"}}
            for i, n in enumerate(names)}
    return build_tree(names, d, metadata=meta)


def test_leaf_groups(tagged):
    from gifindex.tree import PALETTE, leaf_groups
    groups = leaf_groups(tagged, "family")
    assert groups.values == [FAMILY_OF[i // 3] for i in range(9)]
    assert set(groups.colours) == {"resnet", "vit", "convnext"} and set(groups.colours.values()) <= set(PALETTE)
    assert len(set(groups.colours.values())) == 3
    assert leaf_groups(tagged, "relation").counts() == {"derived": 6, "base": 3}   # nested tags, by count
    with pytest.raises(GifindexError, match=r"no model has a tag 'dataset'.*tags present: family, relation"):
        leaf_groups(tagged, "dataset")
    with pytest.raises(GifindexError, match="dataset"):
        save_tree(tagged, Path("/nonexistent/never-written.nwk"), color_by="dataset")
    many = build_tree([f"m{i}" for i in range(30)], squareform(random_matrix(30)),
                      metadata={f"m{i}": {"k": f"v{i}"} for i in range(29)})
    folded = leaf_groups(many, "k")
    assert len(folded.colours) == len(PALETTE) and "other (10 values)" in folded.colours
    assert folded.values[-1] is None and folded.colour(29) != folded.colour(0)
    assert folded.counts()["(no k)"] == 1


def _svg_texts(path: Path) -> list[tuple[str, str, float, float]]:
    """(text, style, x, y) of every <text> element of a matplotlib SVG."""
    import xml.etree.ElementTree as ET
    ns = "{http://www.w3.org/2000/svg}"
    return [(e.text or "", e.get("style", ""), float(e.get("x", 0)), float(e.get("y", 0)))
            for e in ET.parse(path).iter(f"{ns}text")]


def test_svg_text_is_searchable_and_coloured(tagged, tmp_path):
    from gifindex.tree import leaf_groups
    path = save_tree(tagged, tmp_path / "t.svg", color_by="family")
    texts = _svg_texts(path)
    labels = {t: style for t, style, _, _ in texts}
    assert set(tagged.names) <= set(labels)                 # real <text>, hostile names kept as text
    groups = leaf_groups(tagged, "family")
    for i, name in enumerate(tagged.names):                 # each label in its family's colour
        assert f"fill: {groups.colour(i)}" in labels[name]
    assert {"family", "resnet (3)", "vit (3)", "convnext (3)"} <= set(labels)   # the legend
    assert "<script" not in path.read_text().replace("&lt;script", "")


def test_dendrogram_legible_at_200_models(tmp_path):
    x = np.random.default_rng(5).normal(size=(200, 5))
    names = [f"hub-model-{i:03d}" for i in range(200)]
    tree = build_tree(names, np.linalg.norm(x[:, None] - x[None], axis=-1) / 4,
                      metadata={n: {"family": f"f{i % 7}"} for i, n in enumerate(names)})
    path = save_tree(tree, tmp_path / "t200.svg", color_by="family")
    leaves = sorted((y, style) for t, style, _, y in _svg_texts(path) if t in set(names))
    assert len(leaves) == 200
    sizes = {float(re.search(r"font-size: ([\d.]+)px", s).group(1)) for _, s in leaves}
    assert min(sizes) >= 7.0                                # SVG user units are points
    gaps = np.diff([y for y, _ in leaves])
    assert gaps.min() >= 1.4 * min(sizes)                   # rows never overlap
    from PIL import Image
    with Image.open(save_tree(tree, tmp_path / "t200.png", color_by="family")) as im:
        assert im.size[1] >= 200 * 7 / 72 * 110 * 1.4       # 7 pt rows at 110 dpi


def test_html_color_by_in_chromium(tagged, tmp_path):
    """The --color-by page in a real browser: coloured dots and legend, a neighbour tooltip, a rank-scaled
    heatmap; the screenshot is kept at tests/artifacts/tree-color-by.png."""
    from PIL import Image

    from gifindex.tree import leaf_groups
    groups = leaf_groups(tagged, "family")
    path = save_tree(tagged, tmp_path / "tree.html", color_by="family")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "tree-color-by.png"
    shot.unlink(missing_ok=True)
    run_chromium(tmp_path, path.as_uri(), f"--screenshot={shot}")
    print(f"\nscreenshot of the --color-by tree page: {shot}")
    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    for colour in groups.colours.values():                  # every family colour is visible on the page
        rgb = np.array([int(colour[k:k + 2], 16) for k in (1, 3, 5)])
        assert np.sum(np.abs(px - rgb).sum(axis=1) < 12) > 40, colour
    hover = ("<script>addEventListener('load',function(){"
             "var t=document.querySelector('#tree-svg text.leaf-label[data-name=\"resnet_a\"]');"
             "var r=t.getBoundingClientRect();t.dispatchEvent(new MouseEvent('mousemove',{bubbles:true,"
             "clientX:r.left+2,clientY:r.top+2}));"
             "var p=document.createElement('pre');p.id='tip-copy';p.textContent=document.getElementById('tip')"
             ".textContent;document.body.appendChild(p);});</script></body>")
    driven = tmp_path / "hover.html"
    driven.write_text(path.read_text().replace("</body>", hover))
    dom = parse(run_chromium(tmp_path, driven.as_uri(), "--dump-dom").stdout)
    dots = {e["data-name"]: e for e in dom.find("circle", "leaf-dot")}
    for i, name in enumerate(tagged.names):
        assert dots[name]["fill"] == groups.colour(i) and dots[name]["data-group"] == groups.values[i]
    legend = [e for e in dom.find("span", "group")]
    assert {e["data-group"]: e["text"] for e in legend} == {"resnet": "resnet (3)", "vit": "vit (3)",
                                                              "convnext": "convnext (3)"}
    [tip] = [e["text"] for e in dom.find("pre") if e.get("id") == "tip-copy"]
    lines = tip.splitlines()
    assert lines[:3] == ["resnet_a", "family: resnet", "nearest: "]
    i = tagged.names.index("resnet_a")
    expect = sorted((tagged.distances[i, j], tagged.names[j]) for j in range(9) if j != i)[:5]
    assert lines[3:8] == [f"  {d:.4f} {nm}" for d, nm in expect]   # nearest first: its own family
    assert {nm for _, nm in expect[:2]} == {"resnet_b", HOSTILE}
    assert "height" not in tip
    # heatmap: rank colour scale, so the between-family pairs (all within 1.00-1.05) still span the palette
    order = [tagged.names.index(n) for n in tagged.names]
    cells = dom.find("rect", "cell")
    size = float(cells[0]["width"])
    leaf_order = tagged.leaf_order
    far = [(tagged.distances[leaf_order[round(float(c["y"]) / size)], leaf_order[round(float(c["x"]) / size)]],
            c["fill"]) for c in cells]
    far = sorted((d, tuple(map(int, re.findall(r"\d+", f)))) for d, f in far if d > 0.9)
    assert len(far) == 54 and len(order) == 9
    lo, hi = np.array(far[0][1]), np.array(far[-1][1])
    assert np.abs(hi - lo).sum() > 200, (far[0], far[-1])    # a linear 0..max scale gave < 60 here
    notes = [e["text"] for e in dom.find("p") if e.get("id") == "scale-note"]
    assert notes and "rank" in notes[0]
