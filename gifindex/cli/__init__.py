"""The ``gifindex`` command line (click). Errors are one line on stderr with exit code 1.

Library modules log what happens on their own (``logging.getLogger(__name__)``: a stale search index
rebuilt, a batch halved after running out of memory, an architecture detected...); the command line
shows their warnings on stderr, and with ``-v`` their info messages too.
"""
from __future__ import annotations

import logging

import click

from .options import GifindexGroup


class _StderrHandler(logging.Handler):
    """``warning: ...`` / ``info: ...`` lines on stderr (through click, so tests capture them)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{record.levelname.lower()}: {record.getMessage()}", err=True)


def configure_logging(verbose: bool) -> None:
    """Send the package's log records to stderr: warnings, or with ``verbose`` info too."""
    logger = logging.getLogger("gifindex")
    logger.handlers[:] = [_StderrHandler()]
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


@click.group(cls=GifindexGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gifindex")
@click.option("-v", "--verbose", is_flag=True, help="also say what happens (info messages on stderr)")
def main(verbose: bool) -> None:
    """gifindex: how functionally alike are trained neural networks? (ModelGiF curves)

    Start with `gifindex demo`; for your own models: `init`, `ingest`, `nearest`, `tree`.
    """
    configure_logging(verbose)


from . import apps, build, demo, query  # noqa: E402,F401  (registers the commands)

__all__ = ["main"]
