"""Similarity trees: hierarchical clustering of an index's pairwise ModelGiF distances.

Everything here is a pure function of ``(names, distances)``: ``names`` is a list of unique model
names and ``distances`` the square, symmetric matrix of their distances (in [0, 2]; 0 = identical
function). :func:`build_tree` clusters them with :mod:`scipy.cluster.hierarchy`; the exporters write
Newick, JSON, a matplotlib dendrogram (PNG/SVG) or one self-contained interactive HTML page.

Height convention (used by every exporter): a leaf has height 0 and an internal node has the
linkage's merge distance (for ``average`` linkage, the mean distance between the two merged clades),
i.e. the value on the dendrogram's "ModelGiF distance" axis. Newick branch lengths are
``parent height - child height`` (clipped at 0), so every root-to-tip path has the root's height, and
the path between two leaves is *twice* their cophenetic distance.

Scale: the dense path keeps the full n x n matrix (O(n^2) memory and O(n^2) work in scipy), so
:func:`build_tree` refuses more than ``max_models`` models (default :data:`MAX_DENSE_MODELS`).
:func:`build_tree_scalable` builds from the signatures over FAISS k-means clusters instead (memory
O(n * dim + clusters^2 + max cluster^2)); ``Index.tree`` switches to it above the threshold.
"""
from __future__ import annotations

import html
import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from gifindex.errors import GifindexError

LINKAGES = ("average", "complete", "single", "ward")
FORMATS = ("newick", "json", "png", "svg", "html")
MAX_DENSE_MODELS = 5000
_SUFFIXES = {".nwk": "newick", ".newick": "newick", ".tree": "newick", ".json": "json",
             ".png": "png", ".svg": "svg", ".html": "html", ".htm": "html"}


@dataclass
class SimilarityTree:
    """A hierarchical clustering of models; see the module docstring for the height convention."""

    names: list[str]
    condensed: np.ndarray          # condensed distance vector (scipy ``squareform`` layout)
    linkage_matrix: np.ndarray     # scipy linkage matrix, shape (n - 1, 4)
    method: str                    # linkage method
    distances: np.ndarray          # full symmetric distance matrix, zero diagonal
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def leaf_order(self) -> list[int]:
        """Indices of the leaves in dendrogram order (top to bottom)."""
        if self.n == 1:
            return [0]
        return [int(i) for i in hierarchy.leaves_list(self.linkage_matrix)]

    @property
    def height(self) -> float:
        """Height of the root (0 for a single model)."""
        return float(self.linkage_matrix[-1, 2]) if self.n > 1 else 0.0


def build_tree(names: Sequence[str], distances: np.ndarray, linkage: str = "average",
               metadata: Mapping[str, Mapping[str, Any]] | None = None,
               max_models: int = MAX_DENSE_MODELS) -> SimilarityTree:
    """Cluster models from their pairwise distance matrix.

    The matrix must be square, finite, non-negative and symmetric within 1e-6 (it is then
    symmetrised and its diagonal set to 0). ``ward`` is allowed but treats the distances as euclidean,
    which ModelGiF distances are not exactly; prefer ``average`` (the default). ``metadata`` maps a
    name to a JSON-serialisable dict (e.g. ref, tags) shown by the JSON and HTML exporters.
    Raises :class:`GifindexError` on bad input or more than ``max_models`` models (dense O(n^2) path).
    """
    names = [str(n) for n in names]
    if linkage not in LINKAGES:
        raise GifindexError(f"unknown linkage {linkage!r}; use one of {', '.join(LINKAGES)}")
    n = len(names)
    if n == 0:
        raise GifindexError("cannot build a tree of an empty index; ingest some models first")
    if n > max_models:
        raise GifindexError(f"{n} models exceed the dense tree limit of {max_models} "
                            "(the full distance matrix is O(n^2) in memory); raise max_models")
    if len(set(names)) != n:
        dup = sorted({x for x in names if names.count(x) > 1})[0]
        raise GifindexError(f"model names must be unique; {dup!r} appears more than once")
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape != (n, n):
        raise GifindexError(f"distance matrix has shape {d.shape}; expected ({n}, {n}) for {n} names")
    if not np.all(np.isfinite(d)):
        raise GifindexError("distance matrix contains NaN or infinite values")
    if np.any(d < -1e-6):
        raise GifindexError(f"distance matrix has negative entries (min {d.min():.3g})")
    if np.max(np.abs(d - d.T)) > 1e-6:
        raise GifindexError("distance matrix is not symmetric (tolerance 1e-6)")
    d = np.clip((d + d.T) / 2.0, 0.0, None)
    np.fill_diagonal(d, 0.0)
    known = set(names)
    meta = {k: dict(v) for k, v in (metadata or {}).items() if k in known}
    if n == 1:
        return SimilarityTree(names, np.zeros(0), np.zeros((0, 4)), linkage, d, meta)
    condensed = squareform(d, checks=False)
    z = hierarchy.linkage(condensed, method=linkage)
    return SimilarityTree(names, condensed, z, linkage, d, meta)


# ----------------------------------------------------------------------------------------------
# Scalable path: k-means clusters, a dense tree inside each, a dense tree over the clusters

def build_tree_scalable(names: Sequence[str], vectors: np.ndarray, linkage: str = "average",
                        metadata: Mapping[str, Mapping[str, Any]] | None = None, clusters: int | None = None,
                        max_cluster: int = MAX_DENSE_MODELS, kmeans_dim: int = 256,
                        seed: int = 0) -> SimilarityTree:
    """A tree of many models from their signatures (unit vectors; d = 1 - <a, b>) in O(n * clusters) memory.

    The models are split by spherical k-means (FAISS, on a PCA projection to ``kmeans_dim`` dimensions)
    into ``clusters`` groups (default about 2 sqrt(n)); each group gets the dense tree of its exact
    distances (``linkage``), and the groups are joined by a dense tree over the distances between their
    mean signatures (for unit vectors, 1 - <mean_A, mean_B> is exactly the mean pairwise distance between
    the two groups, so ``average`` linkage joins groups as UPGMA would, except that each group counts once).
    Merge heights are made monotone (a group's root never sits above the merge that joins it). Groups
    larger than ``max_cluster`` are split again. The tree has no distance matrix (``distances`` is
    empty): Newick and JSON exports work at any size; the heatmap page and dendrogram images need the
    dense path.
    """
    import faiss

    names = [str(n) for n in names]
    n = len(names)
    if len(set(names)) != n:
        raise GifindexError("model names must be unique")
    if linkage not in LINKAGES:
        raise GifindexError(f"unknown linkage {linkage!r}; use one of {', '.join(LINKAGES)}")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.shape[0] != n or n < 2:
        raise GifindexError(f"need at least two signatures, one per name (got {x.shape[0]} for {n} names)")
    k = int(clusters or min(max(2, round(2 * np.sqrt(n))), max(2, n // 2)))
    reduced = x
    if x.shape[1] > kmeans_dim:
        from gifindex.index.search import PCA_TRAIN, _fit_pca

        pca = faiss.PCAMatrix(x.shape[1], kmeans_dim)
        sample = x[np.sort(np.random.default_rng(seed).choice(n, min(n, PCA_TRAIN), replace=False))]
        _fit_pca(pca, sample)
        reduced = np.concatenate([pca.apply(x[i:i + 65536]) for i in range(0, n, 65536)])
    km = faiss.Kmeans(reduced.shape[1], k, niter=20, seed=seed, spherical=False, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=128)
    km.train(reduced)
    assign = km.index.search(reduced, 1)[1][:, 0]
    groups = [np.flatnonzero(assign == c) for c in range(k)]
    groups = [g for g in groups if len(g)]
    while any(len(g) > max_cluster for g in groups):  # rare: split oversized groups in halves by k-means
        big = max(groups, key=len)
        groups.remove(big)
        sub = faiss.Kmeans(reduced.shape[1], 2, niter=20, seed=seed, verbose=False)
        sub.train(reduced[big])
        part = sub.index.search(reduced[big], 1)[1][:, 0]
        halves = [big[part == 0], big[part == 1]]
        groups += [h for h in halves if len(h)] if all(len(h) for h in halves) else [big[: len(big) // 2],
                                                                                      big[len(big) // 2:]]
    rows: list[list[float]] = []
    roots, heights, sizes = [], [], []
    for g in groups:  # dense tree inside each group, node ids remapped to the global numbering
        if len(g) == 1:
            roots.append(int(g[0]))
            heights.append(0.0)
            sizes.append(1)
            continue
        v = x[g].astype(np.float64)
        d = np.clip(1.0 - v @ v.T, 0.0, 2.0)
        d = (d + d.T) / 2
        np.fill_diagonal(d, 0.0)
        z = hierarchy.linkage(squareform(d, checks=False), method=linkage)
        local = {i: int(g[i]) for i in range(len(g))}
        for j, (a, b, h, c) in enumerate(z):
            local[len(g) + j] = n + len(rows)
            rows.append([local[int(a)], local[int(b)], float(h), float(c)])
        roots.append(n + len(rows) - 1)
        heights.append(float(z[-1, 2]))
        sizes.append(len(g))
    if len(groups) > 1:
        means = np.stack([x[g].astype(np.float64).mean(0) for g in groups])
        d = np.clip(1.0 - means @ means.T, 0.0, 2.0)
        d = (d + d.T) / 2
        np.fill_diagonal(d, 0.0)
        z = hierarchy.linkage(squareform(d, checks=False), method=linkage)
        node_h = dict(enumerate(heights))
        local = dict(enumerate(roots))
        count = dict(enumerate(sizes))
        m = len(groups)
        for j, (a, b, h, _) in enumerate(z):
            a, b = int(a), int(b)
            height = max(float(h), node_h[a], node_h[b])
            local[m + j] = n + len(rows)
            node_h[m + j], count[m + j] = height, count[a] + count[b]
            rows.append([local[a], local[b], height, float(count[m + j])])
    known = set(names)
    meta = {key: dict(val) for key, val in (metadata or {}).items() if key in known}
    return SimilarityTree(names, np.zeros(0), np.array(rows, dtype=np.float64), linkage + "+kmeans",
                          np.zeros((0, 0)), meta)


# ----------------------------------------------------------------------------------------------
# Walking the linkage matrix (iteratively: chains from single linkage can be n deep)

def _children(tree: SimilarityTree, node: int) -> tuple[int, int] | None:
    """Node ids follow scipy: leaves are 0..n-1, merge i is node n + i."""
    if node < tree.n:
        return None
    row = tree.linkage_matrix[node - tree.n]
    return int(row[0]), int(row[1])


def _node_height(tree: SimilarityTree, node: int) -> float:
    return 0.0 if node < tree.n else float(tree.linkage_matrix[node - tree.n, 2])


def _root(tree: SimilarityTree) -> int:
    return 2 * tree.n - 2


# ----------------------------------------------------------------------------------------------
# Newick

_NEWICK_SPECIAL = set(" \t\n\r()[]':;,_")


def _newick_label(name: str) -> str:
    """Quote a label per Newick rules (single quotes, doubled inside) when it needs it.

    Underscores are quoted too: unquoted, standard readers turn them into blanks.
    """
    if name and not (set(name) & _NEWICK_SPECIAL):
        return name
    return "'" + name.replace("'", "''") + "'"


def to_newick(tree: SimilarityTree) -> str:
    """Newick string with branch lengths (parent height - child height), terminated by ';'."""
    def bl(x: float) -> str:
        return format(max(0.0, x), ".10g")

    out: list[str] = []
    stack: list[tuple[int, float | None, int]] = [(_root(tree), None, 0)]  # (node, parent h, state)
    while stack:
        node, parent_h, state = stack.pop()
        kids = _children(tree, node)
        h = _node_height(tree, node)
        if kids is None:
            out.append(_newick_label(tree.names[node]))
        elif state == 0:
            out.append("(")
            stack.append((node, parent_h, 2))
            stack.append((kids[1], h, 0))
            stack.append((node, parent_h, 1))
            stack.append((kids[0], h, 0))
            continue
        elif state == 1:
            out.append(",")
            continue
        else:
            out.append(")")
        if parent_h is not None:
            out.append(":" + bl(parent_h - h))
    return "".join(out) + ";"


# ----------------------------------------------------------------------------------------------
# JSON

def to_json(tree: SimilarityTree) -> dict[str, Any]:
    """Nested dict: ``{"linkage", "n", "root"}``; a node is ``{"height", "size", "children"}``,
    a leaf ``{"name", "height": 0, "size": 1}`` plus ``"metadata"`` when the model has any.

    Children are in dendrogram order. Nesting is as deep as the tree (up to n for single-linkage
    chains): Python's ``json.loads`` needs a raised recursion limit beyond ~900 levels.
    """
    made: dict[int, dict[str, Any]] = {}
    for node in _postorder(tree):
        kids = _children(tree, node)
        if kids is None:
            name = tree.names[node]
            leaf: dict[str, Any] = {"name": name, "height": 0.0, "size": 1}
            if tree.metadata.get(name):
                leaf["metadata"] = tree.metadata[name]
            made[node] = leaf
        else:
            a, b = made.pop(kids[0]), made.pop(kids[1])
            made[node] = {"height": _node_height(tree, node), "size": a["size"] + b["size"],
                          "children": [a, b]}
    return {"linkage": tree.method, "n": tree.n, "root": made[_root(tree)]}


def _postorder(tree: SimilarityTree) -> list[int]:
    order, stack = [], [_root(tree)]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(_children(tree, node) or ())
    return order[::-1]


@contextmanager
def _deep_recursion(limit: int = 4 * MAX_DENSE_MODELS + 1000) -> Iterator[None]:
    """Temporarily allow deep recursion (json and scipy's dendrogram recurse over the tree)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def _json_text(obj: Any, **kw: Any) -> str:
    """json.dumps that survives deep trees; non-JSON metadata values are stringified."""
    with _deep_recursion():
        return json.dumps(obj, default=str, **kw)


# ----------------------------------------------------------------------------------------------
# Dendrogram (matplotlib, Agg)

def save_dendrogram(tree: SimilarityTree, path: str | Path, format: str = "png") -> Path:
    """Horizontal dendrogram (root left, labels right); height and font adapt to n (~200 readable)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if format not in ("png", "svg"):
        raise GifindexError(f"dendrogram format must be png or svg, not {format!r}")
    n = tree.n
    font = 10.0 if n <= 40 else max(6.0, 10.0 - 4.0 * (n - 40) / 160)
    row_in = font / 72 * 1.45                      # one label row, in inches
    longest = max(len(s) for s in tree.names)
    fig = Figure(figsize=(6.0 + min(longest, 60) * font / 72 * 0.6, max(2.5, n * row_in + 1.2)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    if n == 1:
        ax.plot([0], [0], "o", color="C0")
        ax.set_yticks([0], tree.names, fontsize=font)
        ax.yaxis.tick_right()
        ax.set_xlim(0.1, -0.01)
    else:
        with _deep_recursion():
            hierarchy.dendrogram(tree.linkage_matrix, labels=tree.names, orientation="left", ax=ax,
                                 leaf_font_size=font, above_threshold_color="0.55")
        ax.set_xlim(tree.height * 1.03, 0)
        ax.invert_yaxis()                          # first leaf on top, as in the HTML page
    ax.set_xlabel("ModelGiF distance")
    ax.set_title(f"{n} model{'s' * (n != 1)}, {tree.method} linkage", fontsize=11)
    for side in ("top", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format=format, dpi=110, bbox_inches="tight")
    return path


# ----------------------------------------------------------------------------------------------
# HTML

def _flat_data(tree: SimilarityTree) -> dict[str, Any]:
    """Compact data for the page: names, linkage rows, leaf order, rounded distances."""
    return {
        "names": tree.names,
        "linkage": tree.method,
        "merges": [[int(a), int(b), round(float(h), 6)] for a, b, h, _ in tree.linkage_matrix],
        "order": tree.leaf_order,
        "cond": np.round(tree.condensed, 5).tolist(),   # condensed: half the size
        "meta": {k: _finite(v) for k, v in tree.metadata.items() if v},
    }


def _finite(value: Any) -> Any:
    """Metadata with NaN/inf floats replaced by None (JSON.parse rejects them)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _script_json(obj: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>', '&' or line separators left raw."""
    text = _json_text(obj, separators=(",", ":"), allow_nan=False)
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                     ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, esc)
    return text


def to_html(tree: SimilarityTree, title: str = "gifindex similarity tree") -> str:
    """One self-contained HTML page (no network): interactive tree and ordered distance heatmap."""
    return (_HTML_TEMPLATE
            .replace("%%TITLE%%", html.escape(title))
            .replace("%%DATA%%", _script_json(_flat_data(tree))))


# ----------------------------------------------------------------------------------------------
# Dispatch

def infer_format(path: str | Path) -> str:
    """Format from a file suffix (.nwk/.newick, .json, .png, .svg, .html)."""
    fmt = _SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise GifindexError(f"cannot tell the tree format from {str(path)!r}; "
                            f"give --format ({'/'.join(FORMATS)}) or a known suffix")
    return fmt


def save_tree(tree: SimilarityTree, path: str | Path, format: str | None = None) -> Path:
    """Write ``tree`` to ``path`` in ``format`` (one of :data:`FORMATS`; default from the suffix)."""
    fmt = format or infer_format(path)
    if fmt not in FORMATS:
        raise GifindexError(f"unknown tree format {fmt!r}; use one of {', '.join(FORMATS)}")
    path = Path(path)
    if fmt in ("png", "svg", "html") and tree.n > 1 and tree.distances.size == 0:
        raise GifindexError(f"a tree of {tree.n} models (built over k-means clusters) is written as Newick or "
                            f"JSON only; {fmt} needs the dense path (at most {MAX_DENSE_MODELS} models)")
    if fmt in ("png", "svg"):
        return save_dendrogram(tree, path, fmt)
    if fmt == "newick":
        text = to_newick(tree) + "\n"
    elif fmt == "json":
        text = _json_text(to_json(tree), separators=(",", ":")) + "\n"
    else:
        text = to_html(tree)
    path.write_text(text, encoding="utf-8")
    return path


_HTML_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%%TITLE%%</title>
<style>
:root{--ink:#1f2430;--mute:#6b7280;--line:#e5e7eb;--bg:#f6f7f9;--accent:#d9480f;--link:#4b5563}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg)}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:8px 20px;padding:14px 22px;background:#fff;border-bottom:1px solid var(--line)}
h1{font-size:18px;margin:0}
#stats{color:var(--mute)}
#search{margin-left:auto;padding:6px 10px;border:1px solid #cbd0d8;border-radius:6px;width:260px;font:inherit}
#hits{color:var(--mute);min-width:80px}
main{display:grid;grid-template-columns:minmax(0,auto) minmax(0,1fr);gap:18px;padding:18px 22px;align-items:start}
@media (max-width:900px){main{grid-template-columns:minmax(0,1fr)}}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 14px;overflow:auto;max-height:calc(100vh - 96px);min-width:0}
section h2{font-size:13px;font-weight:600;text-transform:uppercase;letter-spacing:.04em;color:var(--mute);margin:0 0 8px}
.hint{color:var(--mute);font-size:12px;margin:0 0 6px}
svg text{font-size:12px;fill:var(--ink)}
.link{fill:none;stroke:var(--link);stroke-width:1.3}
.node{fill:#fff;stroke:var(--link);stroke-width:1.3;cursor:pointer}
.node:hover,.collapsed:hover{stroke:var(--accent);stroke-width:2}
.collapsed{fill:#e8ecf3;stroke:var(--link);cursor:pointer}
.leaf-dot{fill:var(--link)}
.leaf-label{cursor:default}
.leaf-label.hit,.clade-label.hit{fill:var(--accent);font-weight:700}
.hit-bg{fill:#ffe8cc}
.clade-label{fill:var(--mute);font-style:italic}
.axis line,.axis path{stroke:#9ca3af}
.axis text{font-size:10px;fill:var(--mute)}
.cell:hover{stroke:#000;stroke-width:1}
.hm-label{font-size:10px}
.hm-label.hit{fill:var(--accent);font-weight:700}
#tip{position:fixed;pointer-events:none;background:rgba(20,24,32,.94);color:#fff;padding:7px 10px;border-radius:6px;font-size:12px;max-width:380px;display:none;z-index:9;white-space:pre-wrap;word-break:break-word}
#tip b{color:#ffd8a8}
</style></head>
<body>
<header><h1>%%TITLE%%</h1><span id="stats"></span>
<input id="search" type="search" placeholder="Search models…" autocomplete="off"><span id="hits"></span></header>
<main>
<section id="tree-panel"><h2>Similarity tree</h2><p class="hint">Click a branch point to collapse or expand its clade. Hover for details.</p><div id="tree"></div></section>
<section id="heat-panel"><h2>Distance heatmap (dendrogram order)</h2><p class="hint">Hover a cell for the pair and its distance.</p><div id="heat"></div><div id="legend"></div></section>
</main>
<div id="tip"></div>
<script type="application/json" id="gif-data">%%DATA%%</script>
<script>
(function(){
"use strict";
var D=JSON.parse(document.getElementById("gif-data").textContent);
var SVGNS="http://www.w3.org/2000/svg", n=D.names.length, tip=document.getElementById("tip");
function el(tag,attrs,parent){var e=document.createElementNS(SVGNS,tag);for(var k in attrs)e.setAttribute(k,attrs[k]);if(parent)parent.appendChild(e);return e;}
function fmt(x){return (+x).toFixed(4);}
function showTip(ev,lines){tip.textContent="";lines.forEach(function(l,i){if(i)tip.appendChild(document.createTextNode("\n"));if(l[0]){var b=document.createElement("b");b.textContent=l[0];tip.appendChild(b);tip.appendChild(document.createTextNode(" "));}tip.appendChild(document.createTextNode(l[1]));});
 tip.style.display="block";var x=ev.clientX+14,y=ev.clientY+14;if(x+tip.offsetWidth>innerWidth)x=ev.clientX-tip.offsetWidth-10;if(y+tip.offsetHeight>innerHeight)y=ev.clientY-tip.offsetHeight-10;tip.style.left=x+"px";tip.style.top=y+"px";}
function hideTip(){tip.style.display="none";}
function metaLines(name){var m=D.meta[name]||{},out=[];for(var k in m){var v=m[k];out.push([k+":",typeof v==="string"?v:JSON.stringify(v)]);}return out;}
document.getElementById("stats").textContent=n+" model"+(n===1?"":"s")+" · "+D.linkage+" linkage";
// ---- nodes: leaves 0..n-1, merge i is node n+i
var nodes=[];
D.names.forEach(function(nm,i){nodes.push({id:i,name:nm,h:0,size:1,kids:null});});
D.merges.forEach(function(m,i){var a=nodes[m[0]],b=nodes[m[1]];nodes.push({id:n+i,h:m[2],size:a.size+b.size,kids:[a,b],collapsed:false});a.parent=b.parent=nodes[n+i];});
var root=nodes[nodes.length-1], H=root.h||1, query="";
function leavesOf(v){var out=[],st=[v];while(st.length){var x=st.pop();if(x.kids){st.push(x.kids[1]);st.push(x.kids[0]);}else out.push(x);}return out;}
function matches(name){if(!query)return false;var q=query.toLowerCase();if(name.toLowerCase().indexOf(q)>=0)return true;var m=D.meta[name];return !!m&&JSON.stringify(m).toLowerCase().indexOf(q)>=0;}
// ---- tree
var ROW=n>120?14:18, LABW=Math.min(340,12+7*Math.max.apply(null,D.names.map(function(s){return Math.min(s.length,48);}))), TW=Math.max(260,Math.min(520,200+4*n));
function drawTree(){
 var box=document.getElementById("tree");box.textContent="";
 var rows=[],st=[root];while(st.length){var v=st.pop();if(v.kids&&!v.collapsed){st.push(v.kids[1]);st.push(v.kids[0]);}else rows.push(v);}
 var W=TW+LABW+40, Hh=rows.length*ROW+56, x0=26;
 var svg=el("svg",{width:W,height:Hh,id:"tree-svg",role:"img"},box);
 function X(h){return x0+(1-h/H)*TW;}
 rows.forEach(function(v,i){v.y=48+i*ROW+ROW/2;});
 (function place(){var post=[],s=[root];while(s.length){var v=s.pop();post.push(v);if(v.kids&&!v.collapsed){s.push(v.kids[0]);s.push(v.kids[1]);}}
  for(var i=post.length-1;i>=0;i--){var v=post[i];if(v.kids&&!v.collapsed)v.y=(v.kids[0].y+v.kids[1].y)/2;}})();
 var gl=el("g",{},svg), gn=el("g",{},svg), hitCount=0;
 var s2=[root];while(s2.length){var v=s2.pop();
  if(v.kids&&!v.collapsed){var a=v.kids[0],b=v.kids[1],x=X(v.h);
   el("path",{"class":"link",d:"M"+X(a.h)+","+a.y+"H"+x+"V"+b.y+"H"+X(b.h)},gl);
   var c=el("circle",{"class":"node",cx:x,cy:v.y,r:4},gn);c.__v=v;s2.push(a,b);}
  else if(v.kids){var x=X(v.h),xe=X(0),k=v.size,hits=leavesOf(v).filter(function(l){return matches(l.name);}).length;hitCount+=hits;
   var t=el("path",{"class":"collapsed",d:"M"+x+","+v.y+"L"+xe+","+(v.y-ROW*0.42)+"V"+(v.y+ROW*0.42)+"Z"},gn);t.__v=v;
   var lb=el("text",{"class":"clade-label"+(hits?" hit":""),x:xe+8,y:v.y+4},gn);lb.textContent=k+" models"+(hits?" ("+hits+" match"+(hits>1?"es":"")+")":"");}
  else{var hit=matches(v.name);if(hit){hitCount++;el("rect",{"class":"hit-bg",x:X(0)+4,y:v.y-ROW/2+1,width:LABW,height:ROW-2,rx:3},gl);}
   el("circle",{"class":"leaf-dot",cx:X(0),cy:v.y,r:2.5},gn);
   var tx=el("text",{"class":"leaf-label"+(hit?" hit":""),x:X(0)+8,y:v.y+4,"data-name":v.name},gn);tx.textContent=v.name;tx.__v=v;}
 }
 var ax=el("g",{"class":"axis"},svg), ya=34;el("line",{x1:X(H),x2:X(0),y1:ya,y2:ya},ax);
 for(var i=0;i<=4;i++){var hv=H*i/4;el("line",{x1:X(hv),x2:X(hv),y1:ya,y2:ya-4},ax);var tt=el("text",{x:X(hv),y:ya-7,"text-anchor":"middle"},ax);tt.textContent=root.h?hv.toFixed(3):"0";}
 var cap=el("text",{x:(X(H)+X(0))/2,y:10,"text-anchor":"middle"},ax);cap.textContent="ModelGiF distance";
 svg.addEventListener("click",function(ev){var v=ev.target.__v;if(v&&v.kids){v.collapsed=!v.collapsed;hideTip();drawTree();}});
 svg.addEventListener("mousemove",function(ev){var v=ev.target.__v;if(!v)return hideTip();
  if(!v.kids)showTip(ev,[["",v.name],["height:",fmt(v.h)]].concat(metaLines(v.name)));
  else{var ls=leavesOf(v).map(function(l){return l.name;});showTip(ev,[["clade of",v.size+" models"],["merge height:",fmt(v.h)],["members:",ls.slice(0,8).join(", ")+(ls.length>8?", …":"")],["",v.collapsed?"click to expand":"click to collapse"]]);}});
 svg.addEventListener("mouseleave",hideTip);
 document.getElementById("hits").textContent=query?hitCount+" match"+(hitCount===1?"":"es"):"";
}
// ---- heatmap
var VIR=[[68,1,84],[72,40,120],[62,74,137],[49,104,142],[38,130,142],[31,158,137],[53,183,121],[109,205,89],[180,222,44],[253,231,37]];
var DMAX=D.cond.reduce(function(m,x){return x>m?x:m;},0)||1;
function dist(i,j){if(i===j)return 0;if(i>j){var t=i;i=j;j=t;}return D.cond[n*i-i*(i+1)/2+j-i-1];}
function color(x){var t=Math.max(0,Math.min(1,x/DMAX))*(VIR.length-1),i=Math.min(VIR.length-2,Math.floor(t)),f=t-i,a=VIR[i],b=VIR[i+1];
 return "rgb("+[0,1,2].map(function(k){return Math.round(a[k]+(b[k]-a[k])*f);}).join(",")+")";}
var hmLabels=[], SVG_CELLS=150;   // above this many models the heatmap is one canvas
function drawHeat(){
 var order=D.order, C=Math.max(2,Math.min(26,Math.floor(540/n))), showLab=C>=9, L=showLab?Math.min(220,12+6*Math.max.apply(null,D.names.map(function(s){return Math.min(s.length,40);}))):0, S=C*n;
 var box=document.getElementById("heat"), svg=el("svg",{width:S+L+4,height:S+L+4,id:"heat-svg"},box);
 if(showLab)order.forEach(function(j,p){var t=el("text",{"class":"hm-label",x:S+4,y:p*C+C/2+3,"data-name":D.names[j]},svg);t.textContent=D.names[j];hmLabels.push(t);
  var u=el("text",{"class":"hm-label",x:0,y:0,transform:"translate("+(p*C+C/2+3)+","+(S+4)+") rotate(90)","data-name":D.names[j]},svg);u.textContent=D.names[j];hmLabels.push(u);});
 if(n<=SVG_CELLS){var g=el("g",{},svg);
  order.forEach(function(i,r){order.forEach(function(j,c){var rc=el("rect",{"class":"cell",x:c*C,y:r*C,width:C,height:C,fill:color(dist(i,j))},g);rc.__ij=[i,j];});});}
 else{var fo=el("foreignObject",{x:0,y:0,width:S,height:S},svg), cv=document.createElement("canvas");cv.width=S;cv.height=S;cv.id="heat-canvas";fo.appendChild(cv);
  var cx=cv.getContext("2d");order.forEach(function(i,r){order.forEach(function(j,c){cx.fillStyle=color(dist(i,j));cx.fillRect(c*C,r*C,C,C);});});
  cv.setAttribute("data-cells",n*n);
  cv.addEventListener("mousemove",function(ev){var b=cv.getBoundingClientRect(),c=Math.floor((ev.clientX-b.left)/C),r=Math.floor((ev.clientY-b.top)/C);
   if(r<0||c<0||r>=n||c>=n)return hideTip();var i=order[r],j=order[c];showTip(ev,[["",D.names[i]],["vs",D.names[j]],["distance:",fmt(dist(i,j))]]);});
  cv.addEventListener("mouseleave",hideTip);}
 svg.addEventListener("mousemove",function(ev){var ij=ev.target.__ij;if(ij)showTip(ev,[["",D.names[ij[0]]],["vs",D.names[ij[1]]],["distance:",fmt(dist(ij[0],ij[1]))]]);else if(ev.target.tagName!=="CANVAS")hideTip();});
 svg.addEventListener("mouseleave",hideTip);
 var lg=document.getElementById("legend"), LW=Math.max(220,Math.min(S,360)), ls=el("svg",{width:LW+20,height:44,id:"legend-svg"},lg);
 var defs=el("defs",{},ls), gr=el("linearGradient",{id:"vir"},defs);
 VIR.forEach(function(c,i){el("stop",{offset:(100*i/(VIR.length-1))+"%","stop-color":"rgb("+c.join(",")+")"},gr);});
 el("rect",{x:10,y:6,width:LW,height:12,fill:"url(#vir)",rx:2},ls);
 [0,0.5,1].forEach(function(f){var t=el("text",{x:10+f*LW,y:33,"text-anchor":f===0?"start":f===1?"end":"middle","class":"hm-label"},ls);t.textContent=(f*DMAX).toFixed(3)+(f===1?"  (max)":"");});
}
function markHeat(){hmLabels.forEach(function(t){t.setAttribute("class","hm-label"+(matches(t.getAttribute("data-name"))?" hit":""));});}
document.getElementById("search").addEventListener("input",function(ev){query=ev.target.value.trim();drawTree();markHeat();});
drawTree();drawHeat();
})();
</script>
</body></html>
"""
