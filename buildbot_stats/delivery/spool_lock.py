"""One process per spool file: a lock held while the spool is open.

Two masters (or two processes) pointed by mistake at the same spool file
would each send, and delete, the other's points: the second is refused with
:class:`SpoolLockedError` (one line naming the file and the holder's pid).
The lock is ``fcntl.flock`` on ``<spool>.lock``: the kernel releases it when
the process exits, SIGKILL included, so a crashed master never leaves a
stale lock.  The file itself stays (removing it would let two processes lock
two different files of the same name).

Several services of one master may share a spool file (their points are kept
apart by queue key): within a process the lock is counted, not taken twice.
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
    """The lock of one spool file; :meth:`acquire` raises :class:`SpoolLockedError` if taken."""

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
                    holder = _read_pid(fd)
                    os.close(fd)
                    raise SpoolLockedError(
                        f"{self.spool_path} is in use by another process"
                        f"{f' (pid {holder})' if holder else ''}: each master needs a spool file "
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


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
