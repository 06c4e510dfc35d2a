"""The model index: compressed signatures in HDF5 shards, a SQLite catalogue, a FAISS search index.

Modules: ``layout`` (file names, index.json), ``files`` (opening, reading signatures, the search file,
the lock), ``writer`` (create, ingest, remove), ``maintenance`` (verify, repair, rebuild), ``store`` (the
``Index`` facade); ``catalog``, ``shards``, ``search``, ``atomic``, ``lock`` are the storage pieces.
"""
from .layout import INDEX_FILE, index_exists
from .search import SearchSpec
from .store import Index, IngestReport, IngestReporter, Neighbor

__all__ = ["INDEX_FILE", "Index", "IngestReport", "IngestReporter", "Neighbor", "SearchSpec", "index_exists"]
