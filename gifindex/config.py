"""The signature configuration: everything that decides what a model's signature is.

An index fixes one configuration; its hash is stored with every shard so signatures made under
different settings are never mixed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .methods.registry import get_method
from .quadrature import RULES

PROBE_KINDS = ("random", "cutmix", "pgd")
MODES = ("field", "ig")
OUTPUTS = ("norm", "top-logit")
BASELINES = ("zero", "random")
REVISION = 2       # the signature format new configurations get (``SignatureConfig.revision``)

MAX_SIGNATURE_DIM = 1 << 24   # 32 MiB per model as float16
MAX_PROBE_BYTES = 4 << 30     # probes held in memory (float32)

@dataclass(frozen=True)
class SignatureConfig:
    """How signatures are computed. Defaults are gifindex's recommended settings.

    resolution: side R of the shared input space (3 x R x R images in [0, 1]).
    num_probes: K reference points; steps: T curve points per reference point.
    probe_source: ``builtin`` (crops of images shipped with scikit-image / scikit-learn), a folder
    of images, or an ``.npz``/``.npy`` array.  pgd_anchor: model reference PGD probes attack.
    proj_dim: dimension each curve point is projected to in the compressed signature.
    method: a registered signature method (gifindex.methods); probe_kind None means the method's default
    (``random``; ``cutmix`` for sac) and is resolved on construction, so the stored configuration (and its
    hash) always names the kind.
    revision: how features are compressed. 2 (new configurations): a curve point that is exactly zero becomes one
    fixed unit direction, so two models that are both flat there agree in the compressed distance as in the exact
    one (and the signature keeps unit norm), and modelgif+outputs embeds more than 32 outputs with per-point signs
    (its errors average out over the points). 1: indexes made before, read as they were made (zero stays zero).
    Revision 1 is left out of the stored dictionary and the hash, so older indexes keep theirs.
    """

    method: str = "modelgif"
    resolution: int = 64
    num_probes: int = 16
    probe_kind: str | None = None
    probe_source: str = "builtin"
    steps: int = 8
    rule: str = "riemann"
    mode: str = "field"
    output: str = "norm"
    baseline: str = "zero"
    proj_dim: int = 128
    seed: int = 0
    pgd_anchor: str | None = None
    pgd_eps: float = 8 / 255
    pgd_steps: int = 10
    revision: int = REVISION

    def __post_init__(self) -> None:
        if self.probe_kind is None:
            object.__setattr__(self, "probe_kind", get_method(self.method).default_probe_kind)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError with a one-line message for any invalid field."""
        method = get_method(self.method)
        choices = {"probe_kind": PROBE_KINDS, "rule": RULES, "mode": MODES, "output": OUTPUTS,
                   "baseline": BASELINES}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"invalid {name} {value!r}: expected one of {', '.join(allowed)}")
        for name, low, high in (("resolution", 8, 2048), ("num_probes", 1, 4096), ("steps", 1, 1024),
                                ("proj_dim", 1, 65536), ("pgd_steps", 1, 10000), ("seed", 0, 2**63 - 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"invalid {name} {value!r}: expected an integer from {low} to {high}")
        if self.num_probes * 3 * self.resolution ** 2 * 4 > MAX_PROBE_BYTES:
            raise ConfigError(f"{self.num_probes} probes of {self.resolution} x {self.resolution} need more than "
                              f"{MAX_PROBE_BYTES >> 30} GiB; lower --num-probes or --resolution")
        if self.probe_kind == "pgd" and not self.pgd_anchor:
            raise ConfigError("probe kind 'pgd' needs an anchor model: set pgd_anchor (--pgd-anchor REF)")
        method.validate(self)
        if self.signature_dim > MAX_SIGNATURE_DIM:
            raise ConfigError(f"signatures of {self.signature_dim:,} values ({self.signature_dim * 2:,} bytes per "
                              f"model) exceed the {MAX_SIGNATURE_DIM:,}-value limit; lower --proj-dim, "
                              "--num-probes or --steps")
        if self.revision not in (1, REVISION):
            raise ConfigError(f"invalid revision {self.revision!r}: this gifindex makes signatures of revision "
                              f"{REVISION} and reads revision 1")
        if not (0 < self.pgd_eps <= 1):
            raise ConfigError(f"invalid pgd_eps {self.pgd_eps!r}: expected 0 < eps <= 1")

    @property
    def points_per_model(self) -> int:
        """K*T: the number of curve points (and forward/backward passes) per model."""
        return self.num_probes * self.steps

    @property
    def signature_dim(self) -> int:
        """Length of a stored signature, as the method says (gifindex.methods): modelgif K*T*proj_dim;
        saliency and ig K*proj_dim (one point per probe); sac and rsa K*(K-1)/2 (a K x K matrix's triangle)."""
        return get_method(self.method).signature_dim(self)

    @property
    def input_dim(self) -> int:
        return 3 * self.resolution * self.resolution

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["revision"] == 1:   # as indexes made before revisions stored it (their hash is kept)
            del data["revision"]
        return data

    def unread_probe_settings(self) -> list[str]:
        """PGD settings given for probes of another kind, which never read them (they only change the hash)."""
        if self.probe_kind == "pgd":
            return []
        defaults = self.field_defaults()
        return [name for name in ("pgd_anchor", "pgd_eps", "pgd_steps") if getattr(self, name) != defaults[name]]

    @classmethod
    def field_defaults(cls) -> dict[str, Any]:
        """Each field's default, without constructing a configuration (which looks the method up)."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SignatureConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown signature configuration field(s): {', '.join(unknown)}")
        return cls(**{"revision": 1, **data})   # a stored configuration without one predates revisions

    def replace(self, **changes: Any) -> "SignatureConfig":
        return dataclasses.replace(self, **changes)

    def hash(self) -> str:
        """A short stable hash of every field (canonical JSON, sha256, 16 hex digits)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
