"""Watching models being signed on the fly (queries, exact distances, applications; not ingests).

Library code that signs a model outside an ingest wraps the work in ``signing(label, total)`` (which gives
a progress callback, or None) and then reports how the model was loaded with ``signed(info)``. A front end
(the CLI) installs an :class:`Observer` with ``observing(observer)`` to draw progress bars and print those
notes; without one both calls do nothing. The observer lives in a context variable, not in the APIs.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .models.spec import LoadedModel

ProgressFn = Callable[[int], None]


class Observer(Protocol):
    def start(self, label: str, total: int) -> ProgressFn: ...   # a model starts: returns its progress callback

    def finish(self) -> None: ...                                # it is done (or failed)

    def signed(self, info: dict[str, Any]) -> None: ...          # how it was loaded (see loaded_info)


_current: ContextVar["Observer | None"] = ContextVar("gifindex_observer", default=None)


@contextmanager
def observing(observer: Observer) -> Iterator[Observer]:
    """Send the signing events of the code run inside to ``observer``."""
    token = _current.set(observer)
    try:
        yield observer
    finally:
        _current.reset(token)


@contextmanager
def signing(label: str, total: int) -> Iterator[ProgressFn | None]:
    """Around signing one model: the observer's progress callback for ``total`` images, or None."""
    observer = _current.get()
    if observer is None:
        yield None
        return
    callback = observer.start(label, total)
    try:
        yield callback
    finally:
        observer.finish()


def signed(info: dict[str, Any]) -> None:
    """Report how a model signed on the fly was loaded (a no-op without an observer)."""
    observer = _current.get()
    if observer is not None:
        observer.signed(info)


def loaded_info(loaded: "LoadedModel", *, arch_from: str, convention_from: str,
                reused_from: str | None = None) -> dict[str, Any]:
    """What ``signed`` reports: the reference, architecture, input size, mean and std used, and where
    each came from (``given``, ``detected``, ``reference``/``model``, or an indexed model's stored options)."""
    return {"ref": loaded.ref, "arch": loaded.arch, "arch_from": arch_from, "input_size": list(loaded.spec.size),
            "mean": list(loaded.spec.mean), "std": list(loaded.spec.std), "channels": loaded.spec.channels,
            "interpolation": loaded.spec.interpolation, "convention_from": convention_from,
            "reused_from": reused_from, "random_init": bool(loaded.meta.get("random_init")),
            "also_fits": also_fits(loaded.meta)}


def also_fits(meta: dict[str, Any]) -> list[str]:
    """The other architectures a state dict's weights fit exactly (``detected.also_fits``): the detected one is a
    guess among them (timm's and torchvision's resnet18 share every tensor name but resize differently)."""
    detected = meta.get("detected")
    return list(detected.get("also_fits") or []) if isinstance(detected, dict) else []


ARCH_DEFAULT = "architecture default"  # convention_from of a weights file given none: its architecture's default


def convention_words(size: Any, mean: Any, std: Any, channels: int | None = None) -> str:
    """An input convention for a person: ``16 px, mean 0.5 0.5 0.5, std 0.5 0.5 0.5`` (``16 px grey`` for one
    channel; ``?`` for what is not known)."""
    def numbers(values: Any) -> str:
        return " ".join(f"{v:g}" for v in values) if values else "?"

    size = list(size or [])
    side = f"{size[0]} px" if len(size) == 2 and size[0] == size[1] else "x".join(map(str, size)) or "?"
    side += " grey" if channels == 1 else ""
    return f"{side}, mean {numbers(mean)}, std {numbers(std)}"


def describe(info: dict[str, Any]) -> str:
    """One line for a person: ``signed REF: arch A (detected), input 16 px, mean ..., std ... (given)``."""
    random = "; RANDOM (untrained) weights" if info.get("random_init") else ""
    convention = convention_words(info.get("input_size"), info.get("mean"), info.get("std"), info.get("channels"))
    origin = info.get("convention_from")
    if origin == ARCH_DEFAULT:
        origin = ("its architecture's default: a weights file carries none; give --input-size/--mean/--std if it "
                  "takes images otherwise")
    resize = f", {info['interpolation']} resize" if info.get("interpolation") else ""   # timm/torchvision differ
    # an architecture that other ones fit too is warned of once, by the loader; ``also_fits`` goes to --json
    return (f"signed {info.get('ref')}: arch {info.get('arch')} ({info.get('arch_from')}), input {convention} "
            f"({origin}){resize}{random}")


def entry_origins(entry: Any, meta: dict[str, Any] | None = None) -> tuple[str, str]:
    """(arch_from, convention_from) for a model loaded from a ``ModelEntry``: ``given`` when the user gave them,
    else ``detected`` (a state-dict file's architecture) / ``reference``, and ``model`` (its own convention), or
    for a weights file given none (``convention_unknown``) its architecture's default (ARCH_DEFAULT), unless the
    loader read the file's own (``meta["convention_from"] == "model"``: a pickled timm module's pretrained_cfg)."""
    from .errors import GifindexError
    from .refs import parse_ref

    try:
        kind = parse_ref(entry.ref).kind
    except GifindexError:
        kind = "file"
    arch_from = "given" if entry.arch else "detected" if kind == "file" else "reference"
    fields = {"input size": entry.input_size, "mean": entry.mean, "std": entry.std}
    given = [name for name, value in fields.items() if value]
    own = (meta or {}).get("convention_from") == "model"
    from_file = (kind == "file" or bool(entry.weights)) and not own and not entry.random_init
    if len(given) == len(fields):
        return arch_from, "given"
    if given:   # the rest is not given: say where it came from (ImageNet's mean/std for a weights file)
        rest = [name for name in fields if name not in given]
        source = "its architecture's default: a weights file carries none" if from_file else "the model's own"
        return arch_from, f"{', '.join(given)} given; {', '.join(rest)}: {source}"
    return arch_from, ARCH_DEFAULT if entry.convention_unknown() and not own else "model"


def entry_features(entry: Any, probes: Any, config: Any, *, device: str = "cpu",
                   batch_size: int | str | None = 32, reused_from: str | None = None,
                   convention_note: str | None = None, origin: str | None = None) -> tuple[Any, "LoadedModel"]:
    """(features, loaded model): load a ``ModelEntry`` and compute its exact features under ``config``
    (gifindex.methods.features), observed: a progress callback while signing, then a ``signed`` note of how it
    was loaded. ``reused_from``: the indexed model whose stored options ``entry`` carries (its file's twin);
    ``convention_note``: where its input convention came from, when a caller supplied it (``Index.query_options``);
    ``origin``: where all its loading options came from (an indexed name's stored options), said for both."""
    from .errors import SignatureError
    from .methods import features, passes
    from .models import load_model

    loaded = load_model(entry.ref, device=device, **entry.load_kwargs())
    with signing(entry.display_name(), passes(config)) as progress:
        try:
            feats = features(loaded, probes, config, batch_size=batch_size, device=device, progress=progress)
        except SignatureError as exc:              # the reason alone would not say which of two models it is
            raise SignatureError(f"cannot sign {entry.display_name()}: {exc}") from None
    arch_from, convention_from = entry_origins(entry, loaded.meta)
    if origin is not None or reused_from is not None:
        arch_from = convention_from = origin or f"indexed model {reused_from!r} (same weights file)"
    signed(loaded_info(loaded, arch_from=arch_from, convention_from=convention_note or convention_from,
                       reused_from=reused_from))
    return feats, loaded
