"""End to end: a master whose configuration is wrong, or whose start fails, with a StatsService.

What a Buildbot admin sees: ``buildbot checkconfig`` prints one line per
mistake (no traceback), a file that is not a spool is never touched, and a
master that cannot start exits (no process left behind to hold the port or to
be joined by a second master).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from buildbot_stats.cli.master_process import RealMaster
from tests.e2e.conftest import MakeMaster, processes_in

STEPS = "[steps.ShellCommand(command=['true'])]"
HEADER = "from buildbot_stats import statistics"
EXIT_TIMEOUT = 15.0

BACKEND = "statistics.SQLiteStorageService('stats.sqlite', captures=[{captures}])"


def stats_service(captures: str = "statistics.CaptureBuildDurationAllBuilders()", **options: str) -> str:
    args = "".join(f", {k}={v}" for k, v in options.items())
    backend = BACKEND.format(captures=captures)
    return (
        f"c['services'].append(statistics.StatsService(storage_backends=[{backend}], name='stats'{args}))\n"
    )


@pytest.fixture
def make_master(make_master: MakeMaster) -> Callable[[str], RealMaster]:
    """Masters of one builder; only their services differ."""
    return lambda services: make_master({"b": STEPS}, header=HEADER, services=services)


def start_failing(m: RealMaster) -> str:
    """``buildbot start`` of a master that must fail to start; the process must then exit."""
    proc = m._run("start", "--start_timeout=60", str(m.basedir), check=False, timeout=90)
    assert proc.returncode != 0, proc.stdout
    deadline = time.monotonic() + EXIT_TIMEOUT
    while processes_in(m.basedir):
        assert time.monotonic() < deadline, f"master still running:\n{m.log_tail()}"
        time.sleep(0.1)
    return m.log_text()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- a failing start exits ---------------------------------------------------------

# A change source is configured after c['services'] (lower reconfig priority),
# so this fails once the StatsService has opened its spool.
BOOM = """
from buildbot.changes import base as _changes_base


class Boom(_changes_base.ChangeSource):
    def reconfigService(self, **kwargs):
        raise RuntimeError('boom at start')


c['change_source'].append(Boom(name='boom'))
"""


def test_master_whose_start_fails_exits(make_master: Any) -> None:
    m = make_master(stats_service() + BOOM)
    assert m.checkconfig()[0] == 0
    log = start_failing(m)
    assert "BuildMaster startup failed" in log
    assert "boom at start" in log
    assert "buildbot_stats: configuring StatsService" in log  # the spool was open


def test_master_whose_stats_service_fails_to_start_exits(make_master: Any) -> None:
    """The StatsService itself fails after opening its spool (here: no MQ consumer possible)."""
    failing = stats_service().replace("statistics.StatsService(", "FailingStats(")
    m = make_master(
        """
class FailingStats(statistics.StatsService):
    def registerConsumers(self):
        raise RuntimeError('cannot consume')


"""
        + failing
    )
    log = start_failing(m)
    assert "cannot consume" in log


# -- spool_path never destroys a file that is not a spool -----------------------------


@pytest.mark.parametrize("target", ["state.sqlite", "master.cfg"])
def test_spool_path_naming_another_file_is_a_config_error(make_master: Any, target: str) -> None:
    m = make_master(stats_service(spool_path=repr(target)))
    before = digest(m.basedir / target)
    rc, out = m.checkconfig()
    assert rc != 0, out
    assert f"spool_path {target!r}" in out and "not a buildbot_stats spool" in out, out
    assert "Traceback" not in out
    log = start_failing(m)
    assert "not a buildbot_stats spool" in log
    assert digest(m.basedir / target) == before
    assert not list(m.basedir.glob("*.unreadable-*"))


# -- every argument is checked by checkconfig ----------------------------------------


def test_checkconfig_reports_each_bad_argument_in_one_line(make_master: Any) -> None:
    services = stats_service(
        captures="statistics.CaptureBuildDurationAllBuilders, statistics.CaptureData(123, 'b'),"
        " statistics.CaptureProperty('b', 42), statistics.CaptureBuildDuration('b', report_in=['hours']),"
        " statistics.CaptureBuildEndTime('b', callback='x'),"
        " statistics.CaptureBuildResults('b', calback=None)",
        max_retry_delay="0",
        flush_timeout="float('nan')",
        spool_path="''",
    )
    m = make_master(services)
    rc, out = m.checkconfig()
    assert rc != 0, out
    assert "Traceback" not in out
    for expected in (
        "CaptureBuildDurationAllBuilders is a class",
        "data_name must be a string, not 123",
        "property_name must be a string, not 42",
        "`report_in` parameter must be one of 'seconds', 'minutes' or 'hours', not ['hours']",
        "callback must be callable, not 'x'",
        "CaptureBuildResults: unknown argument 'calback' (did you mean 'callback'?)",
        "max_retry_delay must be a number of seconds >= 0.1, not 0",
        "flush_timeout must be a number of seconds >= 0, not nan",
        "spool_path must be a file path or None, not ''",
    ):
        lines = [line for line in out.splitlines() if expected in line]
        assert len(lines) == 1, f"{expected!r} not in one line of:\n{out}"
    # and the master refuses to start with them (and exits)
    log = start_failing(m)
    assert "Halting master." in log
    assert "CaptureBuildDurationAllBuilders is a class" in log
