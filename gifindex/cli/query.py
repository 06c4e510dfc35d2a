"""Commands that read an index: nearest, distance, matrix, tree."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..errors import GifindexError
from ..observe import observing
from . import main
from .options import (DEFAULT_INDEX, check_device, config_from, config_given, config_options, device_options,
                      emit_json, index_option, json_option, load_kwargs_from, load_options, open_index, table)
from .progress import SigningProgress

# gifindex.session and gifindex.index (faiss) and gifindex.tree (scipy) are imported inside the commands
# that use them: `gifindex --help` does not pay for them.


@main.command()
@index_option
@click.argument("ref")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="number of neighbours (at least 1)")
@load_options
@device_options
@json_option
def nearest(index_path: str, ref: str, k: int, device: str, batch_size: int, as_json: bool, **kwargs: Any) -> None:
    """Indexed models nearest to REF: an indexed name, or any model reference (signed on the fly, not added).

    A model signed on the fly gets a progress bar and a line saying the architecture, input size, mean and
    std used (given, detected, or those of an indexed model ingested from the same weights file).
    """
    from ..session import Session

    session = Session.at(index_path, load_kwargs_from(kwargs))
    session.check_options_used([ref])
    start = time.perf_counter()
    with observing(SigningProgress()) as progress:
        neighbours = session.index.nearest(session.model(ref), k=k, device=check_device(device),
                                           batch_size=batch_size)
    seconds = time.perf_counter() - start
    signed = progress.signed_models[0] if progress.signed_models else None
    if as_json:
        emit_json({"query": ref, "k": k, "seconds": round(seconds, 4), "signed": signed,
                   "neighbors": [n.to_dict() for n in neighbours]})
        return
    rows = [[rank, n.name + ("  (random init)" if n.random_init else ""), n.distance, n.ref]
            for rank, n in enumerate(neighbours, 1)]
    empty = "the index is empty" if len(session.index) == 0 else f"no other model in the index than {ref}"
    click.echo(table(rows, ["rank", "name", "distance", "ref"]) if rows else empty)
    hint = _fingerprint_hint(session.index, ref)
    if hint:
        click.echo(hint)


def _fingerprint_hint(index: Any, ref: str) -> str | None:
    """Where the index holds owners' fingerprints, the command that sees what distance alone cannot: copies that
    share no weights (distilled or extracted) of a protected model."""
    from ..fingerprint.store import current_fingerprints
    from ..index.layout import stale_fingerprint, stored_fingerprints

    def indexed(name: str) -> bool:
        return index.catalog.by_name(name) is not None

    if all(stale_fingerprint(index.root, f, indexed) for f in stored_fingerprints(index.root)):
        return None  # none, or only those of removed models
    record = index.catalog.by_name(ref)
    if record is not None and current_fingerprints(index.root, [record]):
        return (f"note: {ref} has a fingerprint: `gifindex suspect --owner {ref} --all` judges every indexed model by "
                "its decisions and outputs, which see distilled and extracted copies that this distance misses")
    return (f"note: this index protects models with fingerprints: `gifindex suspect {ref}` checks whether it derives "
            "from one of them, copies that share no weights included")


@main.command()
@index_option
@click.argument("model_a")
@click.argument("model_b")
@click.option("--exact", is_flag=True, help="with an index: recompute uncompressed features with its probes "
              "and method")
@config_options
@load_options
@device_options
@json_option
@click.pass_context
def distance(ctx: click.Context, index_path: str, model_a: str, model_b: str, exact: bool, device: str,
             batch_size: int, as_json: bool, **kwargs: Any) -> None:
    """Distance of two models under the signature method (0 = same function, at most 2).

    With an index (-i, $GIFINDEX_INDEX or ./gifindex-index) MODEL_A/B may be indexed names or references,
    and stored compressed signatures are used. Without one, or when configuration options are given,
    both models are signed with that configuration and the exact distance is printed.
    """
    from ..session import Session

    session = Session.choose(index_path, config_from(kwargs), config_given=config_given(ctx),
                             explicit=index_path != DEFAULT_INDEX, load=load_kwargs_from(kwargs))
    session.check_options_used([model_a, model_b])
    start = time.perf_counter()
    with observing(SigningProgress()) as progress:
        value, kind = session.distance(model_a, model_b, exact=exact, device=check_device(device),
                                       batch_size=batch_size)
    seconds = time.perf_counter() - start
    if as_json:
        emit_json({"a": model_a, "b": model_b, "distance": value, "kind": kind,
                   "random_init": [session.random_init(model_a), session.random_init(model_b)],
                   "config_hash": session.config.hash(),
                   "config": session.config.to_dict(), "seconds": round(seconds, 3),
                   "signed": progress.signed_models})
    else:
        click.echo(f"{value:.6f}")


@main.command()
@index_option
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False),
              help="FILE.csv, FILE.npy or FILE.json (default: CSV on stdout)")
@json_option
def matrix(index_path: str, output: str | None, as_json: bool) -> None:
    """All pairwise distances between indexed models (--json: names and distances as JSON on stdout)."""
    from ..index.atomic import atomic_path

    index = open_index(index_path)
    names, dist = index.matrix()
    if not names and not as_json:   # an empty table is still written (programs read it); people are told why
        click.echo("the index is empty: no distances (ingest some models first)", err=True)
    drawn = {r.name for r in index.records() if r.metadata.get("random_init")}
    random = [name in drawn for name in names]
    if as_json and not output:
        emit_json({"names": names, "distances": dist.round(6).tolist(), "random_init": random})
        return
    suffix = Path(output).suffix.lower() if output else ".csv"
    if suffix not in (".csv", ".npy", ".json"):
        raise GifindexError(f"unsupported matrix format {suffix!r}: use .csv, .npy or .json")
    if suffix == ".npy":
        with atomic_path(output) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, dist)
        with atomic_path(Path(output).with_suffix(".names.txt")) as tmp:
            tmp.write_text("\n".join(names) + "\n")
        names_file = str(Path(output).with_suffix(".names.txt"))
        if as_json:
            emit_json({"wrote": output, "names": names_file, "n": len(names)})
        else:
            click.echo(f"wrote {output} ({len(names)} x {len(names)} distances; row and column order in {names_file})")
        return
    if suffix == ".json":
        text = json.dumps({"names": names, "distances": dist.round(6).tolist(), "random_init": random})
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([""] + names)
        for name, row in zip(names, dist):
            writer.writerow([name] + [f"{v:.6f}" for v in row])
        text = buffer.getvalue()
    if output:
        with atomic_path(output) as tmp:
            tmp.write_text(text)
        if as_json:
            emit_json({"wrote": output, "n": len(names)})
        else:
            click.echo(f"wrote {output} ({len(names)} x {len(names)} distances)")
    else:
        click.echo(text, nl=False)


@main.command()
@index_option
@click.option("--linkage", type=click.Choice(["average", "complete", "single", "ward"]), default="average",
              show_default=True)
@click.option("--format", "fmt", type=click.Choice(["newick", "json", "png", "svg", "html"]), default=None,
              help="default: from the -o suffix, else newick")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), help="output file (default: stdout "
              "for newick/json)")
@click.option("--color-by", "color_by", default=None, metavar="TAG",
              help="colour the leaves of the PNG/SVG/HTML outputs by this manifest tag (family, relation, ...)")
@json_option
def tree(index_path: str, linkage: str, fmt: str | None, output: str | None, color_by: str | None,
         as_json: bool) -> None:
    """Hierarchical clustering of the whole index: Newick, JSON, PNG/SVG dendrogram, or an HTML page.

    Heights are ModelGiF distances; the Newick file is ultrametric with leaf-to-leaf path length equal to
    the linkage distance at which two models join. --json prints the tree as JSON, one compact line as
    -o FILE.json writes it (with -o: what was written).
    """
    from ..tree import infer_format, leaf_groups, save_tree, to_newick, tree_json_text

    if as_json and output is None and fmt not in (None, "json"):
        raise click.UsageError(f"--json prints the tree as JSON on stdout, not {fmt}: drop --json, or give -o FILE "
                               "to write the file")
    fmt = fmt or (infer_format(output) if output else "json" if as_json else "newick")
    if color_by and fmt in ("newick", "json"):
        raise click.UsageError(f"--color-by colours the png, svg and html outputs, not {fmt}: give -o FILE.html "
                               "(or .png, .svg)")
    result = open_index(index_path).tree(linkage=linkage)
    if color_by:
        leaf_groups(result, color_by)   # an unknown tag is an error whatever the output
    if output is None:
        if fmt == "newick":
            click.echo(to_newick(result))
        elif fmt == "json":
            click.echo(tree_json_text(result))   # compact: indented, a deep tree's text grows as its depth squared
        else:
            raise GifindexError(f"--format {fmt} writes a file: give -o FILE")
        return
    save_tree(result, output, fmt, color_by=color_by)
    if as_json:
        emit_json({"wrote": output, "format": fmt, "n": result.n, "linkage": result.method, "color_by": color_by})
    else:
        click.echo(f"wrote {output}")
