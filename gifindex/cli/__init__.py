"""The ``gifindex`` command line (click). Errors are one line on stderr with exit code 1."""
from __future__ import annotations

import click

from .options import GifindexGroup


@click.group(cls=GifindexGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gifindex")
def main() -> None:
    """gifindex: how functionally alike are trained neural networks? (ModelGiF curves)

    Start with `gifindex demo`; for your own models: `init`, `ingest`, `nearest`, `tree`.
    """


from . import apps, build, demo, query  # noqa: E402,F401  (registers the commands)

__all__ = ["main"]
