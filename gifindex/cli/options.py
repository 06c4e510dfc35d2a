"""Shared pieces of the command line: error handling, option groups, index location, output."""
from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import click
from click.core import ParameterSource

from ..config import BASELINES, MODES, OUTPUTS, PROBE_KINDS, SignatureConfig
from ..errors import GifindexError
from ..manifest import MAX_INPUT_SIZE
from ..methods.registry import method_names
from ..quadrature import RULES
from ..text import json_text


TRIPLE_OPTIONS = ("--mean", "--std")


def join_triples(args: list[str]) -> list[str]:
    """``--mean 0.5 0.5 0.5`` (timm's scripts' spelling) as ``--mean '0.5 0.5 0.5'``: three numbers after
    --mean/--std become one value; the quoted and comma forms pass through unchanged."""
    out, i = [], 0
    while i < len(args):
        out.append(args[i])
        if args[i] in TRIPLE_OPTIONS and len(args) >= i + 4 and all(is_number(a) for a in args[i + 1:i + 4]):
            out.append(" ".join(args[i + 1:i + 4]))
            i += 4
            continue
        if args[i] in TRIPLE_OPTIONS and len(args) >= i + 3 and all(is_number(a) for a in args[i + 1:i + 3]) \
                and (len(args) == i + 3 or not is_number(args[i + 3])):
            raise click.UsageError(f"{args[i]} takes one number (every channel) or three (one per channel), not two: "
                                   f"{' '.join(args[i + 1:i + 3])}")
        i += 1
    return out


def is_number(text: str) -> bool:
    """Whether ``text`` reads as a number (a --mean/--std value on the command line)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


class GifindexGroup(click.Group):
    """A click group that turns every error into one line on stderr and exit code 1."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, join_triples(args))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except GifindexError as exc:
            if os.environ.get("GIFINDEX_DEBUG"):   # where the refusal came from, for a bug report
                raise
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted")
        except BrokenPipeError:   # the reader went away (`| head`): nothing more to say, and nothing to say it to
            _stdout_gone()
        except OSError as exc:  # a path the user gave that cannot be read or written: say which and why
            if os.environ.get("GIFINDEX_DEBUG") or not exc.filename:
                _unexpected(exc)
            _fail(f"cannot use {exc.filename}: {exc.strerror or type(exc).__name__}")
        except Exception as exc:  # noqa: BLE001 - the promise is: never a traceback
            _unexpected(exc)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside: SIGTERM (``kill``, a job scheduler's stop) ends the work as Ctrl-C does, so an ingest commits what it
    signed and stops its workers instead of dying at once; the previous handler is restored after (a program that
    runs the command line in-process keeps its own). Only in the main thread, where Python delivers signals."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stdout_gone() -> None:
    """Leave quietly after a broken pipe: point stdout at /dev/null so that the interpreter's final flush does not
    fail again, and exit 1 (Python's advice for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    sys.exit(1)


def _unexpected(exc: Exception) -> None:
    if os.environ.get("GIFINDEX_DEBUG"):
        raise exc
    _fail(f"{type(exc).__name__}: {' '.join(str(exc).split())} (set GIFINDEX_DEBUG=1 for the traceback)")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _floats(text: str | None, name: str) -> tuple[float, float, float] | None:
    """Three numbers, one per channel, or one for all three (a grey model's single mean or std); finite, and a
    std above zero (gifindex.models.spec.convention_problem, the check manifests share)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"expected three numbers (or one), got {text!r}", param_hint=f"'{name}'") from None
    if len(values) not in (1, 3):
        raise click.BadParameter(f"expected three numbers (or one), got {text!r}", param_hint=f"'{name}'")
    from ..models.spec import convention_problem

    problem = convention_problem(name.lstrip("-"), values)
    if problem:
        raise click.BadParameter(problem, param_hint=f"'{name}'")
    return values * 3 if len(values) == 1 else values  # type: ignore[return-value]


def _check_floats(ctx: click.Context, param: click.Parameter,
                  value: str | None) -> tuple[float, float, float] | None:
    """--mean/--std parsed while the command line is (a bad one is a usage error, exit 2): three numbers."""
    return _floats(value, f"--{param.name}")


# The keyword names config_options gives its options (SignatureConfig fields); config_from reads them back.
CONFIG_OPTION_NAMES = ("resolution", "probe_source", "num_probes", "probe_kind", "pgd_anchor", "steps", "rule",
                       "mode", "output", "baseline", "proj_dim", "seed")


def config_options(func):
    """Options that define a signature configuration (shared by init and one-off commands)."""
    defaults = SignatureConfig.field_defaults()
    options = [
        click.option("--resolution", type=int, default=defaults["resolution"], show_default=True,
                     help="side R of the shared input space (3 x R x R)"),
        click.option("--probes", "probe_source", default=defaults["probe_source"], show_default=True,
                     help="probe source: builtin, a folder of images, or an .npz/.npy file"),
        click.option("--num-probes", "-K", type=int, default=defaults["num_probes"], show_default=True,
                     help="number of reference points K"),
        click.option("--probe-kind", type=click.Choice(PROBE_KINDS), default=None,
                     help="default: the method's (random; cutmix for sac)"),
        click.option("--pgd-anchor", default=None, help="model reference that PGD probes attack"),
        click.option("--steps", "-T", type=int, default=defaults["steps"], show_default=True,
                     help="curve points per reference point T"),
        click.option("--rule", type=click.Choice(RULES), default=defaults["rule"], show_default=True),
        click.option("--mode", type=click.Choice(MODES), default=defaults["mode"], show_default=True),
        click.option("--output", type=click.Choice(OUTPUTS), default=defaults["output"], show_default=True,
                     help="scalar the gradient is taken of"),
        click.option("--baseline", type=click.Choice(BASELINES), default=defaults["baseline"], show_default=True),
        click.option("--proj-dim", type=int, default=defaults["proj_dim"], show_default=True),
        click.option("--seed", type=int, default=defaults["seed"], show_default=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def config_from(kwargs: dict[str, Any], **fields: Any) -> SignatureConfig:
    """Pop the configuration options out of a command's kwargs and build the config (with ``fields``)."""
    return SignatureConfig(**{name: kwargs.pop(name) for name in CONFIG_OPTION_NAMES}, **fields)


class MethodChoice(click.Choice):
    """``--method``: one of the registered signature methods (gifindex.methods.registry), looked up when
    the option is parsed or shown, so that importing the command line does not load the methods."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return method_names()

    @choices.setter
    def choices(self, _value: Any) -> None:  # click.Choice.__init__ assigns; the registry is the source
        pass


def method_option(default: str | None, help: str):
    """``--method NAME`` with the registry's choices."""
    return click.option("--method", type=MethodChoice(), default=default, show_default=default is not None,
                        help=help)


def load_options(func):
    """Options that say how to load a model reference."""
    options = [
        click.option("--arch", default=None, help="architecture of a state-dict file, e.g. timm:resnet18, or your own "
                     "class: python:FILE.py:Class (or python:package.module:Class; runs that code: needs --trust)"),
        click.option("--num-classes", type=click.IntRange(min=0), default=None,
                     help="classifier size for --arch (0: a backbone without its classifier)"),
        click.option("--input-size", type=click.IntRange(min=1, max=MAX_INPUT_SIZE), default=None,
                     help=f"override the model's native input size (pixels, at most {MAX_INPUT_SIZE})"),
        click.option("--mean", default=None, callback=_check_floats,
                     help="override normalisation mean: --mean 0.5 0.5 0.5 (or "
                     "'0.5 0.5 0.5', 0.5,0.5,0.5; one number: every channel, as for a grey model)"),
        click.option("--std", default=None, callback=_check_floats, help="override normalisation std (above "
                     "zero), same forms as --mean"),
        click.option("--trust", is_flag=True, help="allow files whose loading runs code (pickled modules, "
                                                   "TorchScript); only for files you trust"),
        click.option("--random-init", is_flag=True, help="build untrained weights when none are given"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def load_kwargs_from(kwargs: dict[str, Any]) -> dict[str, Any]:
    return dict(arch=kwargs.pop("arch"), num_classes=kwargs.pop("num_classes"),
                input_size=kwargs.pop("input_size"), mean=kwargs.pop("mean"),
                std=kwargs.pop("std"), trust=kwargs.pop("trust"),
                random_init=kwargs.pop("random_init"))


class FiniteFloat(click.FloatRange):
    """A float option (optionally in a range) that refuses NaN and infinities, which Python's float() accepts and
    a range check lets through (NaN compares false with every bound): a usage error, exit 2."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class BatchSize(click.ParamType):
    """A positive integer or ``auto``."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or str(value).lower() == "auto":
            return value if isinstance(value, int) else "auto"
        try:
            number = int(value)
        except ValueError:
            self.fail(f"expected a positive integer or 'auto', got {value!r}", param, ctx)
        if number < 1:
            self.fail(f"expected a positive integer or 'auto', got {value!r}", param, ctx)
        return number


def device_options(func):
    func = click.option("--batch-size", type=BatchSize(), default="32", show_default=True,
                        help="path points per forward/backward pass (bounds memory), or 'auto' for the "
                             "most that fit in free memory")(func)
    func = click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")(func)
    return func


def check_device(device: str) -> str:
    """A device torch knows and this machine has (cpu, cuda, cuda:N), else a one-line error before any work."""
    from ..device import check_device as check
    return check(device, "--device")


def wait_option(func):
    """``--wait SECONDS`` for every command that writes the index."""
    return click.option("--wait", type=click.FloatRange(min=0), default=0.0, show_default=True,
                        help="seconds to wait if another process is writing the index")(func)



DEFAULT_INDEX = "gifindex-index"


def index_option(func):
    """``-i/--index DIR``: default $GIFINDEX_INDEX, else ./gifindex-index."""
    return click.option("-i", "--index", "index_path", envvar="GIFINDEX_INDEX", default=DEFAULT_INDEX,
                        show_default=True, type=click.Path(file_okay=False),
                        help="index directory (env GIFINDEX_INDEX)")(func)


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="print one JSON document on stdout")(func)


def open_index(path: str):
    from ..index import Index  # lazy: faiss, not needed to parse or print help

    return Index.open(path)


def emit_json(data: Any) -> None:
    """Print ``data`` as one strict, indented JSON document (NaN and infinities as null: a tag such as
    ``score: .nan`` must not make the output unreadable to JSON.parse or jq), at any nesting depth."""
    click.echo(json_text(data, indent=2))


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def config_given(ctx: click.Context) -> bool:
    """Whether any signature-configuration option was given explicitly on the command line."""
    return any(ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE for n in CONFIG_OPTION_NAMES)
