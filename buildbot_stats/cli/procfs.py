"""Reading and ending processes through Linux's /proc: one home for the demo and the master driver.

Used to find what a Buildbot master and its LocalWorkers left running, and to
end exactly those: never a person's shell that merely sits in the directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["alive", "cwd", "descendants", "kill_all", "pids", "session", "stat"]


def pids() -> Iterator[int]:
    """Every process id, except this process's."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me:
            yield int(entry.name)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid``, or None if it does not exist."""
    fields = _stat_fields(pid)
    return None if fields is None else (fields[0], int(fields[1]))


def session(pid: int) -> int | None:
    """The session id of ``pid``, or None if it does not exist."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[3])


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    state = stat(pid)
    return state is not None and state[0] not in ("Z", "X")


def cwd(pid: int) -> Path | None:
    """The working directory of ``pid``, or None (gone, or not ours to look at)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (e.g. shell commands run by a LocalWorker)."""
    children: dict[int, list[int]] = {}
    for child in pids():
        if (state := stat(child)) is not None:
            children.setdefault(state[1], []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_all(targets: Iterable[int], timeout: float = 10.0) -> list[int]:
    """SIGKILL ``targets`` and wait up to ``timeout`` s; returns those still alive."""
    targets = list(targets)
    for pid in targets:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while (left := [p for p in targets if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left
