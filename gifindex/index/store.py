"""The index facade (DESIGN section 4): open or create an index, ask it questions, change it.

The work is done by the layers below: ``files`` (layout, meta, signatures, search file, lock),
``writer`` (create, ingest, remove), ``maintenance`` (verify, repair, rebuild). ``Index`` keeps the public
API in one place.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SignatureConfig
from ..distance import distance_matrix, signature_distance, signature_distances
from ..errors import GifindexError, IndexError_
from ..executors import Reporter
from ..ingest import SignResult, sign_entry
from ..manifest import ModelEntry
from ..probes import Probes
from ..refs import parse_ref
from ..tree import MAX_DENSE_MODELS, build_tree, build_tree_scalable
from . import maintenance, writer
from .catalog import ModelRecord
from .files import IndexFiles
from .layout import INDEX_FILE
from .search import APPROXIMATE, SearchSpec, index_kind, search
from .writer import IngestReport

IngestReporter = Reporter  # progress hooks an ingest calls (see gifindex.executors.Reporter)


@dataclass
class Neighbor:
    name: str
    distance: float
    ref: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distance": self.distance, "ref": self.ref}


class Index(IndexFiles):
    """A directory of model signatures that answers nearest / distance / matrix / tree queries."""

    # ------------------------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | Path, config: SignatureConfig | None = None, search: SearchSpec | None = None,
               probes: Probes | None = None, device: str = "cpu") -> "Index":
        """Create an empty index with a fixed configuration; its probes are drawn now and stored."""
        root = Path(path)
        config = config or SignatureConfig()
        if (root / INDEX_FILE).exists():
            existing = cls.open(root)
            existing.close()
            if existing.config != config:
                raise IndexError_(f"an index with another configuration ({existing.config.hash()}) already "
                                  f"exists at {root}; choose another --index directory")
            raise IndexError_(f"an index already exists at {root} (same configuration); nothing to do")
        if root.exists() and not root.is_dir():
            raise IndexError_(f"{root} exists and is not a directory")
        if root.exists() and any(p for p in root.iterdir() if not p.name.startswith(".")):
            raise IndexError_(f"{root} is not empty and holds no index; choose an empty or new directory")
        writer.create(root, config, search or SearchSpec(), probes, device)
        return cls.open(root)

    @classmethod
    def open(cls, path: str | Path) -> "Index":
        """Open an existing index; a missing, foreign, other-version or inconsistent one is a clear error."""
        return cls(*cls.read(path))

    # ------------------------------------------------------------------------------------ signatures
    def sign(self, entry: ModelEntry | str, device: str = "cpu", batch_size: int | None = 32) -> SignResult:
        """Sign a model with this index's probes and configuration without adding it."""
        entry = entry if isinstance(entry, ModelEntry) else ModelEntry(ref=entry)
        result = sign_entry(entry, self.config, self.probes, device=device, batch_size=batch_size)
        if result.status != "added":
            raise GifindexError(f"cannot sign {entry.ref}: {result.error}")
        return result

    def entry_for(self, name_or_ref: str | ModelEntry) -> ModelEntry:
        """How to load a model: an indexed name's stored loading options, or the reference itself."""
        if isinstance(name_or_ref, ModelEntry):
            return name_or_ref
        record = self.catalog.by_name(name_or_ref)
        if record is None:
            return ModelEntry(ref=name_or_ref)
        load = dict(record.metadata.get("load") or {"ref": record.ref})
        for key in ("mean", "std"):
            if load.get(key) is not None:
                load[key] = tuple(load[key])
        return ModelEntry(name=record.name, **load)

    def query(self, ref: str | ModelEntry, device: str = "cpu",
              batch_size: int | None = 32) -> tuple[np.ndarray, str, ModelRecord | None]:
        """Signature for an indexed name, or for any model reference signed on the fly (not added)."""
        if isinstance(ref, str):
            record = self.catalog.by_name(ref)
            if record is not None:
                return self.load_vectors([record])[0], record.name, record
            try:
                parse_ref(ref)
            except GifindexError as exc:
                raise IndexError_(f"{ref!r} is neither an indexed model name nor a model reference ({exc})") from None
        result = self.sign(ref, device=device, batch_size=batch_size)
        return result.signature.astype(np.float16).astype(np.float32), result.name, None  # as stored

    # --------------------------------------------------------------------------------------- queries
    def nearest(self, ref: str | ModelEntry, k: int = 10, device: str = "cpu",
                batch_size: int | None = 32) -> list[Neighbor]:
        """The k indexed models nearest to ``ref`` (an indexed name is not returned as its own neighbour)."""
        vector, _, record = self.query(ref, device=device, batch_size=batch_size)
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
        out = []
        for dist, model_id in zip(distances[0], ids[0]):
            if model_id < 0 or (record is not None and model_id == record.id) or model_id not in by_id:
                continue
            out.append(Neighbor(by_id[model_id].name, float(dist), by_id[model_id].ref))
        return out[:k]

    def distance(self, a: str | ModelEntry, b: str | ModelEntry, device: str = "cpu",
                 batch_size: int | None = 32) -> float:
        """Approximate ModelGiF distance from stored (or freshly signed) compressed signatures."""
        va, _, _ = self.query(a, device=device, batch_size=batch_size)
        vb, _, _ = self.query(b, device=device, batch_size=batch_size)
        return signature_distance(va, vb)

    def matrix(self, names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """All pairwise distances (float64, symmetric, zero diagonal) among indexed models."""
        records, vectors = self.vectors(names)
        return [r.name for r in records], distance_matrix(vectors)

    def tree(self, linkage: str = "average"):
        """Hierarchical clustering of every indexed model (see gifindex.tree)."""
        if len(self) > MAX_DENSE_MODELS:  # the n x n matrix would not fit: k-means clusters, then dense trees
            records, vectors = self.vectors()
            metadata = {r.name: {"ref": r.ref, **r.metadata.get("tags", {})} for r in records}
            return build_tree_scalable([r.name for r in records], vectors, linkage=linkage, metadata=metadata)
        names, dist = self.matrix()
        if len(names) < 2:
            raise IndexError_(f"a tree needs at least two indexed models; the index holds {len(names)}")
        metadata = {r.name: {"ref": r.ref, **r.metadata.get("tags", {})} for r in self.records()}
        return build_tree(names, dist, linkage=linkage, metadata=metadata)

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
            "versions": self.meta.get("versions"),
        }

    # ------------------------------------------------------------------------------------ writes
    def ingest(self, refs: Iterable[str | ModelEntry], *, device: str = "cpu", batch_size: int | None = 32,
               commit_every: int = 8, commit_seconds: float = 60.0, reporter: Reporter | None = None,
               wait: float = 0.0, executor=None) -> IngestReport:
        """Sign and add models (see gifindex.index.writer.ingest)."""
        return writer.ingest(self, refs, device=device, batch_size=batch_size, commit_every=commit_every,
                             commit_seconds=commit_seconds, reporter=reporter, wait=wait, executor=executor)

    def _commit(self, results: list[SignResult]) -> None:
        """Commit already signed results as one shard (the caller holds the writer lock)."""
        writer.commit(self, results)

    def remove(self, name: str) -> ModelRecord:
        """Remove a model from the catalogue and the search index (its shard row becomes garbage)."""
        return writer.remove(self, name)

    # ------------------------------------------------------------------------------------ maintenance
    def rebuild(self) -> int:
        """Recreate ``search.faiss`` from the shards; returns the number of models indexed."""
        return maintenance.rebuild(self)

    def repair(self, wait: float = 0.0) -> dict[str, Any]:
        """Quarantine corrupt shards, remove debris, rebuild the search index (see maintenance.repair)."""
        return maintenance.repair(self, wait=wait)

    def verify(self) -> dict[str, Any]:
        """Check every file (see maintenance.verify)."""
        return maintenance.verify(self)
