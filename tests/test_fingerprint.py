"""Owner-fitted decision fingerprints (gifindex.fingerprint, `fit-probes`, `suspect`): real training of small
helper models on scikit-learn's digits, checked against what the method promises."""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

from gifindex.cli import main
from gifindex.demo import DemoZooConfig, load_digit_data, train
from gifindex.errors import ConfigError, GifindexError, ProbeError
from gifindex.fingerprint import (FingerprintScore, FitConfig, OwnerData, agreement, fit_fingerprint, judge,
                                  load_fingerprint, load_owner_data, load_query_log, output_scores, query_agreement,
                                  save_fingerprint)
from gifindex.fingerprint.fingerprint import MIN_OUTPUT_SIGMA, OFF_TASK, Fingerprint, ReorderedOutputs, combine
from gifindex.fingerprint.outputs import (model_logits, non_top_profile, profile_contrast, profile_similarity,
                                          within_class_fit)
from gifindex.fingerprint.conferrable import SearchConfig
from gifindex.fingerprint.gradients import span_share
from gifindex.fingerprint.helpers import TrainRecipe, augment
from gifindex.index.layout import evidence_cache_path
from gifindex.models.spec import InputSpec, LoadedModel

R = 16
MEAN, STD = (0.305,) * 3, (0.324,) * 3
SPEC = InputSpec(size=(R, R), mean=MEAN, std=STD)
FAST = FitConfig(helper_archs=("timm:test_resnet",), surrogates=2, references=2, calibration_per_arch=2,
                 candidates=96, recipe=TrainRecipe(epochs=2, augment_copies=1), search=SearchConfig(eps=0.1, steps=12))


def _wrap(module: torch.nn.Module, name: str = "m") -> LoadedModel:
    module = module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(module=module, spec=SPEC, ref=name, name=name, source="test", arch="timm:test_resnet")


def _build(arch: str, classes: int) -> LoadedModel:
    return _wrap(timm.create_model(arch.partition(":")[2], num_classes=classes))


@pytest.fixture(scope="module")
def digits():
    data = load_digit_data(DemoZooConfig(seed=0, image_size=R))
    raw = (data.x_train * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)).clamp(0, 1)
    return data, OwnerData(raw[:600], data.y_train[:600])


@pytest.fixture(scope="module")
def owner(digits):
    data, _ = digits
    torch.manual_seed(0)
    return _wrap(train(timm.create_model("test_resnet", num_classes=10), data.x_train[:600], data.y_train[:600],
                       3, 5e-3, 64, 0), "owner")


@pytest.fixture(scope="module")
def fingerprint(owner, digits):
    return fit_fingerprint(owner, digits[1], FAST, build=_build)


def test_helpers_trained_apart_or_kept_fit_the_same_fingerprint(owner, digits, fingerprint, tmp_path):
    """Helpers trained on their own (or kept on disk and loaded back) give exactly the fingerprint a fit that trains
    them gives; helpers of another owner, data or setting are refused, and a kept file of another key is not used."""
    from gifindex.fingerprint import helper_key, load_helpers, save_helpers, train_helpers

    helpers = train_helpers(owner, digits[1], FAST, build=_build)
    assert helpers.count == 2 + 2 + 2 and [r for r, _, _ in helpers.named()] == ["surrogate"] * 2 + ["reference"] * 2 \
        + ["calibration"] * 2

    def same(fp):
        assert torch.equal(fp.inputs, fingerprint.inputs) and torch.equal(fp.labels, fingerprint.labels)
        assert fp.calibration == fingerprint.calibration and fp.output_calibration == fingerprint.output_calibration
        assert torch.equal(fp.reference_logits, fingerprint.reference_logits)

    fitted = fit_fingerprint(owner, digits[1], FAST, build=_build, helpers=helpers)
    same(fitted)
    assert fitted.recipe["helpers_reused"] is True and fingerprint.recipe["helpers_reused"] is False
    path = save_helpers(helpers, tmp_path / "kept.helpers.pt")
    back = load_helpers(path, _build, helper_key(owner, digits[1], FAST))
    assert back is not None and back.count == helpers.count and back.archs == helpers.archs
    assert helpers.num_classes == back.num_classes == 10
    same(fit_fingerprint(owner, digits[1], FAST, build=_build, helpers=back))
    other = dataclasses.replace(FAST, seed=1)
    assert load_helpers(path, _build, helper_key(owner, digits[1], other)) is None  # trained otherwise: not used
    with pytest.raises(GifindexError, match="trained from another owner, owner data or helper settings"):
        fit_fingerprint(owner, digits[1], other, build=_build, helpers=helpers)
    fewer = OwnerData(digits[1].x[:500], digits[1].y[:500])
    with pytest.raises(GifindexError, match="trained from another owner"):
        fit_fingerprint(owner, fewer, FAST, build=_build, helpers=helpers)
    # what does not train the helpers does not change the key: probes, candidates, query settings
    assert helper_key(owner, digits[1], dataclasses.replace(FAST, output_probes=0, candidates=64,
                                                            max_queries=16)) == helpers.key
    # a damaged file, or one holding pickled code, is one clear error and runs nothing
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(GifindexError, match="not a readable gifindex helpers file"):
        load_helpers(tmp_path / "bad.pt", _build)
    torch.save({"format": "gifindex-helpers-1", "models": [{"role": "surrogate", "arch": "x",
                                                            "state": _Fixed([0])}]}, tmp_path / "code.pt")
    with pytest.raises(GifindexError, match="not a readable gifindex helpers file"):
        load_helpers(tmp_path / "code.pt", _build)


def test_owner_data_from_npz_and_folder(tmp_path):
    x = (np.random.default_rng(0).random((30, 8, 8)) * 255).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 3)
    data = load_owner_data(tmp_path / "d.npz", 16)
    assert data.x.shape == (30, 3, 16, 16) and data.x.dtype == torch.float32
    assert 0.0 <= float(data.x.min()) and float(data.x.max()) <= 1.0 and data.num_classes == 3
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "f" / label).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(x[i]).save(tmp_path / "f" / label / f"{i}.png")
    folder = load_owner_data(tmp_path / "f", 16)
    assert folder.x.shape == (24, 3, 16, 16) and folder.y.tolist() == [0] * 12 + [1] * 12


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((30, 8, 8), np.float32)}, "needs arrays 'x' (images) and 'y' (labels)"),
    ({"x": np.full((30, 8, 8), 3.0, np.float32), "y": np.zeros(30, np.int64)}, "must be finite and lie in [0, 1]"),
    ({"x": np.zeros((30, 8, 8), np.float32), "y": np.zeros(30, np.float32)}, "labels 'y' must be integers"),
    ({"x": np.zeros((5, 8, 8), np.float32), "y": np.zeros(5, np.int64)}, "needs at least 20"),
])
def test_bad_owner_data_is_one_clear_error(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ProbeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        load_owner_data(tmp_path / "bad.npz", 16)


def test_augment_stays_in_pixel_range_and_is_seeded():
    x = torch.rand(16, 3, R, R)
    a = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(1)))


def test_fitted_inputs_are_conferrable_and_calibrated(fingerprint, owner, digits):
    fp = fingerprint
    assert fp.size >= 8 and fp.inputs.shape[1:] == (3, R, R)
    assert float(fp.inputs.min()) >= 0 and float(fp.inputs.max()) <= 1
    # the owner decides every kept input as recorded (that is what a fingerprint stores)
    assert agreement(fp, owner) == 1.0
    # kept only where at least half the surrogates followed the owner (their mean agreement reflects that)
    assert min(fp.recipe["surrogate_agreement"]) >= 0.0 and np.mean(fp.recipe["surrogate_agreement"]) >= 0.5
    # held-out references: one rate each, in [0, 1], and below the surrogates' (they are independent models)
    rates = fp.calibration["timm:test_resnet"]
    assert len(rates) == 2 and all(0.0 <= r <= 1.0 for r in rates)
    assert np.mean(rates) < np.mean(fp.recipe["surrogate_agreement"])
    # every input lies within eps of some owner image (the search is a bounded perturbation)
    x = digits[1].x
    nearest = torch.cdist(fp.inputs.flatten(1), x.flatten(1), p=float("inf")).min(1).values
    assert float(nearest.max()) <= FAST.search.eps + 1e-5


def test_copies_agree_and_verdict_follows(fingerprint, owner, digits):
    data, _ = digits
    same = agreement(fingerprint, owner)
    tuned = copy.deepcopy(owner.module)
    for p in tuned.parameters():
        p.requires_grad_(True)
    tuned = train(tuned, data.x_train[600:900], data.y_train[600:900], 1, 5e-4, 64, 1)
    score_copy = FingerprintScore.of(fingerprint, agreement(fingerprint, _wrap(tuned)), "timm:test_resnet")
    assert same == 1.0 and score_copy.agreement > fingerprint.null()[0]
    assert score_copy.z is not None and score_copy.z >= 3.0
    other = _wrap(timm.create_model("test_resnet", num_classes=4))
    assert agreement(fingerprint, other) is None  # other classes: not comparable
    assert FingerprintScore.of(fingerprint, None).z is None


class _Scripted(torch.nn.Module):
    """Answers, call by call, the next preset list of classes (out of ``width``), whatever the images."""

    def __init__(self, calls: list[list[int]], width: int):
        super().__init__()
        self.calls, self.width = list(calls), width

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.tensor(self.calls.pop(0)), self.width).float()[:len(x)]


def _hand_made(probe_classes: list[int]) -> Fingerprint:
    """Owner of 3 classes; six inputs decided 0, 1, 2, 0, 1, 2; four calibration references, two per arch."""
    return Fingerprint(owner="o", owner_sha256=None, inputs=torch.rand(6, 3, R, R),
                       labels=torch.tensor([0, 1, 2, 0, 1, 2]), num_classes=3,
                       calibration={"a": [1.0, 2 / 6], "b": [2 / 6, 2 / 6]},
                       probe_inputs=torch.rand(len(probe_classes), 3, R, R),
                       probe_logits=torch.nn.functional.one_hot(torch.tensor(probe_classes), 3).float(),
                       reference_decisions=torch.tensor([[0, 1, 2, 0, 1, 2], [1, 1, 1, 1, 1, 1],
                                                         [2, 0, 1, 2, 0, 1], [0, 0, 0, 0, 0, 0]]))


def test_another_label_set_is_judged_through_its_class_map():
    """A suspect of 2 classes: each owner class maps to the suspect's most frequent answer on the owner's probe
    images of that class; agreement and the references' null are taken after that relabelling, exactly."""
    from gifindex.fingerprint import mapped_decisions

    fp = _hand_made([0, 0, 1, 1, 2, 2])
    suspect = _wrap(_Scripted([[1, 1, 0, 0, 0, 1], [1, 0, 0, 1, 1, 1]], 2))  # probes, then the inputs
    mapped = mapped_decisions(fp, suspect)
    assert mapped.class_map == [1, 0, 0]  # class 2: one vote each, the first class wins the tie
    assert mapped.count == 6 and mapped.rate == pytest.approx(4 / 6)  # expected 1, 0, 0, 1, 0, 0
    assert mapped.calibration == {"a": pytest.approx([1.0, 4 / 6]), "b": pytest.approx([2 / 6, 2 / 6])}
    score = FingerprintScore.of(fp, None, "a", mapped=mapped)
    mean, sigma, which = fp._rate_null(mapped.calibration, 6, "a")
    assert score.agreement == pytest.approx(4 / 6) and score.z == pytest.approx((4 / 6 - mean) / sigma)
    assert score.class_map == [1, 0, 0] and "relabelled" in score.null_source and score.evidence == score.z
    assert combine(9.0, score.evidence) == (score.evidence, "fingerprint")
    # an owner class without probe images is unmapped: inputs of that class do not count
    unseen = mapped_decisions(_hand_made([0, 0, 1, 1, 1, 1]), _wrap(_Scripted([[1, 1, 0, 0, 0, 1], [1, 0, 1, 0]], 2)))
    assert unseen.class_map == [1, 0, -1] and unseen.count == 4 and unseen.rate == pytest.approx(1.0)
    # a suspect that labels the owner's classes as the owner does is `agreement`'s; one of the owner's output size
    # whose classes are relabelled (output units permuted) is judged through its map, as another label set is
    assert mapped_decisions(fp, _wrap(_Scripted([[0, 0, 1, 1, 2, 2]], 3))) is None
    assert mapped_decisions(fp, _wrap(_Scripted([[0, 0, 0, 1, 2, 0]], 3))) is None  # confuses 1 with 0: not renamed
    permuted = mapped_decisions(fp, _wrap(_Scripted([[2, 2, 0, 0, 1, 1], [2, 0, 1, 2, 0, 0]], 3)))
    assert permuted.class_map == [2, 0, 1] and permuted.rate == pytest.approx(5 / 6)
    assert permuted.calibration == {"a": pytest.approx([1.0, 2 / 6]), "b": pytest.approx([0.0, 2 / 6])}
    # a fingerprint without its references' decisions cannot relabel
    assert mapped_decisions(dataclasses.replace(fp, reference_decisions=None), suspect) is None
    with pytest.raises(GifindexError, match="reference decisions"):
        dataclasses.replace(fp, reference_decisions=torch.zeros(3, 6, dtype=torch.int64))
    with pytest.raises(GifindexError, match="reference decisions"):
        dataclasses.replace(fp, reference_decisions=torch.full((4, 6), 3))


def test_within_class_fit_is_exact_on_linear_targets_and_ignores_what_the_class_says():
    """A target linear in the predictor is fitted exactly (R^2 1, also left out); per-image shifts (a softmax
    leaves them out) and per-class offsets change nothing; the left-out residuals are those of refitting without
    each image; noise is not explained; a target constant within classes has nothing to explain."""
    gen = torch.Generator().manual_seed(0)
    classes = torch.arange(40) % 4
    owner = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    linear = (owner - owner.mean(1, keepdim=True)) @ torch.randn(6, 3, generator=gen, dtype=torch.float64)
    assert within_class_fit(owner, linear, classes) == pytest.approx(1.0, abs=1e-9)
    noisy = linear + 0.5 * torch.randn(40, 3, generator=gen, dtype=torch.float64)
    shifted = noisy + torch.randn(40, 1, generator=gen, dtype=torch.float64) + 5.0 * classes[:, None]
    assert within_class_fit(owner, shifted, classes) == pytest.approx(within_class_fit(owner, noisy, classes))
    # the hat-matrix residuals are the refits' without each image
    x = torch.cat([owner - owner.mean(1, keepdim=True), torch.ones(40, 1, dtype=torch.float64)], 1)
    y = noisy - noisy.mean(1, keepdim=True)
    for c in range(4):
        x[classes == c, :-1] -= x[classes == c, :-1].mean(0)
        y[classes == c] -= y[classes == c].mean(0)
    rest = [torch.arange(40) != i for i in range(40)]
    left_out = torch.stack([y[i] - x[i] @ torch.linalg.lstsq(x[rest[i]], y[rest[i]]).solution for i in range(40)])
    expected = 1.0 - float((left_out ** 2).sum() / (y ** 2).sum())
    assert within_class_fit(owner, noisy, classes) == pytest.approx(expected, abs=1e-9)
    assert within_class_fit(owner, torch.randn(40, 3, generator=gen, dtype=torch.float64), classes) < 0.1
    assert within_class_fit(owner, torch.nn.functional.one_hot(classes, 4).float(), classes) is None


def test_another_label_set_gets_an_outputs_part_from_the_within_class_fit():
    """For a suspect of another output size, the owner's probe outputs' fit of the suspect's is compared with each
    calibration reference's (by architecture, as every other part's null), and joins the relabelled decisions by
    Stouffer's sum, exactly."""
    from gifindex.fingerprint import mapped_decisions

    gen = torch.Generator().manual_seed(1)
    owner_logits = torch.randn(6, 3, generator=gen)
    owner_logits[torch.arange(6), torch.tensor([0, 0, 1, 1, 2, 2])] += 10.0  # the owner decides 0, 0, 1, 1, 2, 2
    references = torch.randn(4, 6, 3, generator=gen)
    fp = dataclasses.replace(_hand_made([0, 0, 1, 1, 2, 2]), probe_logits=owner_logits, reference_logits=references,
                             output_calibration={"a": [0.0, 0.1], "b": [0.0, 0.1]})

    class Body(torch.nn.Module):  # 2 outputs: on the probes a linear map of the owner's, then preset answers
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 1:
                return owner_logits @ torch.tensor([[1.0, -1.0], [2.0, 0.5], [-1.0, 3.0]]) + 1.0
            return torch.nn.functional.one_hot(torch.tensor([1, 0, 0, 1, 0, 0]), 2).float()

    suspect = _wrap(Body())
    mapped = mapped_decisions(fp, suspect)
    probe = owner_logits @ torch.tensor([[1.0, -1.0], [2.0, 0.5], [-1.0, 3.0]]) + 1.0
    classes = owner_logits.argmax(1)
    assert mapped.output_fit == pytest.approx(within_class_fit(owner_logits, probe, classes))
    fits = [within_class_fit(r, probe, classes) for r in references]
    assert mapped.fit_calibration == {"a": pytest.approx(fits[:2]), "b": pytest.approx(fits[2:])}
    score = FingerprintScore.of(fp, None, "a", mapped=mapped)
    from gifindex.fingerprint.fingerprint import _null
    mean, spread, _ = _null(mapped.fit_calibration, "a", fp.varied_calibration)
    sigma = max(spread, MIN_OUTPUT_SIGMA)
    assert score.output_fit == mapped.output_fit and score.output_z == pytest.approx((mapped.output_fit - mean) / sigma)
    assert score.evidence == pytest.approx((score.z + score.output_z) / np.sqrt(2))
    assert score.to_dict()["output_fit"] == score.output_fit and score.to_dict()["output_similarity"] is None
    # a fingerprint without outputs judges such a suspect by the decisions alone, as before
    bare = mapped_decisions(dataclasses.replace(fp, reference_logits=None, output_calibration={}), _wrap(Body()))
    assert bare.output_fit is None and FingerprintScore.of(fp, None, "a", mapped=bare).evidence == score.z


def test_class_map_is_read_on_the_owners_images_when_the_probes_are_logged_queries():
    """Probe images drawn from a query log carry the owner's errors: a rare class's majority can flip. A suspect
    whose map there is not plainly the owner's labelling is mapped again on the owner's own images (map_inputs),
    and only such a suspect pays those passes."""
    from gifindex.fingerprint import mapped_decisions

    fp = dataclasses.replace(_hand_made([0, 0, 1, 1, 2, 2]), map_inputs=torch.rand(4, 3, R, R),
                             map_labels=torch.tensor([0, 1, 2, 2]))
    # on the queries class 2 looks like 1 (not a permutation); on the owner's images the map is [1, 0, 0]
    suspect = _wrap(_Scripted([[1, 1, 0, 0, 0, 1], [1, 0, 0, 0], [1, 0, 0, 1, 1, 1]], 2))
    mapped = mapped_decisions(fp, suspect)
    assert mapped.class_map == [1, 0, 0] and mapped.count == 6 and mapped.rate == pytest.approx(4 / 6)
    # identity on the queries: the owner's labelling, no second read (a second call would find no script)
    assert mapped_decisions(fp, _wrap(_Scripted([[0, 0, 1, 1, 2, 2]], 3))) is None
    # a permuted copy whose map on the queries is blurred is recognised on the owner's images
    permuted = mapped_decisions(fp, _wrap(_Scripted([[2, 2, 0, 0, 0, 1], [2, 0, 1, 1], [2, 0, 1, 2, 0, 0]], 3)))
    assert permuted.class_map == [2, 0, 1] and permuted.renames and permuted.rate == pytest.approx(5 / 6)
    with pytest.raises(GifindexError, match="class-map images"):
        dataclasses.replace(fp, map_labels=torch.tensor([0, 1, 3, 2]))
    with pytest.raises(GifindexError, match="class-map images"):
        dataclasses.replace(fp, map_labels=None)


def test_a_new_head_on_the_owners_body_is_found_through_its_class_map(fingerprint, owner, digits):
    """Transfer: the owner's body under a 2-class head (parity), fine-tuned, follows the owner's decisions once
    they are relabelled; a 2-class model trained from scratch on the same task does not."""
    from gifindex.fingerprint import mapped_decisions

    data, _ = digits
    x, parity = data.x_train[600:1000], data.y_train[600:1000] % 2
    assert fingerprint.reference_decisions.shape == (len(fingerprint.null_rates), fingerprint.size)
    transfer = copy.deepcopy(owner.module)
    torch.manual_seed(7)  # the new head's initialisation: the same whichever tests ran before
    transfer.reset_classifier(2)
    for p in transfer.parameters():
        p.requires_grad_(True)
    transfer = _wrap(train(transfer, x, parity, 2, 2e-3, 64, 7))
    torch.manual_seed(8)
    scratch = _wrap(train(timm.create_model("test_resnet", num_classes=2), x, parity, 6, 5e-3, 64, 8))
    copied, honest = (FingerprintScore.of(fingerprint, None, "timm:test_resnet",
                                          mapped=mapped_decisions(fingerprint, m)) for m in (transfer, scratch))
    assert sorted(set(copied.class_map)) == [0, 1] and copied.z >= 3.0, copied
    assert honest.z < 3.0 and copied.z > honest.z + 2.0, (copied, honest)
    # the owner's own copy with its output units reversed: the plain agreement collapses, the class map restores it
    reversed_head = copy.deepcopy(owner.module)
    head = reversed_head.get_classifier()
    with torch.no_grad():
        head.weight.copy_(head.weight.flip(0))
        head.bias.copy_(head.bias.flip(0))
    relabelled = _wrap(reversed_head)
    assert agreement(fingerprint, relabelled) < 0.2 and mapped_decisions(fingerprint, owner) is None
    mapped = mapped_decisions(fingerprint, relabelled)
    assert mapped.class_map == list(range(9, -1, -1)) and mapped.rate == 1.0 and mapped.renames
    # judge: scored in full once its classes are named back, as the owner itself is
    as_owner, named_back = judge(fingerprint, owner, "timm:test_resnet"), judge(fingerprint, relabelled,
                                                                                 "timm:test_resnet")
    assert named_back.renamed and named_back.class_map == list(range(9, -1, -1)) and not as_owner.renamed
    assert named_back.agreement == as_owner.agreement == 1.0 and named_back.evidence == pytest.approx(as_owner.evidence)
    assert named_back.output_similarity == pytest.approx(1.0, abs=1e-5) and named_back.evidence >= 3.0
    # the outputs: the owner's explain the copy's within-class variation better than independent models' do
    assert copied.output_fit is not None and honest.output_fit is not None
    # (two calibration references here: a wide null, so the margin is asserted on the fit itself)
    assert copied.output_fit > honest.output_fit + 0.15 and copied.output_z > honest.output_z, (copied, honest)
    # the gradients: the copy's lie in the owner's span far beyond the chance share independent models' reach
    assert copied.gradient_share > 5 * honest.gradient_share and copied.gradient_z >= 3.0 > honest.gradient_z, (
        copied, honest)
    # judge on the transfer copy: decisions through its class map, outputs' fit, gradients' share, by Stouffer's sum
    judged = judge(fingerprint, transfer, "timm:test_resnet")
    assert not judged.renamed and judged.z == pytest.approx(copied.z)
    assert judged.output_z == pytest.approx(copied.output_z) and judged.gradient_z == pytest.approx(copied.gradient_z)
    assert judged.evidence == pytest.approx((judged.z + judged.output_z + judged.gradient_z) / np.sqrt(3))
    assert judged.mapped_inputs == sum(c >= 0 for c in [copied.class_map[int(k)] for k in fingerprint.labels])


def test_null_uses_the_suspects_architecture_and_a_binomial_floor(fingerprint):
    mean, sigma, which = fingerprint.null("timm:test_resnet")
    assert "timm:test_resnet" in which
    assert sigma >= np.sqrt(max(mean * (1 - mean), 1 / fingerprint.size) / fingerprint.size) - 1e-12
    _, _, fallback = fingerprint.null("timm:unknown")
    assert fallback == "all calibration references"


def test_null_spread_within_architectures_only_when_the_references_vary():
    """References trained by varied recipes: a suspect of an architecture with two or more references is judged
    by their mean and by the references' spread around their own architecture's mean (pooled, widened by
    sqrt(1 + 1/n)); references all trained by the owner's recipe (older fingerprints): the spread of all of
    them. Exact numbers."""
    calibration = {"timm:a": [0.1, 0.2, 0.3, 0.2], "timm:b": [0.5, 0.6, 0.5, 0.6], "timm:c": [0.9]}
    pooled = np.std([v for vs in calibration.values() for v in vs], ddof=1)
    within = np.sqrt((0.02 + 0.01) / 6 * (1 + 1 / 4))

    def made(varied: bool | None) -> Fingerprint:
        recipe = {} if varied is None else {"config": {"varied_calibration": varied}}
        return Fingerprint(owner="o", owner_sha256=None, inputs=torch.zeros(10_000, 3, 2, 2),
                           labels=torch.zeros(10_000, dtype=torch.long), num_classes=2, calibration=calibration,
                           recipe=recipe, output_calibration=calibration,
                           probe_inputs=torch.zeros(1, 3, 2, 2), probe_logits=torch.zeros(1, 2),
                           reference_logits=torch.zeros(2, 1, 2))

    varied = made(True)
    assert varied.varied_calibration and not made(False).varied_calibration and not made(None).varied_calibration
    for null in (varied.null, varied.output_null):
        assert null("timm:a") == pytest.approx((0.2, within, "calibration references of timm:a, trained by varied "
                                                             "recipes"))
        assert null("timm:b")[:2] == pytest.approx((0.55, within))
        assert null("timm:c")[:2] == pytest.approx((np.mean([0.1, 0.2, 0.3, 0.2, 0.5, 0.6, 0.5, 0.6, 0.9]), pooled))
    for fp in (made(False), made(None)):
        assert fp.null("timm:a") == pytest.approx((0.2, pooled, "calibration references of timm:a"))
        assert fp.output_null("timm:b")[:2] == pytest.approx((0.55, pooled))


def test_output_profile_is_the_non_top_ranking_only():
    g = torch.Generator().manual_seed(0)
    owner = torch.randn(50, 10, generator=g)
    top = owner.argmax(1)
    profile = non_top_profile(owner, top)
    assert profile.shape == (50, 9) and torch.allclose(profile.mean(1), torch.zeros(50), atol=1e-5)
    assert profile_similarity(owner, owner) == pytest.approx(1.0, abs=1e-6)
    # a shift of all logits (same probabilities) and any change of the chosen class's logit change nothing
    moved = owner + 3.0
    moved[torch.arange(50), top] += torch.rand(50, generator=g) * 20
    assert profile_similarity(owner, moved) == pytest.approx(1.0, abs=1e-5)
    # the same decisions with the other classes ranked the other way round: as unlike as it gets
    flipped = -owner
    flipped[torch.arange(50), top] = owner.max() + 10
    assert profile_similarity(owner, flipped) == pytest.approx(-1.0, abs=1e-5)
    assert abs(profile_similarity(owner, torch.randn(50, 10, generator=g))) < 0.3
    # contrast: nearness to the owner beyond nearness to the references (the owner's top class removed)
    refs = [torch.randn(50, 10, generator=g) for _ in range(3)]
    assert profile_contrast(owner, refs, owner) == pytest.approx(
        1.0 - np.mean([profile_similarity(r, owner, top) for r in refs]), abs=1e-6)
    assert profile_contrast(owner, refs, refs[0], skip=0) == pytest.approx(
        profile_similarity(owner, refs[0]) - np.mean([profile_similarity(r, refs[0], top) for r in refs[1:]]),
        abs=1e-6)
    with pytest.raises(ValueError):
        profile_contrast(owner, refs[:1], refs[0], skip=0)


def test_fit_records_the_owners_outputs_on_its_own_images(fingerprint, owner, digits):
    fp = fingerprint
    assert fp.has_outputs and fp.probe_inputs.shape == (FAST.output_probes, 3, R, R)
    # probe images are owner images (not perturbed), those not searched for conferrable inputs first
    x = digits[1].x
    assert float(torch.cdist(fp.probe_inputs.flatten(1), x.flatten(1)).min(1).values.max()) == 0.0
    assert torch.allclose(fp.probe_logits, model_logits(owner, fp.probe_inputs), atol=1e-5)
    assert output_scores(fp, owner).similarity == pytest.approx(1.0, abs=1e-5)
    # the two calibration references' outputs are kept; each one's contrast against the other is the null
    assert fp.reference_logits.shape == (2, FAST.output_probes, 10)
    contrasts = fp.output_calibration["timm:test_resnet"]
    assert len(contrasts) == 2 and all(-2.0 <= v < 1.0 for v in contrasts)
    assert contrasts[0] == pytest.approx(profile_contrast(fp.probe_logits, fp.reference_logits,
                                                          fp.reference_logits[0], skip=0), abs=1e-6)
    mean, sigma, _ = fp.output_null("timm:test_resnet")
    assert mean == pytest.approx(np.mean(contrasts)) and sigma >= MIN_OUTPUT_SIGMA
    assert output_scores(fp, _wrap(timm.create_model("test_resnet", num_classes=4))) is None


def test_a_distilled_student_copies_the_owners_outputs(fingerprint, owner, digits):
    """A student of another architecture distilled on the owner's soft outputs over images the owner never
    saw shares no weights and few decisions beyond any accurate model's, but ranks the non-chosen classes
    as the owner does; an independent model of the same architecture on the same images does not."""
    data, _ = digits
    x, y = data.x_train[600:1000], data.y_train[600:1000]
    torch.manual_seed(5)
    student = train(timm.create_model("test_efficientnet", num_classes=10), x, y, 6, 5e-3, 64, 5,
                    teacher=owner.module, temperature=2.0, alpha=1.0)
    torch.manual_seed(6)
    independent = train(timm.create_model("test_efficientnet", num_classes=10), x, y, 6, 5e-3, 64, 6)
    s_student, s_indep = (output_scores(fingerprint, _wrap(m)) for m in (student, independent))
    assert s_student.similarity > s_indep.similarity + 0.1
    assert s_student.contrast > s_indep.contrast + 0.1 and s_student.contrast > fingerprint.output_null()[0]
    score = FingerprintScore.of(fingerprint, agreement(fingerprint, _wrap(student)), "timm:test_efficientnet",
                                s_student)
    assert score.output_z is not None and score.output_z > score.z


def test_idiosyncratic_answers_keep_queries_the_references_answer_otherwise():
    from gifindex.fingerprint.queries import idiosyncratic_answers

    queries = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()

    def net(answer):  # answer(query index) -> class of 3, as one-hot logits
        return lambda x: torch.nn.functional.one_hot(torch.tensor([answer(int(v)) for v in x[:, 0, 0, 0]]), 3).float()

    owner = net(lambda i: i % 3)
    late = net(lambda i: i % 3 if i < 5 else (i + 1) % 3)   # follows the owner on queries 0-4
    even = net(lambda i: i % 3 if i % 2 == 0 else (i + 2) % 3)  # follows it on even queries
    inputs, answers = idiosyncratic_answers(owner, [late, even], queries, 0.25, limit=100)
    assert inputs[:, 0, 0, 0].tolist() == [5, 7, 9] and answers.tolist() == [2, 1, 0]  # neither reference follows
    inputs, _ = idiosyncratic_answers(owner, [late, even], queries, 0.5, limit=100)
    assert inputs[:, 0, 0, 0].tolist() == [1, 3, 5, 6, 7, 8, 9]  # at most one of the two follows
    sample, again = (idiosyncratic_answers(owner, [late, even], queries, 0.5, limit=3, seed=4)[0] for _ in range(2))
    assert torch.equal(sample, again) and len(sample) == 3
    assert set(sample[:, 0, 0, 0].tolist()) <= {1, 3, 5, 6, 7, 8, 9} and sample[:, 0, 0, 0].tolist() == sorted(
        sample[:, 0, 0, 0].tolist())


def _lookup_nets():
    """Ten queries (pixel value = index) and nets answering by index: the owner i % 3, and three references that
    share its answer on queries 0-4, on even queries, and never; so 2, 1 or 0 of them share it."""
    queries = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()

    def net(answer):
        return lambda x: torch.nn.functional.one_hot(torch.tensor([answer(int(v)) for v in x[:, 0, 0, 0]]), 3).float()

    references = [net(lambda i: i % 3 if i < 5 else (i + 1) % 3), net(lambda i: i % 3 if i % 2 == 0 else (i + 2) % 3),
                  net(lambda i: (i + 1) % 3)]
    return queries, net(lambda i: i % 3), references


def test_answers_weigh_by_how_rarely_references_share_them():
    """p = (k + 1/2) / (R + 1) for k of R references sharing the owner's answer: surprise -log p, log-odds
    log((1 - p) / p) and 0 from p = 1/2 on (those answers dropped)."""
    from gifindex.fingerprint.queries import effective_count, logged_answers, reference_weights

    queries, owner, references = _lookup_nets()
    shared = np.array([2, 1, 2, 1, 2, 0, 1, 0, 1, 0])  # per query, how many of the three references answer as the owner
    p = (shared + 0.5) / 4
    answers = owner(queries).argmax(1)
    assert reference_weights(references, queries, answers, "surprise").tolist() == pytest.approx(-np.log(p))
    log_odds = reference_weights(references, queries, answers, "log-odds")
    assert log_odds.tolist() == pytest.approx(np.maximum(0, np.log((1 - p) / p)))
    assert log_odds[5] == pytest.approx(np.log(7)) and log_odds[1] == pytest.approx(np.log(5 / 3)) and log_odds[0] == 0
    # unreviewed (none sharing): the kept answers weigh alike
    inputs, answers, w = logged_answers(owner, references, queries, None, 0.0, 100, "surprise")
    assert inputs[:, 0, 0, 0].tolist() == [5, 7, 9] and w.tolist() == pytest.approx([np.log(8)] * 3)
    labels = torch.tensor([(i + 1) % 3 for i in range(10)])  # the owner is wrong on every query
    labels[6:] = -1  # ... but only 0-5 were reviewed
    inputs, answers, w = logged_answers(owner, references, queries, labels, 0.0, 100, "surprise")
    assert inputs[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5] and answers.tolist() == [0, 1, 2, 0, 1, 2]
    assert w.tolist() == pytest.approx(-np.log(p[:6]))
    inputs, answers, w = logged_answers(owner, references, queries, labels, 0.0, 100, "log-odds")
    assert inputs[:, 0, 0, 0].tolist() == [1, 3, 5] and answers.tolist() == [1, 0, 2]
    assert w.tolist() == pytest.approx([np.log(5 / 3), np.log(5 / 3), np.log(7)])
    inputs, _, w = logged_answers(owner, references, queries, labels, 0.0, 100, "none")
    assert inputs[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5] and w is None  # all wrong answers, alike
    assert effective_count(None, 6) == 6.0 and effective_count(torch.tensor([1.0, 1.0, 1.0]), 3) == pytest.approx(3)
    assert effective_count(torch.tensor([2.0, 1.0, 1.0]), 3) == pytest.approx(16 / 6)
    with pytest.raises(ValueError, match="unknown query weighting"):
        reference_weights(references, queries, answers, "none")


def test_least_sure_queries_are_those_worth_reviewing():
    from gifindex.fingerprint.queries import least_sure

    margins = torch.tensor([3.0, 0.1, 2.0, 0.5, 5.0, 0.2, 1.0, 4.0])  # the owner's lead of class 1 over class 0
    queries = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 2, 2).contiguous()

    def owner(x):
        lead = margins[x[:, 0, 0, 0].long()]
        return torch.stack([torch.zeros_like(lead), lead, torch.full_like(lead, -9.0)], 1)

    rows, answers, sure = least_sure(owner, queries, 0.375, batch_size=3)  # 3 of 8, batches of 3
    assert rows.tolist() == [1, 3, 5] and answers.tolist() == [1, 1, 1]  # in log order
    assert sure.tolist() == pytest.approx(torch.sigmoid(margins[[1, 3, 5]]).tolist(), abs=1e-4)
    assert least_sure(owner, queries, 0.01)[0].tolist() == [1]  # at least one
    assert least_sure(owner, queries, 1.0, limit=2)[0].tolist() == [1, 5]  # a budget: the two least sure
    assert least_sure(owner, queries, 0.25, limit=5)[0].tolist() == [1, 5]  # the share binds first
    with pytest.raises(ValueError, match="review share"):
        least_sure(owner, queries, 0.0)
    with pytest.raises(ValueError, match="review budget"):
        least_sure(owner, queries, 0.5, limit=0)


class _Fixed(torch.nn.Module):
    """Answers the preset classes, row by row, whatever the images (one batch)."""

    def __init__(self, classes: list[int]):
        super().__init__()
        self.logits = torch.nn.functional.one_hot(torch.tensor(classes), 10).float()

    def forward(self, x):
        return self.logits[:len(x)]


def test_weighted_agreement_and_its_null(fingerprint, tmp_path):
    """A suspect repeating the rare answers scores their share of the weight; the null's binomial floor counts
    the effective number of answers."""
    from gifindex.fingerprint.fingerprint import query_agreement

    weights = torch.tensor([3.0, 1.0, 1.0, 1.0])
    fp = dataclasses.replace(fingerprint, query_inputs=torch.rand(4, 3, R, R), query_labels=torch.tensor([0, 1, 2, 0]),
                             query_weights=weights, query_calibration={"timm:test_resnet": [0.1, 0.1, 0.1]})
    assert query_agreement(fp, _wrap(_Fixed([0, 0, 0, 1]))) == pytest.approx(3 / 6)  # only the heavy one
    assert query_agreement(fp, _wrap(_Fixed([1, 1, 2, 0]))) == pytest.approx(3 / 6)  # the three light ones
    assert query_agreement(dataclasses.replace(fp, query_weights=None), _wrap(_Fixed([0, 0, 0, 1]))) == 0.25
    assert fp.query_effective_count == pytest.approx(36 / 12)
    mean, sigma, _ = fp.query_null("timm:test_resnet")
    assert mean == pytest.approx(0.1) and sigma == pytest.approx(np.sqrt(max(0.1 * 0.9, 1 / 3) / 3))  # 3, not 4
    back = load_fingerprint(save_fingerprint(fp, tmp_path / "weighted.npz"))
    assert torch.equal(back.query_weights, weights) and back.query_effective_count == pytest.approx(3)
    with pytest.raises(GifindexError, match="query weights"):
        dataclasses.replace(fp, query_weights=torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(GifindexError, match="query weights"):
        dataclasses.replace(fp, query_weights=torch.ones(3))


def test_query_flag_rates_are_where_the_query_part_alone_reaches_the_verdict(fingerprint):
    """A suspect repeating exactly the reported share of the kept answers (and nothing else of the owner's) has
    evidence at the threshold; a log of few answers that independent models often give cannot flag anyone."""
    from gifindex.cli.apps import _query_power
    from gifindex.fingerprint.fingerprint import OTHER_ARCHS, FingerprintScore, single_look_z, stronger_of_two

    assert stronger_of_two(single_look_z(3.0)) == pytest.approx(3.0) and single_look_z(3.0) > 3.0
    assert stronger_of_two(single_look_z(5.0)) == pytest.approx(5.0)
    calibration = {"timm:test_resnet": [0.2, 0.3, 0.25], "timm:test_vit": [0.1, 0.15]}
    fp = dataclasses.replace(fingerprint, query_inputs=torch.rand(20, 3, R, R),
                             query_labels=torch.arange(20) % 10, query_calibration=calibration)
    rates = fp.query_flag_rates()
    assert set(rates) == {"timm:test_resnet", "timm:test_vit", OTHER_ARCHS}
    for arch, rate in rates.items():
        arch = None if arch == OTHER_ARCHS else arch
        mean, sigma, _ = fp.query_null(arch)
        assert rate == pytest.approx(mean + single_look_z(3.0) * sigma)
        at = FingerprintScore.of(fp, 0.0, arch, query_rate=rate)  # decisions far below: the query part alone
        assert at.evidence == pytest.approx(3.0, abs=1e-6)
        assert FingerprintScore.of(fp, 0.0, arch, query_rate=rate - 0.01).evidence < 3.0
    assert all(rate < 1 for rate in rates.values())
    assert _query_power(rates).startswith("a suspect that repeats at least ")
    few = dataclasses.replace(fp, query_inputs=torch.rand(4, 3, R, R), query_labels=torch.arange(4),
                              query_calibration={"timm:test_resnet": [0.5, 0.7, 0.6]})
    assert min(few.query_flag_rates().values()) > 1  # 4 answers that independent models often give
    assert _query_power(few.query_flag_rates()).startswith("too few answers for the log alone to flag a suspect of "
                                                           "timm:test_resnet, (other architectures) even if")


def test_a_verdict_only_an_unreviewed_log_carries_says_so():
    from gifindex.cli.apps import unreviewed_note

    def result(reviewed, owner_data_z, query_z=5.0, verdict="derived", evidence="fingerprint"):
        return {"evidence": evidence, "verdict": verdict,
                "fingerprint": {"queries_reviewed": reviewed, "owner_data_z": owner_data_z, "query_z": query_z}}

    assert unreviewed_note(result(False, 1.0), 3.0).startswith("carried by an unreviewed query log: ")
    assert unreviewed_note(result(False, None), 3.0) is not None  # outputs about other classes: the log carried it
    assert unreviewed_note(result(True, 1.0), 3.0) is None  # reviewed: the wrong answers no honest model learns
    assert unreviewed_note(result(None, 1.0, None), 3.0) is None  # no log
    assert unreviewed_note(result(False, 3.5), 3.0) is None  # the owner's own data carries it as well
    assert unreviewed_note(result(False, 1.0, verdict="unrelated"), 3.0) is None
    assert unreviewed_note(result(False, 1.0, evidence="signature"), 3.0) is None


def test_reviewed_queries_keep_exactly_the_owners_wrong_answers(owner, digits):
    from gifindex.fingerprint.queries import wrong_answers

    queries = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 2, 2).contiguous()
    net = lambda x: torch.nn.functional.one_hot(x[:, 0, 0, 0].long() % 3, 3).float()  # noqa: E731 - answers i % 3
    inputs, answers = wrong_answers(net, queries, torch.tensor([0, 2, -1, -1, 1, 1]), limit=100)
    assert inputs[:, 0, 0, 0].tolist() == [1, 5] and answers.tolist() == [1, 2]  # reviewed, and answered wrongly
    # through the fit: the owner's answers kept are exactly its errors on the reviewed queries
    data, owner_data = digits
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x, y = (data.x_train[600:1000] * std + mean).clamp(0, 1), data.y_train[600:1000].clone()
    y[200:] = -1  # half the log reviewed
    config = FitConfig(helper_archs=("timm:test_resnet",), surrogates=1, references=1, calibration_per_arch=2,
                       candidates=64, output_probes=0, recipe=TrainRecipe(epochs=2, augment_copies=1),
                       search=SearchConfig(eps=0.1, steps=6), query_weighting="none")
    fp = fit_fingerprint(owner, owner_data, config, build=_build, queries=x, query_labels=y)
    with torch.no_grad():
        owner_answers = model_logits(owner, x[:200]).argmax(1)
    errors = torch.nonzero(owner_answers != y[:200]).flatten()
    assert fp.recipe["reviewed_queries"] == 200 and fp.queries == len(errors) >= 8 and fp.query_weights is None
    assert torch.equal(fp.query_inputs, x[errors]) and torch.equal(fp.query_labels, owner_answers[errors])
    # weighed (the default, surprise): the same answers, each worth log 4 where the one reference does not give
    # it (p = 1/4), log 4/3 where it does (p = 3/4)
    captured = []
    fp = fit_fingerprint(owner, owner_data, dataclasses.replace(config, query_weighting="surprise"), build=_build,
                         queries=x, query_labels=y, on_calibration=lambda arch, m: captured.append(m))
    assert torch.equal(fp.query_inputs, x[errors]) and torch.equal(fp.query_labels, owner_answers[errors])
    w = fp.query_weights.double().numpy()
    assert np.all(np.isclose(w, np.log(4)) | np.isclose(w, np.log(4 / 3))) and np.isclose(w, np.log(4)).any()
    assert fp.query_calibration["timm:test_resnet"] == [query_agreement(fp, m) for m in captured]


@pytest.fixture(scope="module")
def query_fingerprint(owner, digits):
    """The owner's fingerprint fitted with its query log: the 400 images a thief sent through its API."""
    data, owner_data = digits
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    thief_queries = (data.x_train[600:1000] * std + mean).clamp(0, 1)
    # references trained as long as the owner's own recipe (FAST's 2 epochs leave them wrong where the owner is
    # right, and then what they do not answer is not the owner's own)
    config = dataclasses.replace(FAST, recipe=TrainRecipe(epochs=6, augment_copies=1))
    return fit_fingerprint(owner, owner_data, config, build=_build, queries=thief_queries)


def test_the_query_log_recognises_a_hard_label_student_and_not_its_twin(query_fingerprint, owner, digits, tmp_path):
    """A student trained on the owner's hard labels for the thief's queries repeats the owner's idiosyncratic
    answers to them; its twin (same architecture, initialisation, data and order, true labels) does not,
    though it differs from the student only in the labels the owner got wrong."""
    data, _ = digits
    fp = query_fingerprint
    assert fp.has_queries and fp.queries >= 8 and fp.recipe["logged_queries"] == 400
    assert torch.equal(model_logits(owner, fp.query_inputs).argmax(1), fp.query_labels)  # the owner's answers
    assert sorted(fp.query_calibration) == ["timm:test_resnet"] and len(fp.query_calibration["timm:test_resnet"]) == 2
    x, y = data.x_train[600:1000], data.y_train[600:1000]
    with torch.no_grad():
        owner_labels = owner.module(x).argmax(1)
    pupils = {}
    for name, labels in (("student", owner_labels), ("twin", y)):
        torch.manual_seed(7)
        pupils[name] = _wrap(train(timm.create_model("test_resnet", num_classes=10), x, labels, 4, 5e-3, 64, 7))
    rates = {name: query_agreement(fp, m) for name, m in pupils.items()}
    assert rates["student"] > rates["twin"] + 0.2, rates  # here 0.50 against 0.17
    scores = {name: FingerprintScore.of(fp, agreement(fp, m), "timm:test_resnet", output_scores(fp, m),
                                        rates[name]) for name, m in pupils.items()}
    # the twin is an independent model trained on the very queries (z 2.9 here: near the null's tail, being the
    # strongest of negatives); the student lies far beyond it (11.6)
    assert scores["student"].query_z > max(3.0, scores["twin"].query_z + 4.0), scores
    assert query_agreement(fp, _wrap(timm.create_model("test_resnet", num_classes=4))) is None  # other classes
    from scipy.stats import norm

    student = scores["student"]
    stouffer = (student.z + student.output_z) / np.sqrt(2.0)
    p_min = norm.sf(max(stouffer, student.query_z))  # the stronger of the two, Sidak-adjusted for looking at two
    assert student.owner_data_z == pytest.approx(stouffer)
    assert student.evidence == pytest.approx(norm.isf(p_min * (2 - p_min)), rel=1e-6)
    assert student.evidence < max(stouffer, student.query_z)
    back = load_fingerprint(save_fingerprint(fp, tmp_path / "q.npz"))
    assert torch.equal(back.query_inputs, fp.query_inputs) and torch.equal(back.query_labels, fp.query_labels)
    assert back.query_calibration == fp.query_calibration and back.queries == fp.queries
    assert fp.query_weights is None and back.query_weights is None and fp.query_effective_count == fp.queries


def test_outputs_are_compared_on_the_logged_queries(query_fingerprint, owner, digits, tmp_path):
    """With a query log the owner's outputs are recorded on a seeded sample of the logged queries: a student
    distilled through the API learnt them there, on exactly those images. It copies the owner's ranking of the
    classes it did not choose; an independent model trained on the same images with their true labels does not."""
    data, owner_data = digits
    fp = query_fingerprint
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    thief_queries = (data.x_train[600:1000] * std + mean).clamp(0, 1)
    logged = {row.numpy().tobytes() for row in thief_queries}
    assert fp.output_probes == FAST.output_probes == fp.output_probe_queries
    assert all(row.numpy().tobytes() in logged for row in fp.probe_inputs)
    assert len({row.numpy().tobytes() for row in fp.probe_inputs}) == fp.output_probes  # a sample, no repeats
    assert torch.allclose(fp.probe_logits, model_logits(owner, fp.probe_inputs), atol=1e-5)
    x, y = data.x_train[600:1000], data.y_train[600:1000]
    torch.manual_seed(5)
    student = _wrap(train(timm.create_model("test_efficientnet", num_classes=10), x, y, 6, 5e-3, 64, 5,
                          teacher=owner.module, temperature=2.0, alpha=1.0))
    torch.manual_seed(6)
    twin = _wrap(train(timm.create_model("test_efficientnet", num_classes=10), x, y, 6, 5e-3, 64, 6))
    s_student, s_twin = (output_scores(fp, m) for m in (student, twin))
    assert s_student.contrast > s_twin.contrast + 0.1, (s_student, s_twin)
    # "owner": the owner's own images, as without a log
    config = dataclasses.replace(FAST, output_probe_source="owner", output_probes=8, candidates=64)
    fp_owner = fit_fingerprint(owner, owner_data, config, build=_build, queries=thief_queries[:50])
    own = {row.numpy().tobytes() for row in owner_data.x}
    assert fp_owner.output_probe_queries == 0 and all(row.numpy().tobytes() in own for row in fp_owner.probe_inputs)
    # the class map of a suspect is then read on owner images, stored beside the probes (and with them on disk)
    assert fp.map_inputs.shape == (FAST.output_probes, 3, R, R) and fp_owner.map_inputs is None
    assert all(row.numpy().tobytes() in own for row in fp.map_inputs)
    assert torch.equal(fp.map_labels, model_logits(owner, fp.map_inputs).argmax(1))
    back = load_fingerprint(save_fingerprint(fp, tmp_path / "q.npz"))
    assert torch.equal(back.map_inputs, fp.map_inputs) and torch.equal(back.map_labels, fp.map_labels)
    assert back.output_probe_queries == fp.output_probe_queries
    # and the owner's and references' outputs there: a suspect of another label set has its outputs fitted on the
    # owner's images (a copy under a new head may have been trained on the very images a thief queried)
    assert torch.allclose(fp.map_logits, model_logits(owner, fp.map_inputs), atol=1e-5)
    assert fp.map_reference_logits.shape == (len(fp.null_rates), FAST.output_probes, 10)
    assert torch.equal(back.map_logits, fp.map_logits) and torch.equal(back.map_reference_logits,
                                                                       fp.map_reference_logits)
    headed = copy.deepcopy(owner.module)
    torch.manual_seed(3)
    headed.reset_classifier(2)
    judged = judge(fp, _wrap(headed), "timm:test_resnet")
    on_own = model_logits(_wrap(headed), fp.map_inputs)
    assert judged.output_fit == pytest.approx(within_class_fit(fp.map_logits, on_own, fp.map_logits.argmax(1)))
    with pytest.raises(GifindexError, match="reference outputs on the class-map images"):
        dataclasses.replace(fp, map_reference_logits=fp.map_reference_logits[:, :3])
    damaged = dict(np.load(tmp_path / "q.npz"))
    damaged["map_reference_logits"] = damaged["map_reference_logits"] * np.nan
    np.savez(tmp_path / "damaged.npz", **damaged)
    with pytest.raises(GifindexError, match="damaged fingerprint class-map outputs"):
        load_fingerprint(tmp_path / "damaged.npz")
    reversed_owner = _wrap(ReorderedOutputs(owner.module, list(range(9, -1, -1))))
    named_back = judge(fp, reversed_owner, "timm:test_resnet")
    assert named_back.renamed and named_back.agreement == 1.0 and named_back.evidence >= 3.0
    with pytest.raises(ConfigError, match="invalid output_probe_source 'log'"):
        FitConfig(output_probe_source="log")


def test_a_query_log_without_idiosyncratic_answers_is_left_out(owner, digits):
    """Queries the owner answers as its references do (here: its own training images) leave that part out."""
    _, owner_data = digits
    config = FitConfig(helper_archs=("timm:test_resnet",), surrogates=1, references=1, calibration_per_arch=2,
                       candidates=64, output_probes=0, recipe=TrainRecipe(epochs=2, augment_copies=1),
                       search=SearchConfig(eps=0.1, steps=6))
    said = []
    config = dataclasses.replace(config, output_probes=12)
    fp = fit_fingerprint(owner, owner_data, config, build=_build, queries=owner_data.x[:5], progress=said.append)
    assert not fp.has_queries and fp.queries == 0 and fp.query_calibration == {}
    assert any("fitted without the query log" in line for line in said)
    # the outputs are compared on the whole (short) log first, owner images make up the rest
    assert fp.output_probes == 12 and fp.output_probe_queries == fp.recipe["output_probe_queries"] == 5
    as_rows = {row.numpy().tobytes() for row in owner_data.x[:5]}
    assert sorted(row.numpy().tobytes() in as_rows for row in fp.probe_inputs) == [False] * 7 + [True] * 5
    assert all(row.numpy().tobytes() in as_rows for row in fp.probe_inputs[:5])
    with pytest.raises(GifindexError, match=r"logged queries of shape \(3, 8, 8\) do not match"):
        fit_fingerprint(owner, owner_data, config, build=_build, queries=torch.zeros(4, 3, 8, 8))
    assert FingerprintScore.of(fp, 0.5, "timm:test_resnet", None, 0.9).query_z is None


def test_query_log_loads_arrays_and_folders(tmp_path, monkeypatch):
    from PIL import Image

    np.save(tmp_path / "log.npy", np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8))
    x, labels = load_query_log(tmp_path / "log.npy", R)
    assert x.shape == (5, 3, R, R) and float(x.min()) >= 0 and float(x.max()) <= 1 and labels is None
    images = np.random.default_rng(1).random((4, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "reviewed.npz", x=images, y=np.array([3, -1, 0, -1]))
    x, labels = load_query_log(tmp_path / "reviewed.npz", R)  # the images are x, the review labels y
    assert x.shape == (4, 3, R, R) and labels.tolist() == [3, -1, 0, -1]
    assert torch.allclose(x[0, 0], torch.nn.functional.interpolate(torch.from_numpy(images[:1, None]), size=(R, R),
                                                                   mode="bilinear", align_corners=False)[0, 0])
    np.savez(tmp_path / "bad.npz", x=images, y=np.array([3, -2, 0, 1]))
    with pytest.raises(ProbeError, match="review labels 'y' must be integers >= -1"):
        load_query_log(tmp_path / "bad.npz", R)
    np.savez(tmp_path / "short.npz", x=images, y=np.array([3, 1]))
    with pytest.raises(ProbeError, match="4 logged queries but 2 review labels"):
        load_query_log(tmp_path / "short.npz", R)
    folder = tmp_path / "queries" / "day1"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    x, labels = load_query_log(tmp_path / "queries", R)
    assert x.shape == (3, 3, R, R) and x[2].mean().item() == pytest.approx(80 / 255, abs=1e-3) and labels is None
    with pytest.raises(ProbeError, match="query log is the owner's own record"):
        load_query_log("builtin", R)
    with pytest.raises(ProbeError, match="not found"):
        load_query_log(tmp_path / "nothing.npy", R)
    import gifindex.fingerprint.data as data_module

    monkeypatch.setattr(data_module, "MAX_QUERY_BYTES", 4 * 3 * R * R * 4)  # room for four queries at R px
    with pytest.raises(ProbeError, match=f"5 logged queries; at {R} px pass a sample of at most 4"):
        load_query_log(tmp_path / "log.npy", R)


def test_the_fingerprint_judges_whenever_outputs_are_comparable():
    assert combine(5.0, None) == (5.0, "signature")
    assert combine(9.0, 1.0) == (1.0, "fingerprint") and combine(2.0, 4.0) == (4.0, "fingerprint")


def test_sidak_adjusted_evidence_keeps_the_threshold_meaning():
    from scipy.stats import norm

    score = FingerprintScore(agreement=0.5, null_mean=0.1, null_sigma=0.1, null_source="x", z=1.0, output_z=1.0,
                             query_agreement=0.9, query_null_mean=0.1, query_null_sigma=0.1, query_z=3.2)
    assert score.owner_data_z == pytest.approx(np.sqrt(2.0))
    # p = sf(3.2) for the stronger of two looks: 1 - (1 - p)^2 ~ 2p, i.e. z ~ 2.99: just under the verdict's 3
    assert score.evidence == pytest.approx(norm.isf(2 * norm.sf(3.2) - norm.sf(3.2) ** 2)) and score.evidence < 3.0
    huge = dataclasses.replace(score, query_z=40.0)  # no underflow to infinity or NaN for overwhelming evidence
    assert 39.0 < huge.evidence < 40.0
    low = dataclasses.replace(score, query_z=-9.0, z=-9.0, output_z=-9.0)
    assert low.evidence < -8.0


def test_evidence_is_stouffers_sum_of_decisions_and_outputs(fingerprint):
    from gifindex.fingerprint import OutputScore

    mean, sigma, _ = fingerprint.null("timm:test_resnet")
    out_mean, out_sigma, _ = fingerprint.output_null("timm:test_resnet")
    score = FingerprintScore.of(fingerprint, mean + 3 * sigma, "timm:test_resnet",
                                OutputScore(similarity=0.5, contrast=out_mean + 1 * out_sigma))
    assert score.z == pytest.approx(3.0) and score.output_z == pytest.approx(1.0)
    assert score.evidence == pytest.approx(4.0 / np.sqrt(2.0))
    assert FingerprintScore.of(fingerprint, mean + 3 * sigma, "timm:test_resnet").evidence == pytest.approx(3.0)
    assert FingerprintScore.of(fingerprint, None).evidence is None


def test_round_trip_and_damaged_file(fingerprint, tmp_path):
    path = save_fingerprint(fingerprint, tmp_path / "fp" / "owner.npz")
    back = load_fingerprint(path)
    assert torch.equal(back.inputs, fingerprint.inputs) and torch.equal(back.labels, fingerprint.labels)
    assert back.calibration == fingerprint.calibration and back.num_classes == fingerprint.num_classes
    assert torch.equal(back.probe_inputs, fingerprint.probe_inputs)
    assert torch.equal(back.probe_logits, fingerprint.probe_logits)
    assert torch.equal(back.reference_logits, fingerprint.reference_logits)
    assert back.output_calibration == fingerprint.output_calibration
    assert torch.equal(back.reference_decisions, fingerprint.reference_decisions)
    assert torch.equal(back.gradient_inputs, fingerprint.gradient_inputs)
    for name in ("gradient_bases", "reference_gradient_bases"):  # written in half precision, read as float32
        assert np.load(path)[name].dtype == np.float16 and getattr(back, name).dtype == torch.float32, name
        assert torch.allclose(getattr(back, name), getattr(fingerprint, name), rtol=1e-3, atol=1e-4), name
    jacobian = torch.randn(len(fingerprint.gradient_inputs), 3, fingerprint.gradient_bases.shape[1],
                           generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert span_share(jacobian, back.gradient_bases) == pytest.approx(
        span_share(jacobian, fingerprint.gradient_bases), abs=2e-3)
    full = dict(np.load(path))  # a fingerprint written in float32 before still loads, exactly
    for name in ("gradient_bases", "reference_gradient_bases"):
        full[name] = getattr(fingerprint, name).numpy().astype(np.float32)
    np.savez(tmp_path / "float32.npz", **full)
    assert torch.equal(load_fingerprint(tmp_path / "float32.npz").gradient_bases, fingerprint.gradient_bases)
    assert fingerprint.reference_gradient_bases.shape[:2] == (len(fingerprint.null_rates), 32)
    with pytest.raises(GifindexError, match="reference gradient bases"):
        dataclasses.replace(fingerprint, reference_gradient_bases=fingerprint.reference_gradient_bases[1:])
    damaged = dict(np.load(path))
    damaged["gradient_bases"] = np.full_like(damaged["gradient_bases"], np.inf)
    np.savez(tmp_path / "damaged.npz", **damaged)
    with pytest.raises(GifindexError, match="damaged fingerprint gradient arrays"):
        load_fingerprint(tmp_path / "damaged.npz")
    # a fingerprint written before outputs (or the references' decisions) were part of it still loads and scores
    # decisions alone, and cannot relabel another label set
    from gifindex.fingerprint import mapped_decisions

    old = dataclasses.replace(fingerprint, probe_inputs=None, probe_logits=None, reference_logits=None,
                              output_calibration={}, reference_decisions=None)
    back_old = load_fingerprint(save_fingerprint(old, tmp_path / "old.npz"))
    assert not back_old.has_outputs and output_scores(back_old, _wrap(timm.create_model("test_resnet"))) is None
    assert FingerprintScore.of(back_old, 0.5, "timm:test_resnet").output_z is None
    assert back_old.reference_decisions is None
    assert mapped_decisions(back_old, _wrap(timm.create_model("test_resnet", num_classes=2))) is None
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(GifindexError, match="not a readable gifindex fingerprint"):
        load_fingerprint(path)


def test_fit_probes_command_line_defaults_are_the_fit_configs():
    """The CLI spells its defaults out (it does not import torch to show --help); they must stay FitConfig's."""
    import inspect

    from gifindex.apps.fitprobes import fit_probes
    from gifindex.fingerprint.fit import CALIBRATION_RECIPES, PROBE_SOURCES, calibration_recipes, varied_calibration

    config = FitConfig()
    expected = {"surrogates": config.surrogates, "references": config.references,
                "calibration": config.calibration_per_arch, "candidates": config.candidates,
                "calibration_recipes": calibration_recipes(config),
                "output_probes": config.output_probes, "eps": config.search.eps, "epochs": config.recipe.epochs,
                "max_queries": config.max_queries, "output_probes_from": config.output_probe_source}
    cli = {p.name: p.default for p in main.commands["fit-probes"].params}
    api = {name: p.default for name, p in inspect.signature(fit_probes).parameters.items()}
    assert {k: cli[k] for k in expected} == expected == {k: api[k] for k in expected}
    choices = next(p.type.choices for p in main.commands["fit-probes"].params if p.name == "calibration_recipes")
    assert tuple(choices) == CALIBRATION_RECIPES  # the CLI spells them out (it imports no torch) but must agree
    sources = next(p.type.choices for p in main.commands["fit-probes"].params if p.name == "output_probes_from")
    assert tuple(sources) == PROBE_SOURCES

    assert [varied_calibration(name) for name in CALIBRATION_RECIPES] == [True, False]
    with pytest.raises(ConfigError, match="calibration recipes must be 'varied' or 'owner', got 'both'"):
        varied_calibration("both")


COMMON = ["--arch", "timm:test_resnet", "--num-classes", "10", "--input-size", str(R),
          "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]


def _hub(tmp_path, owner, digits, independent: int, first_seed: int) -> tuple[CliRunner, object, dict]:
    """An index of the owner and ``independent`` models trained apart (seeds from ``first_seed``), each saved as
    tmp_path/NAME.pt and ingested under NAME: (runner, index path, {name: module})."""
    data, _ = digits
    runner = CliRunner()
    index = tmp_path / "idx"
    files = {"owner": owner.module}
    for seed in range(independent):
        torch.manual_seed(first_seed + seed)
        files[f"indep{seed}"] = train(timm.create_model("test_resnet", num_classes=10), data.x_train[600:900],
                                      data.y_train[600:900], 2, 5e-3, 64, first_seed + seed)
    for name, module in files.items():
        torch.save(module.state_dict(), tmp_path / f"{name}.pt")
    assert runner.invoke(main, ["init", "-i", str(index), "--resolution", str(R), "--num-probes", "4",
                                "--steps", "2"]).exit_code == 0
    for name in files:
        out = runner.invoke(main, ["ingest", "-i", str(index), str(tmp_path / f"{name}.pt"), "--name", name,
                                   "--executor", "inline", *COMMON])
        assert out.exit_code == 0, out.output
    return runner, index, files


def test_fit_probes_and_suspect_from_the_command_line(tmp_path, owner, digits, monkeypatch):
    data, owner_data = digits
    runner, index, files = _hub(tmp_path, owner, digits, 4, 100)  # suspect needs 3 others besides owner and suspect
    common = COMMON
    np.savez(tmp_path / "owner_data.npz", x=owner_data.x.numpy()[:300], y=owner_data.y.numpy()[:300])
    fit = runner.invoke(main, ["fit-probes", "-i", str(index), "owner", "--data", str(tmp_path / "owner_data.npz"),
                               "--helper-arch", "timm:test_resnet", "--surrogates", "2", "--references", "2",
                               "--calibration", "2", "--candidates", "64", "--epochs", "2", "--eps", "0.1", "--json"])
    assert fit.exit_code == 0, fit.output
    fitted = json.loads(fit.stdout)
    assert fitted["inputs"] >= 8 and (index / "fingerprints").is_dir() and fitted["gradient_images"] == 32
    assert fitted["reference_clean_agreement"] == load_fingerprint(
        next((index / "fingerprints").glob("*.npz"))).reference_clean_agreement
    assert fitted["indexed_others"] == len(files) - 1
    import importlib

    import gifindex.models as models_module
    from gifindex.index.shards import file_sha256 as real_sha256

    suspect_module = importlib.import_module("gifindex.apps.suspect")  # (gifindex.apps.suspect is the function)

    loads = []

    def counted(real):
        def load(ref, *args, **kwargs):
            loads.append(ref)
            return real(ref, *args, **kwargs)
        return load

    monkeypatch.setattr(models_module, "load_model", counted(models_module.load_model))
    monkeypatch.setattr(suspect_module, "load_model", counted(suspect_module.load_model))
    sus = runner.invoke(main, ["suspect", "-i", str(index), str(tmp_path / "owner.pt"), "--owner", "owner",
                               *common, "--json"])
    assert sus.exit_code == 0, sus.output
    assert loads == [str(tmp_path / "owner.pt")]  # signed and fingerprinted from one load
    import gifindex.index.store as store_module

    hashed = []
    monkeypatch.setattr(store_module, "file_sha256", lambda path: hashed.append(path) or real_sha256(path))
    loads.clear()  # no loading options: the indexed owner's convention is found by the file's hash, once
    reused = runner.invoke(main, ["suspect", "-i", str(index), str(tmp_path / "owner.pt"), "--owner", "owner",
                                  "--json"])
    assert reused.exit_code == 0, reused.output
    assert len(loads) == 1 and len(hashed) == 1 and json.loads(reused.stdout)["fingerprint"]["agreement"] == 1.0
    verdict = json.loads(sus.stdout)
    assert verdict["fingerprint"]["agreement"] == 1.0 and verdict["verdict"] == "derived"
    assert verdict["fingerprint"]["output_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert verdict["fingerprint"]["output_z"] > 3.0  # the owner itself: far beyond independent models
    assert verdict["fingerprint"]["output_probes"] == fitted["output_probes"] == 128
    text = runner.invoke(main, ["suspect", "-i", str(index), "indep0", "--owner", "owner"])
    assert text.exit_code == 0 and "fingerprint   agrees with the owner on" in text.output, text.output
    assert "outputs       similarity to the owner's on 128 probe images" in text.output
    off = runner.invoke(main, ["suspect", "-i", str(index), "indep0", "--owner", "owner", "--no-fingerprint", "--json"])
    assert json.loads(off.stdout)["fingerprint"] is None
    # the owner with its output units reversed (its classes renamed): judged through its class map, derived
    renamed = copy.deepcopy(owner.module).state_dict()
    renamed["fc.weight"], renamed["fc.bias"] = renamed["fc.weight"].flip(0), renamed["fc.bias"].flip(0)
    torch.save(renamed, tmp_path / "renamed.pt")
    relabelled = runner.invoke(main, ["suspect", "-i", str(index), str(tmp_path / "renamed.pt"), "--owner", "owner",
                                      *common])
    assert relabelled.exit_code == 0, relabelled.output
    assert "the owner's classes under other names (its output units permuted)" in relabelled.output
    assert "fingerprint   agrees with the owner on 100.0% of" in relabelled.output, relabelled.output
    assert "verdict       DERIVED  (judged by the fingerprint" in relabelled.output, relabelled.output
    # another label set: the owner's body under a 2-class head, judged through its class map and its outputs' fit
    headed = copy.deepcopy(owner.module)
    torch.manual_seed(5)
    headed.reset_classifier(2)
    torch.save(headed.state_dict(), tmp_path / "headed.pt")
    two = [*common[:2], "--num-classes", "2", *common[4:]]
    mapped = runner.invoke(main, ["suspect", "-i", str(index), str(tmp_path / "headed.pt"), "--owner", "owner", *two])
    assert mapped.exit_code == 0, mapped.output
    assert "its outputs are fitted from the owner's within each class" in mapped.output, mapped.output
    assert "outputs       the owner's outputs on 128 of its own images explain" in mapped.output, mapped.output
    assert "gradients     " in mapped.output and "lie in the span of the owner's" in mapped.output, mapped.output
    scan = runner.invoke(main, ["suspect", "-i", str(index), "--owner", "owner", "--all", "--json"])
    assert scan.exit_code == 0, scan.output
    scanned = json.loads(scan.stdout)
    assert scanned["fingerprint"] and sorted(r["suspect"] for r in scanned["models"]) == [f"indep{i}" for i in range(4)]
    alone = json.loads(runner.invoke(main, ["suspect", "-i", str(index), "indep0", "--owner", "owner",
                                            "--json"]).stdout)
    first = next(r for r in scanned["models"] if r["suspect"] == "indep0")
    assert first["evidence"] == alone["evidence"] in ("fingerprint", OFF_TASK) and _same_z(first["z"], alone["z"])
    assert first["fingerprint"]["agreement"] == alone["fingerprint"]["agreement"]
    # the scan kept each model's evidence beside the fingerprint: ranking a suspect among them loads nothing
    cache = evidence_cache_path(index, "owner")
    assert sorted(json.loads(cache.read_text())["models"]) == [f"indep{i}" for i in range(4)]
    loads.clear()
    ranked_run = runner.invoke(main, ["suspect", "-i", str(index), "indep0", "--owner", "owner", "--budget", "0.5",
                                      "--json"])
    assert ranked_run.exit_code == 0, ranked_run.output
    ranked = json.loads(ranked_run.stdout)
    assert loads == []  # every model's evidence, the suspect's too, is in the cache
    assert ranked["rank"]["n"] == 3 and _same_z(ranked["z"], first["z"])
    others = [r["z"] for r in scanned["models"] if r["suspect"] != "indep0"]  # None (not judged) ranks below all
    at_or_above = sum(-_strongest_first(z) >= -_strongest_first(first["z"]) for z in others)
    assert ranked["rank"]["p_value"] == pytest.approx((1 + at_or_above) / (1 + len(others)))
    cache.unlink()  # nothing cached: each model is loaded once, the suspect too (its evidence serves the ranking)
    loads.clear()
    uncached = runner.invoke(main, ["suspect", "-i", str(index), "indep0", "--owner", "owner", "--budget", "0.5",
                                    "--json"])
    assert uncached.exit_code == 0, uncached.output
    assert sorted(loads) == sorted(str(tmp_path / f"indep{i}.pt") for i in range(4))
    assert json.loads(uncached.stdout)["rank"] == ranked["rank"] and cache.is_file()
    (tmp_path / "indep3.pt").rename(tmp_path / "elsewhere.bin")  # a model whose file is gone: its evidence was kept
    kept = json.loads(runner.invoke(main, ["suspect", "-i", str(index), "--owner", "owner", "--all", "--json"]).stdout)
    assert next(r for r in kept["models"] if r["suspect"] == "indep3")["fingerprint"] is not None
    cache.unlink()  # and without the cache: its signature verdict, with the reason
    gone = json.loads(runner.invoke(main, ["suspect", "-i", str(index), "--owner", "owner", "--all", "--json"]).stdout)
    lost = next(r for r in gone["models"] if r["suspect"] == "indep3")
    assert lost["fingerprint"] is None and lost["error"].startswith("fingerprint not checked: ")
    assert lost["z"] == pytest.approx(lost["signature_z"]) and len(gone["models"]) == 4
    (tmp_path / "elsewhere.bin").rename(tmp_path / "indep3.pt")
    # the text report names the radius used and the outputs' null (a small refit, replacing the stored one)
    # and the query log: the owner's record of what its API answered (here: 300 images no model here trained on)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    np.save(tmp_path / "queries.npy", (data.x_train[1000:1300] * std + mean).clamp(0, 1).numpy())
    text_fit = runner.invoke(main, ["fit-probes", "-i", str(index), "owner", "--data", str(tmp_path / "owner_data.npz"),
                                    "--helper-arch", "timm:test_resnet", "--surrogates", "1", "--references", "1",
                                    "--calibration", "2", "--candidates", "64", "--output-probes", "16",
                                    "--epochs", "1", "--eps", "0.1", "--queries", str(tmp_path / "queries.npy"),
                                    "--keep-helpers"])
    assert text_fit.exit_code == 0, text_fit.output
    assert "kept the 4 helper models in " in text_fit.output, text_fit.output
    assert "inputs of 64 candidates at eps 0." in text_fit.output
    assert "input gradients at 16 of the owner's images" in text_fit.output, text_fit.output
    clean = load_fingerprint(next((index / "fingerprints").glob("*.npz"))).reference_clean_agreement
    assert f"calibration references give the owner's answer on {min(clean):.0%}-{max(clean):.0%}" in text_fit.output
    assert ("hardly do the owner's task" in text_fit.output) == (sum(clean) / len(clean) < 0.5), text_fit.output
    assert "outputs on 16 probe images (16 of them logged queries): held-out independent models' contrast" \
        in text_fit.output, text_fit.output
    assert "logged queries carry the owner's idiosyncratic answers" in text_fit.output, text_fit.output
    assert "of those answers is flagged on them alone" in text_fit.output or "too few answers for the log alone" \
        in text_fit.output, text_fit.output
    assert "the log is not reviewed: where your model is more accurate" in text_fit.output, text_fit.output
    with_log = runner.invoke(main, ["suspect", "-i", str(index), "indep0", "--owner", "owner"])
    assert with_log.exit_code == 0 and "of the owner's kept answers to" in with_log.output
    assert "on 16 probe images (16 of them logged queries)" in with_log.output, with_log.output
    judged = json.loads(runner.invoke(main, ["suspect", "-i", str(index), "indep0", "--owner", "owner",
                                             "--json"]).stdout)["fingerprint"]
    assert judged["queries"] >= 8 and judged["query_z"] is not None and judged["queries_reviewed"] is False
    from gifindex.fingerprint.fingerprint import single_look_z

    assert judged["query_flag_rate"] == pytest.approx(judged["query_null_mean"]
                                                      + single_look_z(3.0) * judged["query_null_sigma"])
    assert ("would flag it on them alone" if judged["query_flag_rate"] <= 1 else "too few of them to flag it") \
        in with_log.output, with_log.output
    from scipy.stats import norm

    assert judged["owner_data_z"] == pytest.approx((judged["decision_z"] + judged["output_z"]) / np.sqrt(2))
    both = max(judged["owner_data_z"], judged["query_z"])
    assert judged["z"] == pytest.approx(norm.isf(norm.sf(both) * (2 - norm.sf(both))), rel=1e-6)
    # review: the quarter of the log the owner answered least surely, written for the owner to label
    review = tmp_path / "review.npz"
    log_file = str(tmp_path / "queries.npy")
    wrote = runner.invoke(main, ["review-queries", "-i", str(index), "owner", "--queries", log_file, "--out",
                                 str(review), "--json"])
    assert wrote.exit_code == 0, wrote.output
    assert json.loads(wrote.stdout)["to_review"] == 75
    logged, _ = load_query_log(tmp_path / "queries.npy", R)
    sure = model_logits(owner, logged).softmax(1).amax(1)
    with np.load(review) as written:
        rows = torch.from_numpy(written["index"])
        assert written["y"].tolist() == [-1] * 75 and torch.equal(torch.from_numpy(written["x"]), logged[rows])
        assert rows.tolist() == sorted(rows.tolist()) and float(sure[rows].max()) <= float(
            np.delete(sure.numpy(), rows.numpy()).min()) + 1e-6  # the 75 least sure, in log order
        assert np.allclose(written["confidence"], sure[rows].numpy(), atol=1e-5)
        x_review = written["x"]
    again = runner.invoke(main, ["review-queries", "-i", str(index), "owner", "--queries", log_file, "--out",
                                 str(review)])
    assert again.exit_code == 1 and "may hold your labels; pass --overwrite" in again.output
    assert len(again.output.strip().splitlines()) == 1
    budget = runner.invoke(main, ["review-queries", "-i", str(index), "owner", "--queries", log_file, "--out",
                                  str(tmp_path / "budget.npz"), "--max-review", "20", "--json"])
    assert budget.exit_code == 0 and json.loads(budget.stdout)["to_review"] == 20, budget.output
    with np.load(tmp_path / "budget.npz") as written:  # the 20 least sure of the 75
        assert set(written["index"].tolist()) == set(rows[sure[rows].argsort()[:20]].tolist())
    # the reviewed file (true labels filled in): only the owner's wrong answers are kept
    np.savez(review, x=x_review, y=data.y_train[1000:1300].numpy()[rows.numpy()])
    reviewed = runner.invoke(main, ["fit-probes", "-i", str(index), "owner", "--data", str(tmp_path / "owner_data.npz"),
                                    "--helper-arch", "timm:test_resnet", "--surrogates", "1", "--references", "1",
                                    "--calibration", "2", "--candidates", "64", "--output-probes", "0",
                                    "--epochs", "1", "--eps", "0.1", "--queries", str(review)])
    assert reviewed.exit_code == 0, reviewed.output
    assert "reused the 4 helper models kept in " in reviewed.output, reviewed.output  # only the log changed
    assert "of the 75 reviewed were answered wrongly" in reviewed.output or \
        "wrong answers among the reviewed logged queries" in reviewed.output, reviewed.output
    missing = runner.invoke(main, ["fit-probes", "-i", str(index), "ownr", "--data", str(tmp_path / "owner_data.npz")])
    assert missing.exit_code == 1 and "did you mean 'owner'" in missing.output
    # a fingerprint without probe images (--output-probes 0) cannot read another label set's class map
    unmapped = runner.invoke(main, ["suspect", "-i", str(index), str(tmp_path / "headed.pt"), "--owner", "owner", *two])
    assert unmapped.exit_code == 0 and "no probe images to read the suspect" in unmapped.output, unmapped.output
    # without a log, the fit says how hard-label students could be seen (a log, or a public labelled dataset)
    no_log = runner.invoke(main, ["fit-probes", "-i", str(index), "owner", "--data", str(tmp_path / "owner_data.npz"),
                                  "--helper-arch", "timm:test_resnet", "--surrogates", "1", "--references", "1",
                                  "--calibration", "2", "--candidates", "64", "--output-probes", "0",
                                  "--epochs", "1", "--eps", "0.1"])
    assert no_log.exit_code == 0 and "reused the 4 helper models kept in " in no_log.output, no_log.output
    assert "no query log: a student trained on your hard labels" in no_log.output
    assert "a public labelled dataset the thief may have drawn from" in no_log.output
    assert "`suspect --budget 0.05` (a suspect ranked among the indexed models) needs 19 other" in no_log.output
    assert "no query log" not in reviewed.output
    # the owner removed, other weights indexed under its name: its fingerprint is kept, but not used for them
    removed = runner.invoke(main, ["remove", "-i", str(index), "owner"])
    assert removed.exit_code == 0 and "kept its fingerprint (" in removed.output, removed.output
    assert "helpers.pt" in removed.output and "evidence.json" in removed.output  # and what was kept beside it
    quiet = runner.invoke(main, ["nearest", "-i", str(index), "indep0"])  # only a removed model's fingerprint left
    assert quiet.exit_code == 0 and "note:" not in quiet.output, quiet.output
    from gifindex.index.layout import fingerprint_path, stale_fingerprint

    odd = fingerprint_path(index, "a/b c").name  # a name the file stem cannot spell: not known to be stale
    assert not stale_fingerprint(index, odd, lambda name: False)
    kept = fingerprint_path(index, "owner").name
    assert stale_fingerprint(index, kept, lambda name: False) and not stale_fingerprint(index, kept, lambda name: True)
    assert runner.invoke(main, ["ingest", "-i", str(index), str(tmp_path / "renamed.pt"), "--name", "owner",
                                "--executor", "inline", *common]).exit_code == 0
    stale = runner.invoke(main, ["suspect", "-i", str(index), "indep0", "--owner", "owner"])
    assert stale.exit_code == 1 and "was fitted for other weights" in stale.output, stale.output
    assert len(stale.output.strip().splitlines()) == 1
    unfingerprinted = runner.invoke(main, ["suspect", "-i", str(index), "indep0", "--owner", "owner",
                                           "--no-fingerprint"])
    assert unfingerprinted.exit_code == 0, unfingerprinted.output


def test_disjoint_fit_searches_images_no_helper_trained_on(monkeypatch, owner, digits):
    """FitConfig.disjoint: surrogates, references and the calibration references train on one half of the
    owner's data; the fingerprint's inputs and output probes come from the other (a thief's student, like any
    model in the wild, never saw the owner's images, so the null must not have seen them either). Training is
    replaced by stand-ins here (surrogates = the owner, references = untrained nets); only which images go where
    is checked."""
    import dataclasses

    import gifindex.fingerprint.fit as fit_module

    helper_x = []

    def surrogate(build, arch, owner_fn, x, *args):
        helper_x.append(x)
        return owner

    def reference(build, arch, x, y, classes, recipe, seed, device):
        helper_x.append(x)
        return _build(arch, classes)

    monkeypatch.setattr(fit_module, "train_surrogate", surrogate)
    monkeypatch.setattr(fit_module, "train_reference", reference)
    data = digits[1]
    fp = fit_fingerprint(owner, data, dataclasses.replace(FAST, disjoint=True), build=_build)
    calibration = FAST.calibration_per_arch * len(FAST.helper_archs)
    assert len(helper_x) == FAST.surrogates + FAST.references + calibration
    seen = {row.numpy().tobytes() for x in helper_x for row in x}
    assert all(len(x) == len(data.y) - len(data.y) // 2 for x in helper_x)
    unseen = torch.stack([row for row in data.x if row.numpy().tobytes() not in seen])
    assert len(unseen) >= len(data.y) // 2 - 5  # (a few digits may repeat exactly)
    nearest = torch.cdist(fp.inputs.flatten(1), unseen.flatten(1), p=float("inf")).min(1).values
    assert fp.size >= 8 and float(nearest.max()) <= FAST.search.eps + 1e-5
    assert fp.output_probes > 0 and not any(row.numpy().tobytes() in seen for row in fp.probe_inputs)
    assert fp.recipe["config"]["disjoint"] is True


def test_too_few_conferrable_inputs_widen_the_search(monkeypatch, owner, digits):
    """A radius too small to move the owner keeps too few inputs: the search is repeated at twice the radius
    (recorded in the recipe) until min_inputs, and min_kept_fraction of the candidates, are kept or MAX_EPS is
    reached; then too few is a clear error."""
    import dataclasses

    import gifindex.fingerprint.fit as fit_module

    real_search, radii = fit_module.search, []

    def search(owner_fn, surrogates, references, x, y, config):
        radii.append(config.eps)
        inputs, targets, kept = real_search(owner_fn, surrogates, references, x, y, config)
        if config.eps < 0.15:  # pretend nothing moves at small radii
            kept = torch.zeros_like(kept)
        return inputs, targets, kept

    monkeypatch.setattr(fit_module, "search", search)
    fp = fit_fingerprint(owner, digits[1], dataclasses.replace(FAST, search=SearchConfig(eps=0.05, steps=4),
                                                                output_probes=0), build=_build)
    assert radii == [0.05, 0.1, 0.2] and fp.recipe["eps"] == 0.2 and fp.size >= 8
    assert [step["eps"] for step in fp.recipe["search"]] == radii and fp.recipe["search"][0]["kept"] == 0
    assert not fp.has_outputs

    def few_move(owner_fn, surrogates, references, x, y, config):  # 10 of the 96 candidates below 0.2, all at 0.2
        inputs, targets, _ = real_search(owner_fn, surrogates, references, x, y, config)
        return inputs, targets, (torch.arange(len(y)) % 10 == 0) | (config.eps >= 0.2)

    monkeypatch.setattr(fit_module, "search", few_move)
    radii.clear()
    few = dataclasses.replace(FAST, search=SearchConfig(eps=0.05, steps=4), output_probes=0, min_inputs=8)
    fp = fit_fingerprint(owner, digits[1], few, build=_build)  # 96 candidates: at least 12 (1/8) needed
    assert [step["eps"] for step in fp.recipe["search"]] == [0.05, 0.1, 0.2] and fp.size == 96
    fp = fit_fingerprint(owner, digits[1], dataclasses.replace(few, min_kept_fraction=0.0), build=_build)
    assert [step["eps"] for step in fp.recipe["search"]] == [0.05] and fp.size == 10

    def nothing_moves(owner_fn, surrogates, references, x, y, config):
        return x, y, torch.zeros(len(y), dtype=torch.bool)

    monkeypatch.setattr(fit_module, "search", nothing_moves)
    with pytest.raises(GifindexError, match=r"only 0 of 96 inputs were conferrable \(eps 0.05, 0.1, 0.2, 0.3\)"):
        fit_fingerprint(owner, digits[1], dataclasses.replace(FAST, search=SearchConfig(eps=0.05, steps=4)),
                        build=_build)


def test_calibration_recipes_vary_as_models_in_the_wild_are_trained(monkeypatch, owner, digits):
    """TrainRecipe.variant: four common ways to train the same model, cycled, averaging the base recipe's epochs;
    with FitConfig.varied_calibration the j-th calibration reference of each architecture is trained by
    variant j (the references that choose the inputs keep the owner's recipe), without it all by the owner's."""
    import dataclasses

    import gifindex.fingerprint.fit as fit_module

    base = TrainRecipe()
    variants = [base.variant(j) for j in range(8)]
    assert variants[0] == base and variants[4:] == variants[:4] and len(set(variants[:4])) == 4
    assert sum(v.epochs for v in variants[:4]) == 4 * base.epochs
    assert {v.optimizer for v in variants[:4]} == {"adamw", "sgd"}
    assert any(v.label_smoothing > 0 for v in variants) and any(v.shift_augment for v in variants)

    recipes = []

    def reference(build, arch, x, y, classes, recipe, seed, device):
        recipes.append(recipe)
        return _build(arch, classes)

    monkeypatch.setattr(fit_module, "train_surrogate", lambda *args: owner)
    monkeypatch.setattr(fit_module, "train_reference", reference)
    config = dataclasses.replace(FAST, calibration_per_arch=3, output_probes=0)
    fit_fingerprint(owner, digits[1], config, build=_build)
    assert recipes == [config.recipe] * config.references + [config.recipe.variant(j) for j in range(3)]
    recipes.clear()
    fit_fingerprint(owner, digits[1], dataclasses.replace(config, varied_calibration=False), build=_build)
    assert recipes == [config.recipe] * (config.references + 3)


@pytest.mark.parametrize("variant", range(4))
def test_every_recipe_variant_trains_a_working_model(digits, variant):
    """Each variant (SGD, label smoothing, shifted batches included) learns the digits: far above chance (0.1)
    on held-out images."""
    from gifindex.fingerprint.helpers import train_reference

    data, owned = digits
    recipe = TrainRecipe(epochs=4).variant(variant)
    model = train_reference(_build, "timm:test_resnet", owned.x, owned.y, 10, recipe, seed=3)
    raw = (data.x_test * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)).clamp(0, 1)
    accuracy = float((model_logits(model, raw).argmax(1) == data.y_test).float().mean())
    assert accuracy > 0.5, (recipe, accuracy)


def test_lead_note_only_for_unrelated_fingerprint_verdicts_between_one_and_the_threshold():
    from gifindex.cli.apps import lead_note

    base = {"evidence": "fingerprint", "verdict": "unrelated"}
    assert "z 2.40 is a lead, not evidence" in lead_note({**base, "z": 2.4}, 3.0)
    assert lead_note({**base, "z": 1.0}, 3.0) is not None
    assert lead_note({**base, "z": 0.99}, 3.0) is None
    assert lead_note({**base, "z": 3.5}, 4.0) is not None  # below a raised threshold
    assert lead_note({"evidence": "fingerprint", "verdict": "derived", "z": 3.2}, 3.0) is None
    assert lead_note({"evidence": "signature", "verdict": "unrelated", "z": 2.4}, 3.0) is None
    assert lead_note({**base, "z": None}, 3.0) is None


def _above(z: float | None, bar: float) -> bool:
    """A verdict's z at or above a bar; None (a model not of the owner's task, not judged) never is."""
    return z is not None and z >= bar


def _same_z(a: float | None, b: float | None) -> bool:
    return a is None and b is None or a is not None and b is not None and a == pytest.approx(b)


def _strongest_first(z: float | None) -> float:
    return float("inf") if z is None else -z


def test_a_suspect_screened_against_every_protected_model(tmp_path, owner, digits, monkeypatch):
    """`suspect SUSPECT` without --owner: judged against each indexed model with a fingerprint, as `--owner` judges
    it, the bar raised (Sidak) for the number of owners looked at; the suspect loaded once; an owner whose
    fingerprint cannot be read is reported and the rest still judged; no fingerprint at all is one clear error.
    `suspect --all` without --owner: every indexed model against every protected one, at the same bar."""
    from gifindex.apps.suspect import family_budget
    from gifindex.fingerprint.fingerprint import single_look_z

    _, owner_data = digits
    runner, index, files = _hub(tmp_path, owner, digits, 5, 200)
    common = COMMON
    unprotected = runner.invoke(main, ["suspect", "-i", str(index), "indep0"])
    assert unprotected.exit_code == 1 and "no indexed model has a fingerprint" in unprotected.output
    assert len(unprotected.output.strip().splitlines()) == 1
    plain = runner.invoke(main, ["nearest", "-i", str(index), "indep0"])
    assert plain.exit_code == 0 and "note:" not in plain.output and "fingerprint" not in plain.output
    np.savez(tmp_path / "owner_data.npz", x=owner_data.x.numpy()[:300], y=owner_data.y.numpy()[:300])
    fit = ["--data", str(tmp_path / "owner_data.npz"), "--helper-arch", "timm:test_resnet", "--surrogates", "1",
           "--references", "1", "--calibration", "2", "--candidates", "64", "--output-probes", "32", "--epochs", "1",
           "--eps", "0.1"]
    fitted = runner.invoke(main, ["fit-probes", "-i", str(index), "owner", *fit])  # two models the hub protects
    assert fitted.exit_code == 0, fitted.output
    fit[fit.index("timm:test_resnet")] = "index"  # every indexed model is a test_resnet: the owner's own only
    fitted = runner.invoke(main, ["fit-probes", "-i", str(index), "indep4", *fit, "--json"])
    assert fitted.exit_code == 0, fitted.output
    assert "helper architectures from the index (models of the owner's task): none buildable" in fitted.stderr
    from_index = json.loads(fitted.stdout)
    assert from_index["helper_archs"] == ["timm:test_resnet"] and from_index["helper_archs_from_index"] == []
    import importlib

    suspect_module = importlib.import_module("gifindex.apps.suspect")
    loads = []
    real_load = suspect_module.load_model
    monkeypatch.setattr(suspect_module, "load_model", lambda ref, *a, **k: loads.append(ref) or real_load(ref, *a, **k))

    def verdicts(*args):
        run = runner.invoke(main, ["suspect", "-i", str(index), *args, "--json"])
        assert run.exit_code == 0, run.output
        return json.loads(run.stdout)

    bar = single_look_z(3.0, 2)
    assert single_look_z(3.0, 1) == pytest.approx(3.0) and bar > 3.0
    listed = json.loads(runner.invoke(main, ["list", "-i", str(index), "--json"]).stdout)
    assert {m["name"] for m in listed if m["protected"]} == {"owner", "indep4"} and len(listed) == 6
    assert "fingerprint" in runner.invoke(main, ["list", "-i", str(index)]).output
    # nearest points to what sees copies that share no weights
    hinted = runner.invoke(main, ["nearest", "-i", str(index), "owner"])
    assert "note: owner has a fingerprint: `gifindex suspect --owner owner --all`" in hinted.output, hinted.output
    hinted = runner.invoke(main, ["nearest", "-i", str(index), "indep0"])
    assert "note: this index protects models with fingerprints: `gifindex suspect indep0`" in hinted.output
    copy_screened = verdicts(str(tmp_path / "owner.pt"), *common)  # the owner's file, arriving under another name
    assert copy_screened["owners_checked"] == 2 and copy_screened["owner_z_threshold"] == pytest.approx(bar)
    assert copy_screened["derived_from"][0] == "owner" and copy_screened["owners"][0]["owner"] == "owner"
    for suspect_ref in ("indep0", "indep4"):  # indexed suspects (a protected one is not judged against itself)
        loads.clear()
        screened = verdicts(suspect_ref)
        assert len(loads) == 1  # loaded once for both owners' fingerprints
        assert {r["owner"] for r in screened["owners"]} == {"owner", "indep4"} - {suspect_ref}
        order = [_strongest_first(r["z"]) for r in screened["owners"]]
        assert order == sorted(order)  # strongest evidence first, those not judged last
        for r in screened["owners"]:  # each verdict is --owner's z, against the raised bar
            alone = verdicts(suspect_ref, "--owner", r["owner"])
            assert _same_z(r["z"], alone["z"]) and r["evidence"] == alone["evidence"] in ("fingerprint", OFF_TASK)
            assert r["verdict"] == ("derived" if _above(r["z"], bar) else "unrelated")
        assert screened["derived_from"] == [r["owner"] for r in screened["owners"] if _above(r["z"], bar)]
    assert verdicts("indep4")["owners_checked"] == 1 and verdicts("indep4")["owner_z_threshold"] == pytest.approx(3.0)
    # a budget is shared by the owners: each rank verdict gets 1 - (1 - B)^(1/2)
    for protected in ("owner", "indep4"):
        evidence_cache_path(index, protected).unlink(missing_ok=True)
    loads.clear()
    ranked = verdicts("indep0", "--budget", "0.5")
    assert sorted(loads) == sorted(str(tmp_path / f"{name}.pt") for name in files)  # each once, for both owners
    assert ranked["owner_budget"] == pytest.approx(family_budget(0.5, 2)) == pytest.approx(1 - 0.5 ** 0.5)
    for r in ranked["owners"]:
        assert r["rank"]["budget"] == pytest.approx(ranked["owner_budget"])
    small = runner.invoke(main, ["suspect", "-i", str(index), "indep0", "--budget", "0.1"])
    assert small.exit_code == 1 and "over 2 protected models" in small.output, small.output
    text = runner.invoke(main, ["suspect", "-i", str(index), str(tmp_path / "owner.pt"), *common])
    assert text.exit_code == 0 and "judged against 2 protected models" in text.output, text.output
    assert f"derived when z >= {bar:.2f}, raised from 3 for looking at 2 (Sidak)" in text.output
    assert "derived from: owner" in text.output
    # --all without --owner: every indexed model against every protected one, each scan's z as --owner --all's;
    # with nothing cached each model is loaded once for both fingerprints
    for protected in ("owner", "indep4"):
        evidence_cache_path(index, protected).unlink(missing_ok=True)
    loads.clear()
    audited = verdicts("--all")
    assert sorted(loads) == sorted(str(tmp_path / f"{name}.pt") for name in files)
    assert audited["owners_checked"] == 2 and audited["owner_z_threshold"] == pytest.approx(bar)
    assert [s["owner"] for s in audited["scans"]] == ["owner", "indep4"] and not audited["errors"]
    for s in audited["scans"]:
        alone = {r["suspect"]: r for r in verdicts("--owner", s["owner"], "--all")["models"]}
        assert sorted(r["suspect"] for r in s["models"]) == sorted(alone) and len(alone) == 5
        for r in s["models"]:
            assert _same_z(r["z"], alone[r["suspect"]]["z"])
            assert r["verdict"] == ("derived" if _above(r["z"], bar) else "unrelated")
    pairs = sorted((r["suspect"], s["owner"]) for s in audited["scans"] for r in s["models"] if _above(r["z"], bar))
    assert sorted((d["model"], d["owner"]) for d in audited["derived"]) == pairs
    assert [d["z"] for d in audited["derived"]] == sorted((d["z"] for d in audited["derived"]), reverse=True)
    loads.clear()  # every model's evidence is kept beside each fingerprint: a second audit loads none
    assert verdicts("--all")["derived"] == audited["derived"] and loads == []
    too_few = runner.invoke(main, ["suspect", "-i", str(index), "--all", "--budget", "0.1"])
    assert too_few.exit_code == 1 and "over 2 protected models" in too_few.output, too_few.output
    # one fingerprint damaged: that owner is reported, the other still judged
    from gifindex.index.layout import fingerprint_path

    fingerprint_path(index, "indep4").write_bytes(b"not a fingerprint")
    damaged = verdicts(str(tmp_path / "owner.pt"), *common)
    assert damaged["errors"] == ["indep4"] and damaged["derived_from"] == ["owner"]
    assert damaged["owners"][-1]["verdict"] == "not judged" and damaged["owners"][-1]["error"]
    shown = runner.invoke(main, ["suspect", "-i", str(index), str(tmp_path / "owner.pt"), *common])
    assert shown.exit_code == 0 and "NOT JUDGED" in shown.output and "not judged against indep4: " in shown.output
    broken = runner.invoke(main, ["suspect", "-i", str(index), "--all"])
    assert broken.exit_code == 0 and "indep4: not audited: " in broken.output, broken.output
    assert "owner: " in broken.output and "indexed models derived from it" in broken.output
    usage = runner.invoke(main, ["suspect", "-i", str(index), "indep0", "--no-fingerprint"])
    assert usage.exit_code == 2 and "--no-fingerprint needs --owner" in usage.output
    # models below the task gate are not judged: every report says so, and rankings hold them below all others
    monkeypatch.setattr(Fingerprint, "task_gate", property(lambda self: 1.01))
    evidence_cache_path(index, "owner").unlink(missing_ok=True)
    one = runner.invoke(main, ["suspect", "-i", str(index), "indep0", "--owner", "owner"])
    assert one.exit_code == 0 and "verdict       UNRELATED  (not judged: not a model of the owner's task)" in \
        one.output and "neither the fingerprint nor the signature judges it" in one.output, one.output
    scanned = runner.invoke(main, ["suspect", "-i", str(index), "--owner", "owner", "--all"])
    assert scanned.exit_code == 0 and scanned.output.count("not of the owner's task: not judged") == 5, scanned.output
    assert "derived: none" in scanned.output
    ranked = verdicts("indep0", "--owner", "owner", "--budget", "0.5")
    assert ranked["z"] is None and ranked["verdict"] == "unrelated" and ranked["rank"]["p_value"] == 1.0
    screened = runner.invoke(main, ["suspect", "-i", str(index), "indep0"])
    assert screened.exit_code == 0 and "not of the owner's task: not judged" in screened.output, screened.output


def test_clean_agreement_says_how_far_a_suspect_does_the_owners_task(fingerprint, owner, digits, tmp_path):
    """A suspect's share of the probe images on which it gives the owner's answer: exactly the owner's share of a
    class for a model that always answers it, 1 for the owner and for the owner with its classes renamed; the
    references' shares are theirs; the task gate lies halfway from a constant answer's best share to the references'
    mean, and a suspect below it is judged by neither the fingerprint nor the signature: unrelated, with the note."""
    from gifindex.apps.suspect import fingerprint_evidence

    class Constant(torch.nn.Module):
        def __init__(self, answer: int):
            super().__init__()
            self.answer = answer
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            out = torch.zeros(len(x), 10)
            out[:, self.answer] = 4.0
            return out + 1e-3 * self.scale * x.flatten(1)[:, :10]

    answers = fingerprint.probe_logits.argmax(1)
    shares = torch.bincount(answers, minlength=10).float() / len(answers)
    for c in (int(answers[0]), int(shares.argmin())):
        score = judge(fingerprint, _wrap(Constant(c)), "timm:test_resnet")
        assert score.clean_agreement == pytest.approx(float(shares[c]))
    assert judge(fingerprint, owner, "timm:test_resnet").clean_agreement == 1.0
    renamed = copy.deepcopy(owner.module)
    renamed.fc.weight.data, renamed.fc.bias.data = renamed.fc.weight.data.flip(0), renamed.fc.bias.data.flip(0)
    flipped = judge(fingerprint, _wrap(renamed), "timm:test_resnet")
    assert flipped.renamed and flipped.clean_agreement == 1.0
    references = fingerprint.reference_clean_agreement
    assert references == [pytest.approx(float((r.argmax(1) == answers).float().mean()))
                          for r in fingerprint.reference_logits]

    class Entry:  # what fingerprint_evidence reads of an entry when the model is given
        arch = "timm:test_resnet"

    chance = float(shares.max())
    assert fingerprint.task_gate == pytest.approx(chance + 0.5 * (sum(references) / len(references) - chance))
    from gifindex.apps.suspect import _judge

    for c in range(10):  # no constant answer does the owner's task: none is judged, whatever its evidence
        constant = fingerprint_evidence(fingerprint, Entry(), loaded=_wrap(Constant(c)))
        assert constant["off_task"] and "not a model of the owner's task" in constant["task_note"]
        verdict = _judge({"z": 10.0, "verdict": "derived"}, constant, 3.0)  # even a signature z of 10
        assert verdict["z"] is None and verdict["verdict"] == "unrelated" and verdict["evidence"] == OFF_TASK
        assert verdict["signature_z"] == 10.0
    itself = fingerprint_evidence(fingerprint, Entry(), loaded=owner)
    assert not itself["off_task"] and "task_note" not in itself and itself["clean_agreement"] == 1.0
    assert _judge({"z": 0.0, "verdict": "unrelated"}, itself, 3.0)["verdict"] == "derived"
    assert combine(1.0, 5.0, off_task=True) == (None, OFF_TASK) and combine(1.0, 5.0) == (5.0, "fingerprint")


def test_helper_archs_from_the_index_are_the_most_used_of_the_owners_task(owner):
    """`--helper-arch index`: the owner's own architecture and the three most used by indexed models with the owner's
    number of outputs and trained weights (ties by name), never the owner's own twice, nor an architecture that
    cannot be built by name; other helper architectures named keep their place."""
    from types import SimpleNamespace

    from gifindex.apps.fitprobes import expand_helper_archs, task_archs
    from gifindex.index.catalog import ModelRecord

    def record(name, arch, outputs=10, random_init=False):
        return ModelRecord(id=0, name=name, ref=name, weights_sha256="0" * 64, shard="s", row=0, added=0.0,
                           metadata={"arch": arch, "num_outputs": outputs, "random_init": random_init})

    records = [record("owner", "timm:test_resnet"), record("a", "timm:test_resnet"),
               *[record(f"vit{i}", "timm:test_vit") for i in range(3)],
               *[record(f"eff{i}", "timm:test_efficientnet") for i in range(2)],
               *[record(f"byob{i}", "timm:test_byobnet") for i in range(2)],
               record("conv", "timm:test_convnext"),
               *[record(f"other-task{i}", "timm:test_nfnet", outputs=5) for i in range(5)],
               *[record(f"untrained{i}", "timm:test_mixnet", random_init=True) for i in range(5)],
               *[record(f"grey{i}", "python:nets.py:LeNet5") for i in range(5)]]
    assert task_archs(records, "owner", "timm:test_resnet", 10) == [
        ("timm:test_vit", 3), ("timm:test_byobnet", 2), ("timm:test_efficientnet", 2)]
    assert task_archs(records, "owner", "timm:test_resnet", 10, count=5)[-1] == ("timm:test_convnext", 1)
    index = SimpleNamespace(catalog=SimpleNamespace(models=lambda: records,
                                                    by_name=lambda name: records[0] if name == "owner" else None))
    archs, found = expand_helper_archs(("index",), index, "owner", owner)
    assert archs == ("owner", "timm:test_vit", "timm:test_byobnet", "timm:test_efficientnet") and len(found) == 3
    archs, _ = expand_helper_archs(("timm:test_resnet", "timm:test_convnext", "index"), index, "owner", owner)
    assert archs == ("timm:test_resnet", "timm:test_convnext", "timm:test_vit", "timm:test_byobnet",
                     "timm:test_efficientnet")  # the owner's own named once, by name
    assert expand_helper_archs(("owner", "timm:test_vit"), index, "owner", owner) == (("owner", "timm:test_vit"), None)
    assert expand_helper_archs((), index, "owner", owner) == expand_helper_archs(("index",), index, "owner", owner)
    alone = SimpleNamespace(catalog=SimpleNamespace(models=lambda: records[:2], by_name=index.catalog.by_name))
    assert expand_helper_archs((), alone, "owner", owner) == (("owner",), [])  # none named: the owner's own alone


def test_an_owner_alone_in_its_index_judges_a_copy_in_its_own_convention(tmp_path, owner, digits, monkeypatch):
    """A fingerprint carries its own null (the owner's calibration references), so `suspect` needs no population of
    other indexed models when one judges: the signature's z is then absent, with why. And a weights file carries no
    input convention: a suspect file given without one is run in the owner's (timm's default for test_resnet, 160
    px, is not this 16 px owner's), said so where it was signed; options given are used as they are."""
    import importlib

    from safetensors.torch import save_file

    fitprobes_module = importlib.import_module("gifindex.apps.fitprobes")
    owner_accuracy = fitprobes_module.owner_accuracy  # (replaced below, to see the warning)

    _, owner_data = digits
    runner, index, files = _hub(tmp_path, owner, digits, 1, 300)
    np.savez(tmp_path / "owner_data.npz", x=owner_data.x.numpy()[:300], y=owner_data.y.numpy()[:300])
    fit = runner.invoke(main, ["fit-probes", "-i", str(index), "owner", "--data", str(tmp_path / "owner_data.npz"),
                               "--helper-arch", "timm:test_resnet", "--surrogates", "1", "--references", "1",
                               "--calibration", "2", "--candidates", "64", "--output-probes", "32", "--epochs", "1",
                               "--eps", "0.1", "--json"])
    assert fit.exit_code == 0, fit.output
    assert json.loads(fit.stdout)["replaced"] is None  # the first: nothing replaced
    assert json.loads(fit.stdout)["owner_accuracy"] >= 0.8  # its own training images, in its convention
    copy = tmp_path / "copy.safetensors"  # the owner's weights in other bytes: not recognised as the indexed file
    save_file({k: v.contiguous() for k, v in owner.module.state_dict().items()}, str(copy))

    judged = runner.invoke(main, ["suspect", "-i", str(index), str(copy), "--owner", "owner", "--json"])
    assert judged.exit_code == 0, judged.output
    result = json.loads(judged.stdout)
    signed = result["signed"][0]
    assert signed["input_size"] == [R, R] and signed["mean"] == pytest.approx(MEAN)
    assert signed["convention_from"].startswith("the owner's, 'owner'")
    assert result["signature_z"] is None and result["population"]["n"] == 1
    assert "at least 3 other indexed models" in result["signature_note"]
    assert result["fingerprint"]["agreement"] == 1.0 and result["verdict"] == "derived"
    text = runner.invoke(main, ["suspect", "-i", str(index), str(copy), "--owner", "owner"])
    assert text.exit_code == 0 and "no signature null" in text.output and "DERIVED" in text.output

    given = runner.invoke(main, ["suspect", "-i", str(index), str(copy), "--owner", "owner", "--input-size", "160",
                                 "--json"])
    assert given.exit_code == 0, given.output
    assert json.loads(given.stdout)["signed"][0]["input_size"] == [160, 160]
    assert json.loads(given.stdout)["signed"][0]["convention_from"].startswith("input size given; mean, std: ")

    unfingerprinted = runner.invoke(main, ["suspect", "-i", str(index), str(copy), "--owner", "owner",
                                           "--no-fingerprint"])
    assert unfingerprinted.exit_code == 1 and "at least 3 other indexed models" in unfingerprinted.output
    assert [line for line in unfingerprinted.output.splitlines() if "error" in line][0].startswith("error:")

    scanned = runner.invoke(main, ["suspect", "-i", str(index), "--all", "--owner", "owner", "--json"])
    assert scanned.exit_code == 0, scanned.output
    [row] = json.loads(scanned.stdout)["models"]
    assert row["suspect"] == "indep0" and row["signature_z"] is None and row["z"] is not None
    screened = runner.invoke(main, ["suspect", "-i", str(index), str(copy), "--json"])
    assert screened.exit_code == 0, screened.output
    assert json.loads(screened.stdout)["derived_from"] == ["owner"]
    (tmp_path / "garbage.pt").write_bytes(b"not a model")
    garbage = runner.invoke(main, ["suspect", "-i", str(index), str(tmp_path / "garbage.pt")])
    assert garbage.exit_code == 1 and "cannot sign" in garbage.output and "Traceback" not in garbage.output
    assert sum(line.startswith("error:") for line in garbage.output.replace("\r", "\n").splitlines()) == 1
    monkeypatch.setattr(fitprobes_module, "owner_accuracy", lambda *args: 0.1)  # as a wrong convention gives
    refit = runner.invoke(main, ["fit-probes", "-i", str(index), "owner", "--data", str(tmp_path / "owner_data.npz"),
                                 "--helper-arch", "timm:test_resnet", "--surrogates", "1", "--references", "1",
                                 "--calibration", "2", "--candidates", "32", "--output-probes", "16", "--epochs", "1"])
    assert refit.exit_code == 0 and "(replacing the one written 20" in refit.output
    assert "the owner gives your labels on 10% of your 300 images (run at 16 px" in refit.output
    assert "warning: the owner hardly does the task your data labels: is its input convention right" in refit.output
    plain = runner.invoke(main, ["ingest", "-i", str(index), str(copy), "--name", "plain", "--executor", "inline",
                                 "--json"])  # ingest says which files took their architecture's default
    assert plain.exit_code == 0 and json.loads(plain.stdout)["default_convention"] == ["plain"]
    audit = runner.invoke(main, ["suspect", "-i", str(index), "--all", "--owner", "owner", "--json"])
    assert audit.exit_code == 0, audit.output
    plain_row = next(r for r in json.loads(audit.stdout)["models"] if r["suspect"] == "plain")
    assert plain_row["z"] is None and plain_row["fingerprint"]["off_task"]  # the owner's weights, at 160 px
    assert plain_row["fingerprint"]["default_convention"] and "default input convention" in \
        plain_row["fingerprint"]["task_note"]
    audit_text = runner.invoke(main, ["suspect", "-i", str(index), "--all", "--owner", "owner"])
    assert "note: not judged and run at their architecture's default input convention" in audit_text.output
    assert next(r for r in json.loads(audit.stdout)["models"] if r["suspect"] == "indep0").get(
        "fingerprint", {}).get("default_convention") is None  # ingested with its convention
    one = runner.invoke(main, ["fit-probes", "-i", str(index), "owner", "--data", str(tmp_path / "owner_data.npz"),
                               "--helper-arch", "owner", "--calibration", "1"])
    assert one.exit_code == 1 and "need at least two (--calibration 2" in one.output

    # a hub protecting models of two conventions: a suspect file is signed once in each, each owner judging its own
    other = [a for a in COMMON if a != str(R)]
    other.insert(other.index("--input-size") + 1, "20")
    assert runner.invoke(main, ["ingest", "-i", str(index), str(tmp_path / "owner.pt"), "--name", "owner20",
                                "--executor", "inline", *other]).exit_code == 0
    fit20 = runner.invoke(main, ["fit-probes", "-i", str(index), "owner20", "--data", str(tmp_path / "owner_data.npz"),
                                 "--helper-arch", "timm:test_resnet", "--surrogates", "1", "--references", "1",
                                 "--calibration", "2", "--candidates", "32", "--output-probes", "16", "--epochs", "1"])
    assert fit20.exit_code == 0, fit20.output
    torch.save(owner.module.state_dict(), tmp_path / "copy2.pt")  # not an indexed file (copy.safetensors is now)
    both = runner.invoke(main, ["suspect", "-i", str(index), str(tmp_path / "copy2.pt"), "--json"])
    assert both.exit_code == 0, both.output
    screened = json.loads(both.stdout)
    assert sorted(s["input_size"][0] for s in screened["signed"]) == [R, 20]
    assert {r["owner"] for r in screened["owners"]} == {"owner", "owner20"} and "owner" in screened["derived_from"]
    import dataclasses

    at_160 = dataclasses.replace(owner, spec=InputSpec(size=(160, 160), mean=MEAN, std=STD))
    assert owner_accuracy(at_160, owner_data) < 0.5 <= owner_accuracy(owner, owner_data)
    from gifindex.manifest import ModelEntry

    assert ModelEntry(ref=str(copy)).convention_unknown()
    assert not ModelEntry(ref=str(copy), input_size=R).convention_unknown()
    assert not ModelEntry(ref="timm:test_resnet").convention_unknown()
    assert ModelEntry(ref="timm:test_resnet", weights=str(copy)).convention_unknown()
