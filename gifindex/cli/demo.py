"""`gifindex demo`: build the demo zoo from bundled data, index it, show nearest models and the tree."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from ..errors import GifindexError
from ..manifest import read_manifest
from . import main
from .options import check_device, table
from .progress import ProgressReporter

# gifindex.demo (torch), gifindex.index (faiss) and gifindex.tree (scipy) are imported inside the commands:
# `gifindex --help` does not pay for them.


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="gifindex-demo", show_default=True,
              help="folder for the zoo, its manifest, the index and the tree files")
@click.option("--device", default="cpu", show_default=True)
@click.option("--fresh", is_flag=True, help="retrain the zoo and rebuild the index from scratch")
@click.option("--quick", is_flag=True, help="a smaller zoo (two tiny timm families, shorter training): a smoke test")
@click.option("--no-progress", is_flag=True)
def demo(out_dir: str, device: str, fresh: bool, quick: bool, no_progress: bool) -> None:
    """Build a small demo zoo (trained on scikit-learn's digits), index it, print nearest models and the tree.

    Runs offline in a minute or two on a laptop CPU; a second run reuses the trained zoo and the index.
    """
    from ..demo import (OWNER_DATA_NAME, QUICK_ZOO, DemoZooConfig, build_demo_zoo, demo_index_config,
                        open_demo_index, relation_rows, write_manifest)
    from ..tree import save_tree, to_newick

    device = check_device(device)
    out = Path(out_dir)
    if fresh and out.exists():
        shutil.rmtree(out)
    zoo_dir, index_dir = out / "zoo", out / "index"
    started = time.perf_counter()
    click.echo(f"1/4 building the demo zoo in {zoo_dir} (scikit-learn digits, upscaled to RGB)")
    zoo_config = QUICK_ZOO if quick else DemoZooConfig()
    entries = build_demo_zoo(zoo_dir, zoo_config, progress=lambda msg: click.echo(msg))
    manifest = write_manifest(entries, out / "demo.yaml", relative_to=out)

    config = demo_index_config(zoo_dir)
    index = open_demo_index(index_dir, config, entries, device=device)
    click.echo(f"2/4 signing and indexing {len(entries)} models in {index_dir} "
               f"(K={config.num_probes} probes x T={config.steps} steps, R={config.resolution})")
    report = index.ingest(read_manifest(manifest), device=device, batch_size=64,
                          reporter=ProgressReporter(enabled=not no_progress))
    summary = report.to_dict()
    click.echo(f"    {summary['added']} added, {summary['skipped']} already indexed, {summary['failed']} failed")
    if summary["failed"]:
        failed = [r for r in summary["models"] if r["status"] == "failed"]
        raise GifindexError(f"{len(failed)} demo model(s) could not be indexed (first: {failed[0]['name']}: "
                            f"{failed[0].get('error')}); run `gifindex demo --fresh --out {out_dir}`")

    query = entries[1]["name"] if len(entries) > 1 else entries[0]["name"]
    click.echo(f"3/4 nearest models to {query}:")
    neighbours = index.nearest(query, k=5)
    click.echo(table([[rank, n.name, n.distance] for rank, n in enumerate(neighbours, 1)],
                     ["rank", "name", "distance"]))
    click.echo("\n    does each derived model sit next to its parent?")
    click.echo(table(relation_rows(index, entries),
                     ["model", "relation", "d(parent)", "parent rank", "nearest model", "same family",
                      "parent before other families"]))

    click.echo("4/4 similarity tree (average linkage):")
    tree = index.tree()
    written = [save_tree(tree, out / f"tree.{suffix}", fmt, color_by="family") for suffix, fmt in
               (("nwk", "newick"), ("png", "png"), ("html", "html"))]   # leaves coloured by model family
    click.echo("    " + to_newick(tree))
    click.echo("    wrote " + ", ".join(str(p) for p in written))
    owner = next(e["name"] for e in entries if e["tags"]["relation"] == "base")
    click.echo(f"done in {time.perf_counter() - started:.0f} s. Next: open {out / 'tree.html'} in a browser, or try\n"
               f"    gifindex nearest -i {index_dir} {query}\n"
               f"    gifindex tree -i {index_dir} --format json\n"
               f"  and the IP check that also catches distilled copies (fitted once from the owner's data, in\n"
               f"  minutes on a CPU):\n"
               f"    gifindex fit-probes -i {index_dir} {owner} --data {zoo_dir / OWNER_DATA_NAME}\n"
               f"    gifindex suspect -i {index_dir} --owner {owner} --all")
    index.close()
