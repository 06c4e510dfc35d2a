"""Unlearning verification: on probes drawn from the data that was to be forgotten, how far has the
candidate moved from the original model? Compared with a control (a model that never saw the forget
data, e.g. one retrained without it, or an unrelated one), which says how far "forgotten" is.

``ratio`` = d(original, candidate) / d(original, control): near 0 the candidate still treats the
forget data like the original did (no evidence of unlearning); near 1 or above it has moved as far as
a model that never saw it. Without a control only the distance is reported.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import GifindexError
from ..methods import feature_distance, get_method
from ..observe import entry_features
from ..probes import Probes, load_source, make_probes

if TYPE_CHECKING:
    from ..config import SignatureConfig
    from ..index import Index
    from ..manifest import ModelEntry

FORGOTTEN_RATIO = 0.5
SAME_MODEL = 1e-4  # an original-control distance below this: the control is the original (distances lie in [0, 2])


def forget_probes(config: "SignatureConfig", forget: str,
                  num_probes: int | None = None) -> tuple["SignatureConfig", Probes]:
    """(config, probes) drawn from the forget data (an .npy/.npz array or a folder of images)."""
    from ..fingerprint.data import file_role, require_images

    with file_role(forget, "the forget data"):
        require_images(forget, "the forget data")
        images, _ = load_source(forget)
    k = min(num_probes or config.num_probes, len(images))
    if k < 1:
        raise GifindexError(f"no images in the forget data {forget}")
    needed = get_method(config.method).min_probes
    if k < needed:
        raise GifindexError(f"method {config.method} needs >= {needed} forget images, {forget} has {len(images)}")
    probe_config = config.replace(probe_source=str(forget), probe_kind="random", num_probes=k)
    with file_role(forget, "the forget data"):
        return probe_config, make_probes(probe_config)


def unlearning(original: "ModelEntry", candidate: "ModelEntry", forget: str, config: "SignatureConfig",
               control: "ModelEntry | None" = None, num_probes: int | None = None, device: str = "cpu",
               batch_size: int | None = 32, index: "Index | None" = None) -> dict[str, Any]:
    """Distances between exact (uncompressed) signatures on forget-data probes, and what they mean.

    How a candidate or control weights file given no input convention is loaded (as `suspect` loads a suspect):
    the very file of a model in ``index`` with that model's stored options, else in the original's input
    convention (a weights file carries none, and its architecture's default is not this model's); the line
    reporting how it was signed says which. A control that is the original (the same model, or at distance ~0 from
    it on the forget data) calibrates nothing: an error."""
    if control is not None and _same_entry(original, control):
        raise GifindexError(f"the control {control.display_name()!r} is the original itself: give a model that never "
                            "saw the forget data (e.g. one retrained without it) as --control")
    probe_config, probes = forget_probes(config, forget, num_probes)
    feats: dict[str, Any] = {}
    original_loaded = None
    for role, entry in (("original", original), ("candidate", candidate), ("control", control)):
        if entry is None:
            continue
        fallback = None if role == "original" else _originals_convention(original, original_loaded)
        entry, reused, adopted = _loading(index, entry, fallback)
        feats[role], loaded = entry_features(entry, probes, probe_config, device=device, batch_size=batch_size,
                                             reused_from=reused, convention_note=adopted)
        if role == "original":
            original_loaded = loaded
    method = probe_config.method
    out: dict[str, Any] = {"method": method, "forget": str(forget), "num_probes": probes.num_probes,
                           "original_candidate": feature_distance(feats["original"], feats["candidate"], method),
                           "random_init": [role for role, entry in (("original", original), ("candidate", candidate),
                                                                    ("control", control))
                                           if entry is not None and entry.random_init]}
    if control is not None:
        out["original_control"] = feature_distance(feats["original"], feats["control"], method)
        if not out["original_control"] >= SAME_MODEL:
            raise GifindexError(f"the control {control.display_name()!r} sits at distance "
                                f"{out['original_control']:.2g} from the original on the forget data: it is the "
                                "original (or a copy of it), which calibrates nothing; give a model that never saw "
                                "the forget data (e.g. one retrained without it) as --control")
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


def _same_entry(a: "ModelEntry", b: "ModelEntry") -> bool:
    """Whether two entries name the same model the same way (an indexed name twice, or one reference and options)."""
    return (a.name is not None and a.name == b.name) or (a.ref == b.ref and a.load_kwargs() == b.load_kwargs())


def _originals_convention(original: "ModelEntry", loaded: Any) -> tuple[dict[str, Any], str] | None:
    """The original's input convention as it ran (``loaded``), as loading options, and where they come from: what
    a weights file given none is run with (``Index.resolve``'s ``fallback``, as `suspect` gives the owner's)."""
    if loaded is None:
        return None
    spec = loaded.spec
    return ({"input_size": int(spec.size[0]), "mean": tuple(spec.mean), "std": tuple(spec.std)},
            f"the original's, {original.display_name()!r}: a weights file carries none; give --input-size/--mean/"
            "--std if it takes images otherwise")


def _loading(index: "Index | None", entry: "ModelEntry",
             fallback: tuple[dict[str, Any], str] | None) -> tuple["ModelEntry", str | None, str | None]:
    """``Index.query_options`` of ``entry`` (an indexed name keeps its stored options); without an index, only
    ``fallback`` for a weights file given no input convention."""
    if index is not None and index.catalog.by_name(entry.ref) is None:
        return index.query_options(entry, fallback)
    if fallback is not None and entry.convention_unknown():
        return replace(entry, **fallback[0]), None, fallback[1]
    return entry, None, None
