"""Progress rendering on stderr: tqdm bars for ingests (``ingest``, ``demo``) and for models signed on the fly."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click
from tqdm import tqdm

from ..observe import describe

if TYPE_CHECKING:  # gifindex.ingest imports torch; `gifindex --help` does not need it
    from ..ingest import SignResult
    from ..manifest import ModelEntry


class ProgressReporter:
    """Progress bars for an ingest: one over models, one within the current model's curve points."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.models = None
        self.inner = None

    def start(self, total: int) -> None:
        if self.enabled:
            self.models = tqdm(total=total, desc="models", unit="model", position=0, file=sys.stderr)

    def model_start(self, entry: "ModelEntry", points: int) -> None:
        if self.enabled:
            self.inner = tqdm(total=points, desc=entry.display_name()[:30], unit="pt", position=1, leave=False,
                              file=sys.stderr)

    def points(self, count: int) -> None:
        if self.inner is not None:
            self.inner.update(count)

    def model_done(self, result: "SignResult") -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None
        line = result_line(result)
        if self.models is not None:
            self.models.write(line, file=sys.stderr)
            self.models.update(1)
        else:
            click.echo(line, err=True)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
        if self.models is not None:
            self.models.close()


def result_line(result: "SignResult") -> str:
    """One line per model: added, skipped (same weights already indexed) or failed with the reason."""
    if result.status == "added":
        return f"added    {result.name}  ({result.seconds:.1f} s)"
    if result.status == "skipped":
        held = f" as {result.same_as!r}" if result.same_as and result.same_as != result.name else ""
        why = ("its random weights were drawn once" if result.metadata.get("random_init") else
               "same weights, architecture and input convention")
        return f"skipped  {result.name}  (already indexed{held}: {why})"
    name = result.name if len(result.name) <= 120 else f"{result.name[:100]}... ({len(result.name)} characters)"
    return f"failed   {name}: {result.error}"


class SigningProgress:
    """For commands that sign models on the fly (nearest, distance, suspect, unlearning): a tqdm bar on
    stderr per model, and one line saying how it was loaded (architecture, input size, mean, std and where
    each came from); the lines are kept in ``signed`` for --json. Install with gifindex.observe.observing."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar = None
        self.signed_models: list[dict] = []

    def start(self, label: str, total: int):
        self.bar = tqdm(total=total, desc=f"signing {label}"[:40], unit="img", leave=False, file=sys.stderr,
                        disable=self.quiet)
        return self.bar.update

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def signed(self, info: dict) -> None:
        self.signed_models.append(info)
        if not self.quiet:
            click.echo(describe(info), err=True)
