"""Signature methods (gifindex.methods): exact answers on hand-built models, and every method in an index."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

from gifindex.cli import main
from gifindex.config import SignatureConfig
from gifindex.errors import ConfigError
from gifindex.methods import compress_features, feature_distance, features, get_method, method_names, sign
from gifindex.methods.gradient import GradientMethod
from gifindex.methods.output import OutputMethod, rdm, sac_matrix
from gifindex.methods.registry import _METHODS, register
from gifindex.probes import make_probes

from helpers import Linear, SmoothNet, identity_spec, wrap

R = 8


@pytest.fixture
def probes():
    return make_probes(SignatureConfig(resolution=R, num_probes=4, steps=4, seed=5))


@pytest.mark.parametrize("output", ["norm", "top-logit"])
def test_saliency_of_a_linear_model_is_its_weight_exactly(probes, output):
    w = torch.rand(3 * R * R) + 0.1  # positive weights, positive inputs: |w.x| = w.x, so norm is linear too
    model = wrap(Linear(w), identity_spec(R))
    config = SignatureConfig(method="saliency", resolution=R, num_probes=4, steps=4, output=output)
    sal = features(model, probes, config)
    assert sal.shape == (4, 3 * R * R)
    assert torch.equal(sal, w.expand(4, -1))


def test_ig_of_a_linear_model_is_w_times_the_input(probes):
    w = torch.randn(3 * R * R)
    model = wrap(Linear(w), identity_spec(R))
    config = SignatureConfig(method="ig", resolution=R, num_probes=4, steps=4, output="top-logit")
    ig = features(model, probes, config)
    expected = w * (probes.images - probes.baseline).reshape(4, -1)
    assert torch.allclose(ig, expected, atol=1e-6)
    # completeness: the attributions sum to M(x) - M(x0)
    assert torch.allclose(ig.sum(1), (probes.images.reshape(4, -1) - probes.baseline.reshape(4, -1)) @ w, atol=1e-4)


def test_output_matrices_by_hand():
    out = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    cos = sac_matrix(out)
    assert cos[0, 1] == pytest.approx(0.0) and cos[0, 2] == pytest.approx(1 / np.sqrt(2)) and cos[1, 1] == pytest.approx(1)
    d = rdm(out)
    # Pearson of [1,0,0] and [0,2,0]: centred [2/3,-1/3,-1/3], [-2/3,4/3,-2/3] -> r = -0.5
    assert d[0, 1] == pytest.approx(1.5) and d[0, 0] == pytest.approx(0.0)


@pytest.mark.parametrize("method", ["modelgif", "saliency", "ig", "sac", "rsa"])
def test_signatures_are_unit_norm_fixed_length_and_track_exact_distances(probes, method):
    config = SignatureConfig(method=method, resolution=R, num_probes=4, steps=4, proj_dim=512, seed=5)
    a, b = wrap(SmoothNet(0)), wrap(SmoothNet(1))
    fa, fb = features(a, probes, config), features(b, probes, config)
    sa, sb = compress_features(fa, config), compress_features(fb, config)
    assert sa.shape == (config.signature_dim,) and np.linalg.norm(sa) == pytest.approx(1.0, abs=1e-5)
    exact = feature_distance(fa, fb, method)
    assert feature_distance(fa, fa, method) == pytest.approx(0.0, abs=1e-9)
    assert 1.0 - float(sa @ sb) == pytest.approx(exact, abs=0.08)
    assert exact > 1e-3


def test_sac_and_rsa_need_three_probes():
    with pytest.raises(ConfigError):
        SignatureConfig(method="rsa", num_probes=2)
    assert SignatureConfig(method="sac", num_probes=5).signature_dim == 10
    assert SignatureConfig(method="saliency", num_probes=5, proj_dim=7).signature_dim == 35


def test_the_registry_knows_every_method_and_refuses_others():
    assert method_names()[:5] == ("modelgif", "saliency", "ig", "sac", "rsa")
    with pytest.raises(ConfigError, match="invalid method 'nope': expected one of modelgif, saliency"):
        SignatureConfig(method="nope")
    assert SignatureConfig(method="ig", num_probes=3, steps=5).signature_dim == 3 * 128
    assert SignatureConfig(num_probes=3, steps=5, proj_dim=2).signature_dim == 30


def test_the_method_chooses_the_default_probe_kind_and_old_hashes_hold():
    assert SignatureConfig(method="sac").probe_kind == "cutmix"  # from Python too, not only from the CLI
    assert SignatureConfig(method="sac", probe_kind="random").probe_kind == "random"
    assert SignatureConfig(method="rsa").probe_kind == "random"
    # hashes of configurations made before probe_kind became method-dependent (index.json stores the kind)
    assert SignatureConfig(revision=1).hash() == "2f761b0859783590"
    assert SignatureConfig(method="rsa", revision=1).hash() == "e777f274036c1dce"
    assert SignatureConfig(method="sac", revision=1).hash() == "4f094c125a81fb41"
    # a stored configuration without a revision is one made before revisions: read as revision 1, its hash kept
    stored = {k: v for k, v in SignatureConfig().to_dict().items() if k != "revision"}
    assert SignatureConfig.from_dict(stored).revision == 1 and SignatureConfig.from_dict(stored).hash() == \
        "2f761b0859783590"
    assert SignatureConfig().revision == 2 and SignatureConfig().hash() != "2f761b0859783590"
    assert SignatureConfig.from_dict(SignatureConfig().to_dict()) == SignatureConfig()
    assert SignatureConfig.from_dict(SignatureConfig(method="sac", probe_kind="random").to_dict()).probe_kind == "random"


class _AbsSaliency(GradientMethod):
    """A toy plug-in: the magnitude of the input gradient at each probe."""

    name = "abs-saliency-test"

    def compute(self, adapter, probes, config, batch_size, device, progress):
        return get_method("saliency").compute(adapter, probes, config, batch_size, device, progress).abs()


def test_adding_a_method_is_one_class(probes):
    register(_AbsSaliency)
    try:
        config = SignatureConfig(method="abs-saliency-test", resolution=R, num_probes=4, steps=4, proj_dim=16)
        assert "abs-saliency-test" in method_names() and config.signature_dim == 4 * 16
        model = wrap(SmoothNet(0))
        sig = sign(model, probes, config)
        assert sig.shape == (64,) and np.linalg.norm(sig) == pytest.approx(1.0, abs=1e-5)
        assert torch.equal(features(model, probes, config),
                           features(model, probes, config.replace(method="saliency")).abs())
    finally:
        del _METHODS["abs-saliency-test"]


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("method", method_names())
def test_every_method_works_in_an_index(tmp_path, method):
    """Ingest, nearest, tree with each method; and `distance --exact` (the method's uncompressed distance)
    agrees with the indexed (compressed) distance."""
    files = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        model = timm.create_model("test_resnet", num_classes=4)
        files[name] = tmp_path / f"{name}.pt"
        torch.save(model.state_dict(), files[name])
        if name == "a":
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.0 + 0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(9)))
            files["a_ft"] = tmp_path / "a_ft.pt"
            torch.save(model.state_dict(), files["a_ft"])
    index = tmp_path / "idx"
    _run("init", "-i", index, "--method", method, "-K", "6", "-T", "2", "--resolution", "16", "--proj-dim", "64")
    info = json.loads(_run("info", "-i", index, "--json").stdout)
    assert info["config"]["method"] == method
    assert info["config"]["probe_kind"] == ("cutmix" if method == "sac" else "random")
    for name, path in files.items():
        _run("ingest", "-i", index, path, "--name", name, "--arch", "timm:test_resnet", "--num-classes", "4",
             "--input-size", "16", "--no-progress", "--executor", "inline")
    near = json.loads(_run("nearest", "-i", index, "a", "-k", "2", "--json").stdout)["neighbors"]
    assert near[0]["name"] == "a_ft"
    assert _run("tree", "-i", index).stdout.strip().endswith(";")
    indexed = json.loads(_run("distance", "-i", index, "a", "b", "--json").stdout)
    exact = json.loads(_run("distance", "-i", index, "a", "b", "--exact", "--json").stdout)
    assert (indexed["kind"], exact["kind"]) == ("compressed", "exact")
    # output methods store the exact features (up to float16); gradient methods project each point to 64
    # dims: each cosine is off by about 1/sqrt(64), and the mean over P points by about 1/sqrt(P*64)
    tolerance = 1e-3 if isinstance(get_method(method), OutputMethod) else 3 / np.sqrt(info["signature_dim"])
    assert exact["distance"] == pytest.approx(indexed["distance"], abs=tolerance)
    assert exact["distance"] > 0.02


SETTINGS_AWAY_FROM_DEFAULT = {"steps": 2, "rule": "gauss-legendre", "mode": "ig", "output": "top-logit",
                              "baseline": "random", "proj_dim": 64}


@pytest.mark.parametrize("method", method_names())
def test_a_setting_a_method_declares_unused_changes_nothing_and_init_says_so(tmp_path, method):
    """What ``Method.unused`` lists is really never read (the signature, probes drawn anew from the changed
    configuration, is the same), every other setting changes it, and `init` warns when a setting the method
    never reads is given (it would change only the configuration's hash)."""
    impl = get_method(method)
    model = wrap(SmoothNet(0))
    base = SignatureConfig(method=method, resolution=R, num_probes=4, steps=4, proj_dim=32, seed=5)

    def signature(config):
        return sign(model, make_probes(config), config)

    reference = signature(base)
    for name, value in SETTINGS_AWAY_FROM_DEFAULT.items():
        changed = base.replace(**{name: value})
        if name in impl.unused:
            assert name in impl.unused_settings(changed)
            assert np.allclose(signature(changed), reference, rtol=0, atol=1e-6), name   # x0 + (x1 - x0) rounds
        else:
            assert name not in impl.unused_settings(changed)
            other = signature(changed)
            assert other.shape != reference.shape or not np.allclose(other, reference, atol=1e-3), name
    result = CliRunner().invoke(main, ["init", "-i", str(tmp_path / "idx"), "--method", method, "--output",
                                       "top-logit", "--resolution", "16", "-K", "4"])
    assert result.exit_code == 0, result.output
    warned = f"method '{method}' never reads --output" in result.stderr
    assert warned == ("output" in impl.unused)
