"""The verdict by rank among the indexed models (gifindex.apps.ranking): exact p-values, the budget it keeps on
exchangeable models, what it leaves out, and the evidence cache it reads and writes beside a fingerprint."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from gifindex.apps.ranking import EvidenceCache, rank_all, rank_verdict, smallest_population
from gifindex.errors import GifindexError
from gifindex.index.layout import evidence_cache_path, fingerprint_path


def test_rank_p_value_counts_the_models_scoring_at_least_as_high():
    population = [0.5, 1.0, 2.0, 2.0, -1.0]
    top = rank_verdict(2.5, population, budget=0.2)
    assert top["p_value"] == pytest.approx(1 / 6) and top["at_or_above"] == 0 and top["verdict"] == "derived"
    tied = rank_verdict(2.0, population, budget=0.2)  # ties count against the suspect
    assert tied["p_value"] == pytest.approx(3 / 6) and tied["verdict"] == "unrelated"
    assert rank_verdict(-5.0, population, budget=0.2)["p_value"] == 1.0
    # the bar: the population's evidence a flagged suspect must exceed (here the largest: 1 / 6 <= 0.2 < 2 / 6)
    assert top["bar_z"] == 2.0 and rank_verdict(1.99, population, 0.2)["verdict"] == "unrelated"
    wide = rank_verdict(1.5, population, budget=0.5)  # (1 + 2) / 6 = 0.5 <= 0.5; the third largest is the bar
    assert wide["verdict"] == "derived" and wide["bar_z"] == 1.0


def test_a_budget_needs_enough_models_to_rank_against():
    assert [smallest_population(b) for b in (0.05, 0.1, 0.2, 0.25, 0.5, 0.3)] == [19, 9, 4, 3, 1, 3]
    rank_verdict(0.0, [1.0] * 19, 0.05)  # 1 / 20 reaches 0.05
    with pytest.raises(GifindexError, match="at least 19 other indexed models \\(found 18\\)"):
        rank_verdict(0.0, [1.0] * 18, 0.05)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(GifindexError, match="strictly between 0 and 1"):
            rank_verdict(0.0, [1.0] * 30, bad)


@pytest.mark.parametrize("n,budget", [(40, 0.05), (57, 0.05), (20, 0.1), (33, 0.2)])
def test_ranked_among_each_other_exchangeable_models_are_flagged_at_most_the_budget(n, budget):
    """n unrelated models, each ranked against the other n - 1: the j-th highest gets p = j / n, so exactly
    floor(budget * n) are flagged, whatever the scores' distribution (here heavy-tailed)."""
    scores = np.random.default_rng(n).standard_cauchy(n) * 0.3 + 1.0
    verdicts = rank_all(scores.tolist(), budget)
    m = len(verdicts)
    assert sum(v["verdict"] == "derived" for v in verdicts) == math.floor(budget * m + 1e-9) <= budget * m
    assert sorted(v["p_value"] for v in verdicts) == pytest.approx([j / m for j in range(1, m + 1)])


@pytest.mark.parametrize("seed", range(5))
def test_ranking_a_whole_hub_at_once_is_each_model_ranked_alone(seed):
    """rank_all (O(n log n), for --all over a large hub) gives what rank_verdict gives each model against the others,
    ties and missing (NaN) scores included; a NaN ranks below everything."""
    rng = np.random.default_rng(seed)
    zs = np.round(rng.normal(size=60), 1)  # many ties
    zs[rng.choice(60, 3, replace=False)] = np.nan
    budget = [0.05, 0.1, 0.2, 0.5, 0.3][seed]
    fast = rank_all(zs.tolist(), budget)
    for k, z in enumerate(zs.tolist()):
        alone = rank_verdict(z, zs[np.arange(60) != k].tolist(), budget)
        assert fast[k] == pytest.approx(alone), (k, z)
    assert all(v["verdict"] == "unrelated" and v["p_value"] > 0.9 for v, z in zip(fast, zs) if np.isnan(z))


def test_copies_in_the_population_raise_the_bar_so_fewer_models_are_flagged_never_more():
    """Nothing is left out automatically: three copies above 20 unrelated models hold every unrelated model under
    the bar that, without them, flags two, and each other too (the lowest copy: p = 3 / 23 > 0.1)."""
    innocents = np.linspace(-1.0, 2.0, 20).tolist()
    copies = [4.0, 5.0, 6.0]
    verdicts = rank_all(innocents + copies, budget=0.1)
    assert all(v["n"] == 22 for v in verdicts)
    assert [v["p_value"] for v in verdicts[20:]] == pytest.approx([3 / 23, 2 / 23, 1 / 23])
    assert [v["verdict"] for v in verdicts[20:]] == ["unrelated", "derived", "derived"]
    assert rank_all(innocents + copies[1:], budget=0.1)[20]["verdict"] == "derived"  # one named with --exclude
    assert not any(v["verdict"] == "derived" for v in verdicts[:20])
    alone = rank_all(innocents, budget=0.1)  # the copies named with --exclude: the budget's floor(0.1 * 20)
    assert sum(v["verdict"] == "derived" for v in alone) == 2


def _fake_fingerprint(root, owner: str, content: bytes):
    path = fingerprint_path(root, owner)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_the_evidence_cache_holds_for_one_fingerprint_and_one_set_of_weights(tmp_path):
    _fake_fingerprint(tmp_path, "owner", b"fingerprint one")
    cache = EvidenceCache(tmp_path, "owner")
    assert cache.get("m1", "sha-a") is None and not cache.save()  # nothing to write yet
    cache.put("m1", "sha-a", {"z": 1.5, "agreement": 0.2, "class_map": None})
    assert cache.save() and evidence_cache_path(tmp_path, "owner").is_file()
    again = EvidenceCache(tmp_path, "owner")
    assert again.get("m1", "sha-a") == {"z": 1.5, "agreement": 0.2, "class_map": None}
    assert again.get("m1", "sha-b") is None  # other weights indexed under that name
    assert again.get("m2", "sha-a") is None
    _fake_fingerprint(tmp_path, "owner", b"fingerprint two")  # refitted: every entry is stale
    assert EvidenceCache(tmp_path, "owner").get("m1", "sha-a") is None
    assert EvidenceCache(tmp_path, "nobody").get("m1", "sha-a") is None  # no fingerprint: nothing cached
    nobody = EvidenceCache(tmp_path, "nobody")
    nobody.put("m1", "sha-a", {"z": 1.0})
    assert not nobody.save() and not evidence_cache_path(tmp_path, "nobody").exists()


def test_a_damaged_or_unwritable_cache_is_recomputed_never_trusted(tmp_path):
    _fake_fingerprint(tmp_path, "owner", b"fingerprint")
    path = evidence_cache_path(tmp_path, "owner")
    for damaged in ("{not json", json.dumps([1, 2]), json.dumps({"format": "other", "models": {}}),
                    json.dumps({"format": "gifindex-evidence-cache-1", "fingerprint_sha256": "0" * 64,
                                "models": {"m1": {"weights_sha256": "a", "evidence": {"z": 9.0}}}})):
        path.write_text(damaged)
        assert EvidenceCache(tmp_path, "owner").entries == {}
    cache = EvidenceCache(tmp_path, "owner")
    cache.put("m1", "a", {"z": 1.0})
    folder = path.parent
    os.chmod(folder, 0o500)
    try:
        if os.access(folder, os.W_OK):  # running as root: permissions do not bind, make the target a folder
            path.unlink()
            path.mkdir()
        assert cache.save() is False  # best effort: a read-only index still ranks
    finally:
        os.chmod(folder, 0o700)


def test_the_evaluation_ranks_a_run_as_the_command_does():
    """tools/eval/rank_verdict.py reads a stored run's per-model evidence: derived models ranked among the
    independent ones (or among every model: --hub index), each independent model among the others."""
    import sys
    from pathlib import Path

    folder = str(Path(__file__).resolve().parents[1] / "tools" / "eval")
    sys.path.insert(0, folder)
    try:
        import rank_verdict
    finally:
        sys.path.remove(folder)
    negatives = {f"irrelevant-{i}": {"group": "irrelevant", "z": i / 10} for i in range(19)}
    run = {"per_model": {**negatives,
                         "distilled": {"group": "extract-p", "z": 2.5},  # above every independent model
                         "student": {"group": "extract-l", "z": 1.75},  # above all but one
                         "transfer": {"group": "transfer", "z": None, "z_gif_population": 9.0}},  # signature's z
           "recipe_negatives": {"r": {"z": 1.85}}}
    attacks, kinds = rank_verdict.rank_run(run, 0.05, "independent")
    assert attacks["extract-p"] == [(True, False)] and attacks["transfer"] == [(True, True)]
    assert attacks["extract-l"] == [(False, False)]  # p = 2 / 21 > 0.05
    assert kinds["irrelevant-r"] == [(True, False)]  # the top independent model: p = 1 / 20, the budget's share
    assert sum(flag for flag, _ in kinds["irrelevant"]) == 0
    among_all, _ = rank_verdict.rank_run(run, 0.05, "index")  # the transfer copy now outranks the student too
    assert among_all["extract-p"] == [(False, False)]  # p = 2 / 23


def test_the_evaluation_leaves_models_not_of_the_task_unjudged(tmp_path, monkeypatch, capsys):
    """A stored model the verdict does not judge (off_task: below the fingerprint's task gate) counts as the weakest
    evidence in tools/eval's rescorings, however high its fingerprint's raw z, for zoo models and recipe-trained ones
    alike; tools/eval/screening_bar.py counts flags at the Sidak-raised bar for M owners from the same z."""
    import sys
    from pathlib import Path

    import numpy as np

    folder = str(Path(__file__).resolve().parents[1] / "tools" / "eval")
    sys.path.insert(0, folder)
    try:
        import rank_verdict
        import screening_bar
    finally:
        sys.path.remove(folder)
    assert rank_verdict.verdict_z({"z": 6.5, "off_task": True}) == -np.inf
    assert rank_verdict.verdict_z({"z": 2.0, "off_task": False}) == 2.0
    assert rank_verdict.verdict_z({"z": None, "z_gif_population": 4.0}) == 4.0
    run = {"per_model": {"copy": {"group": "finetune-a", "z": 9.0}, "student": {"group": "extract-p", "z": 3.4},
                         "junk": {"group": "irrelevant", "z": 6.5, "off_task": True}},
           "recipe_negatives": {"short": {"z": 4.6, "off_task": True}, "long": {"z": 3.5, "off_task": False}}}
    scores = screening_bar.run_scores(run)
    assert scores["irrelevant"] == [-np.inf] and sorted(scores["recipe"]) == [-np.inf, 3.5]
    import json

    (tmp_path / "run.json").write_text(json.dumps({"runs": [run]}).replace("-Infinity", "null"))
    monkeypatch.setattr(screening_bar, "results_dir", lambda: tmp_path)
    monkeypatch.setattr(sys, "argv", ["screening_bar.py", "--files", "run.json"])
    screening_bar.main()
    rows = {int(line.split()[0]): line for line in capsys.readouterr().out.splitlines() if line.split()[0].isdigit()}
    # M = 1, 2: z 3.00 / 3.21 keep the student (3.4) and the long recipe (3.5); M = 10 (3.64): only the copy
    assert "1 of 1" in rows[1] and rows[1].count("1 of 1") == 2 and "1 of 3" in rows[1]  # copy, student; 1 of 3 indep
    assert rows[10].count("1 of 1") == 1 and "0 of 1" in rows[10] and "0 of 3" in rows[10]
