"""The index facade (DESIGN section 4): open or create an index, ask it questions, change it.

The work is done by the layers below: ``files`` (layout, meta, signatures, search file, lock),
``writer`` (create, ingest, remove), ``maintenance`` (verify, repair, rebuild). ``Index`` keeps the public
API in one place.
"""
from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ..api import leaves_modules_as_given
from ..config import SignatureConfig
from ..device import check_device
from ..distance import distance_matrix, signature_distance, signature_distances
from ..errors import GifindexError, IndexError_
from ..executors import Reporter
from ..ingest import SignResult, changed_code, sign_entry
from ..manifest import ModelEntry
from ..methods.registry import get_method
from ..probes import Probes
from ..refs import parse_ref
from ..tree import MAX_DENSE_MODELS, build_tree, build_tree_scalable
from . import maintenance, writer
from .catalog import ModelRecord
from .files import IndexFiles
from .layout import INDEX_FILE, versions
from .search import APPROXIMATE, SearchSpec, index_kind, search
from .shards import file_sha256
from .writer import IngestReport

if TYPE_CHECKING:
    import torch.nn as nn

    from ..models.spec import LoadedModel

log = logging.getLogger(__name__)

IngestReporter = Reporter  # progress hooks an ingest calls (see gifindex.executors.Reporter)
# What a query may be: an indexed name, a model reference, a ModelEntry (reference + loading options),
# a LoadedModel or nn.Module (signed with the index's probes), or a signature vector of the index's dimension.
QueryLike = Union[str, ModelEntry, "LoadedModel", "nn.Module", np.ndarray]
UNIT_TOLERANCE = 1e-2  # a query vector's norm may exceed 1 by this much (float16 storage: ~1e-4)
NEAR_TWIN = 1e-3     # nearest: hits closer than this are checked against their stored signature (equal: 0)
RELOCATE_DEPTH = 2   # a missing model file is looked for this many folders below the index's parent


@dataclass
class Neighbor:
    name: str
    distance: float
    ref: str
    random_init: bool = False   # the indexed model has random (untrained) weights

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distance": self.distance, "ref": self.ref, "random_init": self.random_init}


@dataclass
class Query:
    """A query model resolved against an index: its signature and where it came from.

    ``record`` is set for an indexed model; ``signed`` (for a model signed on the fly) says how it was
    loaded: architecture, input size, mean and std, and whether each was given, detected or reused from
    an indexed model with the same weights file (``reused_from``).
    """

    vector: np.ndarray
    name: str
    record: ModelRecord | None = None
    signed: dict[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, repr=False, compare=False)  # the LoadedModel when signed on the fly
    entry: ModelEntry | None = field(default=None, repr=False, compare=False)  # and the options it was loaded with


def _loaded_files(path: str) -> list[Path]:
    """The local files a model reference is loaded from (the file itself, or a Hugging Face model folder's weights
    files); none for a reference that is not a local path."""
    from ..refs import HF_FOLDER_WEIGHTS

    where = Path(path)
    if where.is_file():
        return [where]
    if where.is_dir():
        return [where / name for name in HF_FOLDER_WEIGHTS if (where / name).is_file()]
    return []


def _check_trusted_code(record: ModelRecord) -> None:
    """A stored ``--trust`` covers the class file it let run (``ingest.trusted_code``, recorded since class files
    were): refuse when that file has changed. A file gone is left to the loader, which says so."""
    changed = changed_code(record.metadata)
    if changed:
        raise IndexError_(f"model {record.name!r} was indexed with --trust, but its class file {changed[0]} changed "
                          "since it was indexed; the stored --trust applies only to the code that was trusted: give "
                          "the model's file itself with --trust to run the class as it is now, or remove the model "
                          "and ingest it again with --trust")


class Index(IndexFiles):
    """A directory of model signatures that answers nearest / distance / matrix / tree queries."""

    # ------------------------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | Path, config: SignatureConfig | None = None, search: SearchSpec | None = None,
               probes: Probes | None = None, device: str = "cpu", exist_ok: bool = False) -> "Index":
        """Create an empty index with a fixed configuration; its probes are drawn now and stored.

        With ``exist_ok`` an index already at ``path`` with the same configuration is opened instead; one
        with another configuration is always an error.
        """
        root = Path(path)
        config = config or SignatureConfig()
        if (root / INDEX_FILE).exists():
            existing = cls.open(root)
            if existing.config != config.replace(revision=existing.config.revision):   # an older index stays as made
                existing.close()
                raise IndexError_(f"an index with another configuration ({existing.config.hash()}) already "
                                  f"exists at {root}; choose another --index directory")
            if exist_ok:
                return existing
            existing.close()
            raise IndexError_(f"an index already exists at {root} (same configuration); nothing to do "
                              "(Python: Index.open, or Index.create(..., exist_ok=True))")
        if root.exists() and not root.is_dir():
            raise IndexError_(f"{root} exists and is not a directory")
        if root.exists() and any(p for p in root.iterdir() if not p.name.startswith(".")):
            raise IndexError_(f"{root} is not empty and holds no index; choose an empty or new directory")
        unused = get_method(config.method).unused_settings(config)
        if unused:
            log.warning("method %r never reads %s: %s the configuration's hash and nothing else", config.method,
                        ", ".join(f"--{name.replace('_', '-')}" for name in unused),
                        "it changes" if len(unused) == 1 else "they change")
        unread = config.unread_probe_settings()
        if unread:
            log.warning("%s only %s to --probe-kind pgd (the probes are %s): %s the configuration's hash and "
                        "nothing else", ", ".join(f"--{name.replace('_', '-')}" for name in unread),
                        "applies" if len(unread) == 1 else "apply", config.probe_kind,
                        "it changes" if len(unread) == 1 else "they change")
        writer.create(root, config, search or SearchSpec(), probes, device)
        return cls.open(root)

    @classmethod
    def open(cls, path: str | Path) -> "Index":
        """Open an existing index; a missing, foreign, other-version or inconsistent one is a clear error."""
        return cls(*cls.read(path))

    # ------------------------------------------------------------------------------------ signatures
    def sign(self, entry: ModelEntry | str, device: str = "cpu", batch_size: int | None = 32,
             progress: Callable[[int], None] | None = None,
             on_signed: Callable[[Any], None] | None = None) -> SignResult:
        """Sign a model with this index's probes and configuration without adding it (``progress`` is
        called with the number of images done, see gifindex.methods.passes; ``on_signed`` with the loaded
        model)."""
        check_device(device)
        entry = entry if isinstance(entry, ModelEntry) else ModelEntry(ref=entry)
        result = sign_entry(entry, self.config, self.probes, device=device, batch_size=batch_size,
                            progress=progress, on_signed=on_signed)
        if result.status != "added":
            raise GifindexError(f"cannot sign {entry.ref}: {result.error}")
        return result

    def entry_for(self, name_or_ref: str | ModelEntry, trust: bool = False) -> ModelEntry:
        """How to load a model: an indexed name's stored loading options, or the reference itself. A model
        indexed with random weights cannot be loaded again (a new draw is another model): an error. A stored
        ``--trust`` holds only for the bytes that were trusted: a trusted model whose file changed since it was
        indexed is refused unless the caller trusts it now (``trust``)."""
        if isinstance(name_or_ref, ModelEntry):
            return name_or_ref
        record = self.catalog.by_name(name_or_ref)
        if record is None:
            return ModelEntry(ref=name_or_ref)
        entry = self._stored_entry(record)
        self._check_indexed_bytes(record, entry, trusted_before=entry.trust and not trust)
        return entry

    def _stored_entry(self, record: ModelRecord) -> ModelEntry:
        """The loading options stored for ``record``, its files located (:meth:`locate`)."""
        if record.metadata.get("random_init"):
            raise GifindexError(f"model {record.name!r} was indexed with random weights (--random-init), which are "
                                "not kept: it cannot be loaded again, only its stored signature can be used")
        load = dict(record.metadata.get("load") or {"ref": record.ref})
        for key in ("mean", "std"):
            if load.get(key) is not None:
                load[key] = tuple(load[key])
        for key in ("ref", "weights"):
            if load.get(key):
                load[key] = self.locate(record, load[key])
        return ModelEntry(name=record.name, **load)

    def _check_indexed_bytes(self, record: ModelRecord, entry: ModelEntry, trusted_before: bool) -> None:
        """Refuse to load ``record`` from a file whose sha256 is not the one recorded when it was indexed: its
        stored signature is of the old bytes (an exact distance, a fingerprint check or an unlearning test would
        mix two models), and a stored ``--trust`` covers only the bytes that were trusted (another pickle put at
        its path would run its code). A reference without a local file, or none recorded, passes."""
        if trusted_before:
            _check_trusted_code(record)
        path = entry.weights or entry.ref
        files = _loaded_files(path)
        wanted = record.metadata.get("file_sha256")
        if not files or (not wanted and not trusted_before):
            return
        found = [file_sha256(f) for f in files]
        if wanted and wanted in found:
            return
        held = f"sha256 {found[0][:16]}..., indexed {wanted[:16]}..." if wanted else "no sha256 was recorded"
        if trusted_before:
            raise IndexError_(f"model {record.name!r} was indexed with --trust, but its file {path} changed since it "
                              f"was indexed ({held}); the stored --trust applies only to the bytes that were trusted: "
                              "give the file itself with --trust to load it as it is now, or remove the model and "
                              "ingest it again with --trust")
        raise IndexError_(f"model {record.name!r}: its file {path} changed since it was indexed ({held}); its stored "
                          "signature is of the old bytes: restore the file, or ingest the new one under another name "
                          "(or give the file itself, not the indexed name, to use it as it is now)")

    def loading_entry(self, model: str | ModelEntry) -> ModelEntry:
        """The options a query model is loaded with, as :meth:`resolve` signs it: an indexed name's stored
        options, a file whose bytes match an indexed model's file with that model's convention, or the
        reference as given (what another look at the same model, e.g. its fingerprint, must use too)."""
        if isinstance(model, str) and self.catalog.by_name(model) is not None:
            return self.entry_for(model)
        return self._reuse_convention(model if isinstance(model, ModelEntry) else ModelEntry(ref=model))[0]

    def locate(self, record: ModelRecord, path: str) -> str:
        """The file an indexed model was ingested from: ``path`` when it is there, else a file of the same
        name and weights sha256 next to the index (up to RELOCATE_DEPTH folders below its parent), else a
        one-line error naming the hash. Model references that are not paths come back unchanged."""
        wanted = Path(path)
        if wanted.exists() or (":" in path.split("/")[0] and not wanted.is_absolute()):
            return path
        sha = record.metadata.get("file_sha256")
        base = self.root.resolve().parent
        patterns = [wanted.name] + ["/".join(["*"] * depth + [wanted.name]) for depth in range(1, RELOCATE_DEPTH + 1)]
        for pattern in patterns:
            for candidate in sorted(base.glob(pattern)):
                if sha and candidate.is_file() and file_sha256(candidate) == sha:
                    return str(candidate.resolve())
        held = f"weights sha256 {sha}" if sha else "no weights hash recorded"
        raise IndexError_(f"model {record.name!r} was ingested from {path} ({held}), which is missing; put the "
                          f"file back, or anywhere up to {RELOCATE_DEPTH} folders below {base} (next to the index), "
                          "where it is found by that hash")

    def query(self, ref: QueryLike, device: str = "cpu",
              batch_size: int | None = 32) -> tuple[np.ndarray, str, ModelRecord | None]:
        """``(signature, name, record)`` for any query (see :meth:`resolve`)."""
        q = self.resolve(ref, device=device, batch_size=batch_size)
        return q.vector, q.name, q.record

    @leaves_modules_as_given
    def resolve(self, model: QueryLike, device: str = "cpu", batch_size: int | None = 32,
                progress: Callable[[int], None] | None = None,
                fallback: tuple[dict[str, Any], str] | None = None) -> Query:
        """Resolve a query: an indexed name (its stored signature), a signature vector, or a model signed on
        the fly with this index's probes (not added). A model file whose bytes match a file an indexed model
        was ingested from, given without --input-size/--mean/--std/--arch, is signed with that model's stored
        loading options (``signed["reused_from"]``). A mistyped name gets a "did you mean" error.
        ``fallback``: (input_size / mean / std options, where they come from) for a weights file given no input
        convention and not an indexed model's file (``ModelEntry.convention_unknown``), instead of its
        architecture's default: `suspect` gives the owner's."""
        import torch
        import torch.nn as nn

        from ..models.spec import LoadedModel

        check_device(device)
        if isinstance(model, (np.ndarray, torch.Tensor)):
            return Query(self._as_vector(model), "<signature>")
        if isinstance(model, (LoadedModel, nn.Module)):
            return self._sign_loaded(model, device, batch_size, progress)
        if isinstance(model, str):
            record = self.catalog.by_name(model)
            if record is not None:
                return Query(self.load_vectors([record])[0], record.name, record)
            model = ModelEntry(ref=model)
        if not isinstance(model, ModelEntry):
            raise IndexError_(f"a query is an indexed name, a model reference or file, a ModelEntry, a LoadedModel or "
                              f"nn.Module, or a signature vector; got {type(model).__name__} {model!r:.60}")
        self.check_reference(model.ref)
        from ..methods import passes
        from ..observe import signed as report_signed
        from ..observe import signing

        entry, reused, adopted = self.query_options(model, fallback)
        kept: list[Any] = []
        with signing(entry.display_name(), passes(self.config)) as observed:
            result = self.sign(entry, device=device, batch_size=batch_size, progress=progress or observed,
                               on_signed=kept.append)
        signed = _signed_info(entry, result.metadata, reused, adopted)
        report_signed(signed)
        return Query(result.signature.astype(np.float16).astype(np.float32), result.name, None, signed,  # as stored
                     model=kept[0] if kept else None, entry=entry)

    def _as_vector(self, vector: Any) -> np.ndarray:
        arr = np.asarray(vector.detach().cpu() if hasattr(vector, "detach") else vector, dtype=np.float32).reshape(-1)
        if arr.shape[0] != self.dim:
            raise IndexError_(f"a signature of {arr.shape[0]} values cannot query this index, whose signatures have "
                              f"{self.dim}; sign the model with index.config and index.probes")
        if not np.all(np.isfinite(arr)):
            raise IndexError_("the query signature holds NaN or Inf")
        norm = float(np.linalg.norm(arr.astype(np.float64)))
        if not 0.0 < norm <= 1.0 + UNIT_TOLERANCE:   # below 1 where a model's gradient vanishes on part of a path
            raise IndexError_(f"the query vector has norm {norm:.4g}, but signatures have norm at most 1 (a distance "
                              "is 1 - their inner product) and are not zero: give a signature from this index "
                              "(Index.vectors) or one signed with index.config and index.probes")
        return arr.astype(np.float16).astype(np.float32)

    def _sign_loaded(self, model: Any, device: str, batch_size: int | None,
                     progress: Callable[[int], None] | None) -> Query:
        from ..api import as_loaded_model
        from ..methods import passes
        from ..observe import loaded_info, signing
        from ..observe import signed as report_signed
        from ..signature import signature

        loaded = as_loaded_model(model, device=device)
        with signing(loaded.name, passes(self.config)) as observed:
            vector = signature(loaded, self.config, self.probes, batch_size=batch_size, device=device,
                               progress=progress or observed)
        signed = loaded_info(loaded, arch_from="given", convention_from="given")
        report_signed(signed)
        return Query(vector.astype(np.float16).astype(np.float32), loaded.name, None, signed, model=loaded)

    def check_reference(self, ref: str) -> None:
        """A model reference that does not parse (a mistyped indexed name?): the error, with "did you mean"."""
        try:
            parse_ref(ref)
        except GifindexError as exc:
            raise self._unknown_name(ref, exc) from None

    def _unknown_name(self, text: str, exc: GifindexError) -> IndexError_:
        close = self.similar_names(text)
        if close:
            return IndexError_(f"no model named {text!r}; did you mean {' or '.join(repr(c) for c in close)}?")
        return IndexError_(f"no model named {text!r} in the index, and it is not a model reference either ({exc})")

    def query_options(self, entry: ModelEntry, fallback: tuple[dict[str, Any], str] | None = None
                      ) -> tuple[ModelEntry, str | None, str | None]:
        """(entry, the indexed model whose stored options it took or None, the fallback's note or None): how a
        model that is not an indexed name is loaded to be compared with this index's models (:meth:`resolve`,
        unlearning). A file whose bytes match an indexed model's file takes that model's stored options; else a
        weights file given no input convention takes ``fallback``'s, when one is given."""
        entry, reused = self._reuse_convention(entry)
        if reused is None and fallback is not None and entry.convention_unknown():
            return replace(entry, **fallback[0]), None, fallback[1]
        return entry, reused, None

    def _reuse_convention(self, entry: ModelEntry) -> tuple[ModelEntry, str | None]:
        """A file given without loading options whose bytes match an indexed model's file: that model's
        stored options (architecture, classes, input convention, output), so the two sign alike."""
        if entry.arch or entry.input_size or entry.mean or entry.std or entry.weights or entry.random_init:
            return entry, None
        try:
            path = parse_ref(entry.ref).path
        except GifindexError:
            return entry, None
        if path is None or not Path(path).is_file():
            return entry, None
        record = self.catalog.by_file_sha(file_sha256(Path(path)))
        if record is None:
            return entry, None
        # its options, not its trust: the query keeps its own (and its bytes are those indexed)
        stored = self._stored_entry(record) if record.metadata.get("load") else ModelEntry(ref=path)
        keep = {"arch", "num_classes", "input_size", "mean", "std", "output"}
        options = {k: getattr(stored, k) for k in keep if getattr(stored, k) is not None}
        return ModelEntry(ref=entry.ref, name=entry.name, tags=entry.tags, trust=entry.trust, **options), record.name

    # --------------------------------------------------------------------------------------- queries
    @leaves_modules_as_given
    def nearest(self, ref: QueryLike, k: int = 10, device: str = "cpu",
                batch_size: int | None = 32, progress: Callable[[int], None] | None = None) -> list[Neighbor]:
        """The k indexed models nearest to ``ref``: an indexed name (not returned as its own neighbour), a model
        reference, ModelEntry, LoadedModel or nn.Module (signed on the fly), or a signature vector."""
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
            raise IndexError_(f"k must be a positive number of neighbours, got {k!r}")
        k = int(k)
        return self.nearest_to(self.resolve(ref, device=device, batch_size=batch_size, progress=progress), k)

    def nearest_to(self, query: Query, k: int = 10) -> list[Neighbor]:
        """The k indexed models nearest to an already resolved query (see :meth:`resolve`)."""
        vector, record = query.vector, query.record
        index = self.search_index()
        if index.ntotal == 0:
            return []
        extra = 1 if record is not None else 0
        approximate = index_kind(index) in APPROXIMATE
        distances, ids = search(index, vector, (k + extra) * (4 if approximate else 1))
        by_id = self.catalog.by_ids([int(i) for i in ids[0] if i >= 0])
        if approximate:  # candidates from the approximate index, distances exact from the shards
            found = [int(i) for i in ids[0] if i >= 0 and int(i) in by_id]
            exact = signature_distances(self.load_vectors([by_id[i] for i in found]), vector)
            order = np.argsort(exact, kind="stable")
            distances = exact[order][None]
            ids = np.array(found, dtype=np.int64)[order][None]
        else:  # float16 twins: a model's own signature is at ~1e-5 by inner product; signature_distances says 0
            near = [int(i) for d, i in zip(distances[0], ids[0]) if d < NEAR_TWIN and int(i) in by_id]
            if near:
                exact = dict(zip(near, signature_distances(self.load_vectors([by_id[i] for i in near]), vector)))
                corrected = np.array([exact.get(int(i), d) for d, i in zip(distances[0], ids[0])])
                order = np.argsort(corrected, kind="stable")
                distances, ids = corrected[order][None], ids[0][order][None]
        out = []
        for dist, model_id in zip(distances[0], ids[0]):
            if model_id < 0 or (record is not None and model_id == record.id) or model_id not in by_id:
                continue
            found = by_id[model_id]
            out.append(Neighbor(found.name, float(dist), found.ref, bool(found.metadata.get("random_init"))))
        return out[:k]

    @leaves_modules_as_given
    def distance(self, a: QueryLike, b: QueryLike, device: str = "cpu", batch_size: int | None = 32) -> float:
        """Approximate ModelGiF distance from stored (or freshly signed) compressed signatures; ``a`` and
        ``b`` are anything :meth:`nearest` takes."""
        va, _, _ = self.query(a, device=device, batch_size=batch_size)
        vb, _, _ = self.query(b, device=device, batch_size=batch_size)
        return signature_distance(va, vb)

    def matrix(self, names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """All pairwise distances (float64, symmetric, zero diagonal) among indexed models."""
        records, vectors = self.vectors(names)
        return [r.name for r in records], distance_matrix(vectors)

    def tree(self, linkage: str = "average"):
        """Hierarchical clustering of every indexed model (see gifindex.tree); one model makes a one-leaf
        tree, an empty index is an error. Leaf metadata: the ref, the manifest tags and random_init."""
        records, vectors = self.vectors()
        if not records:
            raise IndexError_("the index is empty: a tree needs at least one indexed model; ingest some first")
        names = [r.name for r in records]
        metadata = {r.name: {"ref": r.ref, **r.metadata.get("tags", {}),
                             **({"random_init": True} if r.metadata.get("random_init") else {})} for r in records}
        if len(records) > MAX_DENSE_MODELS:  # the n x n matrix would not fit: k-means clusters, then dense trees
            return build_tree_scalable(names, vectors, linkage=linkage, metadata=metadata)
        return build_tree(names, distance_matrix(vectors), linkage=linkage, metadata=metadata)

    def info(self) -> dict[str, Any]:
        records = self.records()
        shards = self.catalog.shards()
        bytes_on_disk = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return {
            "path": str(self.root), "format_version": self.meta["format_version"],
            "config": self.config.to_dict(), "config_hash": self.config_hash, "models": len(records),
            "shards": len(shards), "signature_dim": self.dim, "bytes_per_model": self.dim * 2,
            "search": {**(self.meta.get("search") or {}), **self.search_status()}, "bytes_on_disk": bytes_on_disk,
            "failures": len(self.catalog.failures()), "created": self.meta.get("created"),
            "versions": self.meta.get("versions"), "running_versions": versions(),
        }

    # ------------------------------------------------------------------------------------ writes
    def ingest(self, refs: Iterable[str | ModelEntry], *, device: str = "cpu", batch_size: int | None = 32,
               commit_every: int = 8, commit_seconds: float = 60.0, reporter: Reporter | None = None,
               wait: float = 0.0, executor=None) -> IngestReport:
        """Sign and add models (see gifindex.index.writer.ingest)."""
        check_device(device)
        refs = [refs] if isinstance(refs, (str, ModelEntry, os.PathLike)) else list(refs)
        refs = [os.fspath(ref) if isinstance(ref, os.PathLike) else ref for ref in refs]
        for ref in refs:
            if not isinstance(ref, (str, ModelEntry)):
                raise GifindexError(f"Index.ingest takes model references (str) or ModelEntry objects, not "
                                    f"{type(ref).__name__}: an index records where each model comes from, so save "
                                    "a module first (torch.save of its state_dict) and ingest the file; "
                                    "Index.nearest / Index.resolve take a module as it is")
        return writer.ingest(self, refs, device=device, batch_size=batch_size, commit_every=commit_every,
                             commit_seconds=commit_seconds, reporter=reporter, wait=wait, executor=executor)

    def _commit(self, results: list[SignResult]) -> None:
        """Commit already signed results as one shard (the caller holds the writer lock)."""
        writer.commit(self, results)

    def remove(self, name: str, wait: float = 0.0) -> ModelRecord:
        """Remove a model from the catalogue and the search index (see gifindex.index.writer.remove)."""
        return writer.remove(self, name, wait=wait)

    # ------------------------------------------------------------------------------------ maintenance
    def rebuild(self, wait: float = 0.0) -> int:
        """Recreate the derived files (search.faiss; the catalogue when it is missing or damaged) from the
        shards; returns the number of models indexed."""
        return maintenance.rebuild(self, wait=wait)

    def repair(self, wait: float = 0.0) -> dict[str, Any]:
        """Quarantine corrupt shards, remove debris, rebuild the search index (see maintenance.repair)."""
        return maintenance.repair(self, wait=wait)

    def verify(self) -> dict[str, Any]:
        """Check every file (see maintenance.verify)."""
        return maintenance.verify(self)


def _signed_info(entry: ModelEntry, metadata: dict[str, Any], reused: str | None,
                 convention_note: str | None = None) -> dict[str, Any]:
    """How a model signed on the fly was loaded: what ``nearest``/``distance`` print and return in --json."""
    from ..observe import also_fits, entry_origins

    arch_from, convention_from = entry_origins(entry, metadata)
    convention_from = convention_note or convention_from
    if reused:
        arch_from = convention_from = f"indexed model {reused!r} (same weights file)"
    return {"ref": entry.ref, "arch": metadata.get("arch"), "arch_from": arch_from,
            "input_size": metadata.get("input_size"), "mean": metadata.get("mean"), "std": metadata.get("std"),
            "channels": metadata.get("channels", 3), "interpolation": metadata.get("interpolation"),
            "convention_from": convention_from, "reused_from": reused,
            "random_init": bool(entry.random_init), "also_fits": also_fits(metadata)}
