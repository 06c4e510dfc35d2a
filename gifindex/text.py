"""Text that gifindex stores and prints: model names and references must be valid UTF-8 without control
characters (a newline in a name would spoof a table row; a lone surrogate from a non-UTF-8 file name
cannot be stored or printed)."""
from __future__ import annotations

import unicodedata

MAX_NAME = 512


def printable(text: str) -> str:
    """``text`` safe to store and print: invalid UTF-8 (surrogates) and control characters escaped."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c == " " or unicodedata.category(c)[0] not in "CZ" else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def text_problem(text: str, what: str) -> str | None:
    """Why ``text`` cannot be a model's ``what`` (name or reference), or None when it can."""
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
    return None
