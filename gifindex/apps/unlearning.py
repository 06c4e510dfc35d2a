"""Unlearning verification: on probes drawn from the data that was to be forgotten, how far has the
candidate moved from the original model? Compared with a control (a model that never saw the forget
data, e.g. one retrained without it, or an unrelated one), which says how far "forgotten" is.

``ratio`` = d(original, candidate) / d(original, control): near 0 the candidate still treats the
forget data like the original did (no evidence of unlearning); near 1 or above it has moved as far as
a model that never saw it. Without a control only the distance is reported.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import GifindexError
from ..methods import feature_distance, get_method
from ..observe import entry_features
from ..probes import Probes, load_source, make_probes

if TYPE_CHECKING:
    from ..config import SignatureConfig
    from ..manifest import ModelEntry

FORGOTTEN_RATIO = 0.5


def forget_probes(config: "SignatureConfig", forget: str,
                  num_probes: int | None = None) -> tuple["SignatureConfig", Probes]:
    """(config, probes) drawn from the forget data (an .npy/.npz array or a folder of images)."""
    images, _ = load_source(forget)
    k = min(num_probes or config.num_probes, len(images))
    if k < 1:
        raise GifindexError(f"no images in the forget data {forget}")
    needed = get_method(config.method).min_probes
    if k < needed:
        raise GifindexError(f"method {config.method} needs >= {needed} forget images, {forget} has {len(images)}")
    probe_config = config.replace(probe_source=str(forget), probe_kind="random", num_probes=k)
    return probe_config, make_probes(probe_config)


def unlearning(original: "ModelEntry", candidate: "ModelEntry", forget: str, config: "SignatureConfig",
               control: "ModelEntry | None" = None, num_probes: int | None = None, device: str = "cpu",
               batch_size: int | None = 32) -> dict[str, Any]:
    """Distances between exact (uncompressed) signatures on forget-data probes, and what they mean."""
    probe_config, probes = forget_probes(config, forget, num_probes)
    feats = {}
    for role, entry in (("original", original), ("candidate", candidate), ("control", control)):
        if entry is None:
            continue
        feats[role] = entry_features(entry, probes, probe_config, device=device, batch_size=batch_size)
    method = probe_config.method
    out: dict[str, Any] = {"method": method, "forget": str(forget), "num_probes": probes.num_probes,
                           "original_candidate": feature_distance(feats["original"], feats["candidate"], method),
                           "random_init": [role for role, entry in (("original", original), ("candidate", candidate),
                                                                    ("control", control))
                                           if entry is not None and entry.random_init]}
    if control is not None:
        out["original_control"] = feature_distance(feats["original"], feats["control"], method)
        out["candidate_control"] = feature_distance(feats["candidate"], feats["control"], method)
        ratio = out["original_candidate"] / max(out["original_control"], 1e-12)
        out["ratio"] = ratio
        forgotten = ratio >= FORGOTTEN_RATIO
        out["verdict"] = "forgotten" if forgotten else "not-forgotten"
        out["meaning"] = (
            f"on the forget data the candidate is {ratio:.2f}x as far from the original as the control is "
            + ("(>= %.2f): it behaves like a model that never saw that data" % FORGOTTEN_RATIO if forgotten else
               "(< %.2f): it still responds to the forget data like the original; unlearning is not evidenced"
               % FORGOTTEN_RATIO))
    else:
        out["verdict"] = "uncalibrated"
        out["meaning"] = ("distance of the candidate to the original on the forget data (0 = unchanged, ~1 = "
                          "unrelated); give --control MODEL (e.g. a model retrained without the forget data) "
                          "for a verdict")
    return out
