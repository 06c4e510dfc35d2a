"""gifindex: functional similarity of trained neural networks with ModelGiF curves.

Data flow: model reference -> load_model -> SharedSpaceAdapter -> make_probes -> compute_curves ->
curve_distance (exact) or signature (compressed) -> index.
"""
from __future__ import annotations

from .adapter import SharedSpaceAdapter
from .compress import Projection, compress, signature_distance
from .config import SignatureConfig
from .curves import compute_curves
from .distance import curve_distance
from .errors import GifindexError
from .models import load_model
from .models.spec import InputSpec, LoadedModel
from .probes import Probes, make_probes
from .signature import signature

__version__ = "0.1.0"

__all__ = [
    "GifindexError", "InputSpec", "LoadedModel", "Probes", "Projection", "SharedSpaceAdapter",
    "SignatureConfig", "compress", "compute_curves", "curve_distance", "load_model", "make_probes",
    "signature", "signature_distance", "__version__",
]
