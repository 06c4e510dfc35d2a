"""A fingerprint: inputs in the shared space, the owner's decision on each, and the agreement rates of
independent calibration references (never used to choose the inputs), which calibrate the verdict."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..adapter import SharedSpaceAdapter
from ..errors import GifindexError
from ..models.spec import LoadedModel

MIN_SIGMA = 0.01  # agreement rates closer than this are not told apart, however many inputs


@dataclass
class Fingerprint:
    """inputs (N, 3, R, R) float32 in [0, 1]; labels (N,) the owner's decisions; num_classes the owner's
    output size; calibration: agreement of each held-out reference (by architecture); recipe: how it was made."""

    owner: str
    owner_sha256: str | None
    inputs: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    calibration: dict[str, list[float]]
    recipe: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.inputs.ndim != 4 or self.inputs.shape[0] != self.labels.shape[0]:
            raise GifindexError(f"fingerprint of {self.owner!r}: {tuple(self.inputs.shape)} inputs for "
                                f"{tuple(self.labels.shape)} labels")
        if len(self.labels) == 0:
            raise GifindexError(f"fingerprint of {self.owner!r} holds no inputs")

    @property
    def size(self) -> int:
        return int(len(self.labels))

    @property
    def null_rates(self) -> list[float]:
        return [r for rates in self.calibration.values() for r in rates]

    def null(self, arch: str | None = None) -> tuple[float, float, str]:
        """(mean, sigma, which) of the agreement of independent models: the mean of the suspect's architecture's
        own calibration references when there are at least two, else of all of them. sigma is the spread of
        all calibration references (a few models of one architecture cannot measure it), and at least the
        binomial standard deviation of a rate over this many inputs, and MIN_SIGMA."""
        rates, which = self.null_rates, "all calibration references"
        if arch is not None and len(self.calibration.get(arch, [])) >= 2:
            rates, which = self.calibration[arch], f"calibration references of {arch}"
        mean = float(np.mean(rates))
        pooled = self.null_rates
        spread = float(np.std(pooled, ddof=1)) if len(pooled) > 1 else 0.0
        binomial = math.sqrt(max(mean * (1 - mean), 1.0 / self.size) / self.size)
        return mean, max(spread, binomial, MIN_SIGMA), which


@torch.no_grad()
def agreement(fingerprint: Fingerprint, model: LoadedModel | SharedSpaceAdapter, device: str = "cpu",
              batch_size: int = 256) -> float | None:
    """Fraction of the fingerprint's inputs on which ``model`` decides as the owner did; None when the model's
    output size differs from the owner's (its decisions are about other classes)."""
    adapter = SharedSpaceAdapter.of(model).to(device).eval()
    hits, seen = 0, 0
    for start in range(0, fingerprint.size, batch_size):
        logits = adapter.logits(fingerprint.inputs[start:start + batch_size].to(device))
        if logits.shape[1] != fingerprint.num_classes:
            return None
        hits += int((logits.argmax(1).cpu() == fingerprint.labels[start:start + batch_size]).sum())
        seen += logits.shape[0]
    return hits / max(1, seen)


@dataclass
class FingerprintScore:
    """A suspect's agreement with the owner on the fingerprint, against independent models'."""

    agreement: float | None
    null_mean: float
    null_sigma: float
    null_source: str
    z: float | None

    @classmethod
    def of(cls, fingerprint: Fingerprint, rate: float | None, arch: str | None = None) -> "FingerprintScore":
        mean, sigma, which = fingerprint.null(arch)
        z = None if rate is None else (rate - mean) / sigma
        return cls(rate, mean, sigma, which, z)

    def to_dict(self) -> dict[str, Any]:
        return {"agreement": self.agreement, "null_mean": self.null_mean, "null_sigma": self.null_sigma,
                "null": self.null_source, "z": self.z}


def combine(signature_z: float | None, fingerprint_z: float | None) -> tuple[float | None, str]:
    """The evidence a verdict rests on, and which: the fingerprint's z when the suspect's decisions are comparable
    with the owner's (same output size), raised to the signature's z when the decisions agree with the owner more
    than independent models do (fingerprint z > 0); the signature's z alone when decisions are not comparable
    (another label set: transfer). Taking the larger of the two without the gate adds the signature's noise
    among independent models of the owner's architecture to every verdict; the fingerprint alone misses
    fine-tuned copies whose decisions moved (docs/results.md section 6.2)."""
    if fingerprint_z is None:
        return signature_z, "signature"
    if signature_z is not None and fingerprint_z > 0 and signature_z > fingerprint_z:
        return signature_z, "signature (decisions agree with the owner above independent models)"
    return fingerprint_z, "fingerprint"
