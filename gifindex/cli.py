"""The ``gifindex`` command line (click). Errors are one line on stderr with exit code 1."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from .config import BASELINES, MODES, OUTPUTS, PROBE_KINDS, SignatureConfig
from .errors import GifindexError
from .quadrature import RULES


class GifindexGroup(click.Group):
    """A click group that turns every error into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except GifindexError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted")
        except Exception as exc:  # noqa: BLE001 - the promise is: never a traceback
            if os.environ.get("GIFINDEX_DEBUG"):
                raise
            _fail(f"{type(exc).__name__}: {' '.join(str(exc).split())} "
                  "(set GIFINDEX_DEBUG=1 for the traceback)")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _floats(text: str | None, name: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"expected three numbers, got {text!r}", param_hint=name) from None
    if len(values) != 3:
        raise click.BadParameter(f"expected three numbers, got {text!r}", param_hint=name)
    return values  # type: ignore[return-value]


def config_options(func):
    """Options that define a signature configuration (shared by init and one-off commands)."""
    defaults = SignatureConfig()
    options = [
        click.option("--resolution", type=int, default=defaults.resolution, show_default=True,
                     help="side R of the shared input space (3 x R x R)"),
        click.option("--probes", "probe_source", default=defaults.probe_source, show_default=True,
                     help="probe source: builtin, a folder of images, or an .npz/.npy file"),
        click.option("--num-probes", "-K", type=int, default=defaults.num_probes, show_default=True,
                     help="number of reference points K"),
        click.option("--probe-kind", type=click.Choice(PROBE_KINDS), default=defaults.probe_kind,
                     show_default=True),
        click.option("--pgd-anchor", default=None, help="model reference that PGD probes attack"),
        click.option("--steps", "-T", type=int, default=defaults.steps, show_default=True,
                     help="curve points per reference point T"),
        click.option("--rule", type=click.Choice(RULES), default=defaults.rule, show_default=True),
        click.option("--mode", type=click.Choice(MODES), default=defaults.mode, show_default=True),
        click.option("--output", type=click.Choice(OUTPUTS), default=defaults.output, show_default=True,
                     help="scalar the gradient is taken of"),
        click.option("--baseline", type=click.Choice(BASELINES), default=defaults.baseline, show_default=True),
        click.option("--proj-dim", type=int, default=defaults.proj_dim, show_default=True),
        click.option("--seed", type=int, default=defaults.seed, show_default=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def config_from(kwargs: dict[str, Any]) -> SignatureConfig:
    """Pop the configuration options out of a command's kwargs and build the config."""
    names = ("resolution", "probe_source", "num_probes", "probe_kind", "pgd_anchor", "steps", "rule", "mode",
             "output", "baseline", "proj_dim", "seed")
    return SignatureConfig(**{name: kwargs.pop(name) for name in names})


def load_options(func):
    """Options that say how to load a model reference."""
    options = [
        click.option("--arch", default=None, help="architecture of a state-dict file, e.g. timm:resnet18"),
        click.option("--num-classes", type=int, default=None, help="classifier size for --arch"),
        click.option("--input-size", type=int, default=None, help="override the model's native input size"),
        click.option("--mean", default=None, help="override normalisation mean, e.g. '0.5 0.5 0.5'"),
        click.option("--std", default=None, help="override normalisation std"),
        click.option("--trust", is_flag=True, help="allow files whose loading runs code (pickled modules, "
                                                   "TorchScript); only for files you trust"),
        click.option("--random-init", is_flag=True, help="build untrained weights when none are given"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def load_kwargs_from(kwargs: dict[str, Any]) -> dict[str, Any]:
    return dict(arch=kwargs.pop("arch"), num_classes=kwargs.pop("num_classes"),
                input_size=kwargs.pop("input_size"), mean=_floats(kwargs.pop("mean"), "--mean"),
                std=_floats(kwargs.pop("std"), "--std"), trust=kwargs.pop("trust"),
                random_init=kwargs.pop("random_init"))


def device_options(func):
    func = click.option("--batch-size", type=int, default=32, show_default=True,
                        help="path points per forward/backward pass (bounds memory)")(func)
    func = click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")(func)
    return func


def check_device(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GifindexError(f"--device {device} asked for, but CUDA is not available here; use --device cpu")
    return device


@click.group(cls=GifindexGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gifindex")
def main() -> None:
    """gifindex: how functionally alike are trained neural networks? (ModelGiF curves)"""


@main.command()
@click.argument("model_a")
@click.argument("model_b")
@config_options
@load_options
@device_options
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def distance(model_a: str, model_b: str, as_json: bool, device: str, batch_size: int, **kwargs: Any) -> None:
    """ModelGiF distance between two models (0 = same function, up to 2).

    Signs both with the given configuration and prints the exact (uncompressed) distance.
    """
    from .curves import compute_curves
    from .distance import curve_distance
    from .models import load_model
    from .probes import make_probes

    config = config_from(kwargs)
    load_kwargs = load_kwargs_from(kwargs)
    device = check_device(device)
    probes = make_probes(config, device=device)
    curves, timings = [], []
    for ref in (model_a, model_b):
        loaded = load_model(ref, device=device, **load_kwargs)
        start = time.perf_counter()
        curves.append(compute_curves(loaded, probes, config, batch_size=batch_size, device=device))
        timings.append(time.perf_counter() - start)
    value = curve_distance(curves[0], curves[1])
    if as_json:
        click.echo(json.dumps({"a": model_a, "b": model_b, "distance": value, "config": config.to_dict(),
                               "config_hash": config.hash(), "seconds": timings}))
    else:
        click.echo(f"{value:.6f}")
