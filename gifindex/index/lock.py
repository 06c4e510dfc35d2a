"""One writer at a time: an OS-level file lock (released by the kernel if the holder dies)."""
from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import IndexError_
from ..safefs import read_bytes


class WriterLock:
    """Exclusive lock on ``INDEX/.lock``; ``wait`` seconds to wait for another writer (0: refuse at once).

    The lock is an fcntl/flock lock, so a writer killed with SIGKILL leaves no stale lock behind: the
    kernel releases it. The holder's pid is written beside it only to say who holds it. "At once" still waits
    ``GRACE`` seconds: a reader asking whether a writer is active (``writer_active``) holds the lock for an instant,
    and a writer starting then must not be refused for it.
    """

    GRACE = 0.25

    def __init__(self, root: Path, wait: float = 0.0):
        self.path = root / ".lock"
        self.owner = root / ".lock.owner"
        self.wait = wait
        self._lock = FileLock(str(self.path))

    def __enter__(self) -> "WriterLock":
        try:
            self._lock.acquire(timeout=max(self.wait, self.GRACE), poll_interval=0.01)
        except Timeout:
            holder = _owner(self.owner) or "unknown"
            raise IndexError_(f"the index at {self.path.parent} is being written by another process "
                              f"(pid {holder}); wait for it to finish, or pass --wait SECONDS") from None
        try:
            self.owner.write_text(str(os.getpid()))
        except OSError:   # a full disk, say: the pid only names the holder in messages, the lock is what counts
            self._drop_owner()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._drop_owner()
        finally:
            self._lock.release()

    def _drop_owner(self) -> None:
        try:
            self.owner.unlink(missing_ok=True)
        except OSError:
            pass


def writer_active(root: Path) -> bool:
    """Whether another process holds the writer lock of the index at ``root``: the lock itself is tried (a pid
    file left by a killed writer, whose pid may have been reused, says nothing); where it cannot be opened (a
    read-only index), the recorded pid is asked whether it lives. The lock is held for an instant only, which a
    writer's ``WriterLock.GRACE`` covers."""
    lock = FileLock(str(root / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return _owner_alive(root)
    lock.release()
    return False


def _owner_alive(root: Path) -> bool:
    """Whether the pid recorded beside the lock names a live process."""
    try:
        pid = int(_owner(root / ".lock.owner") or "")
        os.kill(pid, 0)
    except PermissionError:  # alive, another user's
        return True
    except (OSError, ValueError):
        return False
    return True


def _owner(path: Path) -> str | None:
    """The pid recorded beside the lock (a short regular file; anything else is ignored)."""
    try:
        return read_bytes(path, "lock owner", 64, IndexError_).decode("ascii", "replace").strip()
    except IndexError_:
        return None
