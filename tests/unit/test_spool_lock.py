"""Two processes on one spool file: the second is refused in one line, nothing is corrupted.

The other process is a real one (a Python child holding the lock), as two
masters would be; the lock is ``flock``, so it goes away with the holder,
SIGKILL included.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.python import log

from buildbot_stats.delivery.spool import SpoolLockedError, SQLiteSpool, encode_segment, lock, open_spool
from buildbot_stats.point import Point

_HOLDER = """
import sys
from buildbot_stats.point import Point
from buildbot_stats.delivery.spool import SQLiteSpool, encode_segment
spool = SQLiteSpool(sys.argv[1])
spool.thd_open()
segment, _ = encode_segment("svc/b", [Point("s", {"v": 1}, {}, 10**18)], None)
spool.thd_write([segment], {"svc/b": (100, None)})
print("open", flush=True)
sys.stdin.read()
spool.thd_close()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """Another process with the spool file ``tmp_path/stats.sqlite`` open."""
    path = tmp_path / "stats.sqlite"
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        yield proc, path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_second_process_is_refused_in_one_line_and_gets_the_file_once_it_is_free(
    holder: tuple[subprocess.Popen[str], Path],
) -> None:
    proc, path = holder
    with pytest.raises(SpoolLockedError) as info:
        lock(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path} is in use by another process (pid {proc.pid})")
    spool = SQLiteSpool(str(path))
    spool.thd_open()  # in memory meanwhile: statistics never keep a master from starting
    try:
        assert not spool.durable and spool.degraded is not None and message in spool.degraded
        segment, _ = encode_segment("svc/b", [Point("s", {"v": 2}, {}, 10**18)], None)
        spool.thd_write([segment], {})
        # the holder's points are untouched; once it is gone, the file is ours, with both points
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        spool.open_due = True  # (as SpoolThread's retry does)
        spool.thd_write([], {})
        assert spool.durable and spool.degraded is None
        assert spool.thd_pending_counts() == {"svc/b": 2}
        assert [p.fields["v"] for p in spool.thd_take("svc/b", 10)[0].payload] == [2, 1]
    finally:
        spool.thd_close()


def test_lock_goes_with_a_killed_holder(holder: tuple[subprocess.Popen[str], Path]) -> None:
    proc, path = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    spool = SQLiteSpool(str(path))
    spool.thd_open()
    try:
        assert spool.thd_pending_counts() == {"svc/b": 1}
    finally:
        spool.thd_close()


def test_services_of_one_process_share_a_file(tmp_path: Path) -> None:
    path = str(tmp_path / "stats.sqlite")
    first, second = SQLiteSpool(path), SQLiteSpool(path)
    first.thd_open()
    second.thd_open()
    segment, _ = encode_segment("two/b", [Point("s", {"v": 1}, {}, 10**18)], None)
    second.thd_write([segment], {"two/b": (100, None)})
    first.thd_close()
    assert second.thd_pending_counts() == {"two/b": 1}
    second.thd_close()
    # all closed: another opener (here, the same process again) gets it
    third = SQLiteSpool(path)
    third.thd_open()
    third.thd_close()


class _QueueReactor:
    """Enough of a reactor for open_spool: calls from the spool's thread are run by :meth:`run_until`."""

    def __init__(self) -> None:
        self.calls: queue.Queue[Any] = queue.Queue()
        self.later: list[Any] = []

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.put((f, args, kwargs))

    def callLater(self, delay: float, f: Any, *args: Any) -> Any:
        self.later.append((delay, f, args))
        return self

    def active(self) -> bool:  # (the delayed call of callLater)
        return True

    def cancel(self) -> None:
        self.later.clear()

    def addSystemEventTrigger(self, *args: Any, **kwargs: Any) -> object:
        return object()  # the spool's thread is stopped by the test (open_spool closes it)

    def removeSystemEventTrigger(self, trigger: object) -> None:
        pass

    def run_until(self, done: list[Any], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not done:
            f, args, kwargs = self.calls.get(timeout=max(0.01, deadline - time.monotonic()))
            f(*args, **kwargs)


def test_master_keeps_points_in_memory_and_says_so_once(holder: tuple[subprocess.Popen[str], Path]) -> None:
    proc, path = holder
    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        lines.append(" ".join(str(m) for m in event.get("message", ())))

    result: list[Any] = []
    reactor = _QueueReactor()
    log.addObserver(observer)
    try:
        open_spool(path.name, str(path.parent), reactor).addBoth(result.append)
        reactor.run_until(result)
    finally:
        log.removeObserver(observer)
    from twisted.python.failure import Failure

    if isinstance(result[0], Failure):
        result[0].raiseException()
    spool = result[0]
    assert spool.spool.durable is False
    assert [delay for delay, _, _ in reactor.later] == [1.0]  # tried again in a second
    done: list[Any] = []
    spool.close().addBoth(done.append)  # the memory spool's thread
    reactor.run_until(done)
    ours = [line for line in lines if line.startswith("buildbot_stats:")]
    assert ours == [
        f"buildbot_stats: cannot open the spool {path} (SpoolLockedError: {path} is in use by another "
        f"process (pid {proc.pid}): each master needs a spool file of its own (spool_path is relative "
        "to the master's basedir)); new points are kept in memory, and move to the file once it can be "
        "opened (tried again, at most a minute apart)"
    ]
    assert [delay for delay, _, _ in reactor.later] == []  # cancelled with the spool's thread
