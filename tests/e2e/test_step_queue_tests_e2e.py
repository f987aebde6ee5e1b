"""End to end: step times, queue times and test result sets of a real master, in InfluxDB and SQLite.

A real Buildbot master with two LocalWorkers, one of them with ``max_builds=1``
and the only worker of builder ``queued``, so its builds wait in the queue.
Builders run 4 steps (one hidden, one failing on build 2), and a step records
test result sets with known passes and failures through Buildbot's own
``addTestResultSet``/``addTestResult``.  Everything the master's own
``state.sqlite`` says (tables ``steps``, ``builds``, ``buildrequests``,
``test_result_sets``, ``workers``) must be in InfluxDB (a real influxd) and in
the SQLite store exactly once, with the database's times.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from buildbot_stats.cli.master_process import RealMaster
from tests.e2e.conftest import MakeMaster, stats_lines
from tests.support.influxd import InfluxServer

DB = "bbstats_steps_e2e"
CHANGES = 3
BUILDERS = ("b1", "queued")
N_BUILDS = CHANGES * len(BUILDERS)
POLL_TIMEOUT = 30.0

HEADER = """
from buildbot.process import buildstep
from buildbot.process.results import FAILURE, SUCCESS
from twisted.internet import reactor, task

from buildbot_stats import statistics


class RecordTests(buildstep.BuildStep):
    '''Records test result sets with known counts, as a test runner's step would.'''

    name = 'record-tests'

    async def run(self):
        number = self.getProperty('buildnumber')
        unit = await self.addTestResultSet('unit tests', 'pass_fail', 'boolean')
        for i in range(5 + number):
            self.addTestResult(unit, '1', test_name=f'pass-{i}')
        for i in range(number % 2):
            self.addTestResult(unit, '0', test_name=f'fail-{i}')
        lint = await self.addTestResultSet('lint', 'code_issue', 'message')
        for i in range(number):
            self.addTestResult(lint, 'unused import', test_name=f'issue-{i}')
        # a category Buildbot does not count: both counts stay None, no point
        perf = await self.addTestResultSet('timings', 'performance', 'seconds')
        self.addTestResult(perf, '0.5', test_name='startup')
        return SUCCESS


class Flaky(buildstep.BuildStep):
    name = 'flaky'

    async def run(self):
        await task.deferLater(reactor, 0.3, lambda: None)
        return FAILURE if self.getProperty('buildnumber') == 2 else SUCCESS
"""

STEPS = """[
    steps.ShellCommand(command=['true'], name='shell'),
    RecordTests(),
    Flaky(),
    steps.ShellCommand(command=['true'], name='cleanup', hideStepIf=True),
]"""

SERVICES = """
c['workers'] = [
    worker.LocalWorker('local-worker-1'),
    worker.LocalWorker('local-worker-2', max_builds=1),
]
for builder in c['builders']:
    if builder.name == 'queued':
        builder.workernames = ['local-worker-2']
captures = [
    statistics.CaptureStepDurationAllBuilders(),
    statistics.CaptureBuildQueueTimeAllBuilders(),
    statistics.CaptureBuildDurationAllBuilders(),
    statistics.CaptureTestResultsAllBuilders(),
    statistics.CaptureBuildResultsAllBuilders(),
]
c['services'].append(
    statistics.StatsService(
        storage_backends=[
            statistics.InfluxStorageService('127.0.0.1', {port}, 'user', 'pw', {db!r}, captures),
            statistics.SQLiteStorageService({store!r}, captures),
        ],
        name='StatsService',
        max_retry_delay=2,
    )
)
"""


@pytest.fixture
def influx(influx: InfluxServer) -> InfluxServer:
    influx.create_database(DB)
    return influx


def master_db(m: RealMaster, sql: str) -> list[dict[str, Any]]:
    return m._query(sql)


def expected(m: RealMaster) -> dict[str, dict[tuple, dict[str, Any]]]:
    """What the master's own database says, keyed like the points: (series, tags..., time_ns)."""
    steps = master_db(
        m,
        "SELECT bl.name AS builder, b.number AS build_number, s.name, s.number, s.started_at,"
        " s.complete_at, s.results, s.hidden, w.name AS worker"
        " FROM steps s JOIN builds b ON b.id = s.buildid JOIN builders bl ON bl.id = b.builderid"
        " JOIN workers w ON w.id = b.workerid",
    )
    builds = master_db(
        m,
        "SELECT bl.name AS builder, b.number, b.started_at, b.complete_at, b.results, w.name AS worker,"
        " br.submitted_at FROM builds b JOIN builders bl ON bl.id = b.builderid"
        " JOIN workers w ON w.id = b.workerid JOIN buildrequests br ON br.id = b.buildrequestid",
    )
    sets = master_db(
        m,
        "SELECT bl.name AS builder, b.number AS build_number, s.name AS step_name, s.complete_at,"
        " t.description, t.category, t.value_unit, t.tests_passed, t.tests_failed, w.name AS worker"
        " FROM test_result_sets t JOIN steps s ON s.id = t.stepid JOIN builds b ON b.id = t.buildid"
        " JOIN builders bl ON bl.id = t.builderid JOIN workers w ON w.id = b.workerid",
    )
    out: dict[str, dict[tuple, dict[str, Any]]] = {"steps": {}, "queue": {}, "tests": {}, "uncounted": {}}
    for s in steps:
        tags = {
            "builder_name": s["builder"],
            "build_number": str(s["build_number"]),
            "step_name": s["name"],
            "step_number": str(s["number"]),
            "hidden": "true" if s["hidden"] else "false",
            "worker": s["worker"],
        }
        key = (f"{s['builder']}-step-times", json.dumps(tags, sort_keys=True), s["complete_at"] * 10**9)
        out["steps"][key] = {"duration": s["complete_at"] - s["started_at"], "result": s["results"]}
    for b in builds:
        tags = {"builder_name": b["builder"], "build_number": str(b["number"])}
        key = (f"{b['builder']}-build-times", json.dumps(tags, sort_keys=True), b["complete_at"] * 10**9)
        out["queue"][key] = {
            "queue-time": b["started_at"] - b["submitted_at"],
            "duration": b["complete_at"] - b["started_at"],
        }
    for t in sets:
        tags = {
            "builder_name": t["builder"],
            "build_number": str(t["build_number"]),
            "step_name": t["step_name"],
            "description": t["description"],
            "category": t["category"],
            "value_unit": t["value_unit"],
            "worker": t["worker"],
        }
        key = (f"{t['builder']}-test-results", json.dumps(tags, sort_keys=True), t["complete_at"] * 10**9)
        if t["tests_passed"] is None and t["tests_failed"] is None:
            out["uncounted"][key] = {}
            continue
        fields = {k: t[k] for k in ("tests_passed", "tests_failed") if t[k] is not None}
        fields["tests_total"] = sum(fields.values())
        out["tests"][key] = fields
    return out


TAG_KEYS = {
    "step-times": ("builder_name", "build_number", "step_name", "step_number", "hidden", "worker"),
    "build-times": ("builder_name", "build_number"),
    "test-results": (
        "builder_name",
        "build_number",
        "step_name",
        "description",
        "category",
        "value_unit",
        "worker",
    ),
}
FIELD_KEYS = {
    "step-times": ("duration", "result"),
    "build-times": ("queue-time", "duration"),
    "test-results": ("tests_passed", "tests_failed", "tests_total"),
}


def kind(series: str) -> str:
    return next(k for k in TAG_KEYS if series.endswith("-" + k))


def influx_points(server: InfluxServer) -> list[tuple[tuple, dict[str, Any]]]:
    found = []
    for series in server.measurements(DB):
        if not any(series.endswith("-" + k) for k in TAG_KEYS):
            continue
        for row in server.points(series, DB):
            tags = {k: row[k] for k in TAG_KEYS[kind(series)] if row.get(k) is not None}
            fields = {k: row[k] for k in FIELD_KEYS[kind(series)] if row.get(k) is not None}
            found.append(((series, json.dumps(tags, sort_keys=True), row["time"]), fields))
    return found


def store_points(path: Path) -> list[tuple[tuple, dict[str, Any]]]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT series, tags, time_ns, fields FROM points").fetchall()
    finally:
        conn.close()
    found = []
    for series, tags, time_ns, fields in rows:
        if not any(series.endswith("-" + k) for k in TAG_KEYS):
            continue
        fields = {k: v for k, v in json.loads(fields).items() if k in FIELD_KEYS[kind(series)]}
        found.append(((series, json.dumps(json.loads(tags), sort_keys=True), time_ns), fields))
    return found


def check(
    found: list[tuple[tuple, dict[str, Any]]], want: dict[str, dict[tuple, dict[str, Any]]], where: str
) -> None:
    keys = [key for key, _ in found]
    assert len(keys) == len(set(keys)), f"{where}: a point stored twice"
    got = dict(found)
    wanted = {**want["steps"], **want["queue"], **want["tests"]}
    assert set(got) == set(wanted), (
        f"{where}: missing {sorted(set(wanted) - set(got))}, unexpected {sorted(set(got) - set(wanted))}"
    )
    for key, fields in wanted.items():
        stored = got[key]
        assert set(stored) == set(fields), (where, key, stored, fields)
        for name, value in fields.items():
            if name in ("duration", "queue-time"):
                assert abs(stored[name] - value) <= 1, (where, key, name, stored[name], value)
            else:
                assert stored[name] == value, (where, key, name, stored[name], value)
    assert not set(got) & set(want["uncounted"]), f"{where}: a set without counts made a point"


def test_steps_queue_times_and_test_results_of_a_real_master(
    influx: InfluxServer, make_master: MakeMaster, tmp_path: Path
) -> None:
    store = tmp_path / "stats.sqlite"
    m = make_master(
        {b: STEPS for b in BUILDERS},
        header=HEADER,
        services=SERVICES.format(port=influx.port, db=DB, store=str(store)),
    )
    rc, out = m.checkconfig()
    assert rc == 0, out
    m.start()
    m.sendchange(CHANGES)
    m.wait_for_builds(N_BUILDS)
    want = expected(m)
    # the workload is what this test is about: 4 steps a build (and Buildbot's
    # worker_preparation), one failing on build 2 and one hidden, 2 counted
    # sets a build, builds that waited
    assert len(want["steps"]) == 5 * N_BUILDS
    assert {f["result"] for f in want["steps"].values()} == {0, 2}
    hidden = [json.loads(key[1])["step_name"] for key in want["steps"] if '"hidden": "true"' in key[1]]
    assert hidden.count("cleanup") == N_BUILDS
    assert len(want["tests"]) == 2 * N_BUILDS and len(want["uncounted"]) == N_BUILDS
    queued = [f["queue-time"] for key, f in want["queue"].items() if key[0] == "queued-build-times"]
    assert max(queued) >= 1, f"no build of 'queued' waited for its worker: {queued}"
    workers = {json.loads(key[1])["worker"] for key in want["steps"]}
    assert "local-worker-2" in workers

    deadline = time.monotonic() + POLL_TIMEOUT
    expected_count = len(want["steps"]) + len(want["queue"]) + len(want["tests"])
    while True:
        in_influx, in_store = influx_points(influx), store_points(store) if store.exists() else []
        complete = len(in_influx) >= expected_count and len(in_store) >= expected_count
        complete = complete and all(
            "queue-time" in f and "duration" in f for k, f in in_influx if "build-times" in k[0]
        )
        if complete or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    check(in_influx, want, "InfluxDB")
    # the queries of docs/captures.rst chart these series
    for query in (
        'SELECT mean("duration") FROM "b1-step-times" WHERE time > now() - 30d AND "hidden" = \'false\''
        ' GROUP BY time(1d), "step_name"',
        'SELECT percentile("queue-time", 95) FROM "queued-build-times" WHERE time > now() - 7d'
        " GROUP BY time(1h)",
        'SELECT sum("tests_failed") FROM "b1-test-results" WHERE time > now() - 30d GROUP BY "build_number"',
    ):
        assert influx._rows(influx.query_checked(query, DB)), query
    check(in_store, want, "SQLite store")
    m.stop()
    assert m.tracebacks() == []
    assert stats_lines(m, "failed") == []
