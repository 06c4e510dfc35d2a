"""The gradient-span part of a suspect of another label set (gifindex.fingerprint.gradients), against exact answers:
linear models have constant Jacobians, so a new head on the owner's outputs lies in the owner's span exactly."""
from __future__ import annotations

import pytest
import torch

from gifindex.fingerprint.gradients import row_bases, sketch, sketched_jacobian, span_share
from gifindex.models.spec import InputSpec, LoadedModel

R = 8
SPEC = InputSpec(size=(R, R), mean=(0.5,) * 3, std=(0.25,) * 3)


def _wrap(module: torch.nn.Module) -> LoadedModel:
    return LoadedModel(module=module.eval(), spec=SPEC, ref="m", name="m", source="test", arch="linear")


class _Linear(torch.nn.Module):
    def __init__(self, classes: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(3 * R * R, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


class _NewHead(torch.nn.Module):
    """A new head on a body's outputs (centred), as a transfer copy is a new head on the owner's body."""

    def __init__(self, body: torch.nn.Module, classes: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body, self.head = body, torch.nn.Linear(body.fc.out_features, classes)

    def forward(self, x):
        out = self.body(x)
        return self.head(out - out.mean(1, keepdim=True))


def test_sketch_is_linear_seeded_and_keeps_norms_on_average():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 3 * R * R, generator=gen, dtype=torch.float64), torch.randn(3 * R * R, dtype=torch.float64,
                                                                                       generator=gen)
    assert torch.allclose(sketch(a + 2 * b, 64), sketch(a, 64) + 2 * sketch(b, 64))
    assert torch.equal(sketch(a, 64), sketch(a, 64)) and sketch(a, 64).shape == (200, 64)
    ratio = float((sketch(a, 64) ** 2).sum() / (a ** 2).sum())
    assert ratio == pytest.approx(1.0, abs=0.1)


def test_a_new_head_on_a_linear_body_lies_in_its_span_and_an_independent_model_does_not():
    images = torch.rand(6, 3, R, R, generator=torch.Generator().manual_seed(1))
    owner = _Linear(10, 0)
    owner_bases = row_bases(sketched_jacobian(_wrap(owner), images))
    # a linear model's Jacobian is its weight (per-image centred rows: rank 9 of 10) at every image, its rows in the
    # order of that image's most probable outputs
    jac = sketched_jacobian(_wrap(owner), images)
    weight = owner.fc.weight.detach().double() / 0.25  # through the spec's normalisation
    ranking = owner((images - 0.5) / 0.25).argsort(1, descending=True)
    for i in range(len(images)):
        assert torch.allclose(jac[i], sketch((weight - weight.mean(0, keepdim=True))[ranking[i]]), atol=1e-8)
    norms = owner_bases.double().norm(dim=1)
    assert int((norms > 0.5).sum(1).min()) == 9 and int((norms < 1e-6).sum(1).min()) == 1
    copy = sketched_jacobian(_wrap(_NewHead(owner, 3, 2)), images)
    assert span_share(copy, owner_bases) == pytest.approx(1.0, abs=1e-6)  # (bases are stored as float32)
    independent = sketched_jacobian(_wrap(_Linear(3, 3)), images)
    assert span_share(independent, owner_bases) < 0.1  # about 9 of 512 sketched coordinates' worth
    assert span_share(torch.zeros_like(copy), owner_bases) is None


def test_only_the_most_probable_outputs_get_gradients_above_max_rows():
    """Above ``max_rows`` outputs, the rows are those of each image's most probable outputs, most probable first (one
    backward pass per rank, whatever the output count)."""
    images = torch.rand(4, 3, R, R, generator=torch.Generator().manual_seed(2))
    module = _Linear(5, 4)
    jac = sketched_jacobian(_wrap(module), images, max_rows=2)
    weight = module.fc.weight.detach().double() / 0.25
    centred = weight - weight.mean(0, keepdim=True)
    top = module((images - 0.5) / 0.25).topk(2, 1).indices
    assert jac.shape == (4, 2, 512)
    for i in range(4):
        assert torch.allclose(jac[i], sketch(centred[top[i]]), atol=1e-8)


def test_images_in_batches_give_the_same_jacobian():
    images = torch.rand(5, 3, R, R, generator=torch.Generator().manual_seed(3))
    model = _wrap(_NewHead(_Linear(6, 5), 3, 6))
    assert torch.allclose(sketched_jacobian(model, images, batch_size=2), sketched_jacobian(model, images), atol=1e-6)
