"""End to end: real Buildbot masters (LocalWorkers) writing to a private influxd.

Every test checks what InfluxDB finally holds against the master's own
database (builders, build numbers, results, times), and that twistd.log has no
traceback.  The outage tests stop influxd while builds run and check that
every point arrives exactly once: after the backend comes back, after a clean
master restart and after a SIGKILL of the master.

Blocking code only: the masters and influxd are subprocesses driven by
``tests/support``.  influxd missing: skipped, or a failure with ``CI=true``.
"""

from __future__ import annotations

import datetime
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from buildbot.process.results import FAILURE, SUCCESS, Results

from buildbot_stats.cli.master_process import RealMaster
from tests.e2e.conftest import MakeMaster, spooled, stats_lines, wait_spool_empty
from tests.support.influxd import InfluxServer

BUILDERS = ("b1", "b2")
CHANGES = 3
N_BUILDS = CHANGES * len(BUILDERS)
DB = "bbstats_e2e"
SINGLE_VALUES = 3  # yieldMetricsValue calls per build
MANY_VALUES = 3  # values in the one yieldMetricsValues call per build
POLL_TIMEOUT = 20.0

# A custom step as a user would write it (README: "Posting values from a build step").
HEADER = """
from buildbot.process import buildstep
from buildbot.process.results import FAILURE, SUCCESS
from twisted.internet import reactor, task

from buildbot_stats import statistics


class ReportTimings(statistics.StatsStepMixin, buildstep.BuildStep):
    name = 'report-timings'

    async def run(self):
        builder = self.getProperty('buildername')
        number = self.getProperty('buildnumber')
        self.setProperty('test_count', number * 10 + len(builder), 'ReportTimings')
        self.setProperty('test_name', f'{builder}-suite-{number}', 'ReportTimings')
        for i in range(@SINGLE@):
            await self.yieldMetricsValue(
                'timings', {'test': f'{builder}/{number}/single-{i}', 'seconds': number + i / 10}
            )
        await self.yieldMetricsValues(
            'timings',
            [
                {'test': f'{builder}/{number}/many-{i}', 'seconds': number + 0.05 + i / 10}
                for i in range(@MANY@)
            ],
        )
        await task.deferLater(reactor, 0.3, lambda: None)
        return FAILURE if (builder, number) == ('b2', 2) else SUCCESS
""".replace("@SINGLE@", str(SINGLE_VALUES)).replace("@MANY@", str(MANY_VALUES))

STEPS = "[steps.ShellCommand(command=['true']), ReportTimings()]"

SERVICES = """
captures = [
    statistics.CaptureBuildDurationAllBuilders(),
    statistics.CaptureBuildStartTime('b1'),
    statistics.CaptureBuildEndTimeAllBuilders(),
    statistics.CaptureBuildResultsAllBuilders(),
    statistics.CaptureProperty('b1', r'test_.*', regex=True),
    statistics.CapturePropertyAllBuilders('workername'),
    statistics.CaptureDataAllBuilders('timings'),
]
c['services'].append(
    statistics.StatsService(
        storage_backends=[
            statistics.InfluxStorageService('127.0.0.1', {port}, 'user', 'pw', {db!r}, captures),
            {more_backends}
        ],
        name='StatsService',
        max_retry_delay=2,
    )
)
"""


def expected_result(builder: str, number: int) -> int:
    return FAILURE if (builder, number) == ("b2", 2) else SUCCESS


def expected_timings(builder: str, number: int) -> dict[str, float]:
    """test name -> seconds, as posted by ReportTimings."""
    values = {f"{builder}/{number}/single-{i}": number + i / 10 for i in range(SINGLE_VALUES)}
    values |= {f"{builder}/{number}/many-{i}": number + 0.05 + i / 10 for i in range(MANY_VALUES)}
    return values


def points_per_build(builder: str) -> int:
    """Points the captures above make for one build of ``builder`` (before InfluxDB merges)."""
    times = 3 if builder == "b1" else 2  # duration, end-time (+ start-time on b1)
    props = 3 if builder == "b1" else 1  # test_count, test_name (b1 only), workername
    return times + 1 + props + SINGLE_VALUES + MANY_VALUES


# --------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture
def influx(influx: InfluxServer) -> InfluxServer:
    influx.create_database(DB)
    return influx


@pytest.fixture
def make_master(make_master: MakeMaster) -> Callable[[str], RealMaster]:
    """Masters running STEPS on BUILDERS; only their services differ."""
    return lambda services: make_master({b: STEPS for b in BUILDERS}, header=HEADER, services=services)


def stats_services(port: int, more_backends: str = "") -> str:
    return SERVICES.format(port=port, db=DB, more_backends=more_backends)


def influx_rows(server: InfluxServer) -> dict[str, list[dict[str, Any]]]:
    """Every row of every measurement in DB (the live state's buildbot-live aside: docs/live.rst)."""
    return {name: server.points(name, DB) for name in server.measurements(DB) if name != "buildbot-live"}


def expected_row_counts(builds: list[dict[str, Any]]) -> dict[str, int]:
    """measurement -> number of rows once InfluxDB merged the points of one timestamp."""
    counts: Counter[str] = Counter()
    for b in builds:
        name = b["builder"]
        counts[f"{name}-build-times"] += 1  # duration, start-time and end-time share a row
        counts[f"{name}-build-results"] += 1
        counts[f"{name}-workername"] += 1
        counts[f"{name}-timings"] += SINGLE_VALUES + MANY_VALUES
        if name == "b1":
            counts["b1-test_count"] += 1
            counts["b1-test_name"] += 1
    return dict(counts)


def wait_for_points(server: InfluxServer, builds: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Poll InfluxDB (bounded) until every expected row is there; return all rows."""
    want = expected_row_counts(builds)
    deadline = time.monotonic() + POLL_TIMEOUT
    while True:
        rows = influx_rows(server)
        have = {name: len(r) for name, r in rows.items()}
        complete = all(have.get(name, 0) >= n for name, n in want.items())
        # the build-times row is complete once all its fields arrived
        complete = complete and all(
            row.get("duration") is not None and row.get("end-time") is not None
            for name in BUILDERS
            for row in rows.get(f"{name}-build-times", [])
        )
        if complete:
            return rows
        if time.monotonic() > deadline:
            pytest.fail(f"InfluxDB rows after {POLL_TIMEOUT}s: {have}, expected {want}")
        time.sleep(0.2)


def iso(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


def check_points(rows: dict[str, list[dict[str, Any]]], builds: list[dict[str, Any]]) -> None:
    """Every stored value equals the master's own data; nothing missing, nothing twice."""
    assert len(builds) == N_BUILDS
    assert sorted(b["builder"] for b in builds) == sorted(BUILDERS * CHANGES)
    assert {name: len(r) for name, r in rows.items()} == expected_row_counts(builds)

    def by_build(series: str) -> dict[tuple[str, int], dict[str, Any]]:
        found: dict[tuple[str, int], dict[str, Any]] = {}
        for row in rows[series]:
            key = (row["builder_name"], int(row["build_number"]))
            assert key not in found, f"{series}: build {key} stored twice: {row}"
            found[key] = row
        return found

    for name in BUILDERS:
        mine = [b for b in builds if b["builder"] == name]
        assert sorted(b["number"] for b in mine) == list(range(1, CHANGES + 1))
        times = by_build(f"{name}-build-times")
        results = by_build(f"{name}-build-results")
        workers = by_build(f"{name}-workername")
        assert set(times) == set(results) == set(workers) == {(name, b["number"]) for b in mine}
        timings = Counter(
            (row["builder_name"], row["build_number"], row["test"]) for row in rows[f"{name}-timings"]
        )
        assert [k for k, n in timings.items() if n != 1] == [], "a posted value was stored twice"
        for b in mine:
            key = (name, b["number"])
            assert b["results"] == expected_result(name, b["number"])
            # build times: the point is stamped with the build's completion time
            row = times[key]
            assert row["time"] == b["complete_at"] * 10**9
            assert abs(row["duration"] - (b["complete_at"] - b["started_at"])) <= 1, row
            assert row["end-time"] == iso(b["complete_at"])
            if name == "b1":
                assert row["start-time"] == iso(b["started_at"])
            else:
                assert row.get("start-time") is None, "CaptureBuildStartTime('b1') stored b2"
            row = results[key]
            assert (row["results"], row["result"]) == (b["results"], Results[b["results"]])
            assert row["time"] == b["complete_at"] * 10**9
            row = workers[key]
            assert (row["name"], row["value"]) == ("workername", b["worker"])
            # values posted by the step: each exactly once, with its value
            posted = {
                row["test"]: row["seconds"]
                for row in rows[f"{name}-timings"]
                if row["build_number"] == str(b["number"])
            }
            assert posted == pytest.approx(expected_timings(name, b["number"]))
            if name == "b1":
                (count,) = [r for r in rows["b1-test_count"] if r["build_number"] == str(b["number"])]
                assert (count["name"], count["value"]) == ("test_count", b["number"] * 10 + 2)
                (tname,) = [r for r in rows["b1-test_name"] if r["build_number"] == str(b["number"])]
                assert (tname["name"], tname["value"]) == ("test_name", f"b1-suite-{b['number']}")


def check_log(m: RealMaster) -> None:
    text = m.log_text()
    assert m.tracebacks() == []
    assert m.warnings() == []
    assert "Unhandled Error" not in text
    assert "Traceback" not in text
    noise = [line for line in m.log_messages() if "] buildbot_stats:" in line and "\n" in line]
    assert noise == [], "buildbot_stats log messages must be one line"


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


def test_real_master_stores_every_capture(influx: InfluxServer, make_master: Any) -> None:
    m = make_master(stats_services(influx.port))
    rc, out = m.checkconfig()
    assert rc == 0, out
    assert "Traceback" not in out

    m.start()
    m.sendchange(CHANGES)
    m.wait_for_builds(N_BUILDS)
    builds = m.builds()
    rows = wait_for_points(influx, builds)
    check_points(rows, builds)

    # InfluxDB took every point at once: no failure, nothing left in the spool
    assert stats_lines(m, "failed") == []
    wait_spool_empty(m)
    m.stop()
    check_log(m)
    assert spooled(m) == 0


def test_checkconfig_reports_bad_config(make_master: Any) -> None:
    services = """
captures = [statistics.CaptureBuildDuration('b1', report_in='days')]
c['services'].append(statistics.StatsService(storage_backends=[object()], name='StatsService'))
"""
    m = make_master(services)
    rc, out = m.checkconfig()
    assert rc != 0, out
    assert "`report_in` parameter must be one of 'seconds', 'minutes' or 'hours', not 'days'" in out
    assert "StatsService: invalid storage backend 'object'" in out
    assert "Traceback" not in out


def run_builds_during_outage(influx: InfluxServer, m: RealMaster) -> list[dict[str, Any]]:
    """Builds with influxd down: every point waits in the master's spool."""
    influx.stop()
    m.start()
    m.sendchange(CHANGES)
    m.wait_for_builds(N_BUILDS)
    builds = m.builds()
    total = sum(points_per_build(b["builder"]) for b in builds)
    deadline = time.monotonic() + 10
    while spooled(m) != total:
        assert time.monotonic() < deadline, f"{spooled(m)} points spooled, expected {total}"
        time.sleep(0.1)
    assert len(stats_lines(m, "failed", "cannot reach InfluxDB")) == 1
    return builds


def restart_and_check(influx: InfluxServer, m: RealMaster, builds: list[dict[str, Any]]) -> None:
    total = sum(points_per_build(b["builder"]) for b in builds)
    assert spooled(m) == total, "points lost from the spool while the master was down"
    influx.start()
    m.start()
    assert stats_lines(m, f"{total} points found in the spool to send")
    rows = wait_for_points(influx, builds)
    check_points(rows, builds)
    wait_spool_empty(m)
    assert m.builds() == builds, "a build ran again"
    m.stop()
    check_log(m)


def test_master_restart_delivers_spooled_points(influx: InfluxServer, make_master: Any) -> None:
    m = make_master(stats_services(influx.port))
    builds = run_builds_during_outage(influx, m)
    m.stop()
    assert stats_lines(m, "stay in the spool and are sent after the next start")
    restart_and_check(influx, m, builds)


def test_master_sigkill_delivers_spooled_points(influx: InfluxServer, make_master: Any) -> None:
    m = make_master(stats_services(influx.port))
    builds = run_builds_during_outage(influx, m)
    time.sleep(1)
    m.kill()
    restart_and_check(influx, m, builds)


def test_influx_outage_during_builds(influx: InfluxServer, make_master: Any) -> None:
    m = make_master(stats_services(influx.port))
    m.start()
    influx.stop()
    m.sendchange(CHANGES)
    m.wait_for_builds(N_BUILDS)
    builds = m.builds()
    influx.start()
    rows = wait_for_points(influx, builds)
    check_points(rows, builds)
    wait_spool_empty(m)

    failed = stats_lines(m, "failed")
    assert len(failed) == 1, failed
    assert "cannot reach InfluxDB" in failed[0]
    assert len(stats_lines(m, "accepts writes again")) == 1
    m.stop()
    check_log(m)
