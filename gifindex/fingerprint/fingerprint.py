"""A fingerprint: inputs in the shared space, the owner's decision on each, the owner's outputs on probe
images of its own (``outputs``), optionally the owner's idiosyncratic answers to queries it logged
(``queries``), and how independent calibration references (never used to choose the inputs) score on each,
which calibrates the verdict."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..adapter import SharedSpaceAdapter
from ..errors import GifindexError
from ..models.spec import LoadedModel
from .gradients import sketched_jacobian, span_share
from .outputs import model_logits, profile_contrast, profile_similarity, within_class_fit
from .queries import effective_count

MIN_SIGMA = 0.01  # agreement rates closer than this are not told apart, however many inputs
MIN_OUTPUT_SIGMA = 0.02  # output contrasts (differences of mean cosines) closer than this are not told apart
TASK_GATE_SHARE = 0.5  # Fingerprint.task_gate: how far from a constant answer toward the references a suspect must be


@dataclass
class Fingerprint:
    """inputs (N, 3, R, R) float32 in [0, 1]; labels (N,) the owner's decisions; num_classes the owner's
    output size; calibration: agreement of each held-out reference (by architecture); recipe: how it was made;
    probe_inputs (M, 3, R, R) images of the owner's, probe_logits (M, C) the owner's logits on them,
    reference_logits (K, M, C) the calibration references' (in the order of ``calibration``), and
    output_calibration each reference's output contrast against the others (``outputs``); absent in
    fingerprints written before outputs were part of them. query_inputs (Q, 3, R, R) logged queries on which
    the owner answered as its references did not, query_labels (Q,) its answers, query_weights (Q,) how much
    each counts (None: alike; fingerprints fitted before weights), query_calibration each calibration reference's
    weighted agreement on them (``queries``; only when the owner supplied a query log). reference_decisions
    (K, N): each calibration reference's decision on ``inputs`` (in the order of ``calibration``), so that a
    suspect of another label set can be judged through how it relabels the owner's classes (``class_map``);
    absent in fingerprints written before. map_inputs (M, 3, R, R) owner images and map_labels (M,) the owner's
    decisions on them: where a suspect's class map is read when the probe images are logged queries (on which the
    owner errs more, so a rare class's majority can flip); None when the probe images are the owner's own images.
    map_logits (M, C) the owner's logits on map_inputs and map_reference_logits (K, M, C) the calibration
    references': where a suspect of another label set has its outputs fitted (``outputs.within_class_fit``) in
    that case (a copy under a new head may have been trained on the very images a thief queried); absent in
    fingerprints written before. gradient_inputs (G, 3, R, R) owner images, gradient_bases (G, d, k) orthonormal
    bases of the owner's sketched input-gradient rows there and reference_gradient_bases (K, G, d, k) the
    calibration references' (``gradients``): where a suspect of another label set is asked whether its gradients
    lie in the owner's span; absent in fingerprints written before."""

    owner: str
    owner_sha256: str | None
    inputs: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    calibration: dict[str, list[float]]
    recipe: dict[str, Any] = field(default_factory=dict)
    probe_inputs: torch.Tensor | None = None
    probe_logits: torch.Tensor | None = None
    reference_logits: torch.Tensor | None = None
    output_calibration: dict[str, list[float]] = field(default_factory=dict)
    query_inputs: torch.Tensor | None = None
    query_labels: torch.Tensor | None = None
    query_calibration: dict[str, list[float]] = field(default_factory=dict)
    query_weights: torch.Tensor | None = None
    reference_decisions: torch.Tensor | None = None
    map_inputs: torch.Tensor | None = None
    map_labels: torch.Tensor | None = None
    map_logits: torch.Tensor | None = None
    map_reference_logits: torch.Tensor | None = None
    gradient_inputs: torch.Tensor | None = None
    gradient_bases: torch.Tensor | None = None
    reference_gradient_bases: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.inputs.ndim != 4 or self.inputs.shape[0] != self.labels.shape[0]:
            raise GifindexError(f"fingerprint of {self.owner!r}: {tuple(self.inputs.shape)} inputs for "
                                f"{tuple(self.labels.shape)} labels")
        if len(self.labels) == 0:
            raise GifindexError(f"fingerprint of {self.owner!r} holds no inputs")
        if (self.probe_inputs is None) != (self.probe_logits is None):
            raise GifindexError(f"fingerprint of {self.owner!r}: probe images without the owner's outputs on them")
        if self.probe_inputs is not None and (
                self.probe_inputs.ndim != 4 or self.probe_logits.shape != (len(self.probe_inputs), self.num_classes)
                or len(self.probe_inputs) == 0):
            raise GifindexError(f"fingerprint of {self.owner!r}: {tuple(self.probe_inputs.shape)} probe images for "
                                f"owner outputs {tuple(self.probe_logits.shape)} ({self.num_classes} classes)")
        if self.reference_logits is not None and (
                self.probe_logits is None or self.reference_logits.ndim != 3
                or self.reference_logits.shape[1:] != self.probe_logits.shape):
            raise GifindexError(f"fingerprint of {self.owner!r}: reference outputs "
                                f"{tuple(self.reference_logits.shape)} do not match the probe images")
        if (self.query_inputs is None) != (self.query_labels is None) or self.query_inputs is not None and (
                self.query_inputs.ndim != 4 or self.query_labels.shape != (len(self.query_inputs),)
                or len(self.query_inputs) == 0):
            raise GifindexError(f"fingerprint of {self.owner!r}: logged queries do not match the owner's answers")
        if self.query_weights is not None and (
                self.query_labels is None or self.query_weights.shape != self.query_labels.shape
                or not bool(torch.isfinite(self.query_weights).all()) or not bool((self.query_weights > 0).all())):
            raise GifindexError(f"fingerprint of {self.owner!r}: query weights do not match the logged queries")
        if self.reference_decisions is not None and (
                self.reference_decisions.shape != (len(self.null_rates), len(self.labels))
                or self.reference_decisions.dtype != torch.int64 or len(self.reference_decisions) == 0
                or int(self.reference_decisions.min()) < 0
                or int(self.reference_decisions.max()) >= self.num_classes):
            raise GifindexError(f"fingerprint of {self.owner!r}: reference decisions "
                                f"{tuple(self.reference_decisions.shape)} do not match {len(self.null_rates)} "
                                f"calibration references on {len(self.labels)} inputs")

        if (self.map_inputs is None) != (self.map_labels is None) or self.map_inputs is not None and (
                self.map_inputs.ndim != 4 or self.map_labels.shape != (len(self.map_inputs),)
                or len(self.map_inputs) == 0 or self.map_labels.dtype != torch.int64
                or int(self.map_labels.min()) < 0 or int(self.map_labels.max()) >= self.num_classes):
            raise GifindexError(f"fingerprint of {self.owner!r}: class-map images do not match the owner's decisions")
        if self.map_logits is not None and (
                self.map_inputs is None or self.map_logits.shape != (len(self.map_inputs), self.num_classes)):
            raise GifindexError(f"fingerprint of {self.owner!r}: the owner's outputs on the class-map images do not "
                                "match them")
        if self.map_reference_logits is not None and (
                self.map_logits is None or self.map_reference_logits.ndim != 3
                or self.map_reference_logits.shape[1:] != self.map_logits.shape):
            raise GifindexError(f"fingerprint of {self.owner!r}: reference outputs on the class-map images do not "
                                "match them")
        if self.gradient_bases is not None and (
                self.gradient_inputs is None or self.gradient_inputs.ndim != 4 or self.gradient_bases.ndim != 3
                or self.gradient_bases.shape[0] != len(self.gradient_inputs)):
            raise GifindexError(f"fingerprint of {self.owner!r}: gradient bases do not match their images")
        if self.reference_gradient_bases is not None and (
                self.gradient_bases is None
                or self.reference_gradient_bases.shape != (len(self.null_rates), *self.gradient_bases.shape)):
            raise GifindexError(f"fingerprint of {self.owner!r}: reference gradient bases do not match "
                                f"{len(self.null_rates)} calibration references")

    @property
    def size(self) -> int:
        return int(len(self.labels))

    @property
    def null_rates(self) -> list[float]:
        return [r for rates in self.calibration.values() for r in rates]

    @property
    def output_probes(self) -> int:
        return 0 if self.probe_inputs is None else len(self.probe_inputs)

    @property
    def output_probe_queries(self) -> int:
        """How many of the probe images are logged queries (FitConfig.output_probe_source; 0 in fingerprints fitted
        before, or without a log)."""
        count = self.recipe.get("output_probe_queries", 0) if isinstance(self.recipe, dict) else 0
        return int(count) if isinstance(count, int) else 0

    @property
    def queries(self) -> int:
        return 0 if self.query_labels is None else len(self.query_labels)

    @property
    def query_effective_count(self) -> float:
        """How many equally weighted answers the weighted queries are worth (their binomial noise; Kish)."""
        return effective_count(self.query_weights, self.queries)

    @property
    def has_queries(self) -> bool:
        return self.queries > 0 and bool(self.query_calibration)

    @property
    def has_outputs(self) -> bool:
        return self.reference_logits is not None and bool(self.output_calibration)

    @property
    def reference_clean_agreement(self) -> list[float] | None:
        """Each calibration reference's share of the probe images on which it gives the owner's answer (None
        without probe images or the references' outputs): how competent at the owner's task the models its nulls
        were fitted on are."""
        if self.probe_logits is None or self.reference_logits is None:
            return None
        owner = self.probe_logits.argmax(1)
        return [float((ref.argmax(1) == owner).float().mean()) for ref in self.reference_logits]

    @property
    def task_gate(self) -> float | None:
        """The clean agreement below which a suspect is not judged a model of the owner's task: halfway from what a
        constant answer gets (the largest share of one class among the owner's answers on the probe images) to the
        calibration references' mean (docs/results.md 6.2v). None without probe images or the references' outputs."""
        references = self.reference_clean_agreement
        if not references:
            return None
        answers = self.probe_logits.argmax(1)
        chance = float(torch.bincount(answers, minlength=self.num_classes).max()) / len(answers)
        return chance + TASK_GATE_SHARE * (sum(references) / len(references) - chance)

    @property
    def varied_calibration(self) -> bool:
        """Whether the calibration references were trained by varied recipes (FitConfig.varied_calibration);
        fingerprints fitted before that option trained them all by the owner's recipe."""
        config = self.recipe.get("config") if isinstance(self.recipe, dict) else None
        return isinstance(config, dict) and config.get("varied_calibration") is True

    def null(self, arch: str | None = None) -> tuple[float, float, str]:
        """(mean, sigma, which) of the agreement of independent models: the mean of the suspect's architecture's
        own calibration references when there are at least two, else of all of them. sigma: see ``_null``;
        at least the binomial standard deviation of a rate over this many inputs, and MIN_SIGMA."""
        return self._rate_null(self.calibration, self.size, arch)

    def _rate_null(self, calibration: dict[str, list[float]], count: float,
                   arch: str | None) -> tuple[float, float, str]:
        """``_null`` of agreement rates over ``count`` inputs, sigma floored by their binomial spread and MIN_SIGMA."""
        mean, spread, which = _null(calibration, arch, self.varied_calibration)
        binomial = math.sqrt(max(mean * (1 - mean), 1.0 / count) / count)
        return mean, max(spread, binomial, MIN_SIGMA), which

    def output_null(self, arch: str | None = None) -> tuple[float, float, str]:
        """(mean, sigma, which) of independent models' output contrast, chosen as in ``null``; sigma at
        least MIN_OUTPUT_SIGMA."""
        if not self.output_calibration:
            raise GifindexError(f"fingerprint of {self.owner!r} has no output calibration (fitted before outputs "
                                "were part of fingerprints: run `gifindex fit-probes` again)")
        return self._score_null(self.output_calibration, arch)

    def _score_null(self, calibration: dict[str, list[float]], arch: str | None) -> tuple[float, float, str]:
        """``_null`` of continuous scores (output contrasts, fits, gradient shares); sigma at least MIN_OUTPUT_SIGMA."""
        mean, spread, which = _null(calibration, arch, self.varied_calibration)
        return mean, max(spread, MIN_OUTPUT_SIGMA), which

    def query_null(self, arch: str | None = None) -> tuple[float, float, str]:
        """(mean, sigma, which) of independent models' agreement with the owner's idiosyncratic answers to its
        logged queries, chosen as in ``null`` (binomial floor over the queries' effective count)."""
        if not self.has_queries:
            raise GifindexError(f"fingerprint of {self.owner!r} holds no logged queries (fit it with --queries)")
        return self._rate_null(self.query_calibration, self.query_effective_count, arch)

    def query_flag_rates(self, z_threshold: float = 3.0) -> dict[str, float]:
        """The share of the kept logged answers a suspect must repeat for the query part alone to reach
        ``z_threshold`` in the verdict (after ``evidence``'s Sidak adjustment), per calibration architecture and for
        any other (key OTHER_ARCHS). Above 1: the query part cannot flag such a suspect however many answers it
        repeats; the log holds too few (wrong) answers for its null's spread, and reviewing more queries is what
        helps (docs/results.md 6.2o: the hard-label students there repeat 37-100 % of them)."""
        return {OTHER_ARCHS if arch is None else arch: flag_share(*self.query_null(arch)[:2], z_threshold)
                for arch in [*self.query_calibration, None]}


def _null(calibration: dict[str, list[float]], arch: str | None, within: bool) -> tuple[float, float, str]:
    """(mean, spread, which). The mean: of the architecture's references when it has two or more, else of all.
    The spread, for a suspect of such an architecture when ``within`` (references trained by varied recipes):
    the references' spread around their own architecture's mean, pooled over the architectures that have two
    or more, widened by sqrt(1 + 1/n) for the n references that estimate the mean (a new model's deviation
    from an estimated mean). Otherwise the spread of all references, which also holds how far the
    architectures' means lie apart (references all trained by the owner's recipe vary less than models in
    the wild, so their spread around their own mean would be too narrow)."""
    pooled = [v for values in calibration.values() for v in values]
    values, which = pooled, "all calibration references"
    own = calibration.get(arch, []) if arch is not None else []
    if len(own) >= 2:
        values, which = own, f"calibration references of {arch}"
    groups = [g for g in calibration.values() if len(g) >= 2]
    if within and len(own) >= 2:
        which += ", trained by varied recipes"
        squares = sum(float(np.sum((np.asarray(g) - np.mean(g)) ** 2)) for g in groups)
        dof = sum(len(g) - 1 for g in groups)
        spread = math.sqrt(squares / dof * (1 + 1 / len(own)))
    else:
        spread = float(np.std(pooled, ddof=1)) if len(pooled) > 1 else 0.0
    return float(np.mean(values)), spread, which


@torch.no_grad()
def agreement(fingerprint: Fingerprint, model: LoadedModel | SharedSpaceAdapter, device: str = "cpu",
              batch_size: int = 256) -> float | None:
    """Fraction of the fingerprint's inputs on which ``model`` decides as the owner did; None when the model's
    output size differs from the owner's (its decisions are about other classes)."""
    return _agreement_on(fingerprint.inputs, fingerprint.labels, fingerprint.num_classes, model, device, batch_size)


def _agreement_on(inputs: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  model: LoadedModel | SharedSpaceAdapter, device: str, batch_size: int,
                  weights: torch.Tensor | None = None) -> float | None:
    """Fraction of ``inputs`` (of their ``weights``, when given) on which ``model`` answers ``labels``; None for
    another output size."""
    logits = model_logits(model, inputs, device, batch_size)
    if logits.shape[1] != num_classes:
        return None
    same = logits.argmax(1) == labels
    if weights is None:
        return int(same.sum()) / len(labels)
    return float((weights.double() * same).sum() / weights.double().sum())


@torch.no_grad()
def query_agreement(fingerprint: Fingerprint, model: LoadedModel | SharedSpaceAdapter, device: str = "cpu",
                    batch_size: int = 256) -> float | None:
    """Weighted fraction of the owner's kept answers to its logged queries that ``model`` gives too; None when
    the fingerprint holds no queries or the model's output size differs from the owner's."""
    if not fingerprint.queries:
        return None
    return _agreement_on(fingerprint.query_inputs, fingerprint.query_labels, fingerprint.num_classes, model, device,
                         batch_size, fingerprint.query_weights)


@dataclass(frozen=True)
class MappedDecisions:
    """A suspect of another label set (a new head on the owner's body: transfer), or of the owner's with its classes
    relabelled (a copy whose output units were permuted), judged by the owner's decisions relabelled as the suspect
    labels the owner's classes. ``class_map[c]``: the suspect's most frequent answer on
    the owner's probe images the owner puts in class c (-1: no such image); ``rate``: the suspect's agreement with
    the relabelled decisions on the fingerprint's inputs (those of a mapped class, ``count``); ``calibration``: the
    calibration references' agreement under the same relabelling, by architecture (the null of an independent
    model that labels the owner's classes as this suspect does). ``output_fit``: how well the owner's outputs on the
    probe images predict the suspect's within each class (``outputs.within_class_fit``), and ``fit_calibration``
    how well each calibration reference's do, by architecture (None, empty: the fingerprint holds no outputs, or
    the suspect's do not vary within classes). ``gradient_share``: the share of its input gradients at the owner's
    gradient images inside the span of the owner's (``gradients.span_share``), ``gradient_calibration`` the same
    against each reference's span (None, empty: the fingerprint holds no gradient bases)."""

    rate: float
    count: int
    class_map: list[int]
    calibration: dict[str, list[float]]
    outputs: int = 0  # the suspect's output size
    output_fit: float | None = None
    fit_calibration: dict[str, list[float]] = field(default_factory=dict)
    gradient_share: float | None = None
    gradient_calibration: dict[str, list[float]] = field(default_factory=dict)

    @property
    def renames(self) -> bool:
        """Whether the suspect has the owner's classes under other names: its output size is the owner's and the
        map is a permutation (then it is scored in full after naming them back: ``judge``)."""
        return _labelling(self.class_map, self.outputs) == "renamed"


def _class_map(fingerprint: Fingerprint, probe_logits: torch.Tensor,
               owner_answers: torch.Tensor | None = None) -> list[int]:
    """Owner class c -> the suspect's most frequent answer on the images the owner puts in class c (-1: none):
    the probe images, or those of ``owner_answers`` when given."""
    probe_answers = probe_logits.argmax(1)
    owner_probe = fingerprint.probe_logits.argmax(1) if owner_answers is None else owner_answers
    class_map = [-1] * fingerprint.num_classes
    for c in owner_probe.unique().tolist():
        class_map[c] = int(torch.bincount(probe_answers[owner_probe == c]).argmax())
    return class_map


def _suspect_class_map(fingerprint: Fingerprint, model: LoadedModel | SharedSpaceAdapter,
                       probe_logits: torch.Tensor, device: str = "cpu",
                       batch_size: int = 256) -> tuple[list[int], torch.Tensor | None]:
    """The suspect's class map, read on the probe images; when those are logged queries and the map is not plainly
    the owner's labelling (another output size, or not the identity), read again on the owner's own images
    (``map_inputs``), where the owner's decisions are surest (only those suspects pay the extra passes). Also the
    suspect's logits on those images when it was read there (else None)."""
    mapping = _class_map(fingerprint, probe_logits)
    if fingerprint.map_inputs is None or (probe_logits.shape[1] == fingerprint.num_classes
                                          and mapping == list(range(fingerprint.num_classes))):
        return mapping, None
    logits = model_logits(model, fingerprint.map_inputs, device, batch_size)
    return _class_map(fingerprint, logits, fingerprint.map_labels), logits


def _labelling(class_map: list[int], outputs: int) -> str:
    """How a suspect with ``outputs`` outputs names the owner's classes: "owner" (its output size is the owner's and
    the map is the identity, or not a permutation: a model that confuses some classes still uses the owner's
    labels), "renamed" (the owner's size, a permutation other than the identity) or "mapped" (another size)."""
    if outputs != len(class_map):
        return "mapped"
    permutation = sorted(class_map) == list(range(outputs))
    return "renamed" if permutation and class_map != list(range(outputs)) else "owner"


@torch.no_grad()
def mapped_decisions(fingerprint: Fingerprint, model: LoadedModel | SharedSpaceAdapter, device: str = "cpu",
                     batch_size: int = 256, probe_logits: torch.Tensor | None = None,
                     class_map: list[int] | None = None, map_logits: torch.Tensor | None = None
                     ) -> MappedDecisions | None:
    """``model``'s agreement with the owner's decisions through its own labelling of the owner's classes (and its
    outputs' within-class fit from the owner's and its input gradients' share in the owner's span: ``output_fit``,
    ``gradient_share``); None
    when it names the owner's classes as the owner does (``_labelling``: ``agreement`` judges it), or the
    fingerprint lacks probe images or the references' decisions (fitted before), or no fingerprint input falls in
    a mapped class. ``probe_logits``, ``class_map``, ``map_logits``: the model's outputs on the probe images, its
    class map and its outputs on the class-map images, when already computed."""
    if fingerprint.reference_decisions is None or fingerprint.probe_inputs is None:
        return None
    if probe_logits is None:
        probe_logits = model_logits(model, fingerprint.probe_inputs, device, batch_size)
    if class_map is None:
        class_map, map_logits = _suspect_class_map(fingerprint, model, probe_logits, device, batch_size)
    if _labelling(class_map, probe_logits.shape[1]) == "owner":
        return None
    relabel = torch.tensor(class_map, dtype=torch.int64)
    expected = relabel[fingerprint.labels]
    used = expected >= 0
    if not bool(used.any()):
        return None
    answers = model_logits(model, fingerprint.inputs[used], device, batch_size).argmax(1)
    rate = float((answers == expected[used]).double().mean())
    reference_rates = (relabel[fingerprint.reference_decisions[:, used]] == expected[used]).double().mean(1)
    if fingerprint.map_reference_logits is not None:  # the fit is read on the owner's own images
        if map_logits is None:
            map_logits = model_logits(model, fingerprint.map_inputs, device, batch_size)
        output_fit, fits = _mapped_output_fits(fingerprint, map_logits, fingerprint.map_logits,
                                               fingerprint.map_reference_logits)
    else:
        output_fit, fits = _mapped_output_fits(fingerprint, probe_logits, fingerprint.probe_logits,
                                               fingerprint.reference_logits)
    share, shares = _mapped_gradient_shares(fingerprint, model, device)
    return MappedDecisions(rate, int(used.sum()), class_map, _by_arch(fingerprint, reference_rates.tolist()),
                           int(probe_logits.shape[1]), output_fit, fits, share, shares)


def _mapped_gradient_shares(fingerprint: Fingerprint, model: LoadedModel | SharedSpaceAdapter,
                            device: str = "cpu") -> tuple[float | None, dict[str, list[float]]]:
    """The share of ``model``'s input gradients at the fingerprint's gradient images inside the span of the owner's,
    and inside each calibration reference's span (by architecture): the gradient part of a suspect of another label
    set. (None, {}) when the fingerprint holds no gradient bases or the model's gradients there are all zero."""
    if fingerprint.reference_gradient_bases is None:
        return None, {}
    jacobian = sketched_jacobian(model, fingerprint.gradient_inputs, device)
    share = span_share(jacobian, fingerprint.gradient_bases)
    if share is None:
        return None, {}
    return share, _by_arch(fingerprint, [float(span_share(jacobian, b)) for b in fingerprint.reference_gradient_bases])


def _by_arch(fingerprint: Fingerprint, values: list[float]) -> dict[str, list[float]]:
    """One value per calibration reference, in the fingerprint's order -> grouped by architecture."""
    grouped, rest = {}, iter(values)
    for arch, rates in fingerprint.calibration.items():
        grouped[arch] = [next(rest) for _ in rates]
    return grouped


def _mapped_output_fits(fingerprint: Fingerprint, suspect: torch.Tensor, owner: torch.Tensor | None,
                        references: torch.Tensor | None) -> tuple[float | None, dict[str, list[float]]]:
    """How well the owner's outputs (``owner``, (M, C)) on a set of images predict a suspect's (``suspect``, any
    output size) within the owner's classes, and how well each calibration reference's (``references``, (K, M, C))
    do (by architecture): the outputs part of a suspect of another label set. (None, {}) without the references'
    outputs, or when the suspect's outputs do not vary within classes."""
    if owner is None or references is None or len(references) < 2:
        return None, {}
    classes = owner.argmax(1)
    fit = within_class_fit(owner, suspect, classes)
    if fit is None:
        return None, {}
    return fit, _by_arch(fingerprint, [float(within_class_fit(r, suspect, classes)) for r in references])


class ReorderedOutputs(torch.nn.Module):
    """A model whose output c is its output ``order[c]``: a copy's classes named back as the owner's (``judge``),
    or (the evaluation's relabelled copies) a model's classes put under other names."""

    def __init__(self, model: torch.nn.Module, order: list[int] | torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("order", torch.as_tensor(order, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).flatten(1)[:, self.order]


def judge(fingerprint: Fingerprint, model: LoadedModel | SharedSpaceAdapter, arch: str | None = None,
          device: str = "cpu") -> FingerprintScore:
    """Everything the fingerprint measures of ``model``, weighed as ``suspect`` weighs it. A model that labels the
    owner's classes as the owner does is scored on decisions, outputs and logged queries; one with the owner's
    classes under other names (output units permuted) the same, after naming them back; one of another label set
    (transfer) by the decisions through its class map, by how well the owner's outputs predict its own within each
    class and by how much of its input gradients lies in the owner's span (``mapped_decisions``), the three summed
    as decisions and outputs are. Each image is passed once."""
    probe = None if fingerprint.probe_inputs is None else model_logits(model, fingerprint.probe_inputs, device)
    class_map, map_logits = ((None, None) if probe is None or fingerprint.reference_decisions is None
                             else _suspect_class_map(fingerprint, model, probe, device))
    labelling = "owner" if class_map is None else _labelling(class_map, probe.shape[1])
    if labelling == "mapped":
        mapped = mapped_decisions(fingerprint, model, device, probe_logits=probe, class_map=class_map,
                                  map_logits=map_logits)
        return FingerprintScore.of(fingerprint, None, arch, mapped=mapped)
    if labelling == "renamed":
        adapter = SharedSpaceAdapter.of(model)
        model = SharedSpaceAdapter(ReorderedOutputs(adapter.model, class_map), adapter.spec)
        probe = probe[:, class_map]
    score = FingerprintScore.of(fingerprint, agreement(fingerprint, model, device), arch,
                                output_scores(fingerprint, model, device, probe_logits=probe),
                                query_agreement(fingerprint, model, device))
    if probe is not None and probe.shape[1] == fingerprint.num_classes:
        score.clean_agreement = float((probe.argmax(1) == fingerprint.probe_logits.argmax(1)).float().mean())
        score.task_gate = fingerprint.task_gate
        score.off_task = score.task_gate is not None and score.clean_agreement < score.task_gate
    if labelling == "renamed":
        score.class_map, score.renamed = class_map, True
    return score


@dataclass(frozen=True)
class OutputScore:
    """A model's outputs on the owner's probe images: similarity to the owner's (mean cosine of non-top
    profiles) and contrast (that minus its mean similarity to the calibration references'; ``outputs``)."""

    similarity: float
    contrast: float


@torch.no_grad()
def output_scores(fingerprint: Fingerprint, model: LoadedModel | SharedSpaceAdapter, device: str = "cpu",
                  batch_size: int = 256, probe_logits: torch.Tensor | None = None) -> OutputScore | None:
    """``model``'s output similarity and contrast on the owner's probe images; None when the fingerprint has
    no outputs or the model's output size differs from the owner's. ``probe_logits``: the model's outputs on
    them, when already computed."""
    if not fingerprint.has_outputs:
        return None
    logits = model_logits(model, fingerprint.probe_inputs, device, batch_size) if probe_logits is None else probe_logits
    if logits.shape[1] != fingerprint.num_classes:
        return None
    return OutputScore(profile_similarity(fingerprint.probe_logits, logits),
                       profile_contrast(fingerprint.probe_logits, fingerprint.reference_logits, logits))


@dataclass
class FingerprintScore:
    """A suspect's agreement with the owner's decisions on the fingerprint, its output similarity on the
    owner's probe images and its agreement with the owner's idiosyncratic answers to logged queries, each
    against independent models'."""

    agreement: float | None
    null_mean: float
    null_sigma: float
    null_source: str
    z: float | None
    output_similarity: float | None = None
    output_contrast: float | None = None
    output_null_mean: float | None = None
    output_null_sigma: float | None = None
    output_z: float | None = None
    query_agreement: float | None = None
    query_null_mean: float | None = None
    query_null_sigma: float | None = None
    query_z: float | None = None
    class_map: list[int] | None = None  # how the suspect labels the owner's classes, when not as the owner does
    renamed: bool = False  # the owner's classes under other names: scored in full after naming them back
    mapped_inputs: int | None = None  # inputs of a mapped class (another labelling: the decisions alone)
    output_fit: float | None = None  # another label set: the owner's outputs' within-class fit of the suspect's
    gradient_share: float | None = None  # another label set: its input gradients' share in the owner's span
    gradient_null_mean: float | None = None
    gradient_null_sigma: float | None = None
    gradient_z: float | None = None
    clean_agreement: float | None = None  # share of the owner's probe images on which it gives the owner's answer
    task_gate: float | None = None  # Fingerprint.task_gate
    off_task: bool = False  # clean agreement below the gate: not a model of the owner's task, not judged (combine)

    @classmethod
    def of(cls, fingerprint: Fingerprint, rate: float | None, arch: str | None = None,
           outputs: OutputScore | None = None, query_rate: float | None = None,
           mapped: MappedDecisions | None = None) -> "FingerprintScore":
        if mapped is not None:  # another label set, or the owner's relabelled: the decisions through its class map
            mean, sigma, which = fingerprint._rate_null(mapped.calibration, mapped.count, arch)
            score = cls(mapped.rate, mean, sigma, f"{which}, relabelled as the suspect labels the owner's classes",
                        (mapped.rate - mean) / sigma, class_map=mapped.class_map, mapped_inputs=mapped.count)
            if mapped.output_fit is not None and mapped.fit_calibration:
                score.output_fit = mapped.output_fit
                score.output_null_mean, score.output_null_sigma, score.output_z = _against(
                    mapped.output_fit, fingerprint._score_null(mapped.fit_calibration, arch))
            if mapped.gradient_share is not None and mapped.gradient_calibration:
                score.gradient_share = mapped.gradient_share
                score.gradient_null_mean, score.gradient_null_sigma, score.gradient_z = _against(
                    mapped.gradient_share, fingerprint._score_null(mapped.gradient_calibration, arch))
            return score
        mean, sigma, which = fingerprint.null(arch)
        z = None if rate is None else (rate - mean) / sigma
        score = cls(rate, mean, sigma, which, z)
        if outputs is not None and fingerprint.has_outputs:
            score.output_similarity, score.output_contrast = outputs.similarity, outputs.contrast
            score.output_null_mean, score.output_null_sigma, score.output_z = _against(
                outputs.contrast, fingerprint.output_null(arch))
        if query_rate is not None and fingerprint.has_queries:
            score.query_agreement = query_rate
            score.query_null_mean, score.query_null_sigma, score.query_z = _against(
                query_rate, fingerprint.query_null(arch))
        return score

    @property
    def owner_data_z(self) -> float | None:
        """Decisions and outputs together by Stouffer's sum, (z + output_z) / sqrt(2), again a z-score against
        independent models when both are (for a suspect of another label set: its relabelled decisions, its outputs'
        within-class fit and its gradients' share in the owner's span, the three summed over sqrt(3), docs/results.md
        6.2p-q); the decisions' z alone without outputs. Their larger one
        instead would let each one's noise among independent models through (docs/results.md 6.2)."""
        if self.z is None:
            return None
        parts = [self.z, *(p for p in (self.output_z, self.gradient_z) if p is not None)]
        return sum(parts) / math.sqrt(len(parts))

    @property
    def evidence(self) -> float | None:
        """The fingerprint's z. Without a query log, ``owner_data_z``. With one, the stronger of that and the
        query part, Sidak-adjusted for having looked at two (so the verdict's threshold keeps its false-positive
        rate): the query part is evidence of another kind (the thief's own training queries), strong on its
        own for hard-label students whose decisions and outputs hold nothing, and averaging it with them would
        dilute exactly that (docs/results.md 6.2i)."""
        base = self.owner_data_z
        if base is None or self.query_z is None:
            return base
        return stronger_of_two(max(base, self.query_z))

    def to_dict(self) -> dict[str, Any]:
        return {"agreement": self.agreement, "null_mean": self.null_mean, "null_sigma": self.null_sigma,
                "null": self.null_source, "z": self.evidence, "owner_data_z": self.owner_data_z, "decision_z": self.z,
                "output_similarity": self.output_similarity, "output_contrast": self.output_contrast,
                "output_null_mean": self.output_null_mean,
                "output_null_sigma": self.output_null_sigma, "output_z": self.output_z,
                "query_agreement": self.query_agreement, "query_null_mean": self.query_null_mean,
                "query_null_sigma": self.query_null_sigma, "query_z": self.query_z,
                "class_map": self.class_map, "renamed": self.renamed, "mapped_inputs": self.mapped_inputs,
                "output_fit": self.output_fit, "gradient_share": self.gradient_share,
                "gradient_null_mean": self.gradient_null_mean, "gradient_null_sigma": self.gradient_null_sigma,
                "gradient_z": self.gradient_z, "clean_agreement": self.clean_agreement, "task_gate": self.task_gate,
                "off_task": self.off_task}


OTHER_ARCHS = "(other architectures)"  # Fingerprint.query_flag_rates' key for a suspect of an uncalibrated architecture


def _against(value: float, null: tuple[float, float, str]) -> tuple[float, float, float]:
    """A part's null mean and sigma (a ``Fingerprint`` null: mean, sigma, what it is) and ``value``'s z against them."""
    mean, sigma, _ = null
    return mean, sigma, (value - mean) / sigma


def stronger_of_two(z: float) -> float:
    """The z of the larger of two z-scores, ``z``, Sidak-adjusted for having looked at two: from its one-sided
    p, 1 - (1 - p)^2 = p (2 - p), back to a z (in logs: overwhelming evidence must not underflow)."""
    from scipy.special import ndtri_exp
    from scipy.stats import norm

    log_p = float(norm.logsf(z))
    return float(-ndtri_exp(log_p + math.log(2.0 - math.exp(log_p))))


def single_look_z(z_threshold: float, looks: int = 2) -> float:
    """The z one of ``looks`` evidences must reach alone for the largest of them, Sidak-adjusted for having looked
    at that many, to reach ``z_threshold`` (``stronger_of_two`` for two): p = 1 - (1 - P)^(1 / looks) for the
    threshold's one-sided P. One look: ``z_threshold`` itself."""
    from scipy.stats import norm

    if looks < 1:
        raise ValueError(f"looks must be at least 1 (got {looks})")
    tail = float(norm.sf(z_threshold))
    return float(norm.isf(-math.expm1(math.log1p(-tail) / looks)))


def flag_share(null_mean: float, null_sigma: float, z_threshold: float = 3.0) -> float:
    """The agreement rate at which one of two evidences (against a null of this mean and sigma) alone brings the
    verdict's Sidak-adjusted z to ``z_threshold`` (``single_look_z``); above 1: no rate can."""
    return null_mean + single_look_z(z_threshold) * null_sigma


OFF_TASK = "none: not a model of the owner's task"


def combine(signature_z: float | None, fingerprint_z: float | None,
            off_task: bool = False) -> tuple[float | None, str]:
    """The evidence a verdict rests on, and which: the fingerprint's z (``FingerprintScore.evidence``) when it
    has one (the suspect's output size is the owner's, or, for another label set, the fingerprint holds its
    references' decisions: ``mapped_decisions``), else the signature's. The fingerprint is calibrated on the
    owner's own independent models, architecture by architecture; the signature's z is not (independent models
    of the owner's architecture sit near it in gradient space), and letting it raise the fingerprint's verdict
    gave 8-25 % false positives on the evaluation zoos, where the fingerprint alone flags every fine-tuned and
    pruned copy with 0 % (docs/results.md section 6.2). None (OFF_TASK) for a suspect that hardly does the owner's
    task (``off_task``): both nulls hold models that do, and each accused such models (untrained weights, another
    task's models, a constant answer) on the evaluation zoos, so neither judges it (docs/results.md 6.2v)."""
    if off_task:
        return None, OFF_TASK
    if fingerprint_z is None:
        return signature_z, "signature"
    return fingerprint_z, "fingerprint"
