"""The model index: compressed signatures in HDF5 shards, a SQLite catalogue, a FAISS search index."""
from pathlib import Path

from .search import SearchSpec
from .store import INDEX_FILE, Index, IngestReport, IngestReporter, Neighbor


def index_exists(path: str | Path) -> bool:
    """Whether ``path`` holds a gifindex index (its metadata file is written last, so a half-made one does not)."""
    return (Path(path) / INDEX_FILE).is_file()


__all__ = ["Index", "IngestReport", "IngestReporter", "Neighbor", "SearchSpec", "index_exists"]
