"""Fingerprints live in the index (``INDEX/fingerprints/<owner>.npz``), written atomically; so, when the owner asks
to keep them, do the helper models they were fitted with (``<owner>.helpers.pt``: weights only, read without running
pickled code), which a refit with another query log reuses."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import GifindexError
from ..index.atomic import atomic_write_bytes
from ..index.layout import fingerprint_path, helpers_path  # noqa: F401 (named with the index layout; re-exported)
from .fingerprint import Fingerprint
from .helpers import Builder

if TYPE_CHECKING:
    from .fit import Helpers

FORMAT = "gifindex-fingerprint-1"
MAX_BYTES = 1 << 30
# float arrays a fingerprint may hold (absent in those written before them), and what a damaged one is called
OPTIONAL_FLOATS = {"map_logits": "class-map outputs", "map_reference_logits": "class-map outputs",
                   "gradient_inputs": "gradient arrays", "gradient_bases": "gradient arrays",
                   "reference_gradient_bases": "gradient arrays"}
# of those, the ones written in half precision: orthonormal bases (entries of order 1/sqrt(512)), whose span shares
# float16 moves by ~1e-6 (measured on the mnist32 zoo's), at half the file (the references' bases are most of a
# fingerprint: 10 -> 5.7 MB there); read back as float32, and files written in float32 before still load
HALF_FLOATS = ("gradient_bases", "reference_gradient_bases")


def save_fingerprint(fingerprint: Fingerprint, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "owner": fingerprint.owner, "owner_sha256": fingerprint.owner_sha256,
            "num_classes": fingerprint.num_classes, "calibration": fingerprint.calibration,
            "recipe": fingerprint.recipe, "output_calibration": fingerprint.output_calibration,
            "query_calibration": fingerprint.query_calibration}
    arrays = {"inputs": fingerprint.inputs.numpy().astype(np.float32),
              "labels": fingerprint.labels.numpy().astype(np.int64)}
    if fingerprint.probe_inputs is not None:
        arrays["probe_inputs"] = fingerprint.probe_inputs.numpy().astype(np.float32)
        arrays["probe_logits"] = fingerprint.probe_logits.numpy().astype(np.float32)
    if fingerprint.reference_logits is not None:
        arrays["reference_logits"] = fingerprint.reference_logits.numpy().astype(np.float32)
    if fingerprint.query_inputs is not None:
        arrays["query_inputs"] = fingerprint.query_inputs.numpy().astype(np.float32)
        arrays["query_labels"] = fingerprint.query_labels.numpy().astype(np.int64)
    if fingerprint.query_weights is not None:
        arrays["query_weights"] = fingerprint.query_weights.numpy().astype(np.float32)
    if fingerprint.reference_decisions is not None:
        arrays["reference_decisions"] = fingerprint.reference_decisions.numpy().astype(np.int64)
    if fingerprint.map_inputs is not None:
        arrays["map_inputs"] = fingerprint.map_inputs.numpy().astype(np.float32)
        arrays["map_labels"] = fingerprint.map_labels.numpy().astype(np.int64)
    for name in OPTIONAL_FLOATS:
        if getattr(fingerprint, name) is not None:
            arrays[name] = getattr(fingerprint, name).numpy().astype(np.float16 if name in HALF_FLOATS else np.float32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), **arrays)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def load_fingerprint(path: str | Path) -> Fingerprint:
    """Read a fingerprint, checking its format and shapes; every problem names the file."""
    source = Path(path)
    try:
        if source.stat().st_size > MAX_BYTES:
            raise GifindexError(f"{source}: larger than {MAX_BYTES >> 20} MiB, not a gifindex fingerprint")
        with np.load(source, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            inputs, labels = data["inputs"], data["labels"]
            probes = (data["probe_inputs"], data["probe_logits"]) if "probe_inputs" in data.files else None
            references = data["reference_logits"] if "reference_logits" in data.files else None
            queries = (data["query_inputs"], data["query_labels"]) if "query_inputs" in data.files else None
            weights = data["query_weights"] if "query_weights" in data.files else None
            decided = data["reference_decisions"] if "reference_decisions" in data.files else None
            mapping = (data["map_inputs"], data["map_labels"]) if "map_inputs" in data.files else None
            optional = {k: data[k] for k in OPTIONAL_FLOATS if k in data.files}
    except GifindexError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise GifindexError(f"{source}: not a readable gifindex fingerprint ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise GifindexError(f"{source}: not a gifindex fingerprint (format {found!r})")
    if inputs.dtype != np.float32 or labels.dtype != np.int64 or inputs.ndim != 4:
        raise GifindexError(f"{source}: damaged fingerprint arrays")
    if probes is not None and (probes[0].dtype != np.float32 or probes[1].dtype != np.float32
                               or not np.isfinite(probes[1]).all()) or references is not None and (
            probes is None or references.dtype != np.float32 or not np.isfinite(references).all()):
        raise GifindexError(f"{source}: damaged fingerprint probe arrays")
    if queries is not None and (queries[0].dtype != np.float32 or queries[1].dtype != np.int64
                                or not np.isfinite(queries[0]).all()) or weights is not None and (
            queries is None or weights.dtype != np.float32):
        raise GifindexError(f"{source}: damaged fingerprint query arrays")
    if decided is not None and (decided.dtype != np.int64 or decided.ndim != 2):
        raise GifindexError(f"{source}: damaged fingerprint reference decisions")
    if mapping is not None and (mapping[0].dtype != np.float32 or mapping[1].dtype != np.int64
                                or not np.isfinite(mapping[0]).all()):
        raise GifindexError(f"{source}: damaged fingerprint class-map images")
    for name, array in optional.items():
        stored = (np.float32, np.float16) if name in HALF_FLOATS else (np.float32,)
        if array.dtype not in stored or not np.isfinite(array).all():
            raise GifindexError(f"{source}: damaged fingerprint {OPTIONAL_FLOATS[name]}")
        optional[name] = array.astype(np.float32, copy=False)
    try:
        calibration, output_calibration, query_calibration = (
            {str(k): [float(v) for v in vals] for k, vals in dict(meta.get(name) or {}).items()}
            for name in ("calibration", "output_calibration", "query_calibration"))
        return Fingerprint(owner=str(meta["owner"]), owner_sha256=meta.get("owner_sha256"),
                           inputs=torch.from_numpy(inputs), labels=torch.from_numpy(labels),
                           num_classes=int(meta["num_classes"]), calibration=calibration,
                           recipe=dict(meta.get("recipe", {})),
                           probe_inputs=None if probes is None else torch.from_numpy(probes[0]),
                           probe_logits=None if probes is None else torch.from_numpy(probes[1]),
                           reference_logits=None if references is None else torch.from_numpy(references),
                           output_calibration=output_calibration,
                           query_inputs=None if queries is None else torch.from_numpy(queries[0]),
                           query_labels=None if queries is None else torch.from_numpy(queries[1]),
                           query_calibration=query_calibration,
                           query_weights=None if weights is None else torch.from_numpy(weights),
                           reference_decisions=None if decided is None else torch.from_numpy(decided),
                           map_inputs=None if mapping is None else torch.from_numpy(mapping[0]),
                           map_labels=None if mapping is None else torch.from_numpy(mapping[1]),
                           **{k: torch.from_numpy(a) for k, a in optional.items()})
    except (KeyError, TypeError, ValueError) as exc:
        raise GifindexError(f"{source}: damaged fingerprint metadata ({exc})") from None


def fitted_for(path: str | Path) -> str | None:
    """The indexed weights (sha256) the fingerprint at ``path`` was fitted for, read from its metadata alone; None
    when it records none (fitted before fingerprints recorded it) or cannot be read (``load_fingerprint`` says
    why when it is used)."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    recipe = meta.get("recipe") if isinstance(meta, dict) else None
    sha = recipe.get("index_weights_sha256") if isinstance(recipe, dict) else None
    return sha if isinstance(sha, str) else None


def current_fingerprints(index_root: str | Path, records: Iterable[Any]) -> list[str]:
    """The names of the indexed ``records`` (catalogue records: ``name``, ``weights_sha256``) whose stored fingerprint
    was fitted for the weights indexed under that name now, in their order: the models an index protects. A
    fingerprint kept when its model was removed (`gifindex remove`) and another model later indexed under the name
    belongs to the weights it was fitted for, not to the new model, and protects nothing; one that records no weights
    (fitted before fingerprints recorded them) or cannot be read counts (using it says what is wrong)."""
    from ..index.layout import fingerprinted

    records = list(records)
    stored = set(fingerprinted(index_root, (r.name for r in records)))
    out = []
    for record in records:
        if record.name in stored:
            sha = fitted_for(fingerprint_path(index_root, record.name))
            if sha is None or sha == record.weights_sha256:
                out.append(record.name)
    return out


HELPERS_FORMAT = "gifindex-helpers-1"
HELPER_ROLES = ("surrogate", "reference", "calibration")


def save_helpers(helpers: "Helpers", path: str | Path) -> Path:
    """Write the helpers' weights (state dicts; their architectures rebuild the modules) and their key."""
    models = [{"role": role, "arch": arch,
               "state": {name: value.detach().cpu().clone() for name, value in m.module.state_dict().items()}}
              for role, arch, m in helpers.named()]
    buffer = io.BytesIO()
    torch.save({"format": HELPERS_FORMAT, "key": helpers.key, "archs": list(helpers.archs),
                "num_classes": helpers.num_classes, "models": models}, buffer)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def load_helpers(path: str | Path, build: Builder, key: str | None = None) -> "Helpers | None":
    """The helpers kept at ``path``, rebuilt by ``build`` (architecture, classes) and loaded with their weights (no
    pickled code runs); None when ``key`` is given and they were trained from something else (another owner, data or
    settings: ``helper_key``). A file that is not a gifindex helpers file is one clear error naming it."""
    from .fit import Helpers

    source = Path(path)
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged or foreign file
        raise GifindexError(f"{source}: not a readable gifindex helpers file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != HELPERS_FORMAT:
        raise GifindexError(f"{source}: not a gifindex helpers file")
    if key is not None and payload.get("key") != key:
        return None
    roles: dict[str, list] = {role: [] for role in HELPER_ROLES}
    try:
        for entry in payload["models"]:
            model = build(str(entry["arch"]), int(payload["num_classes"]))
            model.module.load_state_dict(entry["state"])
            model.module.eval()
            for p in model.module.parameters():
                p.requires_grad_(False)
            roles[entry["role"]].append((str(entry["arch"]), model))
        archs, num_classes = tuple(str(a) for a in payload["archs"]), int(payload["num_classes"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise GifindexError(f"{source}: damaged gifindex helpers file ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]})") from None
    return Helpers(str(payload["key"]), archs, num_classes, [m for _, m in roles["surrogate"]],
                   [m for _, m in roles["reference"]], roles["calibration"])
