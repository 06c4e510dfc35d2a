"""`gifindex demo` end to end: zoo, index, nearest, relations table, tree files (slow: trains models)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gifindex.cli import main
from gifindex.index import Index


@pytest.mark.slow
def test_demo_builds_indexes_and_shows_families(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--no-progress", "--quick"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in ("tree.nwk", "tree.png", "tree.html", "demo.yaml"):
        assert (out / name).stat().st_size > 100
    assert "does each derived model sit next to its parent?" in result.output
    assert '"colorBy":"family"' in (out / "tree.html").read_text()          # leaves coloured by family
    # the next steps name the IP check with the owner data the demo wrote, for its first base model
    fit = f"gifindex fit-probes -i {out / 'index'} test_resnet --data {out / 'zoo' / 'digits_train.npz'}"
    assert fit in result.output and (out / "zoo" / "digits_train.npz").is_file()
    assert f"gifindex suspect -i {out / 'index'} --owner test_resnet --all" in result.output
    with Index.open(out / "index") as index:
        records = index.records()
        assert len(records) == 10 and index.verify()["ok"]
        assert all(r.ref == str((out / "zoo" / f"{r.name}.pt").resolve()) for r in records)   # absolute refs
        tags = {r.name: r.metadata["tags"] for r in records}
        # fine-tuned and pruned models: their nearest indexed model is in their own family
        for name, tag in tags.items():
            if tag.get("relation") in ("finetuned", "pruned"):
                nearest = index.nearest(name, k=1)[0].name
                assert tags[nearest]["family"] == tag["family"], (name, nearest)
    # a second run reuses the zoo and the index: nothing is added again
    again = CliRunner().invoke(main, ["demo", "--out", str(out), "--no-progress", "--quick"], catch_exceptions=False)
    assert again.exit_code == 0 and "0 added" in again.output
    tree = json.loads(CliRunner().invoke(main, ["tree", "-i", str(out / "index"), "--format", "json"]).output)
    assert tree["n"] == len(records)
