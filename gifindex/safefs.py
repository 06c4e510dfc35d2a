"""Bounded, checked reads of the files gifindex is given or keeps: the type and size of a file are checked
before it is opened, it is opened without blocking (a FIFO swapped in cannot hang a read), and no more
than a stated limit is read."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import GifindexError


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_file(path: str | os.PathLike, what: str, max_bytes: int,
               error: type[GifindexError] = GifindexError) -> os.stat_result:
    """Stat ``path`` (following links): a regular file of at most ``max_bytes``, else ``error``."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {path} not found") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is {_kind(info.st_mode)}, not a regular file; refusing to read it")
    if info.st_size > max_bytes:
        raise error(f"{what} {path} is {info.st_size:,} bytes, more than the {max_bytes:,}-byte limit for a "
                    f"{what}; refusing to read it")
    return info


def read_bytes(path: str | os.PathLike, what: str, max_bytes: int,
               error: type[GifindexError] = GifindexError) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked before and while reading)."""
    check_file(path, what, max_bytes, error)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # swapped since the check
            raise error(f"{what} {path} is not a regular file; refusing to read it")
        chunks, total = [], 0
        try:
            while total <= max_bytes:  # in chunks: a buffer of the limit's size is never allocated up front
                chunk = handle.read(min(1 << 24, max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError as exc:
            raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
        data = b"".join(chunks)
    if len(data) > max_bytes:
        raise error(f"{what} {path} grew past the {max_bytes:,}-byte limit while being read")
    return data


def escaping_symlink(base: Path, relative: str) -> str | None:
    """The first symbolic link among the components of ``relative`` (below ``base``) that points outside
    its own folder, or None: a symlinked folder gets the same treatment as a symlinked file."""
    current = base
    for part in Path(relative).parts[:-1]:
        if part in ("", "."):
            continue
        current = current / part
        if current.is_symlink():
            folder = os.path.realpath(current.parent)
            target = os.path.realpath(current)
            if os.path.commonpath([folder, target]) != folder:
                return f"{current} is a symbolic link to {target}, outside its folder {folder}"
    return None
