"""What the end-to-end tests share: real Buildbot masters, a private influxd, and looking at both.

Fixtures:

- ``make_master``: a factory of created (not started) masters
  (``buildbot_stats.cli.master_process``), each on a free PB port; at teardown
  every master is closed and no process may be left in its directory.  A
  module narrows it to its own builders and services by overriding the
  fixture (``def make_master(make_master): ...``).
- ``influx``: a private influxd, running; a module that needs databases
  overrides it the same way (``def influx(influx): influx.create_database(DB)``).

Helpers: the points in a master's spool, its ``buildbot_stats`` log lines, a
bounded wait, and the processes left in a directory.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from buildbot_stats.cli import procfs
from buildbot_stats.cli.master_process import RealMaster, make_master_cfg
from tests.support.influxd import InfluxServer, require_influxd
from tests.support.ports import free_port

MakeMaster = Callable[..., RealMaster]


@pytest.fixture
def make_master(tmp_path: Path) -> Iterator[MakeMaster]:
    """``make_master(builders, name="master", env=None, **make_master_cfg options)``: a created master."""
    masters: list[RealMaster] = []

    def make(
        builders: dict[str, str], *, name: str = "master", env: dict[str, str] | None = None, **cfg: Any
    ) -> RealMaster:
        m = RealMaster(tmp_path / name, make_master_cfg(builders, pb_port=free_port(), **cfg), env=env)
        masters.append(m)
        m.create()
        return m

    try:
        yield make
    finally:
        for m in masters:
            m.close()
        left = [p for m in masters for p in processes_in(m.basedir)]
        for m in masters:
            kill_processes_in(m.basedir)
    assert left == [], "a master left processes behind"


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxServer]:
    """A private influxd (running); stopped at teardown."""
    require_influxd()
    with InfluxServer(tmp_path / "influxd") as server:
        yield server


# -- a master's spool and log ----------------------------------------------------


def spooled(m: RealMaster) -> int:
    """Points in the master's SQLite spool (read-only; 0 before the spool exists)."""
    path = m.basedir / "stats-spool.sqlite"
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT COALESCE(SUM(n), 0) FROM buildbot_stats_segments").fetchone()[0])
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):  # the master is creating it
            return 0
        raise
    finally:
        conn.close()


def wait_spool_empty(m: RealMaster, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (n := spooled(m)) != 0:
        assert time.monotonic() < deadline, f"{n} points still in the spool"
        time.sleep(0.1)


def stats_lines(m: RealMaster, *words: str) -> list[str]:
    """The master's ``buildbot_stats`` log messages holding every one of ``words``."""
    return [
        line for line in m.log_messages() if "] buildbot_stats:" in line and all(w in line for w in words)
    ]


def wait_until(what: str, check: Callable[[], Any], timeout: float = 30, step: float = 0.2) -> Any:
    """Poll ``check()`` (bounded) until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)
    return result


# -- processes -------------------------------------------------------------------


def processes_in(directory: Path) -> list[str]:
    """Live processes (not this one) whose working directory is inside ``directory``: "pid cwd: command"."""
    directory = directory.resolve()
    found = []
    for pid in procfs.pids():
        cwd = procfs.cwd(pid)  # None when gone, or a zombie
        if cwd is not None and cwd.is_relative_to(directory):
            try:
                cmdline = (
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue
            found.append(f"{pid} {cwd}: {cmdline.strip()}")
    return found


def kill_processes_in(directory: Path) -> None:
    """Safety net after a failed test: SIGKILL what was left running in ``directory``."""
    for line in processes_in(directory):
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except OSError:
            pass
