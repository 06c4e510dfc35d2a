"""Text that gifindex stores and prints: model names and references must be valid UTF-8 without control
characters (a newline in a name would spoof a table row; a lone surrogate from a non-UTF-8 file name
cannot be stored or printed), and names without leading or trailing whitespace (``"m1 "`` would print as
a second ``m1``). JSON that gifindex writes is strict (:func:`json_text`)."""
from __future__ import annotations

import json
import math
import unicodedata
from typing import Any, Iterator

import numpy as np

MAX_NAME = 512


def printable(text: str) -> str:
    """``text`` safe to store and print: invalid UTF-8 (surrogates) and control characters escaped."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c == " " or unicodedata.category(c)[0] not in "CZ"
                   else c.encode("unicode_escape").decode("ascii") for c in text)


def text_problem(text: str, what: str, stored: bool = False) -> str | None:
    """Why ``text`` cannot be a model's ``what`` (name or reference), or None when it can. ``stored``: a name an
    index already holds (read back from its shards), which keeps the rules of when it was added: leading or
    trailing whitespace, refused since, does not drop it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return (f"the {what} {printable(text)!r} is not valid UTF-8 (a file name with a non-UTF-8 byte?); "
                "rename the file or give the model a --name / manifest name")
    bad = sorted({c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:3])
        return (f"the {what} {printable(text)!r} holds control or invisible characters ({shown}); "
                "they would garble or spoof printed tables; rename it")
    if what == "name" and (not text.strip() or len(text) > MAX_NAME):
        return f"the name {printable(text)[:80]!r} must be 1 to {MAX_NAME} characters, not blank"
    if what == "name" and text != text.strip() and not stored:
        return (f"the name {printable(text)[:80]!r} starts or ends with whitespace, so it would print like "
                f"{printable(text.strip())[:80]!r}; remove the whitespace")
    return None


# ------------------------------------------------------------------------------------------------ JSON

_CONTAINERS = (dict, list, tuple, np.ndarray)


def json_text(value: Any, indent: int | None = None) -> str:
    """``value`` as strict JSON (RFC 8259; what ``JSON.parse`` and ``jq`` accept): NaN and infinities become
    null, numpy values plain numbers and lists, other objects their ``str``. Nesting may be any depth (a
    single-linkage tree is as deep as it has models): what json.dumps cannot write is walked with a stack,
    not recursion. ``indent`` None: compact (``,`` and ``:``); else laid out as ``json.dumps(value, indent=indent)``.
    """
    try:
        return _dumps(value, indent)   # the common case (plain, finite, shallow): the encoder in one go
    except (TypeError, ValueError, RecursionError):   # numpy or other objects, NaN or infinity, a deep tree
        return "".join(_json_chunks(value, indent))


def _json_chunks(value: Any, indent: int | None) -> Iterator[str]:
    """The pieces of :func:`json_text`, depth first. The stack holds (text, None) for text to write as it is
    and (value, depth) for a value still to encode."""
    stack: list[tuple[Any, int | None]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth is None:
            yield item
            continue
        item = _plain(item)
        if isinstance(item, (dict, list)) and item and not _flat(item):
            stack.extend(reversed(_container_parts(item, depth, indent)))
        else:
            yield _leaf_text(item, depth, indent)


def _plain(value: Any) -> Any:
    """A tuple or numpy array as a list, a numpy scalar as its Python value; anything else unchanged."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return list(value) if isinstance(value, tuple) else value


def _flat(container: dict | list) -> bool:
    """Whether no member of ``container`` is itself a container (then json.dumps writes it in one go)."""
    members = container.values() if isinstance(container, dict) else container
    return not any(isinstance(v, _CONTAINERS) for v in members)


def _container_parts(container: dict | list, depth: int, indent: int | None) -> list[tuple[Any, int | None]]:
    """A dict or list that holds containers, as stack entries in writing order: brackets, separators and keys
    as text, members as values one level deeper."""
    inner = "" if indent is None else "\n" + " " * (indent * (depth + 1))
    outer = "" if indent is None else "\n" + " " * (indent * depth)
    colon = ":" if indent is None else ": "
    is_dict = isinstance(container, dict)
    items = container.items() if is_dict else ((None, v) for v in container)
    parts: list[tuple[Any, int | None]] = []
    for i, (key, member) in enumerate(items):
        opening = ("{" if is_dict else "[") if i == 0 else ","
        label = json.dumps(_json_key(key)) + colon if is_dict else ""
        parts += [(opening + inner + label, None), (member, depth + 1)]
    parts.append((outer + ("}" if is_dict else "]"), None))
    return parts


def _leaf_text(value: Any, depth: int, indent: int | None) -> str:
    """A scalar or a container of scalars (``_flat``) as strict JSON, indented to start at ``depth``."""
    try:
        text = _dumps(value, indent)   # already plain JSON values (the common case): the C encoder in one go
    except (TypeError, ValueError):    # NaN or infinity, numpy or other objects: made plain first
        text = _dumps(_plain_leaf(value), indent)
    return text.replace("\n", "\n" + " " * (indent * depth)) if indent and depth else text  # strings: no raw \n


def _dumps(value: Any, indent: int | None) -> str:
    """json.dumps refusing NaN and infinities (and objects JSON has no form for), compact or indented."""
    if indent is None:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    return json.dumps(value, indent=indent, allow_nan=False)


def _plain_leaf(value: Any) -> Any:
    """A scalar or container of scalars with every member made a JSON scalar (``_scalar``)."""
    if isinstance(value, dict):
        return {_json_key(k): _scalar(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scalar(v) for v in value]
    return _scalar(value)


def _scalar(value: Any) -> Any:
    """A JSON scalar for ``value``: None for NaN and infinities, numpy scalars as Python ones, ``str`` of what
    JSON has no form for."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int)):   # bool is an int
        return value
    return str(value)


def _json_key(key: Any) -> str:
    """A dict key as JSON's (always a string): as json.dumps spells a scalar key, ``str`` of anything else."""
    key = _scalar(key)
    return key if isinstance(key, str) else json.dumps(key)
