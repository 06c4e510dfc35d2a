"""The paper's three applications on top of an index (ModelGiF section 4): IP protection (``suspect``),
unlearning verification (``unlearning``) and task relatedness (``relatedness``)."""
from .relatedness import load_affinity, relatedness, spearman_columns
from .suspect import audit, scan, screen, suspect, suspect_from_distances
from .unlearning import unlearning

__all__ = ["suspect", "scan", "screen", "audit", "suspect_from_distances", "unlearning", "relatedness",
           "spearman_columns", "load_affinity"]
