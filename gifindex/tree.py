"""Similarity trees: hierarchical clustering of an index's pairwise ModelGiF distances.

Everything here is a pure function of ``(names, distances)``: ``names`` is a list of unique model
names and ``distances`` the square, symmetric matrix of their distances (in [0, 2]; 0 = identical
function). :func:`build_tree` clusters them with :mod:`scipy.cluster.hierarchy`; the exporters write
Newick, JSON, a matplotlib dendrogram (PNG/SVG) or one self-contained interactive HTML page
(template: ``gifindex/data/tree.html``). The images and the page can colour leaves by one metadata tag
(``color_by``, e.g. ``family``), with a legend.

Height convention: a leaf has height 0 and an internal node has the linkage's merge distance (for
``average`` linkage, the mean distance between the two merged clades), i.e. the value on the
dendrogram's "ModelGiF distance" axis and the ``height`` in JSON. Newick is ultrametric with branch
lengths ``(parent height - child height) / 2``: the path between two leaves through the tree equals
the merge distance at which they join (their cophenetic distance), and every root-to-tip path is half
the root's height.

Scale: the dense path keeps the full n x n matrix (O(n^2) memory and O(n^2) work in scipy), so
:func:`build_tree` refuses more than ``max_models`` models (default :data:`MAX_DENSE_MODELS`).
:func:`build_tree_scalable` builds from the signatures over FAISS k-means clusters instead (memory
O(n * dim + clusters^2 + max cluster^2)); ``Index.tree`` switches to it above the threshold.
"""
from __future__ import annotations

import html
import logging
import re
import sys
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from gifindex.distance import distance_matrix
from gifindex.errors import GifindexError
from gifindex.text import json_text

LINKAGES = ("average", "complete", "single", "ward")
FORMATS = ("newick", "json", "png", "svg", "html")
MAX_DENSE_MODELS = 5000
TEMPLATE = Path(__file__).parent / "data" / "tree.html"
# Tableau 20 (matplotlib's tab10 first, then the light variants): the colours of --color-by groups
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5")
NO_GROUP = "#9ca3af"
MIN_LABEL_PT = 7.0
_SUFFIXES = {".nwk": "newick", ".newick": "newick", ".tree": "newick", ".json": "json",
             ".png": "png", ".svg": "svg", ".html": "html", ".htm": "html"}

log = logging.getLogger(__name__)


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
        from gifindex.pca import PCA_TRAIN, fit_pca

        pca = faiss.PCAMatrix(x.shape[1], kmeans_dim)
        sample = x[np.sort(np.random.default_rng(seed).choice(n, min(n, PCA_TRAIN), replace=False))]
        fit_pca(pca, sample)
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
        d = distance_matrix(x[g])
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
        d = distance_matrix(means)
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
    """Ultrametric Newick, terminated by ';': branch length ``(parent height - child height) / 2``, so the
    leaf-to-leaf path length is the distance at which the two leaves merge (the linkage distance)."""
    def bl(x: float) -> str:
        return format(max(0.0, x) / 2.0, ".10g")

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
    chains): write it with :func:`tree_json_text` (no recursion); Python's ``json.loads`` needs a raised
    recursion limit beyond ~900 levels.
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


def tree_json_text(tree: SimilarityTree) -> str:
    """:func:`to_json` as compact strict JSON (non-finite metadata values as null), one line at any depth: what
    ``tree -o FILE.json`` writes and ``tree --json`` prints (indented, an n-deep chain would be O(n^2) bytes)."""
    return json_text(to_json(tree))


def _postorder(tree: SimilarityTree) -> list[int]:
    order, stack = [], [_root(tree)]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(_children(tree, node) or ())
    return order[::-1]


@contextmanager
def _deep_recursion(limit: int = 4 * MAX_DENSE_MODELS + 1000) -> Iterator[None]:
    """Temporarily allow deep recursion (scipy's dendrogram recurses over the tree)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


# ----------------------------------------------------------------------------------------------
# Colour groups (--color-by TAG)

@dataclass
class Groups:
    """Each leaf's value of one metadata tag and the colour of every value (``None``: no value)."""

    tag: str
    values: list[str | None]         # per leaf, in ``tree.names`` order
    colours: dict[str, str]          # value -> "#rrggbb", most frequent value first

    def colour(self, i: int) -> str:
        value = self.values[i]
        return NO_GROUP if value is None else self.colours[value]

    def counts(self) -> dict[str, int]:
        """Leaves per value, in legend order (``(no TAG)`` last when some leaves lack the tag)."""
        got = Counter(self.values)
        out = {v: got[v] for v in self.colours}
        if got[None]:
            out[f"(no {self.tag})"] = got[None]
        return out


def _tag_value(meta: Mapping[str, Any], tag: str) -> str | None:
    """A tag's value: a top-level metadata key, else a key of a nested ``tags`` mapping."""
    value = meta.get(tag)
    if value is None and isinstance(meta.get("tags"), Mapping):
        value = meta["tags"].get(tag)
    return None if value is None else str(value)


def leaf_groups(tree: SimilarityTree, tag: str) -> Groups:
    """Group the leaves by the metadata tag ``tag`` (e.g. ``family``); beyond 20 values the rarest share
    one "other" colour. Raises :class:`GifindexError` when no model has the tag, naming the tags there are."""
    values = [_tag_value(tree.metadata.get(name, {}), tag) for name in tree.names]
    counts = Counter(v for v in values if v is not None)
    if not counts:
        present = sorted({k for m in tree.metadata.values() for k in m if k not in ("tags", "ref", "random_init")}
                         | {k for m in tree.metadata.values() if isinstance(m.get("tags"), Mapping)
                            for k in m["tags"]})
        raise GifindexError(f"no model has a tag {tag!r} to colour by; tags present: "
                            f"{', '.join(present) if present else 'none (add tags: in the manifest)'}")
    ranked = sorted(counts, key=lambda v: (-counts[v], v))
    if len(ranked) > len(PALETTE):
        keep = set(ranked[:len(PALETTE) - 1])
        other = f"other ({len(ranked) - len(keep)} values)"
        values = [v if v is None or v in keep else other for v in values]
        ranked = ranked[:len(PALETTE) - 1] + [other]
    return Groups(tag, values, {v: PALETTE[i] for i, v in enumerate(ranked)})


# ----------------------------------------------------------------------------------------------
# Dendrogram (matplotlib, Agg)

def save_dendrogram(tree: SimilarityTree, path: str | Path, format: str = "png",
                    color_by: str | None = None) -> Path:
    """Horizontal dendrogram (root left, labels right), grey links; with ``color_by`` each leaf label and
    marker takes its tag value's colour, with a legend. Labels stay at least 7 pt with rows 1.5 labels
    apart at any n (about 200 models fit one tall page). SVG keeps text as ``<text>`` (searchable)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if format not in ("png", "svg"):
        raise GifindexError(f"dendrogram format must be png or svg, not {format!r}")
    groups = leaf_groups(tree, color_by) if color_by else None
    n = tree.n
    font = 10.0 if n <= 40 else max(MIN_LABEL_PT, 10.0 - 3.0 * (n - 40) / 160)
    row_in = font / 72 * 1.5                       # one label row, in inches
    longest = max(len(s) for s in tree.names)
    legend_in = 0.0 if groups is None else 0.4 + 0.22 * ((len(groups.counts()) + 2) // 3)
    fig = Figure(figsize=(6.0 + min(longest, 60) * font / 72 * 0.6, max(2.5, n * row_in + 1.2 + legend_in)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    if n == 1:
        ax.plot([0], [0], "o", color=groups.colour(0) if groups else "0.3")
        ax.set_yticks([0], tree.names, fontsize=font)
        ax.yaxis.tick_right()
        ax.set_xlim(0.1, -0.01)
    else:
        with _deep_recursion():
            hierarchy.dendrogram(tree.linkage_matrix, labels=tree.names, orientation="left", ax=ax,
                                 leaf_font_size=font, link_color_func=lambda _: "0.35")
        ax.set_xlim(tree.height * 1.03, 0)
        ax.invert_yaxis()                          # first leaf on top, as in the HTML page
    if groups is not None:
        index = {name: i for i, name in enumerate(tree.names)}
        ys, colours = [], []
        for y, label in zip(ax.get_yticks(), ax.get_yticklabels()):
            colour = groups.colour(index[label.get_text()])
            label.set_color(colour)
            ys.append(y)
            colours.append(colour)
        ax.scatter([0.0] * len(ys), ys, c=colours, s=max(12.0, font * 3), zorder=3, clip_on=False,
                   edgecolors="0.2", linewidths=0.4)
        handles = [Patch(facecolor=groups.colours.get(v, NO_GROUP), edgecolor="0.3", label=f"{v} ({k})")
                   for v, k in groups.counts().items()]
        fig.legend(handles=handles, title=color_by, loc="outside upper left", ncol=min(3, len(handles)),
                   fontsize=9, title_fontsize=9, frameon=False)
    ax.set_xlabel("ModelGiF distance")
    ax.set_title(f"{n} model{'s' * (n != 1)}, {tree.method} linkage", fontsize=11)
    for side in ("top", "left"):
        ax.spines[side].set_visible(False)
    path = Path(path)
    from gifindex.index.atomic import atomic_path  # here: the index package imports this module

    with matplotlib.rc_context({"svg.fonttype": "none"}), atomic_path(path) as tmp, \
            warnings.catch_warnings(record=True) as caught:   # SVG text stays text
        warnings.simplefilter("always")
        fig.savefig(tmp, format=format, dpi=110, bbox_inches="tight")
    missing = sorted({m.group(1) for w in caught if (m := re.search(r"Glyph \d+ \((.+?)\) missing", str(w.message)))})
    if missing and format == "png":   # an SVG keeps the names as text: a viewer's fonts draw them
        log.warning("%d characters of the model names have no glyph in matplotlib's font and show as boxes in %s; "
                    "the SVG and HTML outputs keep them as text", len(missing), path)
    return path


# ----------------------------------------------------------------------------------------------
# HTML

def _flat_data(tree: SimilarityTree, groups: Groups | None = None) -> dict[str, Any]:
    """Compact data for the page: names, linkage rows, leaf order, rounded distances, the heatmap's
    quantiles (its rank colour scale) and, with ``groups``, each leaf's group and the group colours."""
    quantiles = np.quantile(tree.condensed, np.linspace(0, 1, 101)) if tree.condensed.size else np.zeros(0)
    return {
        "names": tree.names,
        "linkage": tree.method,
        "merges": [[int(a), int(b), round(float(h), 6)] for a, b, h, _ in tree.linkage_matrix],
        "order": tree.leaf_order,
        "cond": np.round(tree.condensed, 5).tolist(),   # condensed: half the size
        "quantiles": np.round(quantiles, 6).tolist(),
        "ticks": legend_ticks(quantiles),
        "meta": {k: v for k, v in tree.metadata.items() if v},   # NaN/inf tags: null (json_text)
        "colorBy": groups.tag if groups else None,
        "group": groups.values if groups else None,
        "palette": groups.colours if groups else {},
    }


def legend_ticks(quantiles: np.ndarray) -> list[list[float]]:
    """The heatmap legend's ticks, [fraction of the colour bar, distance] at the 0, 25, 50, 75 and 100th
    percentiles of the pairs' distances; none without pairs (one model: there is no scale to show)."""
    if quantiles.size == 0:
        return []
    last = quantiles.size - 1
    return [[f, round(float(quantiles[round(f * last)]), 6)] for f in (0.0, 0.25, 0.5, 0.75, 1.0)]


def _script_json(obj: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>', '&' or line separators left raw."""
    text = json_text(obj)
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                     ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, esc)
    return text


def to_html(tree: SimilarityTree, title: str = "gifindex similarity tree", color_by: str | None = None) -> str:
    """One self-contained HTML page (no network): interactive tree (leaves coloured by the tag ``color_by``
    with a legend; a leaf's tooltip lists its nearest models) and a heatmap in dendrogram order whose colour
    is the rank of each distance among all pairs (readable when most pairs sit near 1)."""
    groups = leaf_groups(tree, color_by) if color_by else None
    return (TEMPLATE.read_text(encoding="utf-8")
            .replace("%%TITLE%%", html.escape(title))
            .replace("%%DATA%%", _script_json(_flat_data(tree, groups))))


# ----------------------------------------------------------------------------------------------
# Dispatch

def infer_format(path: str | Path) -> str:
    """Format from a file suffix (.nwk/.newick, .json, .png, .svg, .html)."""
    fmt = _SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise GifindexError(f"cannot tell the tree format from {str(path)!r}; "
                            f"give --format ({'/'.join(FORMATS)}) or a known suffix")
    return fmt


def save_tree(tree: SimilarityTree, path: str | Path, format: str | None = None,
              color_by: str | None = None) -> Path:
    """Write ``tree`` to ``path`` in ``format`` (one of :data:`FORMATS`; default from the suffix); ``color_by``
    names a metadata tag that colours the leaves of the PNG/SVG/HTML outputs (checked for every format)."""
    fmt = format or infer_format(path)
    if fmt not in FORMATS:
        raise GifindexError(f"unknown tree format {fmt!r}; use one of {', '.join(FORMATS)}")
    path = Path(path)
    if color_by:
        leaf_groups(tree, color_by)   # an unknown tag is an error whatever the format
    if fmt in ("png", "svg", "html") and tree.n > 1 and tree.distances.size == 0:
        raise GifindexError(f"a tree of {tree.n} models (built over k-means clusters) is written as Newick or "
                            f"JSON only; {fmt} needs the dense path (at most {MAX_DENSE_MODELS} models)")
    if fmt in ("png", "svg"):
        return save_dendrogram(tree, path, fmt, color_by=color_by)
    if fmt == "newick":
        text = to_newick(tree) + "\n"
    elif fmt == "json":
        text = tree_json_text(tree) + "\n"
    else:
        text = to_html(tree, color_by=color_by)
    from gifindex.index.atomic import atomic_write_text  # here: the index package imports this module

    atomic_write_text(path, text)  # a killed or failed write leaves the old file, never half a tree
    return path

