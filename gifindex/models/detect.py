"""Which architecture does a bare state dict belong to?

Candidates from torchvision's classification models and timm's registry are instantiated on the meta
device (no memory, no init cost) with an unusual class count (``PROBE_CLASSES``); the keys whose shape
carries that count are the classifier, everything else must match the state dict exactly (names and
shapes), and the class count is read from the state dict's classifier. Per-architecture fingerprints
are cached as JSON under ``$GIFINDEX_CACHE_DIR`` (default ``~/.cache/gifindex``), one file per library
version. timm has 1300+ architectures, so candidates are grouped (timm: by defining module;
torchvision: by name prefix) and a group is searched only when the key patterns (digits blanked) of
its smallest model resemble the state dict's; common families go first, and the search stops at the
first exact match.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from gifindex.errors import ArchitectureError
from gifindex.models.files import fitting, peeled
from gifindex.models.sources import get_source

PROBE_CLASSES = 977
JACCARD_MIN = 0.3
MAX_ALSO = 3  # other exact fits named beside a detection
REPRESENTATIVES = 12  # per group: its first model of each name stem, at most this many
# Common families (timm modules, torchvision name prefixes), tried before the rest.
PRIORITY_GROUPS = ("resnet", "mobilenet", "mobilenetv3", "efficientnet", "vision_transformer", "vit",
                   "convnext", "regnet", "densenet", "resnetv2", "deit", "swin_transformer", "vgg",
                   "mobilenetv4", "ghostnet", "inception_v3", "beit", "eva", "mlp_mixer")

Fingerprint = dict[str, Any]  # {"keys": {key: shape}, "cls": [classifier keys]}
CACHE_FORMAT = 2  # 2: torchvision builders taking a pretrained backbone built without it (failures of 1 retried)
# Auxiliary heads a state dict may lack (torchvision drops them after loading its pretrained weights, so a model
# fine-tuned from those has none): the architecture is then built with aux_logits=False.
AUX_HEADS = {"torchvision:googlenet": ("aux1.", "aux2."), "torchvision:inception_v3": ("AuxLogits.",)}
GREY_CHANNELS = 1  # the input channel count, besides RGB's 3, that the shared space feeds (the images' luma)


def cache_dir() -> Path:
    """Where gifindex keeps its caches: ``$GIFINDEX_CACHE_DIR`` or ``~/.cache/gifindex``."""
    env = os.environ.get("GIFINDEX_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gifindex"


@contextmanager
def _params_to_meta() -> Iterator[None]:
    """Build on CPU but move every parameter to meta as it is registered (for models whose
    constructor computes with tensors and so cannot run under ``torch.device('meta')``)."""
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(self, name, param)
        p = self._parameters.get(name)
        if p is not None and p.device.type != "meta":
            self._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def constructor(lib: str, name: str) -> Callable[..., nn.Module]:
    """The builder of ``lib:name`` taking ``num_classes``; raises KeyError for unknown names."""
    return get_source(lib).constructor(name)


def build_on_meta(lib: str, name: str, num_classes: int | None = PROBE_CLASSES) -> nn.Module:
    """Instantiate ``lib:name`` without allocating or initialising weights."""
    build = constructor(lib, name)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return build(**kwargs)
        except (NotImplementedError, RuntimeError):
            with _params_to_meta():
                return build(**kwargs)


def fingerprint_of(model: nn.Module) -> Fingerprint:
    """Keys and shapes of ``model``'s state dict; keys carrying ``PROBE_CLASSES`` are the classifier."""
    keys = {k: list(v.shape) for k, v in model.state_dict().items() if not _ignored(k)}
    cls = [k for k, s in keys.items() if PROBE_CLASSES in s]
    return {"keys": keys, "cls": cls}


def _ignored(key: str) -> bool:
    return key.endswith("num_batches_tracked")


@dataclass
class Fit:
    """How a state dict compares with one candidate architecture."""

    arch: str
    num_classes: int | None = None
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: file [..] vs model [..]"
    also: list[str] = field(default_factory=list)  # other architectures the state dict fits exactly
    in_chans: int | None = None  # the input channels of a first layer that takes other than the architecture's 3
    input_layer: str | None = None  # that layer's weight (its fingerprint key), with ``in_chans``
    aux_logits: bool | None = None  # False: the state dict lacks the architecture's auxiliary heads (AUX_HEADS)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def distance(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def describe(self, n: int = 3) -> str:
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("shape mismatch", self.mismatched)):
            if items:
                more = f" (+{len(items) - n} more)" if len(items) > n else ""
                parts.append(f"{label}: {', '.join(items[:n])}{more}")
        return "; ".join(parts)


def compare(arch: str, fp: Fingerprint, sd: dict[str, torch.Tensor],
            num_classes: int | None = None) -> Fit:
    """Compare ``sd`` with a fingerprint; infer the class count from the classifier's shapes (0: a backbone saved
    without its classifier, every classifier tensor absent and nothing else)."""
    keys: dict[str, list[int]] = fp["keys"]
    have = {k for k in sd if not _ignored(k)}
    aux = {k for k in keys if k.startswith(AUX_HEADS.get(arch, ()))} if arch in AUX_HEADS else set()
    no_aux = bool(aux) and not aux & have  # every auxiliary head absent: built with aux_logits=False
    if no_aux:
        keys = {k: s for k, s in keys.items() if k not in aux}
        fp = {"keys": keys, "cls": [k for k in fp["cls"] if k not in aux]}
    fit = Fit(arch, missing=sorted(set(keys) - have, key=list(keys).index),
              unexpected=sorted(have - set(keys)), aux_logits=False if no_aux else None)
    first = next((k for k, s in keys.items() if len(s) == 4), None)  # the input layer's weight (a convolution)
    headless = bool(fp["cls"]) and set(fit.missing) == set(fp["cls"]) and not fit.unexpected
    if headless and num_classes:
        fit.mismatched.append(f"classifier: the file has none (a backbone saved without it), --num-classes says "
                              f"{num_classes}")
    elif headless:  # a backbone saved without its classifier (num_classes=0, or its fc set to Identity)
        fit.missing = []
    counts = set()
    for k in keys:
        if k not in sd:
            continue
        got, want = list(sd[k].shape), keys[k]
        if k in fp["cls"] and len(got) == len(want):
            dims = [i for i, w in enumerate(want) if w == PROBE_CLASSES]
            counts.update(got[i] for i in dims)
            want = [got[i] if i in dims else w for i, w in enumerate(want)]
        if got != want and k == first and len(got) == 4 and got[0] == want[0] and got[2:] == want[2:] \
                and want[1] == 3:  # the input layer alone takes another channel count
            if got[1] == GREY_CHANNELS:
                fit.in_chans, fit.input_layer = got[1], k
                continue
            fit.mismatched.append(f"{k}: file {got} vs model {want} (an input layer taking {got[1]} channels: "
                                  "gifindex signs RGB (3) or grey (1) models)")
        elif got != want:
            fit.mismatched.append(f"{k}: file {got} vs model {want}")
    if len(counts) > 1:
        fit.mismatched.append(f"classifier: inconsistent class counts {sorted(counts)}")
    fit.num_classes = counts.pop() if len(counts) == 1 else 0 if headless and not num_classes else None
    if num_classes is not None and fit.num_classes is not None and num_classes != fit.num_classes:
        fit.mismatched.insert(0, f"classifier: file has {fit.num_classes} classes, "
                                 f"--num-classes says {num_classes}")
    return fit


class FingerprintCache:
    """Per-library JSON cache of fingerprints (``None`` for architectures that cannot be built)."""

    def __init__(self, lib: str):
        version = get_source(lib).version()
        self.path = cache_dir() / f"fingerprints-{lib}-{version}.json"
        self.lib, self.dirty = lib, False
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.archs: dict[str, Fingerprint | None] = data.get("archs", {})
        self.representatives: dict[str, list[list[str]]] = data.get("representatives", {})
        if data and data.get("format") != CACHE_FORMAT:  # an older gifindex's: its failures may build now
            self.archs = {name: fp for name, fp in self.archs.items() if fp is not None}
            self.representatives, self.dirty = {}, True

    def get(self, name: str) -> Fingerprint | None:
        if name not in self.archs:
            try:
                self.archs[name] = fingerprint_of(build_on_meta(self.lib, name))
            except Exception:  # a registry entry that does not build is simply not a candidate
                self.archs[name] = None
            self.dirty = True
        return self.archs[name]

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"format": CACHE_FORMAT, "archs": self.archs, "representatives": self.representatives}, f,
                      separators=(",", ":"))
        os.replace(tmp, self.path)
        self.dirty = False


def patterns(keys: Any) -> set[str]:
    """Key names with numeric components blanked: ``layer1.0.conv1.weight`` -> ``layer#.#.conv#.weight``."""
    return {re.sub(r"\d+", "#", k) for k in keys if not _ignored(k)}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(1, len(a | b))


@dataclass
class Detection:
    """The result of :func:`detect_architecture`."""

    arch: str  # e.g. "torchvision:resnet18", "timm:resnet18"
    num_classes: int | None
    seconds: float
    candidates_checked: int
    also: list[str] = field(default_factory=list)  # architectures of the same family or name that fit exactly too
    in_chans: int | None = None  # the input channels of a first layer that takes other than the architecture's 3
    aux_logits: bool | None = None  # False: the architecture's auxiliary heads are absent from the state dict


def _torchvision_groups() -> dict[str, list[str]]:
    """torchvision's classification models grouped by family (``resnet``, ``mobilenet``, ``vit``...)."""
    import torchvision.models as tvm
    groups: dict[str, list[str]] = {}
    for name in tvm.list_models(module=tvm):
        groups.setdefault(name.split("_")[0].rstrip("0123456789"), []).append(name)
    return {g: sorted(ns, key=lambda n: (len(n), n)) for g, ns in groups.items()}


def _timm_groups() -> dict[str, list[str]]:
    """timm's architectures grouped by the module defining them."""
    import timm
    from timm.models import _registry
    groups: dict[str, list[str]] = {}
    for name in timm.list_models():
        groups.setdefault(_registry._model_to_module.get(name, "?"), []).append(name)
    return {g: sorted(ns, key=lambda n: (len(n), n)) for g, ns in groups.items()}


def _scan(lib: str, names: list[str], sd: dict[str, torch.Tensor], cache: FingerprintCache,
          best: list[Fit], counter: list[int]) -> Fit | None:
    """Return the first exact fit among ``names``; keep the closest misses in ``best``."""
    want = patterns(sd)
    for name in names:
        fp = cache.get(name)
        counter[0] += 1
        if fp is None or _jaccard(want, patterns(fp["keys"])) < 0.5:
            continue
        fit = compare(f"{lib}:{name}", fp, sd)
        if fit.exact:
            return fit
        best.append(fit)
    return None


def detect_architecture(sd: dict[str, torch.Tensor],
                        libraries: tuple[str, ...] = ("torchvision", "timm")) -> Detection:
    """Find the torchvision or timm architecture whose parameters match ``sd`` exactly: as saved, else with a
    training wrapper's common prefix peeled (:func:`peeled`)."""
    try:
        return _detect(sd, libraries)
    except ArchitectureError as as_saved:
        for variant in peeled(sd)[1:]:
            try:
                return _detect(variant, libraries)
            except ArchitectureError:
                pass
        raise as_saved


def _detect(sd: dict[str, torch.Tensor], libraries: tuple[str, ...]) -> Detection:
    start, best, counter = time.perf_counter(), [], [0]
    for lib in libraries:
        cache = FingerprintCache(lib)
        groups = _torchvision_groups() if lib == "torchvision" else _timm_groups()
        try:
            fit = _scan_groups(lib, groups, sd, cache, best, counter)
        finally:
            cache.save()
        if fit is not None:
            also = _same_name_fits(lib, fit, sd, libraries) + fit.also
            return Detection(fit.arch, fit.num_classes, time.perf_counter() - start, counter[0], also, fit.in_chans,
                             fit.aux_logits)
    best.sort(key=lambda f: f.distance)
    best = list({f.arch: f for f in reversed(best)}.values())[::-1]  # each architecture once, nearest first
    hint = ""
    if best:
        close = best[0]
        others = ", ".join(f.arch for f in best[1:3])
        hint = (f"; closest: {close.arch} ({close.describe()})"
                + (f"; also near: {others}" if others else ""))
    raise ArchitectureError(
        f"the state dict matches no torchvision or timm architecture ({len(sd)} tensors){hint}; "
        "pass --arch timm:NAME --num-classes C (or --arch torchvision:NAME); a network of your own class: --arch "
        "python:FILE.py:Class --trust (or save it whole with torch.jit.script and load that file with --trust)")


def _scan_groups(lib: str, groups: dict[str, list[str]], sd: dict[str, torch.Tensor],
                 cache: FingerprintCache, best: list[Fit], counter: list[int]) -> Fit | None:
    """The first exact fit (:func:`_first_fit`), with the models of its family that fit exactly too (``also``)."""
    fit = _first_fit(lib, groups, sd, cache, best, counter)
    if fit is not None:
        fit.also = _also_fits(lib, groups, fit, sd, cache)
    return fit


def _also_fits(lib: str, groups: dict[str, list[str]], fit: Fit, sd: dict[str, torch.Tensor],
               cache: FingerprintCache) -> list[str]:
    """Other architectures of ``fit``'s group and size (the same last name part: ``tf_efficientnet_b0`` beside
    ``efficientnet_b0``) that ``sd`` fits exactly: a state dict cannot tell them apart, and they may compute
    another function (padding, activations), so the user should hear of them."""
    name = fit.arch.partition(":")[2]
    size = name.rsplit("_", 1)[-1]
    family = next((ns for ns in groups.values() if name in ns), [])
    out = []
    for other in family:
        if other != name and other.rsplit("_", 1)[-1] == size and len(out) < MAX_ALSO:
            fp = cache.get(other)
            if fp is not None and compare(f"{lib}:{other}", fp, sd).exact:
                out.append(f"{lib}:{other}")
    return out


def _same_name_fits(lib: str, fit: Fit, sd: dict[str, torch.Tensor], libraries: tuple[str, ...]) -> list[str]:
    """The architectures of the other libraries with ``fit``'s name that ``sd`` fits exactly too (timm's
    ``resnet18`` has torchvision's names and shapes, but resizes its input otherwise): one fingerprint each."""
    name = fit.arch.partition(":")[2]
    out = []
    for other in libraries:
        if other == lib:
            continue
        try:
            constructor(other, name)
        except KeyError:
            continue
        cache = FingerprintCache(other)
        try:
            fp = cache.get(name)
        finally:
            cache.save()
        if fp is not None and compare(f"{other}:{name}", fp, sd).exact:
            out.append(f"{other}:{name}")
    return out


def _first_fit(lib: str, groups: dict[str, list[str]], sd: dict[str, torch.Tensor],
               cache: FingerprintCache, best: list[Fit], counter: list[int]) -> Fit | None:
    """Cached fingerprints first, then groups whose representative's key patterns resemble ``sd``
    (common families first, the rest by similarity); stop at the first exact fit."""
    want = patterns(sd)
    known = [n for ns in groups.values() for n in ns if cache.archs.get(n)]
    known.sort(key=lambda n: -_jaccard(want, patterns(cache.archs[n]["keys"])))  # type: ignore[index]
    fit = _scan(lib, known[:50], sd, cache, best, counter)
    if fit is not None:
        return fit
    order = [g for g in PRIORITY_GROUPS if g in groups]
    scored: list[tuple[float, str]] = []
    for group in order + sorted(g for g in groups if g not in order):
        score = _group_similarity(group, groups[group], want, cache)
        if group not in order:
            scored.append((score, group))
        elif score >= JACCARD_MIN:
            fit = _scan(lib, groups[group], sd, cache, best, counter)
            if fit is not None:
                return fit
    for score, group in sorted(scored, reverse=True):
        if score < JACCARD_MIN:
            break
        fit = _scan(lib, groups[group], sd, cache, best, counter)
        if fit is not None:
            return fit
    return None


def _stem(name: str) -> tuple[str, str]:
    """What a name says of its layers' naming: its leading letters and the letters ending its last part
    (``regnetx_002`` -> (regnetx, ''), ``davit_base_fl`` -> (davit, fl), ``xception65p`` -> (xception, p),
    ``convnext_atto`` -> (convnext, ''))."""
    lead = re.match(r"[A-Za-z]*", name).group(0)  # type: ignore[union-attr]
    last = name.rsplit("_", 1)[-1]
    tail = re.search(r"[A-Za-z]*$", last).group(0)  # type: ignore[union-attr]
    return lead, tail if tail != last or len(tail) <= 3 else ""  # a size word (base, tiny, atto) is not a variant


def _group_similarity(group: str, names: list[str], want: set[str], cache: FingerprintCache) -> float:
    """The best Jaccard similarity between ``sd``'s key patterns and those of the group's representatives: its
    smallest-named model of each name stem (:func:`_stem`: ``regnetx``, ``regnety``... of timm's ``regnet`` module;
    at most ``REPRESENTATIVES``), since one module can define families whose layers are named differently."""
    if group not in cache.representatives:
        stems: dict[tuple[str, str], str] = {}
        for name in names:
            stems.setdefault(_stem(name), name)
        found = [cache.get(name) for name in list(stems.values())[:REPRESENTATIVES]]
        cache.representatives[group] = [sorted(patterns(fp["keys"])) for fp in found if fp is not None]
        cache.dirty = True
    return max((_jaccard(want, set(p)) for p in cache.representatives[group]), default=0.0)


def fit_architecture(lib: str, name: str, sd: dict[str, torch.Tensor],
                     num_classes: int | None = None) -> int | None:
    """Check that ``sd`` fits ``lib:name`` exactly; return the class count read from the classifier."""
    fit = fit_details(lib, name, sd, num_classes)
    return fit.num_classes if fit.num_classes is not None else num_classes


def fit_details(lib: str, name: str, sd: dict[str, torch.Tensor], num_classes: int | None = None) -> Fit:
    """Check that ``sd`` fits ``lib:name`` exactly (its input layer may take one channel, ``Fit.in_chans``; its
    auxiliary heads may be absent, ``Fit.aux_logits``); the :class:`Fit`, with the class count read from the
    classifier. An architecture that cannot be built, or a state dict that does not fit, is an ArchitectureError."""
    cache = FingerprintCache(lib) if lib in ("timm", "torchvision") else None
    try:
        fp = cache.get(name) if cache else fingerprint_of(build_on_meta(lib, name))
    finally:
        if cache:
            cache.save()
    if fp is None:
        try:  # the cache records only that it failed: build it again for the reason
            build_on_meta(lib, name)
            why = f"it failed to build before; delete {cache.path if cache else 'the fingerprint cache'} to retry"
        except Exception as e:  # noqa: BLE001 - whatever the builder raises is the reason
            why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
        raise ArchitectureError(f"cannot build {lib}:{name} to check the state dict against it ({why})")
    fit = compare(f"{lib}:{name}", fp, fitting(sd, fp["keys"]), num_classes)
    if not fit.exact:
        raise ArchitectureError(f"the state dict does not fit {lib}:{name}: {fit.describe()}")
    return fit
