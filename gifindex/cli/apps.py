"""The paper's applications as commands: suspect (IP protection), unlearning, relatedness."""
from __future__ import annotations

import math
import sys
from typing import Any

import click

from ..observe import observing
from . import main
from .options import (DEFAULT_INDEX, FiniteFloat, check_device, config_from, config_given, config_options,
                      device_options, emit_json, index_option, json_option, load_kwargs_from, load_options,
                      method_option, open_index, table, wait_option)
from .progress import SigningProgress

# gifindex.apps and gifindex.session (faiss, scipy) are imported inside the commands: `gifindex --help` does
# not pay for them.


@main.command()
@index_option
@click.argument("suspect_ref", metavar="[SUSPECT]", required=False)
@click.option("--owner", default=None, help="the owner's model: an indexed name or a model reference (without it: "
              "SUSPECT is judged against every indexed model with a fingerprint, the models the hub protects)")
@click.option("--all", "scan_all", is_flag=True,
              help="judge every indexed model (instead of one SUSPECT): which models in the index derive from the "
                   "owner (without --owner: from any protected model), strongest evidence first")
@click.option("--z-threshold", type=FiniteFloat(0, min_open=True), default=3.0, show_default=True,
              help="robust z-score at or above which the suspect is judged derived from the owner")
@click.option("--exclude", multiple=True, help="indexed names to leave out of the calibration population "
              "(e.g. other known derivatives of the owner); repeatable")
@click.option("--no-fingerprint", is_flag=True, help="ignore the owner's fingerprint (gifindex fit-probes) and "
              "judge by the signature distance alone")
@click.option("--budget", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=None,
              help="false-positive budget: judge by the suspect's rank among the other indexed models' evidence "
                   "instead of by --z-threshold (derived when at most this share of them score as high). Needs "
                   "at least 1/budget - 1 other models, unrelated ones of the owner's task (--exclude known copies: "
                   "they raise the bar); checks every indexed model once (kept for later runs)")
@load_options
@device_options
@json_option
def suspect(index_path: str, suspect_ref: str | None, owner: str | None, scan_all: bool, z_threshold: float,
            exclude: tuple[str, ...], no_fingerprint: bool, budget: float | None, device: str, batch_size: int,
            as_json: bool, **kwargs: Any) -> None:
    """IP protection: is SUSPECT derived from OWNER? (--all: which indexed models are? No --owner: is SUSPECT,
    or with --all any indexed model, derived from any model the hub protects?)

    The suspect-owner distance is set against the owner's distances to every other indexed model (the
    unrelated population): empirical p-value, robust z-score, and a verdict with the threshold used. With the
    owner's fingerprint (fit-probes) its decisions and outputs decide, against the owner's references; with
    --budget, against the other indexed models, by rank. Without --owner, SUSPECT is judged against each indexed
    model with a fingerprint, the bar raised for having looked at several (Sidak). A SUSPECT weights file given
    without --input-size/--mean/--std is run in the owner's input convention (a file carries none).
    """
    from ..apps import suspect as run_suspect
    from ..session import Session

    if (suspect_ref is None) == (not scan_all):
        raise click.UsageError("name one SUSPECT, or give --all to judge every indexed model (not both)")
    if owner is None and no_fingerprint:
        raise click.UsageError("without --owner models are judged against the protected models' fingerprints: "
                               "--no-fingerprint needs --owner")
    session = Session.at(index_path, load_kwargs_from(kwargs))
    session.check_options_used([suspect_ref, owner])
    if owner is None and scan_all:
        audit_report(session, z_threshold, exclude, check_device(device), batch_size, as_json, budget)
        return
    if owner is None:
        screen_report(session, suspect_ref, z_threshold, exclude, check_device(device), batch_size, as_json, budget)
        return
    if scan_all:
        scan_report(session, owner, z_threshold, exclude, not no_fingerprint, check_device(device), batch_size,
                    as_json, budget)
        return
    result = judging(lambda bar: run_suspect(session.index, session.model(suspect_ref), session.model(owner),
                                             z_threshold=z_threshold, exclude=exclude, device=check_device(device),
                                             batch_size=batch_size, use_fingerprint=not no_fingerprint,
                                             budget=budget, on_model=bar))
    if as_json:
        emit_json(result)
        return
    pop = result["population"]
    click.echo(f"suspect {result['suspect']}  owner {result['owner']}  ({result['method']})")
    click.echo(f"distance      {result['distance']:.4f}")
    if result["signature_z"] is None:
        click.echo(f"population    {pop['n']} other models: no signature null ({result['signature_note']}); the "
                   "fingerprint's own calibration judges")
    else:
        click.echo(f"population    {pop['n']} other models: median {pop['median']:.4f}, robust sigma "
                   f"{pop['mad_sigma']:.4f}, closest {pop['min']:.4f}")
        click.echo(f"z-score       {result['signature_z']:.2f}   empirical p-value {result['p_value']:.4f} (the "
                   f"smallest {pop['n']} models can give is 1/(n+1) = {result['p_value_floor']:.4f})")
    fp = result.get("fingerprint")
    if fp is not None:
        if fp["agreement"] is None:
            click.echo(f"fingerprint   not comparable: {fp['note']}")
        else:
            click.echo(f"fingerprint   agrees with the owner on {fp['agreement']:.1%} of {fp['inputs']} fitted inputs; "
                       f"independent models {fp['null_mean']:.1%} (sigma {fp['null_sigma']:.1%}, {fp['null']}): "
                       f"z {fp['decision_z']:.2f}")
            if fp.get("class_map") is not None:
                click.echo(f"              {fp['note']}")
            if fp.get("output_fit") is not None:
                click.echo(f"outputs       the owner's outputs on {fp['output_probes']} of its own images explain "
                           f"{fp['output_fit']:.1%} of the suspect's within each class (left-out fit); independent "
                           f"models' {fp['output_null_mean']:.1%} (sigma {fp['output_null_sigma']:.1%}): "
                           f"z {fp['output_z']:.2f}")
            if fp.get("gradient_share") is not None:
                click.echo(f"gradients     {fp['gradient_share']:.1%} of its input gradients at the owner's images lie "
                           f"in the span of the owner's; independent models' {fp['gradient_null_mean']:.1%} (sigma "
                           f"{fp['gradient_null_sigma']:.1%}): z {fp['gradient_z']:.2f}")
            if fp.get("output_fit") is None and fp.get("output_z") is not None:
                click.echo(f"outputs       similarity to the owner's on {fp['output_probes']} probe images"
                           f"{_logged_share(fp.get('output_probe_queries'))} "
                           f"{fp['output_similarity']:.3f}, {fp['output_contrast']:+.3f} against independent "
                           f"references'; independent models {fp['output_null_mean']:+.3f} (sigma "
                           f"{fp['output_null_sigma']:.3f}): z {fp['output_z']:.2f}")
            if fp.get("query_z") is not None:
                worth = fp.get("query_effective_count")
                weighed = ("" if worth in (None, fp["queries"]) else
                           f", weighed by how rarely independent models give them: worth {worth:.1f}")
                click.echo(f"query log     repeats {fp['query_agreement']:.1%} of the owner's kept answers to "
                           f"{fp['queries']} logged queries{weighed}; independent models {fp['query_null_mean']:.1%} "
                           f"(sigma {fp['query_null_sigma']:.1%}): z {fp['query_z']:.2f}")
                needed = fp["query_flag_rate"]
                click.echo("              " + (f"repeating {share_up(needed)} of them would flag it on them alone"
                                               if needed <= 1 else "too few of them to flag it on them alone, "
                                               "however many it repeated"))
    elif not no_fingerprint:
        click.echo("fingerprint   none for this owner (gifindex fit-probes adds evidence against distilled copies)")
    rank = result.get("rank")
    if rank is not None:
        click.echo(f"rank          {rank['at_or_above']} of {rank['n']} other indexed models score as high (z "
                   f"{_fmt(result['z'])}): p = {rank['p_value']:.4f}; derived when p <= {rank['budget']:g}, i.e. z "
                   f"above {rank['bar_z']:.2f}")
        click.echo(f"verdict       {result['verdict'].upper()}  (by rank among the indexed models, judged by the "
                   f"{result.get('evidence', 'signature')}; by z >= {z_threshold:g}: {result['z_verdict']})")
        if rank["at_or_above_z_threshold"]:
            click.echo(f"              {copies_note(rank['at_or_above_z_threshold'], z_threshold)}")
    elif fp is not None and result["z"] is None:
        click.echo(f"verdict       {result['verdict'].upper()}  (not judged: not a model of the owner's task)")
    elif fp is not None:
        click.echo(f"verdict       {result['verdict'].upper()}  (judged by the {result['evidence']}: derived when z "
                   f">= {z_threshold:g}; z {result['z']:.2f})")
    else:
        click.echo(f"verdict       {result['verdict'].upper()}  (derived when z >= {z_threshold:g}, i.e. distance "
                   f"<= {result['threshold']['distance']:.4f})")
    if fp is not None:
        for note in (fp.get("task_note"), lead_note(result, z_threshold), unreviewed_note(result, z_threshold)):
            if note:
                click.echo(f"              {note}")
    random_note(result["random_init"])


def judging(run: Any, signed: bool = True) -> dict:
    """``run(on_model)`` under a progress bar over the models judged (``JudgingBar``) and the signing progress; with
    ``signed``, the models signed on the fly are added to the result (``signed``)."""
    bar = JudgingBar()
    try:
        with observing(SigningProgress()) as progress:
            result = run(bar)
    finally:
        bar.close()
    if signed:
        result["signed"] = progress.signed_models
    return result


class JudgingBar:
    """A progress bar over the indexed models being judged (on a terminal), opened by the first report."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, name: str, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="judging", unit="model", file=sys.stderr,
                            disable=not sys.stderr.isatty())
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def scan_report(session: Any, owner: str, z_threshold: float, exclude: tuple[str, ...], use_fingerprint: bool,
                device: str, batch_size: int, as_json: bool, budget: float | None = None) -> None:
    """`suspect --all`: every indexed model judged against the owner, as a table (or JSON)."""
    from ..apps import scan

    result = judging(lambda bar: scan(session.index, session.model(owner), z_threshold=z_threshold, exclude=exclude,
                                      device=device, batch_size=batch_size, use_fingerprint=use_fingerprint,
                                      on_model=bar, budget=budget), signed=False)
    if as_json:
        emit_json(result)
        return
    evidence = "fingerprint (decisions + outputs) where comparable, else signature" if result["fingerprint"] else \
        "signature distance" + ("" if not use_fingerprint else " (no fingerprint for this owner: gifindex fit-probes)")
    rule = (f"derived when z >= {z_threshold:g}" if budget is None else
            f"derived when at most {budget:g} of the other models score as high (rank p-value)")
    click.echo(f"owner {result['owner']}  ({result['method']}); {len(result['models'])} indexed models judged by the "
               f"{evidence}; {rule}")
    rows = []
    logged = _has_query_part(result["models"])
    for r in result["models"]:
        fp = r.get("fingerprint") or {}
        rank = [] if budget is None else [f"{r['rank']['p_value']:.3f}"]
        rows.append([r["suspect"], r["verdict"].upper() if r["verdict"] == "derived" else r["verdict"],
                     _fmt(r["z"]), *rank, r.get("evidence", "signature"), f"{r['distance']:.4f}",
                     _fmt(r["signature_z"]), _fmt(fp.get("decision_z")), _fmt(fp.get("output_z")),
                     *([_fmt(fp.get("query_z"))] if logged else []),
                     r.get("error", OFF_TASK_NOTE if fp.get("off_task") else "")])
    click.echo(table(rows, ["model", "verdict", "z", *([] if budget is None else ["rank p"]), "judged by",
                            "distance", "signature z", "decisions z", "outputs z",
                            *(["query z"] if logged else []), "note"]))
    click.echo(f"derived: {', '.join(result['derived']) if result['derived'] else 'none'}")
    unreviewed_table_note([(r["suspect"], r) for r in result["models"]], z_threshold)
    defaulted = [r["suspect"] for r in result["models"] if (r.get("fingerprint") or {}).get("default_convention")]
    if defaulted:
        click.echo(f"note: not judged and run at their architecture's default input convention, none given for their "
                   f"weights files: {', '.join(defaulted)}; if they take the owner's images as it does, remove them "
                   "and ingest them again with --input-size/--mean/--std")
    by_z = [r["suspect"] for r in result["models"] if r["z"] is not None and r["z"] >= z_threshold]
    if budget is not None and by_z:
        click.echo(f"note: {copies_note(len(by_z), z_threshold)}")
    if result["derived"] and not result["fingerprint"]:
        click.echo("note: by the signature alone, independently trained models of the owner's architecture can sit "
                   "near it and score as derived (docs/results.md 6.2); a fingerprint (gifindex fit-probes) is "
                   "calibrated per architecture")
    random_note([r["suspect"] for r in result["models"] if r["random_init"]])


def screen_report(session: Any, suspect_ref: str, z_threshold: float, exclude: tuple[str, ...], device: str,
                  batch_size: int, as_json: bool, budget: float | None) -> None:
    """`suspect SUSPECT` without --owner: the suspect judged against every protected (fingerprinted) model."""
    from ..apps import screen

    result = judging(lambda bar: screen(session.index, session.model(suspect_ref), z_threshold=z_threshold,
                                        exclude=exclude, device=device, batch_size=batch_size, budget=budget,
                                        on_model=bar))
    if as_json:
        emit_json(result)
        return
    count = result["owners_checked"]
    click.echo(f"suspect {result['suspect']}: judged against {count} protected model{'s' * (count != 1)} (those "
               f"with a fingerprint); {_family_rule(result, z_threshold, budget)}")
    rows = []
    logged = _has_query_part(result["owners"])
    for r in result["owners"]:
        if "error" in r:
            rows.append([r["owner"], "NOT JUDGED", "-", *([] if budget is None else ["-"]), "-", "-", "-",
                         *(["-"] if logged else []), "-", "see below"])
            continue
        fp = r.get("fingerprint") or {}
        rank = [] if budget is None else [f"{r['rank']['p_value']:.4f}"]
        rows.append([r["owner"], r["verdict"].upper() if r["verdict"] == "derived" else r["verdict"], _fmt(r["z"]),
                     *rank, r.get("evidence", "signature"), _fmt(fp.get("decision_z")), _fmt(fp.get("output_z")),
                     *([_fmt(fp.get("query_z"))] if logged else []),
                     f"{r['distance']:.4f}", fp.get("note", "") if fp.get("agreement") is None else
                     (OFF_TASK_NOTE if fp.get("off_task") else "")])
    click.echo(table(rows, ["owner", "verdict", "z", *([] if budget is None else ["rank p"]), "judged by",
                            "decisions z", "outputs z", *(["query z"] if logged else []), "distance", "note"]))
    derived = result["derived_from"]
    click.echo(f"derived from: {', '.join(derived) if derived else 'none of them'}")
    unreviewed_table_note([(f"from {r['owner']}", r) for r in result["owners"] if "error" not in r],
                          result["owner_z_threshold"])
    for r in result["owners"]:
        if "error" in r:
            click.echo(f"not judged against {r['owner']}: {r['error']}")
    random_note(sorted({name for r in result["owners"] for name in r.get("random_init", ())
                        if name in (r["owner"], r["suspect"])}))


def _family_rule(result: dict, z_threshold: float, budget: float | None) -> str:
    """How a verdict against several protected models was reached: the raised bar, or each owner's budget."""
    count = result["owners_checked"]
    looked = "" if count == 1 else f", raised from {z_threshold:g} for looking at {count} (Sidak)"
    if budget is None:
        return f"derived when z >= {result['owner_z_threshold']:.2f}{looked}"
    return (f"derived when at most {result['owner_budget']:.4g} of the other indexed models score as high (rank "
            f"p-value; {budget:g} shared by {count})")


def audit_report(session: Any, z_threshold: float, exclude: tuple[str, ...], device: str, batch_size: int,
                 as_json: bool, budget: float | None) -> None:
    """`suspect --all` without --owner: every indexed model judged against every protected model."""
    from ..apps import audit

    result = judging(lambda bar: audit(session.index, z_threshold=z_threshold, exclude=exclude, device=device,
                                       batch_size=batch_size, budget=budget, on_model=bar), signed=False)
    if as_json:
        emit_json(result)
        return
    count = result["owners_checked"]
    click.echo(f"every indexed model judged against {count} protected model{'s' * (count != 1)} (those with a "
               f"fingerprint); {_family_rule(result, z_threshold, budget)}")
    logged = any(d.get("query_z") is not None for d in result["derived"])
    rows = [[d["model"], d["owner"], f"{d['z']:.2f}", *([] if budget is None else [f"{d['rank']['p_value']:.4f}"]),
             d.get("evidence") or "signature", *([_fmt(d.get("query_z"))] if logged else [])]
            for d in result["derived"]]
    if rows:
        click.echo(table(rows, ["model", "derived from", "z", *([] if budget is None else ["rank p"]), "judged by",
                                *(["query z"] if logged else [])]))
    unreviewed_table_note([(f"{r['suspect']} from {s['owner']}", r) for s in result["scans"] for r in s["models"]],
                          result["owner_z_threshold"])
    for s in result["scans"]:
        if "error" in s:
            click.echo(f"{s['owner']}: not audited: {s['error']}")
        else:
            click.echo(f"{s['owner']}: {len(s['derived'])} of {len(s['models'])} indexed models derived from it")
    click.echo(f"derived pairs: {len(result['derived'])}")


def _has_query_part(verdicts: list[dict]) -> bool:
    """Whether any of a table's verdicts was judged by a fingerprint with a query-log part (its column is shown)."""
    return any((r.get("fingerprint") or {}).get("query_z") is not None for r in verdicts)


def unreviewed_table_note(verdicts: list[tuple[str, dict]], z_threshold: float) -> None:
    """Under a table of verdicts (label, verdict): once, the "derived" ones only an unreviewed query log carried
    (``unreviewed_note``), which the single-suspect output warns of under its verdict."""
    carried = [label for label, r in verdicts if unreviewed_note(r, z_threshold)]
    if carried:
        click.echo(f"note: derived only by an unreviewed query log: {', '.join(carried)}: {UNREVIEWED}; review it "
                   "(`gifindex review-queries`, then `fit-probes --queries`) before relying on these verdicts")


def share_up(share: float) -> str:
    """A share a suspect must reach, as a percentage rounded up to one decimal: rounded to nearest, a suspect just
    below it could print as repeating the share "that would flag it" and still be judged unrelated."""
    return f"{math.ceil(share * 1000 - 1e-9) / 10:.1f}%"


def _logged_share(count: int | None) -> str:
    """The note after a probe count when ``count`` of a fingerprint's probe images are logged queries."""
    return f" ({count} of them logged queries)" if count else ""


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


@main.command("fit-probes")
@index_option
@click.argument("owner")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True),
              help="the owner's own labelled data: an .npz with arrays x (images: (N, H, W) grey, (N, H, W, 3) or "
                   "(N, 3, H, W), float in [0, 1] or uint8) and y (integer labels), or a folder with one sub-folder "
                   "of images per class")
@click.option("--helper-arch", "helper_archs", multiple=True,
              help="architecture of the helper models the owner trains (repeatable; default: 'index', the "
                   "owner's own and the 3 most used by indexed models of its task (its number of outputs), the "
                   "owner's alone where the index has none; 'owner' names the owner's: for a model saved whole, "
                   "fresh copies of its module). Name the architectures common for the owner's task, the owner's "
                   "among them: a thief may use any of them, and suspects of others are judged against references "
                   "of other architectures")
@click.option("--surrogates", type=click.IntRange(1, 64), default=4, show_default=True,
              help="students of the owner to train (its hard labels on augmented owner data)")
@click.option("--references", type=click.IntRange(1, 64), default=4, show_default=True,
              help="independent models to train (true labels), used to choose the inputs")
@click.option("--calibration", type=click.IntRange(1, 32), default=4, show_default=True,
              help="held-out independent models per helper architecture, the verdict's null distribution (with "
                   "varied recipes, the j-th is trained by the j-th of four recipes, cycled)")
@click.option("--calibration-recipes", type=click.Choice(["varied", "owner"]), default="varied", show_default=True,
              help="how the held-out independent models are trained: by four common recipes (SGD or AdamW, "
                   "shorter or longer, label smoothing, shifted batches), as models in the wild are; or all by the "
                   "owner's helper recipe (a narrower null)")
@click.option("--candidates", type=click.IntRange(8, 100_000), default=256, show_default=True,
              help="owner images to perturb into candidate inputs (a suspect costs one forward pass per kept input)")
@click.option("--output-probes", type=click.IntRange(0, 100_000), default=128, show_default=True,
              help="owner images on which the suspect's outputs are compared with the owner's (catches distilled "
                   "copies; one forward pass each per suspect; 0: decisions only)")
@click.option("--output-probes-from", "output_probes_from", type=click.Choice(["queries", "owner"]),
              default="queries", show_default=True,
              help="with --queries, compare outputs on a sample of the logged queries (a student distilled through "
                   "your API learnt your outputs on exactly those; owner images make up a shorter log), or always "
                   "on your own images (owner)")
@click.option("--eps", type=FiniteFloat(0, 0.5, min_open=True), default=0.075, show_default=True,
              help="largest perturbation per pixel (pixel values in [0, 1]); doubled, up to 0.3, while fewer than 32 "
                   "inputs, or than an eighth of the candidates, are kept")
@click.option("--epochs", type=click.IntRange(1, 1000), default=6, show_default=True,
              help="training epochs of each reference model (surrogates, which see 3x the images, get 2/3 of it)")
@click.option("--queries", "queries_path", type=click.Path(exists=True), default=None,
              help="the owner's query log: the inputs its API answered (an .npy/.npz array or a folder of "
                   "images). A student extracted or distilled through the API repeats the owner's idiosyncratic "
                   "answers to them: the evidence against hard-label extraction. An .npz with x and y (true labels "
                   "of the queries you reviewed, -1 elsewhere) keeps only your answers known to be wrong, which "
                   "no honest model learns: without review, answers your references miss may simply be right, and "
                   "models trained on the same images then follow them too (README). No log? A public labelled "
                   "dataset the thief may have drawn its queries from, with its labels as y, serves as one")
@click.option("--max-queries", type=click.IntRange(8, 100_000), default=1024, show_default=True,
              help="idiosyncratic answers kept from the query log at most (one forward pass each per suspect)")
@click.option("--keep-helpers", is_flag=True,
              help="keep the trained helper models in the index (beside the fingerprint): a later fit of the same "
                   "owner, data and helper settings (say with a newly reviewed query log) reuses them instead of "
                   "training them again, nearly all of a fit's time; kept helpers are always reused when they match")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")
@wait_option
@json_option
def fit_probes(index_path: str, owner: str, data_path: str, helper_archs: tuple[str, ...], surrogates: int,
               references: int, calibration: int, calibration_recipes: str, candidates: int, output_probes: int,
               output_probes_from: str, eps: float, epochs: int, queries_path: str | None, max_queries: int,
               keep_helpers: bool, seed: int, device: str, wait: float, as_json: bool) -> None:
    """Fit OWNER's fingerprint from its own data: `suspect` then weighs decisions and outputs (distilled copies).

    Trains surrogates (students of OWNER) and references (independent models) on the owner's data, keeps
    perturbed owner images on which the surrogates follow OWNER's decision and the references do not,
    records OWNER's outputs on probe images of its own (distilled students copy how it ranks the classes it
    did not choose), and measures both on held-out independent models. With --queries (the owner serves
    OWNER through an API and logs the queries), it also keeps OWNER's answers to logged queries known to be
    wrong (reviewed labels; unreviewed: those its references answer otherwise), which a student trained on
    those answers repeats. Stored in the index; `suspect
    SUSPECT --owner OWNER` then uses it. Only the owner's model and data are used: never the suspects.
    """
    from ..apps.fitprobes import fit_probes as run_fit_probes

    index = open_index(index_path)
    result = run_fit_probes(index, owner, data_path, helper_archs=helper_archs, surrogates=surrogates,
                            references=references, calibration=calibration,
                            calibration_recipes=calibration_recipes, candidates=candidates,
                            output_probes=output_probes, output_probes_from=output_probes_from, eps=eps,
                            queries=queries_path,
                            max_queries=max_queries, keep_helpers=keep_helpers, epochs=epochs, seed=seed,
                            device=check_device(device), wait=wait,
                            progress=lambda msg: click.echo(msg, err=True))
    if as_json:
        emit_json(result)
        return
    click.echo(f"fingerprint of {result['owner']}: {result['inputs']} inputs of {result['candidates']} candidates "
               f"at eps {result['eps']:g} ({result['seconds']:.0f} s)")
    click.echo(f"surrogates agree with the owner on {result['surrogate_agreement']:.1%} of them; held-out independent "
               f"models on {result['null_mean']:.1%}")
    if result["output_null_mean"] is not None:
        click.echo(f"outputs on {result['output_probes']} probe images{_logged_share(result['output_probe_queries'])}: "
                   f"held-out independent models' contrast {result['output_null_mean']:+.3f}")
    clean = result.get("reference_clean_agreement")
    if clean:
        click.echo(f"calibration references give the owner's answer on {min(clean):.0%}-{max(clean):.0%} of its probe "
                   "images")
        if sum(clean) / len(clean) < WEAK_REFERENCES:
            click.echo("warning: the calibration references hardly do the owner's task (too few --epochs for it?); "
                       "nulls fitted on such models can accuse models that do not do it either (docs/results.md "
                       "6.2v): train them longer")
    if result.get("gradient_images"):
        click.echo(f"input gradients at {result['gradient_images']} of the owner's images, its and the held-out "
                   "models' (a copy under a new head keeps the owner's span)")
    if result["logged_queries"]:
        if result["query_null_mean"] is None:
            click.echo(f"query log: none of {result['logged_queries']} logged queries kept ({_dropped_log(result)}): "
                       "fitted without it")
        else:
            kind = (f"of the {result['reviewed_queries']} reviewed were answered wrongly" if
                    result["reviewed_queries"] else "carry the owner's idiosyncratic answers")
            click.echo(f"query log: {result['queries']} of {result['logged_queries']} logged queries {kind}; "
                       f"held-out independent models give {result['query_null_mean']:.1%} of those answers")
            click.echo(_query_power(result["query_flag_rates"]))
            if not result["reviewed_queries"]:
                click.echo(f"the log is not reviewed: {UNREVIEWED}; review its least sure queries (`gifindex "
                           "review-queries`) before relying on a verdict they carry")
    else:
        click.echo("no query log: a student trained on your hard labels is seen only through your wrong answers to "
                   "the thief's queries; give --queries your API's log, or a public labelled dataset the thief may "
                   "have drawn from, its labels as y (see the README)")
    replaced = f" (replacing the one written {result['replaced']})" if result.get("replaced") else ""
    click.echo(f"stored in {result['path']}{replaced}; `gifindex suspect SUSPECT --owner {result['owner']}` uses it")
    from ..apps.ranking import smallest_population

    others, needed = result["indexed_others"], smallest_population(0.05)
    click.echo(f"with {others} other indexed models, `--budget 0.05` can rank a suspect among them instead of judging "
               "it by the references alone (docs/results.md 6.2u)" if others >= needed else
               f"`suspect --budget 0.05` (a suspect ranked among the indexed models) needs {needed} other indexed "
               f"models of your task; the index holds {others}")
    if result["helpers_reused"]:
        click.echo(f"reused the {result['helpers']} helper models kept in {result['helpers_path']}")
    elif result["helpers_path"]:
        click.echo(f"kept the {result['helpers']} helper models in {result['helpers_path']} "
                   f"({result['helpers_bytes'] / 2 ** 20:.1f} MiB): a refit of the same owner, data and helper "
                   "settings (another query log, more probes) reuses them")


OFF_TASK_NOTE = "not of the owner's task: not judged"  # a table's note on a model below the fingerprint's task gate
WEAK_REFERENCES = 0.5  # references' mean share of the owner's answers below which fit-probes warns


def _dropped_log(result: dict) -> str:
    """Why fit-probes kept none of a query log (``result``: what it returned): too few wrong answers among the
    reviewed queries, or (unreviewed) too few answers the references do not share."""
    from ..fingerprint.fit import MIN_QUERIES

    reviewed, found = result["reviewed_queries"], result["recipe"].get("query_answers_found")
    if reviewed:
        wrong = "" if found is None else f"only {found} wrong answer{'s' * (found != 1)} among "
        return f"{wrong}the {reviewed} reviewed, fewer than {MIN_QUERIES}"
    found = "" if found is None else f"only {found}; "
    return f"{found}fewer than {MIN_QUERIES} answers differ from the references'"


def _query_power(rates: dict[str, float]) -> str:
    """What the query part alone can flag: the share of the kept answers a suspect must repeat, by architecture
    (Fingerprint.query_flag_rates, rounded up: ``share_up``), and which architectures it cannot flag at all."""
    low, high = min(rates.values()), max(rates.values())
    span = share_up(low) if share_up(low) == share_up(high) else f"{share_up(low)}-{share_up(high)} by architecture"
    beyond = [arch for arch, rate in rates.items() if rate > 1]
    if not beyond:
        return f"a suspect that repeats at least {span} of those answers is flagged on them alone"
    return (f"too few answers for the log alone to flag a suspect of {', '.join(beyond)} even if it repeats every "
            f"one (it would need {span}): review more of the log (`gifindex review-queries`)")


@main.command("review-queries")
@index_option
@click.argument("owner")
@click.option("--queries", "queries_path", required=True, type=click.Path(exists=True),
              help="the owner's query log: the inputs its API answered (an .npy/.npz array or a folder of images)")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="the .npz to write: x (the queries to review), y (-1: fill in their true labels), index (their "
                   "positions in the log), answer and confidence (the owner's)")
@click.option("--share", type=FiniteFloat(0, 1, min_open=True), default=0.25, show_default=True,
              help="the part of the log to review: the queries the owner answered least surely")
@click.option("--max-review", type=click.IntRange(1), default=None,
              help="review at most this many queries (the least sure first): a budget for a large log")
@click.option("--overwrite", is_flag=True, help="replace --out if it exists (it may hold your labels)")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")
@json_option
def review_queries(index_path: str, owner: str, queries_path: str, out_path: str, share: float,
                   max_review: int | None, overwrite: bool, device: str, as_json: bool) -> None:
    """Write the part of OWNER's query log worth reviewing: the queries it answered least surely.

    fit-probes --queries keeps OWNER's answers known to be wrong, which needs the true labels of the queries;
    a model's wrong answers lie mostly among those it was least sure of (on the evaluation zoos the least sure
    quarter held every wrong answer of an accurate owner and 59-79 % of a noisy one's, docs/results.md 6.2k).
    Fill in y in the written file (-1 where unsure) and pass it to `gifindex fit-probes OWNER --queries OUT`.
    """
    from ..apps.fitprobes import review_queries as run_review_queries

    index = open_index(index_path)
    result = run_review_queries(index, owner, queries_path, out_path, share=share, max_review=max_review,
                                overwrite=overwrite, device=check_device(device))
    if as_json:
        emit_json(result)
        return
    click.echo(f"wrote {result['to_review']} of {result['logged_queries']} logged queries to {result['path']}: those "
               f"{result['owner']} answered least surely (top probability <= {result['max_confidence']:.3f})")
    click.echo(f"set y to their true labels (-1 where unsure), then `gifindex fit-probes -i {index_path} "
               f"{result['owner']} --data DATA --queries {result['path']}`")


@main.command()
@index_option
@click.argument("original")
@click.argument("candidate")
@click.option("--forget", required=True, type=click.Path(exists=True),
              help="the data to be forgotten: an .npy/.npz array of images or a folder of images")
@click.option("--control", default=None, help="a model that never saw the forget data (e.g. retrained "
              "without it), to calibrate the verdict")
@method_option(None, help="signature method (default: the index's, else modelgif)")
@config_options
@load_options
@device_options
@json_option
@click.pass_context
def unlearning(ctx: click.Context, index_path: str, original: str, candidate: str, forget: str,
               control: str | None, method: str | None, device: str, batch_size: int, as_json: bool,
               **kwargs: Any) -> None:
    """Unlearning verification: distances on probes drawn from the forget data.

    With an index ORIGINAL/CANDIDATE may be indexed names (loaded with their stored options); its configuration
    is used unless configuration options are given; the probes always come from --forget (up to K of its images).
    """
    from ..apps import unlearning as run_unlearning
    from ..session import Session

    session = Session.choose(index_path, config_from(kwargs), config_given=config_given(ctx),
                             explicit=index_path != DEFAULT_INDEX, load=load_kwargs_from(kwargs))
    session.check_options_used([original, candidate, control])
    config = session.config.replace(method=method) if method else session.config
    with observing(SigningProgress()) as progress:
        result = run_unlearning(session.entry(original), session.entry(candidate), forget, config,
                                control=session.entry(control) if control else None, device=check_device(device),
                                batch_size=batch_size, index=session.index)
    result["signed"] = progress.signed_models
    if as_json:
        emit_json(result)
        return
    rows = [["original - candidate", result["original_candidate"]]]
    if control:
        rows += [["original - control", result["original_control"]],
                 ["candidate - control", result["candidate_control"]], ["ratio", result["ratio"]]]
    click.echo(f"{result['method']} distances on {result['num_probes']} probes from {forget}")
    click.echo(table(rows, ["pair", "distance"]))
    click.echo(f"verdict: {result['verdict']}: {result['meaning']}")
    random_note(result["random_init"])


@main.command()
@index_option
@click.option("--truth", required=True, type=click.Path(exists=True, dir_okay=False),
              help="ground-truth affinity JSON: {'names': [...], 'matrix': [[...]]} (matrix[i][j]: transfer "
                   "from source i to target j, higher is better) or gifindex/data/taskonomy_affinity.json")
@json_option
def relatedness(index_path: str, truth: str, as_json: bool) -> None:
    """Task relatedness: Spearman between the index's distances and a ground-truth affinity, per column,
    without and with the diagonal (the authors' protocol includes it, which inflates the score)."""
    from ..apps import relatedness as run_relatedness

    result = run_relatedness(open_index(index_path), truth)
    if as_json:
        emit_json(result)
        return
    click.echo(f"{result['tasks']} tasks matched ({result['method']}); distances vs affinities, mean over "
               "target columns (negative = agreement)")
    click.echo(f"Spearman without diagonal  {_signed(result['spearman_without_diagonal'])}   (agreement "
               f"{_plain(result['agreement_without_diagonal'])})")
    click.echo(f"Spearman with diagonal     {_signed(result['spearman_with_diagonal'])}   (agreement "
               f"{_plain(result['agreement_with_diagonal'])}; the authors' protocol)")
    for note in result.get("notes", []):
        click.echo(f"note: {note}")
    if result["missing"]:
        click.echo(f"not in the index: {', '.join(result['missing'])}")
    random_note(result["random_init"])


def _signed(value: float | None) -> str:
    return "undefined" if value is None else f"{value:+.4f}"


def _plain(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


LEAD_Z = 1.0  # below the verdict's threshold, a fingerprint z from here up is worth a look (docs/results.md 6.2e-f)


def lead_note(result: dict, z_threshold: float) -> str | None:
    """For an 'unrelated' verdict judged by the fingerprint with z in [LEAD_Z, z_threshold): what that z does and
    does not say. Hard-label students sit there on the evaluation zoos, and so do independent models trained by
    other recipes and students of other models; None otherwise."""
    if result.get("evidence") != "fingerprint" or result.get("verdict") != "unrelated":
        return None
    z = result.get("z")
    if z is None or not LEAD_Z <= z < z_threshold:
        return None
    return (f"z {z:.2f} is a lead, not evidence: hard-label students of yours score here, but so do independent "
            "models trained by other recipes and students of other models (docs/results.md 6.2e-6.2f)")


UNREVIEWED = ("where your model is more accurate than the references it trains, many of those answers are right, "
              "and models trained on the same images give them too")


def unreviewed_note(result: dict, z_threshold: float) -> str | None:
    """For a 'derived' verdict that only an unreviewed query log carried (the owner-data z alone is below the
    threshold): why to review the log before relying on it (docs/results.md 6.2i: such a log flagged 25-75 % of
    the independent models trained on the thief's images on mnist32); None otherwise."""
    fp = result.get("fingerprint") or {}
    if result.get("evidence") != "fingerprint" or result.get("verdict") != "derived" or fp.get("queries_reviewed") \
            is not False or fp.get("query_z") is None:
        return None
    if fp.get("owner_data_z") is not None and fp["owner_data_z"] >= z_threshold:
        return None
    return (f"carried by an unreviewed query log: {UNREVIEWED}; review it (`gifindex review-queries`, then "
            "`fit-probes --queries`) before relying on this verdict")


def copies_note(count: int, z_threshold: float) -> str:
    """Under a rank verdict: models in the ranking that z already judges derived (likely copies) raise the bar."""
    return (f"{count} of the ranked models score z >= {z_threshold:g} (likely copies of the owner): they raise the "
            "bar for every suspect; --exclude the ones you know to be copies (docs/results.md 6.2u)")


def random_note(names: list[str]) -> None:
    """Say so when models with random (untrained) weights took part: their numbers mean nothing learned."""
    if names:
        click.echo(f"WARNING: random (untrained) weights: {', '.join(names)}; these results say nothing about "
                   "trained models")
