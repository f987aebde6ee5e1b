"""End-to-end checks of the real-master process driver, buildbot_stats/cli/master_process.py."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from buildbot.process.results import RETRY, SUCCESS

from buildbot_stats.cli.master_process import RealMaster
from tests.e2e.conftest import MakeMaster

HEADER = """
from buildbot.process import buildstep
from buildbot.process.results import SUCCESS


class SetStatsMarker(buildstep.BuildStep):
    name = 'set-stats-marker'

    async def run(self):
        builder = self.getProperty('buildername')
        self.setProperty('stats_marker', 'marked-' + builder, 'SetStatsMarker')
        return SUCCESS
"""

STEPS = "[steps.ShellCommand(command=['true']), SetStatsMarker()]"
SLEEPY_STEPS = "[steps.ShellCommand(command=['sleep', util.Property('sleep', '0')])]"


@pytest.fixture
def master(make_master: MakeMaster) -> Callable[[dict[str, str]], RealMaster]:
    """Created (not started) masters with HEADER's step."""
    return lambda builders: make_master(builders, header=HEADER)


def test_builds_and_properties(master) -> None:
    m = master({"alpha": STEPS, "beta": STEPS})
    assert m.checkconfig()[0] == 0
    m.start()
    assert m.is_running()

    m.sendchange(3, branch="main", properties={"stats_run": "e2e"})
    builds = m.wait_for_builds(6)

    assert len(builds) == 6
    assert sorted(b["builder"] for b in builds) == ["alpha"] * 3 + ["beta"] * 3
    for name in ("alpha", "beta"):
        numbers = sorted(b["number"] for b in builds if b["builder"] == name)
        assert numbers == [1, 2, 3]
    for b in builds:
        assert b["results"] == SUCCESS
        assert b["started_at"] <= b["complete_at"] <= time.time() + 1
        props = m.build_properties(b["buildid"])
        assert props["stats_marker"] == "marked-" + b["builder"]
        assert props["stats_run"] == "e2e"
        assert props["branch"] == "main"

    assert m.tracebacks() == []
    assert m.warnings() == []
    m.stop()
    assert not m.is_running()
    assert m.processes() == []
    assert "Server Shut Down." in m.log_text()


def test_kill_and_restart(master) -> None:
    m = master({"sleepy": SLEEPY_STEPS})
    m.start()
    m.sendchange(properties={"sleep": "300"})
    # Wait for the build's `sleep 300`, a child of the master's LocalWorker.
    deadline = time.monotonic() + 60
    while len(m.processes()) < 2:
        assert time.monotonic() < deadline, m.log_tail()
        time.sleep(0.1)

    m.kill()
    assert not m.is_running()
    assert m.processes() == [], "kill() left the build's shell command behind"

    m.start()
    assert m.is_running()
    m.sendchange()
    builds = {b["buildid"]: b for b in m.wait_for_builds(2)}
    # Startup housekeeping marks the killed build RETRY and re-queues its request
    # (that rerun sleeps again); the new change builds on the other worker.
    assert builds.pop(1)["results"] == RETRY
    assert [b["results"] for b in builds.values()] == [SUCCESS]
    assert m.tracebacks() == []
    m.stop()
    assert m.processes() == []


def test_close_spares_other_processes_in_basedir(master) -> None:
    """A person's shell sitting in the master directory is not the master's to kill."""
    import subprocess

    m = master({"b": "[steps.ShellCommand(command=['true'])]"})
    m.start()
    bystander = subprocess.Popen(["sleep", "60"], cwd=m.basedir, start_new_session=True)
    try:
        assert bystander.pid not in m.processes()
        m.close()
        assert bystander.poll() is None, "close() killed a process that is not the master's"
    finally:
        bystander.kill()
        bystander.wait()
