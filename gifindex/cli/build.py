"""Commands that create and change an index: init, ingest, remove, rebuild; and list/info/verify."""
from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from typing import Any

import click

from ..errors import GifindexError
from ..manifest import ModelEntry, read_manifest, with_defaults
from . import main
from .progress import ProgressReporter
from .options import (FiniteFloat, check_device, is_number, config_from, config_options, device_options, emit_json,
                      index_option, json_option, load_options, load_kwargs_from, method_option, open_index, table,
                      terminate_as_interrupt, wait_option)

# gifindex.index and gifindex.executors (torch, faiss) are imported inside the commands that use them:
# `gifindex --help` does not pay for them.


@main.command()
@index_option
@method_option("modelgif", help="signature method: modelgif, or a baseline to compare with (saliency: input "
               "gradient at each probe; ig: Integrated Gradients; sac: cosine matrix of outputs on CutMix probes, "
               "probe kind cutmix unless --probe-kind is given; rsa: dissimilarity matrix of outputs)")
@config_options
@click.option("--search", "search_kind", type=click.Choice(["auto", "flat", "ivf", "hnsw", "ivfpq"]), default="auto",
              show_default=True, help="auto: exhaustive exact search (flat) up to 128 MiB of signatures, then ivf "
              "(probed lists plus a PCA screen, scored exactly) while they fit --flat-budget-mb, then ivfpq; flat: "
              "always exhaustive; hnsw / ivfpq: approximate (PCA to 256 dims first), re-ranked exactly")
@click.option("--flat-budget-mb", type=FiniteFloat(0, min_open=True), default=4096.0, show_default=True,
              help="auto search: memory for the float16 signatures (flat / ivf) before switching to ivfpq")
@click.option("--device", default="cpu", show_default=True, help="device for PGD probe generation")
@json_option
def init(index_path: str, method: str, search_kind: str, flat_budget_mb: float, device: str, as_json: bool,
         **kwargs: Any) -> None:
    """Create an empty index with a fixed signature configuration (probes drawn and stored now)."""
    from ..index import Index, SearchSpec

    from ..index.layout import index_exists

    config = config_from(kwargs, method=method)
    search = SearchSpec(kind=search_kind, flat_budget_mb=flat_budget_mb)
    existed = index_exists(index_path)
    index = Index.create(index_path, config, search=search, device=check_device(device), exist_ok=True)
    if existed and index.search_spec != search:
        spec = index.search_spec
        raise GifindexError(f"an index with this configuration already exists at {index_path}, but with other search "
                            f"settings ({spec.kind}, {spec.flat_budget_mb:g} MiB flat budget); choose another --index "
                            "directory")
    info = index.info()
    if as_json:
        emit_json({**info, "created_now": not existed})
    elif existed:   # init is idempotent: what a setup script re-run wants
        click.echo(f"an index with this configuration ({info['config_hash']}) already exists at {index_path}; "
                   "nothing to do")
    else:
        click.echo(f"created index at {index_path} (configuration {info['config_hash']}: K={config.num_probes}, "
                   f"T={config.steps}, R={config.resolution}, proj_dim={config.proj_dim}; "
                   f"{info['bytes_per_model']} bytes per model)")


@main.command()
@index_option
@click.argument("refs", nargs=-1)
@click.option("--manifest", type=click.Path(dir_okay=False), help="YAML manifest of models (see zoo_manifests/)")
@click.option("--name", default=None, help="name of the model (one REF only)")
@click.option("--weights", default=None, help="state-dict file with the weights of a named architecture")
@load_options
@device_options
@click.option("--executor", type=click.Choice(["local", "inline", "ray"]), default="local", show_default=True,
              help="local: a worker process (a model that hangs or crashes is isolated); inline: in this "
                   "process; ray: a Ray cluster (pip install 'gifindex[ray]')")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=1800.0, show_default=True,
              help="per-model time limit in seconds (local and ray executors)")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="local executor: worker processes signing at once, each with cores / N threads")
@click.option("--address", default=None, help="Ray cluster address (default: start or join a local one)")
@click.option("--commit-every", type=click.IntRange(min=1), default=8, show_default=True,
              help="models per shard commit (an interrupted ingest loses at most this many)")
@wait_option
@click.option("--no-progress", is_flag=True, help="no progress bars (per-model lines are still printed)")
@json_option
def ingest(index_path: str, refs: tuple[str, ...], manifest: str | None, name: str | None, weights: str | None,
           device: str, batch_size: int, executor: str, timeout: float, jobs: int, address: str | None,
           commit_every: int, wait: float, no_progress: bool,
           as_json: bool, **kwargs: Any) -> None:
    """Sign models and add them; those already indexed (same weights) are skipped.

    A model that fails is reported with the reason and the rest go on; the exit code is 1 if any failed.
    """
    from ..executors import make_executor

    if address is not None and executor != "ray":
        raise GifindexError(f"--address (a Ray cluster's) applies to the ray executor only, not {executor}: add "
                            "--executor ray")
    load_kwargs = load_kwargs_from(kwargs)
    # the command line's loading options are defaults for the manifest's entries
    entries = [with_defaults(e, load_kwargs) for e in read_manifest(manifest)] if manifest else []
    without = _without_local_weights(manifest, entries, quiet=as_json)
    _numbers_as_refs(refs)
    given = len(refs)
    refs = _expand_folders(refs, quiet=as_json)
    if (name or weights) and len(refs) != 1:
        raise GifindexError("--name and --weights apply to a single REF" + (
            f" (the folder given holds {len(refs)} model files)" if given == 1 and len(refs) > 1 else
            f" ({given} given)" if given > 1 else ""))
    for ref in refs:
        entries.append(ModelEntry(ref=ref, name=name, weights=weights, **{
            k: v for k, v in load_kwargs.items()}))
    if not entries:
        raise GifindexError("nothing to ingest: give model references or --manifest FILE")
    index = open_index(index_path)
    start = time.perf_counter()
    if jobs > 1 and executor != "local":
        raise GifindexError(f"-j/--jobs applies to the local executor; --executor {executor} runs "
                            + ("one model at a time" if executor == "inline" else "as many as the cluster has CPUs"))
    options = {"address": address} if executor == "ray" else {}
    try:
        with terminate_as_interrupt():   # SIGTERM: what was signed is committed first, as on Ctrl-C
            report = index.ingest(entries, device=check_device(device), batch_size=batch_size,
                                  commit_every=commit_every, wait=wait,
                                  reporter=ProgressReporter(enabled=not no_progress and not as_json),
                                  executor=make_executor(executor, timeout=timeout, jobs=jobs, **options))
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM: say what was kept and how to go on
        held = len(index)
        raise GifindexError(f"interrupted; every model signed before it is committed (the index holds {held} "
                            f"model{'' if held == 1 else 's'}): run the same command again to resume") from None
    summary = report.to_dict()
    summary["seconds"] = round(time.perf_counter() - start, 2)
    summary["index_models"] = len(index)
    summary["without_local_weights"] = without
    defaulted = _default_conventions(entries, report)
    summary["default_convention"] = [r.name for r in defaulted]
    if as_json:
        emit_json(summary)
    else:   # each failure was printed once already, as it happened
        failed = " (reasons above)" if summary["failed"] else ""
        click.echo(f"{summary['added']} added, {summary['skipped']} skipped, {summary['failed']} failed{failed} "
                   f"in {summary['seconds']:.1f} s; the index holds {summary['index_models']} model"
                   f"{'' if summary['index_models'] == 1 else 's'}")
        if defaulted:
            shown = "; ".join(f"{r.name} ({_convention_of(r.metadata)})" for r in defaulted[:3])
            more = f" and {len(defaulted) - 3} more" if len(defaulted) > 3 else ""
            whose = "their architectures'" if len(defaulted) != 1 else "its architecture's"
            click.echo(f"note: {len(defaulted)} model{'s' * (len(defaulted) != 1)} from weights files took "
                       f"{whose} default input convention (a file carries none): {shown}{more}; if trained "
                       "otherwise, `gifindex remove` "
                       "and ingest again with --input-size/--mean/--std (manifest: input_size, mean, std)")
    if report.by_status("failed"):
        sys.exit(1)


def _numbers_as_refs(refs: tuple[str, ...]) -> None:
    """``--mean 0.5 0.5 0.5`` unquoted gives --mean one number and makes the others model references; say so
    before anything is signed with the wrong convention."""
    import os

    numbers = [ref for ref in refs if is_number(ref) and not os.path.exists(ref)]
    if numbers:
        raise click.UsageError(f"{' '.join(numbers)} {'is a number' if len(numbers) == 1 else 'are numbers'}, not "
                               "a model: give --mean/--std three values quoted (--mean '0.5 0.5 0.5') or "
                               "comma-separated (--mean 0.5,0.5,0.5)")


def _expand_folders(refs: tuple[str, ...], quiet: bool) -> tuple[str, ...]:
    """Each folder of model files given as a REF becomes its files (a Hugging Face model folder stays one REF; a
    folder without model files stays, and fails as any model that cannot be read does)."""
    from ..refs import folder_left_out, folder_models
    out: list[str] = []
    for ref in refs:
        files = folder_models(ref)
        if not files:  # not a folder, or one without model files: the loader says what it is
            out.append(ref)
        else:
            out.extend(files)
        if files is not None and not quiet:
            click.echo(f"folder {ref}: {len(files)} model file{'s' if len(files) != 1 else ''}"
                       f"{_left_out(folder_left_out(ref))}", err=True)
    return tuple(out)


def _left_out(counts: dict[str, int]) -> str:
    """What a folder ingest leaves out, in words (empty when nothing): how many files, of which kinds."""
    total = sum(counts.values())
    if not total:
        return ""
    kinds = ", ".join(f"{n} {kind or 'without extension'}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (f"; left out {total} other file{'s' if total != 1 else ''} ({kinds}), not model files by their "
            "extension: give one by its path to have its format read from its bytes")


def _default_conventions(entries: list[ModelEntry], report: Any) -> list[Any]:
    """The models added from weights files given no input convention (``ModelEntry.convention_unknown``)."""
    from ..ingest import absolute_entry, load_options

    unknown = {json.dumps(load_options(absolute_entry(e)), sort_keys=True) for e in entries if e.convention_unknown()}
    return [r for r in report.by_status("added")   # by how it was loaded: entries may share a reference
            if json.dumps(r.metadata.get("load"), sort_keys=True) in unknown
            and r.metadata.get("convention_from") != "model"]


def _convention_of(metadata: dict[str, Any]) -> str:
    """A signed model's input convention in words (its metadata)."""
    from ..observe import convention_words

    return convention_words(metadata.get("input_size"), metadata.get("mean"), metadata.get("std"),
                            metadata.get("channels"))


def _without_local_weights(manifest: str | None, entries: list[ModelEntry], quiet: bool) -> list[str]:
    """Before signing a manifest: say how many of its entries have no weights on this machine."""
    if not manifest:
        return []
    from ..models.available import has_local_weights

    missing = [e.display_name() for e in entries if not has_local_weights(e)]
    if missing and not quiet:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        click.echo(f"{manifest}: {len(missing)} of {len(entries)} entries have no local weights and will fail "
                   f"({shown}); nothing is downloaded: give weights: FILE, or --random-init for untrained "
                   "weights", err=True)
    return missing


@main.command("list")
@index_option
@json_option
def list_models(index_path: str, as_json: bool) -> None:
    """Indexed models (name, reference, when added, architecture, weights: loaded or RANDOM INIT, and whether a
    fingerprint protects it: `fit-probes`)."""
    from ..fingerprint.store import current_fingerprints

    index = open_index(index_path)
    records = index.records()
    protected = set(current_fingerprints(index.root, records))   # fitted for the weights indexed under the name
    if as_json:
        emit_json([{**r.to_dict(), "random_init": bool(r.metadata.get("random_init")),
                    "protected": r.name in protected} for r in records])
        return
    rows = [[r.name, r.ref, _dt.datetime.fromtimestamp(r.added).strftime("%Y-%m-%d %H:%M"),
             r.metadata.get("arch") or "", "RANDOM INIT" if r.metadata.get("random_init") else "loaded",
             r.weights_sha256[:12], "fingerprint" if r.name in protected else ""] for r in records]
    click.echo(table(rows, ["name", "ref", "added", "arch", "weights", "sha256", "protected"]) if rows
               else "the index is empty")


@main.command()
@index_option
@json_option
def info(index_path: str, as_json: bool) -> None:
    """Index details: configuration, size, search kind, versions, recorded failures."""
    index = open_index(index_path)
    details = index.info()
    details["recent_failures"] = index.catalog.failures()[-10:]
    if as_json:
        emit_json(details)
        return
    config = details["config"]
    click.echo(f"index       {details['path']} (format {details['format_version']})")
    click.echo(f"models      {details['models']} in {details['shards']} shard(s), "
               f"{details['bytes_on_disk'] / 1e6:.2f} MB on disk")
    click.echo(f"config      {details['config_hash']}: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    click.echo(f"signature   {details['signature_dim']} dims, {details['bytes_per_model']} bytes per model "
               "(float16)")
    search = details["search"]
    click.echo(f"search      {search.get('kind')} -> {search.get('reason')}")
    created, running = details.get("versions") or {}, details["running_versions"]
    click.echo("versions    " + ", ".join(
        f"{name} {version}" + (f" (created with {created[name]})" if created.get(name, version) != version else "")
        for name, version in running.items()) + ("" if created else " (the index records none)"))
    click.echo(f"failures    {details['failures']} recorded")
    for failure in details["recent_failures"]:
        click.echo(f"  {failure['name'] or failure['ref']}: {failure['error']}")


@main.command()
@index_option
@click.argument("name")
@wait_option
@json_option
def remove(index_path: str, name: str, wait: float, as_json: bool) -> None:
    """Remove a model from the index. Its fingerprint (`fit-probes`) and kept helper models stay: refitting needs
    the owner's data; `suspect` uses them again only for these same weights indexed under this name."""
    from ..index.layout import evidence_cache_path, fingerprint_path, helpers_path

    index = open_index(index_path)
    record = index.remove(name, wait=wait)
    kept = [p for p in (fingerprint_path(index.root, record.name), helpers_path(index.root, record.name),
                        evidence_cache_path(index.root, record.name)) if p.is_file()]
    if as_json:
        emit_json({"removed": record.to_dict(), "kept": [str(p) for p in kept]})
        return
    click.echo(f"removed {record.name}")
    if kept:
        size = sum(p.stat().st_size for p in kept) / 2 ** 20
        click.echo(f"kept its fingerprint ({', '.join(p.name for p in kept)}; {size:.1f} MiB in "
                   f"{kept[0].parent}): used again only if these weights are indexed under this name; delete the "
                   "files to drop it")


@main.command()
@index_option
@click.option("--repair", is_flag=True, help="quarantine corrupt shards (moved to shards/quarantine/, their "
              "models dropped and named for re-ingest), remove debris of interrupted writes, rebuild the "
              "search index; then verify again")
@wait_option
@json_option
def verify(index_path: str, repair: bool, wait: float, as_json: bool) -> None:
    """Check the catalogue, every shard's checksums and the search index; exit 1 on any problem."""
    index = open_index(index_path)
    repaired = index.repair(wait=wait) if repair else None
    report = index.verify()
    if repaired is not None:
        report["repair"] = repaired
        if not as_json:
            for shard, item in repaired["quarantined"].items():
                where = f"moved to {item['moved_to']}" if item["moved_to"] else "was missing"
                click.echo(f"quarantined shard {shard} ({item['reason']}; {where}); re-ingest: "
                           f"{', '.join(item['reingest']) or 'nothing (no live models)'}")
            click.echo(f"repaired: search index rebuilt over {repaired['models']} models; "
                       f"{len(repaired['removed'])} leftover file(s) removed")
    if as_json:
        emit_json(report)
    else:
        state = "ok" if report["ok"] else "PROBLEMS"
        click.echo(f"{state}: {report['models']} models in {report['shards']} shard(s)")
        for problem in report["problems"]:
            click.echo(f"  problem: {problem}")
        for note in report["notes"]:
            click.echo(f"  note: {note}")
    if not report["ok"]:
        sys.exit(1)


@main.command()
@index_option
@wait_option
@json_option
def rebuild(index_path: str, wait: float, as_json: bool) -> None:
    """Recreate the search index (search.faiss) from the shards (and the catalogue, when it is missing or
    damaged)."""
    index = open_index(index_path)
    count = index.rebuild(wait=wait)
    status = index.search_status()
    if as_json:
        emit_json({"rebuilt": True, "models": count, "search": status})
    else:
        click.echo(f"rebuilt search index over {count} models ({status['reason']})")
