"""Search kinds: flat / HNSW / IVF-PQ agree with exact search, and `auto` switches above its budget."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gifindex.config import SignatureConfig
from gifindex.index import Index, SearchSpec
from gifindex.index.search import build_index, index_kind, search
from gifindex.ingest import SignResult


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(2, n // 20), dim)).astype(np.float32)
    v = centres[rng.integers(0, len(centres), n)] + rng.uniform(0.2, 1.0, (n, 1)) * rng.standard_normal((n, dim))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_kinds_find_the_exact_neighbours(kind):
    v = clustered(2000, 512)
    ids = np.arange(100, 2100, dtype=np.int64)
    exact = search(build_index(v, ids, SearchSpec("flat")), v[:50], 10)[1]
    approx_index = build_index(v, ids, SearchSpec(kind, pca_dim=128))
    assert index_kind(approx_index) == kind
    dist, approx = search(approx_index, v[:50], 10)
    assert (approx[:, 0] == ids[:50]).all() and np.allclose(dist[:, 0], 0, atol=1e-2)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall > 0.6, recall


def test_auto_switches_above_the_budget_and_says_so(tmp_path):
    config = SignatureConfig(resolution=16, num_probes=4, steps=2, proj_dim=32)  # 256 dims, 512 bytes a model
    v = clustered(300, 256)
    budget_mb = 200 * 512 / 2**20  # exact up to 200 models
    with Index.create(tmp_path / "idx", config, search=SearchSpec(flat_budget_mb=budget_mb, pca_dim=64)) as index:
        with index.writer():
            for start in range(0, 300, 100):
                index._commit([SignResult(name=f"m{i}", ref=f"m{i}.pt", status="added", weights_sha256=f"{i:064x}",
                                          signature=v[i]) for i in range(start, start + 100)])
                status = index.search_status()
                assert status["active"] == ("flat" if start + 100 <= 200 else "ivfpq"), (start, status)
        assert "exceeds" in status["reason"] and "ivfpq" in status["reason"]
        assert json.loads((tmp_path / "idx" / "search.json").read_text())["kind"] == "ivfpq"
        assert index.info()["search"]["active"] == "ivfpq"
        # nearest through the approximate index: the true neighbours, with exact distances
        names, matrix = index.matrix()
        row = names.index("m7")
        truth = [names[j] for j in np.argsort(matrix[row]) if j != row][:5]
        got = index.nearest("m7", k=5)
        assert len(set(n.name for n in got) & set(truth)) >= 4
        for neighbour in got:
            assert neighbour.distance == pytest.approx(matrix[row, names.index(neighbour.name)], abs=1e-6)
        assert index.rebuild() == 300 and index.verify()["ok"]
        reopened = Index.open(tmp_path / "idx")
        assert reopened.search_status()["active"] == "ivfpq"
        reopened.close()
