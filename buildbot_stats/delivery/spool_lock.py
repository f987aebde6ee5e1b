"""One process per spool file: two masters on one file would send, and delete, each other's points.

The lock is ``fcntl.flock`` on ``<spool>.lock``, which the kernel releases when
the process exits (SIGKILL included): a crashed master leaves no stale lock.
The file stays (removing it would let two processes lock two files of one
name).  Services of one master may share a spool file (their queue keys keep
their points apart): within a process the lock is counted, not taken twice.
"""

from __future__ import annotations

import os
import threading

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, as before
    fcntl = None  # type: ignore[assignment]

__all__ = ["SpoolLock", "SpoolLockedError"]

_held: dict[str, tuple[int, int]] = {}  # real path of the lock file -> (fd, users)
_guard = threading.Lock()


class SpoolLockedError(RuntimeError):
    """Another process has the spool file open."""


class SpoolLock:
    """The lock of one spool file; :meth:`acquire` raises :class:`SpoolLockedError` if it is taken."""

    def __init__(self, spool_path: str) -> None:
        self.spool_path = spool_path
        self.path = os.path.realpath(spool_path) + ".lock"
        self._acquired = False

    def acquire(self) -> None:
        if self._acquired or fcntl is None:
            return
        with _guard:
            fd, users = _held.get(self.path, (-1, 0))
            if users == 0:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                    os.close(fd)
                    raise SpoolLockedError(
                        f"{self.spool_path} is in use by another process"
                        f"{f' (pid {holder})' if holder.isdigit() else ''}: each master needs a spool file "
                        "of its own (spool_path is relative to the master's basedir)"
                    ) from None
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            _held[self.path] = (fd, users + 1)
            self._acquired = True

    def release(self) -> None:
        if not self._acquired:
            return
        with _guard:
            self._acquired = False
            fd, users = _held.pop(self.path)
            if users > 1:
                _held[self.path] = (fd, users - 1)
            else:
                os.close(fd)  # closing the last descriptor releases the flock
