"""Owner-fitted fingerprints: evidence that a model copies the owner's outputs or decisions (distillation,
extraction) where its weights and gradient field are its own.

ModelGiF distances catch every copy that keeps the weights (fine-tuning, pruning, transfer) but not a
student that copied the owner's *function* into another architecture: its gradient field is its own.
What such a student does copy is the owner's decisions, including its idiosyncratic ones. After Lukas,
Zhang and Kerschbaum (ICLR 2021, conferrable adversarial examples), the owner trains a few helper models
from its own data -- surrogates (students of the owner) and references (independent models) -- and
searches for inputs on which surrogates follow the owner's decision while references do not. A suspect
that agrees with the owner on those inputs far more than independent models do was derived from it.
Distillation copies more than decisions: how the owner ranks the classes it did not choose (``outputs``),
so the fingerprint also holds the owner's and its calibration references' outputs on probe images of its own.
What the evaluation zoos show (docs/results.md 6.2f): the outputs recognise a distilled student as *this*
owner's; the decisions rank hard-label students above independent models, but students of another model of
the same task nearly as high, so for hard-label extraction they mark "learnt from some model's labels" more
than "from this owner's".

An owner that serves its model through an API can add its query log (``queries``): on the logged queries where
it answered as independent models do not, a student trained on those answers repeats them; this is the part
that recognises hard-label extraction (docs/results.md 6.2i).

A suspect with another label set (the owner's body under a new head: transfer) is judged by the same decisions,
relabelled as the suspect labels the owner's classes on the owner's probe images (``mapped_decisions``), against
the calibration references relabelled alike, and by how much of the suspect's outputs within each of the owner's
classes the owner's outputs explain, against how much each reference's do (``outputs.within_class_fit``).

Data flow: owner model + owner data (``data.OwnerData``) -> helper models (``helpers``) -> conferrable
inputs (``conferrable``) + the owner's outputs on probe images (``outputs``) + its idiosyncratic answers to
logged queries (``queries``) -> ``Fingerprint``
(inputs, owner decisions, owner outputs, calibration scores of held-out references never used in fitting)
-> stored in the index (``store``) -> ``suspect``.
"""
from .data import OwnerData, load_owner_data, load_query_log
from .fingerprint import (Fingerprint, FingerprintScore, MappedDecisions, OutputScore, agreement, judge,
                          mapped_decisions, output_scores, query_agreement)
from .fit import FitConfig, Helpers, fit_fingerprint, helper_key, train_helpers
from .store import fingerprint_path, helpers_path, load_fingerprint, load_helpers, save_fingerprint, save_helpers

__all__ = ["Fingerprint", "FingerprintScore", "FitConfig", "Helpers", "MappedDecisions", "OutputScore", "OwnerData",
           "agreement", "fingerprint_path", "fit_fingerprint", "helper_key", "helpers_path", "judge",
           "load_fingerprint", "load_helpers", "load_owner_data", "load_query_log", "mapped_decisions", "output_scores",
           "query_agreement", "save_fingerprint", "save_helpers", "train_helpers"]
