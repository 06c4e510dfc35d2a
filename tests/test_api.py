"""The Python API (the shared DESIGN.md's section 3), as a user imports it from ``gifindex``."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import gifindex
from gifindex import SignatureConfig

DESIGN_NAMES = ("load_model", "SignatureConfig", "make_probes", "compute_curves", "curve_distance", "signature",
                "distance", "Index")


@pytest.fixture(scope="module")
def tiny():
    """A timm test_resnet saved as a state dict, a perturbed copy, and a small configuration."""
    import timm
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=10).eval()
    other = timm.create_model("test_resnet", num_classes=10).eval()
    config = SignatureConfig(resolution=16, num_probes=2, steps=2, proj_dim=16, seed=1)
    return net, other, config


def test_design_names_exported() -> None:
    for name in DESIGN_NAMES:
        assert name in gifindex.__all__ and callable(getattr(gifindex, name)), name
    from gifindex.index import Index
    assert gifindex.Index is Index


def test_distance_and_signature_are_functions_and_modules_still_import() -> None:
    from gifindex.distance import curve_distance, pointwise_cosine
    from gifindex.signature import projection_for
    import gifindex.distance  # noqa: F401 - loading the submodule must not replace the function
    assert callable(gifindex.distance) and gifindex.distance.__module__ == "gifindex.api"
    assert gifindex.signature.__module__ == "gifindex.api"
    assert gifindex.curve_distance is curve_distance and callable(pointwise_cosine) and callable(projection_for)
    assert type(sys.modules["gifindex.distance"]).__name__ == "module"


def test_import_does_not_load_torch() -> None:
    code = "import sys, gifindex; gifindex.SignatureConfig; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_signature_and_distance_take_any_model_form(tiny, tmp_path) -> None:
    net, other, config = tiny
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    probes = gifindex.make_probes(config)
    loaded = gifindex.load_model(str(path), arch="timm:test_resnet")
    from_path = gifindex.signature(str(path), config, probes, arch="timm:test_resnet")
    from_module = gifindex.signature(net, config, probes)
    from_loaded = gifindex.signature(loaded, config, probes)
    assert from_path.dtype == np.float32 and from_path.shape == (2 * 2 * 16,)   # K*T*proj_dim
    np.testing.assert_allclose(from_path, from_module, atol=1e-6)
    np.testing.assert_allclose(from_path, from_loaded, atol=1e-6)
    assert np.linalg.norm(from_path) == pytest.approx(1.0, abs=1e-5)
    assert gifindex.distance(str(path), net, config, probes) == pytest.approx(0.0, abs=1e-9)
    d = gifindex.distance(net, other, config, probes)
    curves = [gifindex.compute_curves(gifindex.api.as_loaded_model(m), probes, config) for m in (net, other)]
    assert d == pytest.approx(gifindex.curve_distance(*curves)) == pytest.approx(gifindex.distance(*curves))
    assert 0.2 < d <= 2.0
    with pytest.raises(TypeError, match="do not apply to an nn.Module"):
        gifindex.signature(net, config, probes, arch="timm:test_resnet")
    # any model form goes to compute_curves; a module and a state-dict file compare in one call (arch for the file)
    from_ref = gifindex.compute_curves(str(path), probes, config, arch="timm:test_resnet")
    torch.testing.assert_close(from_ref, gifindex.compute_curves(net, probes, config), rtol=1e-5, atol=1e-7)
    assert gifindex.distance(net, str(path), config, probes, arch="timm:test_resnet") == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="curves differ in shape"):     # (2, 2, D) against (1, 4, D)
        gifindex.curve_distance(curves[0], curves[1].reshape(1, 4, -1))
    with pytest.raises(gifindex.GifindexError, match="invalid batch size -1"):
        gifindex.signature(net, config, probes, batch_size=-1)
    # a device this machine lacks is one clear error before any model moves (none here has 100 GPUs)
    from gifindex.errors import GifindexError
    for call in (lambda: gifindex.signature(net, config, probes, device="cuda:99"),
                 lambda: gifindex.compute_curves(loaded, probes, config, device="cuda:99")):
        with pytest.raises(GifindexError, match=r"^device='cuda:99' (asked for, but CUDA is not available here; "
                                                r"use device='cpu'|: this machine has \d+ CUDA device)"):
            call()
    with pytest.raises(GifindexError, match="unknown device 'bogus': expected cpu, cuda or cuda:N"):
        gifindex.distance(net, other, config, probes, device="bogus")


def test_module_convention_overrides(tiny) -> None:
    net, _, _ = tiny
    lm = gifindex.api.as_loaded_model(net, input_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert lm.spec.size == (16, 16) and lm.spec.mean == (0.5, 0.5, 0.5) and lm.spec.std == (0.25, 0.25, 0.25)
    assert not any(p.requires_grad for p in lm.module.parameters()) and not lm.module.training


def test_index_api_of_the_design(tiny, tmp_path) -> None:
    """Index.create(exist_ok), nearest on a name / module / LoadedModel / vector, distance, a one-model tree."""
    from gifindex.errors import GifindexError
    from gifindex.tree import to_newick
    net, other, config = tiny
    torch.save(net.state_dict(), tmp_path / "a.pt")
    index = gifindex.Index.create(tmp_path / "hub", config)
    with pytest.raises(GifindexError, match="exist_ok=True"):
        gifindex.Index.create(tmp_path / "hub", config)
    with pytest.raises(GifindexError, match="another configuration"):
        gifindex.Index.create(tmp_path / "hub", config.replace(seed=2), exist_ok=True)
    same = gifindex.Index.create(tmp_path / "hub", config, exist_ok=True)
    assert same.config == index.config and len(same) == 0
    with pytest.raises(GifindexError, match="empty"):
        index.tree()
    report = index.ingest([gifindex.manifest.ModelEntry(ref=str(tmp_path / "a.pt"), name="a",
                                                        arch="timm:test_resnet")])
    assert [r.status for r in report.results] == ["added"]
    one = index.tree()                                           # one model: a one-leaf tree, not a raise
    assert one.n == 1 and to_newick(one) == "a;"
    vector = gifindex.signature(net, index.config, index.probes)
    for query in (net, gifindex.load_model(str(tmp_path / "a.pt"), arch="timm:test_resnet"), vector,
                  torch.from_numpy(vector), str(tmp_path / "a.pt")):
        [hit] = index.nearest(query, k=1)
        assert hit.name == "a" and hit.distance < 1e-2 and hit.random_init is False
    assert index.nearest("a", k=1) == []                         # an indexed name is not its own neighbour
    d = index.distance(other, "a")
    assert d == pytest.approx(index.distance("a", other)) and d > 0.05   # another init: not the same function
    with pytest.raises(GifindexError, match="k must be a positive"):
        index.nearest("a", k=0)
    with pytest.raises(GifindexError, match="cannot query this index"):
        index.nearest(vector[:10], k=1)
    for call in (lambda: index.nearest(other, device="bogus"), lambda: index.ingest(["x.pt"], device="bogus")):
        with pytest.raises(GifindexError, match="unknown device 'bogus'"):
            call()
    with pytest.raises(GifindexError, match=r"no model named 'aa'; did you mean 'a'\?"):
        index.nearest("aa")


def test_hugging_face_folder_loads_and_signs(tiny, tmp_path) -> None:
    from timm.models._hub import save_for_hf
    net, _, config = tiny
    folder = tmp_path / "hf-model"
    save_for_hf(net, str(folder))
    loaded = gifindex.load_model(str(folder))
    assert loaded.name == "hf-model" and loaded.arch == "timm:test_resnet" and loaded.source == "hf-folder"
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.module(x), net(x), rtol=0, atol=0)
    probes = gifindex.make_probes(config)
    np.testing.assert_allclose(gifindex.signature(str(folder), config, probes), gifindex.signature(net, config, probes),
                               atol=1e-6)
    with pytest.raises(gifindex.GifindexError, match="do not apply to a Hugging Face model folder"):
        gifindex.load_model(str(folder), random_init=True)
    with pytest.raises(gifindex.GifindexError, match="--arch applies to state-dict files only"):
        gifindex.load_model(str(folder), arch="timm:resnet18")


def test_help_imports_no_torch() -> None:
    code = ("import sys\nfrom gifindex.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'faiss' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


class _Trainable(torch.nn.Module):
    """A module a user trains: batch norm and dropout (their mode matters), one frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.norm = torch.nn.BatchNorm2d(8)
        self.drop = torch.nn.Dropout(0.5)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.norm(self.conv(x)).relu().mean((2, 3))))


def test_signing_a_users_module_leaves_it_as_given(tiny, tmp_path) -> None:
    """A training loop that signs its model goes on training: mode and requires_grad are put back, and the
    signature is the eval-mode one (the same as of an eval-mode copy)."""
    import copy

    config = tiny[2]
    probes = gifindex.make_probes(config)
    model = _Trainable().train()
    model.conv.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    frozen = copy.deepcopy(model).eval()
    assert gifindex.distance(model, model, config, probes, input_size=16) == pytest.approx(0.0, abs=1e-9)
    vector = gifindex.signature(model, config, probes, input_size=16)
    assert np.array_equal(vector, gifindex.signature(frozen, config, probes, input_size=16))
    index = gifindex.Index.create(tmp_path / "ix", config)
    index.resolve(model)
    assert model.training and model.drop.training and model.norm.training
    assert [p.requires_grad for p in model.parameters()] == flags


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_a_module_in_another_precision_is_signed_in_it(tiny, dtype) -> None:
    config = tiny[2]
    probes = gifindex.make_probes(config)
    model = _Trainable().eval()
    import copy

    other = copy.deepcopy(model).to(dtype)
    tolerance = 1e-9 if dtype == torch.float64 else 0.01
    assert gifindex.distance(model, other, config, probes, input_size=16) == pytest.approx(0.0, abs=tolerance)
    assert next(other.parameters()).dtype == dtype


class _Rounded(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean((2, 3)) * 10).round()


class _BatchSum(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.square().sum()


class _ClassIndex(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)).argmax(1)


class _NoOutputs(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))[:, :0]


@pytest.mark.parametrize("module, says", [(_Rounded(), "gradient is zero at every probe point"),
                                          (_BatchSum(), "one number for the whole batch"),
                                          (_ClassIndex(), "int64 values, not scores"),
                                          (_NoOutputs(), "returned an empty tensor")])
def test_a_model_without_a_usable_gradient_is_refused_in_one_line(tiny, module, says) -> None:
    """A zero gradient everywhere would be an all-zero 'unit-norm' signature at distance 0 from every other such
    model; the other outputs failed deep inside torch."""
    config = tiny[2]
    with pytest.raises(gifindex.errors.SignatureError, match=says) as caught:
        gifindex.signature(module, config, input_size=16)
    assert "\n" not in str(caught.value)


def test_index_ingest_takes_references_and_says_so_for_a_module(tiny, tmp_path) -> None:
    net, _, config = tiny
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    index = gifindex.Index.create(tmp_path / "ix", config)
    with pytest.raises(gifindex.errors.GifindexError, match="takes model references"):
        index.ingest([net])
    report = index.ingest(path)   # one path, not its characters
    assert [r.status for r in report.results] == ["added"] and [r.name for r in index.records()] == ["net"]


def test_a_random_init_model_is_never_reloaded_as_a_new_draw(tmp_path) -> None:
    """Its weights are not kept: `distance --exact` (and anything loading it again) refuses instead of drawing
    other weights (which put the model at distance 0.5 from itself)."""
    from click.testing import CliRunner

    from gifindex.cli import main

    def run(*args: str) -> object:
        return CliRunner().invoke(main, list(args))

    index = str(tmp_path / "ix")
    assert run("init", "-i", index, "--resolution", "16", "-K", "2", "-T", "2").exit_code == 0
    added = run("ingest", "-i", index, "timm:test_resnet", "--random-init", "--name", "rnd", "--num-classes", "4",
                "--executor", "inline", "--no-progress")
    assert added.exit_code == 0, added.output
    assert "took" not in added.stderr   # not a weights file taking a default convention
    assert run("distance", "-i", index, "rnd", "rnd").stdout.split()[-1].startswith("0.0")
    exact = run("distance", "-i", index, "rnd", "rnd", "--exact")
    assert exact.exit_code == 1 and "random weights (--random-init), which are not kept" in exact.stderr
