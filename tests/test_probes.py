"""Probes: seeded and bit-for-bit reproducible, every kind and source, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gifindex.adapter import SharedSpaceAdapter
from gifindex.config import SignatureConfig
from gifindex.errors import ConfigError, ProbeError
from gifindex.probes import Probes, make_probes

from helpers import SmoothNet, identity_spec, wrap


@pytest.mark.parametrize("kind", ["random", "cutmix"])
def test_builtin_probes_are_reproducible_bit_for_bit(kind):
    cfg = SignatureConfig(resolution=24, num_probes=6, probe_kind=kind, seed=9)
    a, b = make_probes(cfg), make_probes(cfg)
    assert torch.equal(a.images, b.images) and torch.equal(a.baseline, b.baseline)
    assert a.images.shape == (6, 3, 24, 24) and a.images.dtype == torch.float32
    assert 0.0 <= float(a.images.min()) and float(a.images.max()) <= 1.0
    assert not torch.equal(a.images, make_probes(cfg.replace(seed=10)).images)
    assert len({img.numpy().tobytes() for img in a.images}) == 6  # all distinct
    assert torch.count_nonzero(a.baseline) == 0


def test_cutmix_combines_two_samples():
    random = make_probes(SignatureConfig(resolution=24, num_probes=8, seed=1))
    mixed = make_probes(SignatureConfig(resolution=24, num_probes=8, seed=1, probe_kind="cutmix"))
    changed = (mixed.images != random.images).any(dim=1)  # per-pixel mask of pasted region
    assert changed.any() and not changed.all()


def test_random_baseline_is_seeded_noise():
    cfg = SignatureConfig(resolution=16, num_probes=3, baseline="random", seed=2)
    a = make_probes(cfg)
    assert torch.equal(a.baseline, make_probes(cfg).baseline)
    assert 0.45 < float(a.baseline.mean()) < 0.55


def test_folder_and_array_sources(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    arrays = [rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8) for _ in range(5)]
    for i, arr in enumerate(arrays):
        Image.fromarray(arr).save(folder / f"{i}.png")
    cfg = SignatureConfig(resolution=16, num_probes=4, probe_source=str(folder), seed=0)
    from_folder = make_probes(cfg)
    assert from_folder.images.shape == (4, 3, 16, 16)
    assert torch.equal(from_folder.images, make_probes(cfg).images)

    np.save(tmp_path / "x.npy", np.stack(arrays))
    np.savez(tmp_path / "x.npz", images=np.stack(arrays).astype(np.float32) / 255)
    a = make_probes(cfg.replace(probe_source=str(tmp_path / "x.npy")))
    b = make_probes(cfg.replace(probe_source=str(tmp_path / "x.npz")))
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.images, from_folder.images, rtol=0, atol=1e-6)  # same pixels, same picks
    np.save(tmp_path / "x16.npy", np.stack(arrays).astype(np.uint16) * 257)     # the same images in 16 bits
    c = make_probes(cfg.replace(probe_source=str(tmp_path / "x16.npy")))
    torch.testing.assert_close(c.images, a.images, rtol=0, atol=1e-6)              # were nearly all white


def test_probe_source_errors(tmp_path):
    with pytest.raises(ProbeError, match="probe source not found"):
        make_probes(SignatureConfig(probe_source=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProbeError, match="no images"):
        make_probes(SignatureConfig(probe_source=str(tmp_path / "empty")))
    np.save(tmp_path / "bad.npy", np.full((2, 8, 8, 3), 7.0, dtype=np.float32))
    with pytest.raises(ProbeError, match=r"must lie in \[0, 1\]"):
        make_probes(SignatureConfig(probe_source=str(tmp_path / "bad.npy")))
    np.save(tmp_path / "int32.npy", np.full((2, 8, 8, 3), 4000, dtype=np.int32))
    with pytest.raises(ProbeError, match=r"hold values 4000..4000; expected 0..255"):
        make_probes(SignatureConfig(probe_source=str(tmp_path / "int32.npy")))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ProbeError, match="unsupported probe source"):
        make_probes(SignatureConfig(probe_source=str(tmp_path / "x.txt")))


def test_pgd_probes_stay_in_the_eps_ball_and_raise_the_anchor_loss():
    anchor = wrap(SmoothNet(seed=4), identity_spec(16))
    cfg = SignatureConfig(resolution=16, num_probes=5, probe_kind="pgd", pgd_anchor="unused", pgd_eps=0.03,
                          pgd_steps=5, seed=1)
    clean = make_probes(cfg.replace(probe_kind="random"))
    adv = make_probes(cfg, anchor=anchor)
    assert torch.equal(adv.images, make_probes(cfg, anchor=anchor).images)
    assert float((adv.images - clean.images).abs().max()) <= 0.03 + 1e-6
    adapter = SharedSpaceAdapter(anchor.module, anchor.spec)
    labels = adapter.predict(clean.images)
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert loss(adapter.logits(adv.images), labels) > loss(adapter.logits(clean.images), labels)


def test_pgd_needs_an_anchor():
    with pytest.raises(ConfigError, match="needs an anchor"):
        SignatureConfig(probe_kind="pgd")


def test_probes_save_and_load_exactly(tmp_path):
    probes = make_probes(SignatureConfig(resolution=16, num_probes=3, baseline="random"))
    probes.save(tmp_path / "p.npz")
    again = Probes.load(tmp_path / "p.npz")
    assert torch.equal(again.images, probes.images) and torch.equal(again.baseline, probes.baseline)
