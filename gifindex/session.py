"""Where a one-off command's signatures come from: an index, or a signature configuration.

``gifindex distance`` and ``gifindex unlearning`` work with or without an index; ``nearest`` and ``suspect``
need one. The rule, in one place: an index is used when it exists or was named explicitly (a named index that
does not exist is an error). Without configuration options its configuration and signatures are used; with
them the models are signed exactly with the given configuration, and the index only says what its indexed names
are and how they are loaded (a configuration option never makes an indexed name unknown). Model arguments are
indexed names or model references; a reference is loaded with the command's loading options.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import SignatureConfig
from .errors import GifindexError
from .index import Index, index_exists
from .manifest import ModelEntry
from .methods import feature_distance
from .observe import entry_features
from .probes import Probes, make_probes

OPTION_FLAGS = {"arch": "--arch", "num_classes": "--num-classes", "input_size": "--input-size", "mean": "--mean",
                "std": "--std", "trust": "--trust", "random_init": "--random-init"}


@dataclass
class Session:
    """The configuration models are signed with, the index it comes from (if any) and loading options."""

    config: SignatureConfig
    index: Index | None = None
    load: dict[str, Any] = field(default_factory=dict)
    own_config: bool = False  # configuration options given: sign with ``config``, the index only names models

    @classmethod
    def at(cls, index_path: str | Path, load: dict[str, Any] | None = None) -> "Session":
        """A session on the index at ``index_path`` (which must exist)."""
        index = Index.open(index_path)
        return cls(index.config, index, dict(load or {}))

    @classmethod
    def choose(cls, index_path: str | Path, config: SignatureConfig, *, config_given: bool, explicit: bool,
               load: dict[str, Any] | None = None) -> "Session":
        """The index at ``index_path`` when it exists or was named ``explicit``-ly (then opening a missing one is
        the error the user sees). With configuration options (``config_given``) models are signed with ``config``
        and the index serves only its names (their stored loading options): dropping it would make the names the
        user gave unknown."""
        if not (explicit or index_exists(index_path)):
            return cls(config, None, dict(load or {}))
        session = cls.at(index_path, load)
        if config_given:
            session.config, session.own_config = config, True
        return session

    def model(self, ref: str) -> str | ModelEntry:
        """What index queries take: an indexed name as it is, anything else as a reference to sign."""
        if self.index is not None and self.index.catalog.by_name(ref):
            return ref
        return ModelEntry(ref=ref, **self.load)

    def entry(self, ref: str) -> ModelEntry:
        """How to load ``ref``: an indexed name's stored loading options, or the reference with this session's."""
        query = self.model(ref)
        return self.index.entry_for(query) if self.index is not None else query

    def random_init(self, ref: str) -> bool:
        """Whether ``ref`` names a model with random (untrained) weights: an indexed one, or one drawn now."""
        record = self.index.catalog.by_name(ref) if self.index is not None else None
        if record is not None:
            return bool(record.metadata.get("random_init"))
        return bool(self.load.get("random_init"))

    def check_options_used(self, refs: Sequence[str | None]) -> None:
        """Loading options (--arch, --input-size, ...) apply to references and files; when every model named is
        an indexed name (signed with its stored options) they would be silently ignored: an error instead."""
        given = [OPTION_FLAGS.get(k, k) for k, v in self.load.items() if v not in (None, False, ())]
        named = [ref for ref in refs if ref is not None]
        if not given or self.index is None:
            return
        if all(self.index.catalog.by_name(ref) is not None for ref in named):
            models = (", ".join(repr(ref) for ref in named) + (" is an indexed name" if len(named) == 1 else
                                                                 " are indexed names")) if named else \
                "every model judged is indexed"
            verb = "apply" if len(given) > 1 else "applies"
            raise GifindexError(f"{'/'.join(given)} {verb} to model files and references, but {models}, signed "
                                "with the options stored when ingested: drop them, or give the model's file instead")

    def _exact_entry(self, ref: str) -> tuple[ModelEntry, str | None, str | None]:
        """(entry, the indexed model whose stored options it carries or None, where its options come from or None)
        for an exact signature: an indexed name's stored options; a file whose bytes match an indexed model's file,
        that model's (as the compressed distance and `nearest` load it); else the reference with this session's
        options. A reference that is neither an indexed name nor loadable is an error (with "did you mean")."""
        if self.index is None:
            return self.model(ref), None, None   # type: ignore[return-value]
        if self.index.catalog.by_name(ref) is not None:
            return self.index.entry_for(ref), None, f"stored options of indexed model {ref!r}"
        self.index.check_reference(ref)
        entry, reused, _ = self.index.query_options(ModelEntry(ref=ref, **self.load))
        return entry, reused, None

    def probes(self, device: str = "cpu") -> Probes:
        """The index's probes, or those of the configuration given (``own_config``, or no index)."""
        if self.index is not None and not self.own_config:
            return self.index.probes
        return make_probes(self.config, device=device)

    def distance(self, a: str, b: str, exact: bool = False, device: str = "cpu",
                 batch_size: int | str | None = 32) -> tuple[float, str]:
        """(distance, kind): ``compressed`` from the index's signatures, else (``exact``, or a configuration of
        its own) ``exact`` under the method."""
        if self.index is not None and not exact and not self.own_config:
            value = self.index.distance(self.model(a), self.model(b), device=device, batch_size=batch_size)
            return value, "compressed"
        entries = [self._exact_entry(ref) for ref in (a, b)]   # both checked before either is signed
        probes = self.probes(device)
        feats = [entry_features(entry, probes, self.config, device=device, batch_size=batch_size,
                                reused_from=reused, origin=origin)[0] for entry, reused, origin in entries]
        return feature_distance(feats[0], feats[1], self.config.method), "exact"
