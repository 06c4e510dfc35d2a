"""The model index: compressed signatures in HDF5 shards, a SQLite catalogue, a FAISS search index."""
from .search import SearchSpec
from .store import Index, IngestReport, IngestReporter, Neighbor

__all__ = ["Index", "IngestReport", "IngestReporter", "Neighbor", "SearchSpec"]
