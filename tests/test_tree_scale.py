"""Scalable tree (k-means clusters, dense trees inside and over them): valid, faithful to the dense tree."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from gifindex.errors import GifindexError
from gifindex.tree import build_tree, build_tree_scalable, save_tree, to_json, to_newick


def families(n: int, dim: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim))
    label = rng.integers(0, k, n)
    v = centres[label] + 0.5 * rng.standard_normal((n, dim))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float32), label


def test_scalable_tree_is_valid_and_keeps_families_together(tmp_path):
    v, label = families(6000, 300, 40)       # above the dense limit of 5000
    names = [f"m{i}" for i in range(len(v))]
    tree = build_tree_scalable(names, v)
    assert tree.n == 6000 and hierarchy.is_valid_linkage(tree.linkage_matrix)
    assert tree.linkage_matrix[-1, 3] == 6000
    assert np.all(np.diff([tree.linkage_matrix[-1, 2]]) >= 0)
    assert sorted(tree.leaf_order) == list(range(6000))
    cut = hierarchy.fcluster(tree.linkage_matrix, 40, criterion="maxclust")
    # every planted family ends up in one clade at the 40-cluster cut
    purity = np.mean([np.bincount(cut[label == f]).max() / np.sum(label == f) for f in range(40)])
    assert purity > 0.98
    assert to_newick(tree).count(",") == 5999 and to_json(tree)["n"] == 6000
    save_tree(tree, tmp_path / "t.nwk")
    with pytest.raises(GifindexError, match="Newick or JSON only"):
        save_tree(tree, tmp_path / "t.html")


def test_scalable_tree_agrees_with_the_dense_tree():
    v, _ = families(600, 64, 12, seed=3)
    names = [f"m{i}" for i in range(len(v))]
    d = np.clip(1 - v.astype(np.float64) @ v.T.astype(np.float64), 0, 2)
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    dense = build_tree(names, d)
    scalable = build_tree_scalable(names, v, clusters=30)
    condensed = squareform(d, checks=False)
    c_dense = np.corrcoef(hierarchy.cophenet(dense.linkage_matrix), condensed)[0, 1]
    c_scal = np.corrcoef(hierarchy.cophenet(scalable.linkage_matrix), condensed)[0, 1]
    assert c_scal > 0.95 * c_dense, (c_scal, c_dense)
