"""Curve points where a model is flat (its gradient, or a one-output model's centred output, is exactly zero):
the compressed distance keeps the exact distance's convention (two flat points agree), signatures keep unit norm,
indexes made before (signature revision 1) are read as they were made, and a model flat everywhere is refused
with its method's reason."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from gifindex.config import SignatureConfig
from gifindex.distance import signature_distance
from gifindex.index import Index
from gifindex.manifest import ModelEntry
from gifindex.methods import compress_features, feature_distance, features
from gifindex.models.spec import InputSpec
from gifindex.probes import make_probes

from helpers import wrap

R = 16


class DarkStart(nn.Module):
    """relu(W x - t) with positive W: dead (zero gradient) on the dark start of every path from the zero image."""

    def __init__(self, seed: int, threshold: float, outputs: int = 4):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.rand(outputs, 3 * R * R, generator=generator) / (3 * R * R))
        self.threshold = threshold

    def forward(self, x):
        return torch.relu(x.flatten(1) @ self.weight.T - self.threshold)


def _feats(module: nn.Module, config: SignatureConfig, probes) -> torch.Tensor:
    return features(wrap(module, InputSpec(size=(R, R))), probes, config)


@pytest.mark.parametrize("threshold", [0.08, 0.25])
def test_flat_points_agree_in_the_compressed_distance_as_in_the_exact_one(threshold):
    config = SignatureConfig(resolution=R, num_probes=8, steps=8, proj_dim=128)
    probes = make_probes(config)
    fa, fb = _feats(DarkStart(1, threshold), config, probes), _feats(DarkStart(2, threshold), config, probes)
    points = fa.reshape(-1, fa.shape[-1])
    flat = int((points.norm(dim=1) == 0).sum())
    assert 8 <= flat < len(points)         # the construction: several dead points, not all
    sa, sb = compress_features(fa, config), compress_features(fb, config)
    exact = feature_distance(fa, fb, "modelgif")
    assert np.linalg.norm(sa) == pytest.approx(1.0, abs=1e-5)
    assert abs(signature_distance(sa, sb) - exact) < 0.03    # was 0.37 against 0.06 (threshold 0.08)
    # revision 1 (indexes made before) keeps a flat point at zero: the signature's norm falls below 1
    old = config.replace(revision=1)
    assert np.linalg.norm(compress_features(fa, old)) == pytest.approx(np.sqrt(1 - flat / len(points)), abs=1e-4)


def test_one_output_models_compare_alike_exactly_and_compressed_under_modelgif_plus_outputs():
    config = SignatureConfig(method="modelgif+outputs", resolution=R, num_probes=4, steps=4, proj_dim=256)
    probes = make_probes(config)
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 1)) for _ in range(2)]
    fa, fb = (_feats(n, config, probes) for n in nets)
    sa, sb = compress_features(fa, config), compress_features(fb, config)
    assert np.linalg.norm(sa) == pytest.approx(1.0, abs=1e-5)
    assert abs(signature_distance(sa, sb) - feature_distance(fa, fb, "modelgif+outputs")) < 0.05  # was 1.07 vs 0.58


def test_an_index_made_before_revisions_is_read_and_extended_as_made(tmp_path):
    old = SignatureConfig(resolution=R, num_probes=2, steps=2, proj_dim=16, revision=1)
    with Index.create(tmp_path / "ix", old) as index:
        index.ingest([ModelEntry(ref="timm:test_resnet", name="a", random_init=True, num_classes=3, input_size=16)])
    with Index.open(tmp_path / "ix") as index:
        assert index.config.revision == 1 and index.config.hash() == old.hash()
        assert "revision" not in index.config.to_dict()          # stored as indexes made before store it
    with Index.create(tmp_path / "ix", old.replace(revision=2), exist_ok=True) as index:   # init again: kept
        assert index.config.revision == 1 and len(index.records()) == 1


@pytest.mark.parametrize("method", ["modelgif", "rsa"])
def test_a_model_flat_everywhere_is_refused_with_its_method_reason(tmp_path, method):
    torch.manual_seed(0)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * R * R, 1))   # rsa: one output, nothing to compare
    if method == "modelgif":
        flat = DarkStart(1, threshold=1e6)                           # dead on every path
    torch.save(flat, tmp_path / "flat.pt")
    config = SignatureConfig(method=method, resolution=R, num_probes=4)
    with Index.create(tmp_path / "ix", config) as index:
        results = index.ingest([ModelEntry(ref=str(tmp_path / "flat.pt"), trust=True, input_size=R,
                                           mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))]).results
    assert results[0].status == "failed"
    assert ("zero at every probe point" if method == "modelgif" else "one-output model gives rsa nothing") in \
        results[0].error


class DropoutForced(nn.Module):
    """Calls self.train() in its forward: dropout stays on whatever mode it is given."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * R * R, 16), nn.Dropout(0.5), nn.Linear(16, 4))

    def forward(self, x):
        self.train()
        return self.net(x)


class BatchStatistics(nn.Module):
    """Normalises each batch by its own statistics: an image's output depends on the rest of the batch."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 4))

    def forward(self, x):
        out = self.net(x)
        return (out - out.mean(0)) / (out.std(0, unbiased=False) + 1e-3) if len(out) > 1 else out


@pytest.mark.parametrize("model, said", [(DropoutForced, "differ between two runs"),
                                         (BatchStatistics, "depends on the other images in the batch")])
def test_a_model_that_is_not_a_function_of_each_image_is_refused(model, said):
    from gifindex.errors import SignatureError

    config = SignatureConfig(resolution=R, num_probes=2, steps=2, proj_dim=16)
    torch.manual_seed(0)
    with pytest.raises(SignatureError, match=said):           # was signed: the same file 0.2-0.5 from itself
        _feats(model(), config, make_probes(config))


def test_an_exact_distance_names_the_model_it_cannot_sign(tmp_path):
    """Two models are signed for an exact distance: the refusal says which one (ingest's line did, distance's not)."""
    from gifindex.errors import SignatureError
    from gifindex.observe import entry_features

    path = tmp_path / "dropout_on.pt"
    torch.save(DropoutForced(), path)      # a whole pickled module: loading it needs trust
    config = SignatureConfig(resolution=R, num_probes=2, steps=2, proj_dim=16)
    entry = ModelEntry(ref=str(path), trust=True, input_size=R, mean=(0.0,) * 3, std=(1.0,) * 3)
    with pytest.raises(SignatureError, match=r"^cannot sign dropout_on: its outputs differ between two runs"):
        entry_features(entry, make_probes(config), config)


def test_float_rounding_between_batch_sizes_is_not_refused():
    """TF32 convolutions on CUDA (another algorithm for another batch size) change outputs by 1e-3 or more of
    their size: a deterministic model must not be refused for that (rtol 1e-3 per value refused this one)."""

    class Rounding(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * R * R, 4))

        def forward(self, x):
            out = self.net(x)
            return out * (1 + 5e-3 * (len(x) - 1))   # 5e-3 of the output, by the batch's size only

    config = SignatureConfig(resolution=R, num_probes=2, steps=2, proj_dim=16)
    assert _feats(Rounding(), config, make_probes(config)).shape[0] == 2 * 2
