"""End to end: ``buildbot-stats backfill`` against a real master's database, SQLite and PostgreSQL.

A real master runs builds with its StatsService writing live to InfluxDB
database A and SQLite store A.  Its master.cfg reads the target from the
environment (``BBS_TARGET``), so ``backfill`` of the same master directory
with ``BBS_TARGET=b`` writes through the very same captures into database B
and store B.  A and B must hold the same points, field for field (the values
posted with yieldMetricsValue excepted: they are not in the database).  A
second backfill changes nothing, and a backfill interrupted with SIGINT and
run again ends with the same points.  ``--dry-run`` counts what the real run
writes.

The captures include, besides the plugin's own, two written the way a user
would (in master.cfg) on the step ``finished`` and test result set
``completed`` messages, so that the replay of those messages is checked too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildbot_stats import statistics
from buildbot_stats.cli.master_process import RealMaster, make_master_cfg
from buildbot_stats.ui.store import open_store
from tests.e2e.conftest import MakeMaster
from tests.support.influxd import InfluxServer
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer
from tests.support.process import default_sigint

SQLITE_URL = "sqlite:///state.sqlite"
BUILDERS = ("b1", "b2")
CHANGES = 3
SUBPROCESS_TIMEOUT = 180

HEADER = """
import os

from buildbot.process import buildstep
from buildbot.process.results import FAILURE, SUCCESS
from buildbot_stats import statistics

TARGET = os.environ.get('BBS_TARGET', 'a')
NEW_CAPTURES = @NEW_CAPTURES@


class RunTests(statistics.StatsStepMixin, buildstep.BuildStep):
    name = 'run-tests'

    async def run(self):
        builder = self.getProperty('buildername')
        number = self.getProperty('buildnumber')
        self.setProperty('test_count', number * 10 + len(builder), 'RunTests')
        setid = await self.addTestResultSet('unit tests', 'pass_fail', 'boolean')
        for i in range(number + 1):
            self.addTestResult(setid, '0' if i == 0 and builder == 'b2' else '1', test_name=f't{i}')
        await self.yieldMetricsValue('timings', {'seconds': number / 10})
        return FAILURE if (builder, number) == ('b2', 2) else SUCCESS


class StepFinished(statistics.Capture):
    # a user's capture of the step 'finished' message
    def __init__(self):
        super().__init__(('builds', None, 'steps', None, 'finished'), None)

    def consume(self, routingKey, msg):
        return self._store(
            {'results': msg['results'], 'seconds': (msg['complete_at'] - msg['started_at']).total_seconds(),
             'state': msg['state_string']},
            'user-step-times',
            {'buildid': str(msg['buildid']), 'step': msg['name'], 'number': str(msg['number'])},
            msg['complete_at'],
        )


class TestSetCompleted(statistics.Capture):
    # a user's capture of the test result set 'completed' message, using the data API
    def __init__(self):
        super().__init__(('test_result_sets', None, 'completed'), None)

    async def _consume(self, msg):
        step = await self.master.data.get(('steps', msg['stepid']))
        await self._store(
            {'passed': msg['tests_passed'], 'failed': msg['tests_failed']},
            'user-test-sets',
            {'buildid': str(msg['buildid']), 'step': step['name'], 'unit': msg['value_unit']},
            step['started_at'],
        )

    def consume(self, routingKey, msg):
        from twisted.internet import defer
        return defer.ensureDeferred(self._consume(msg))
"""

NEW_CAPTURES = (
    "CaptureStepDurationAllBuilders",
    "CaptureBuildQueueTimeAllBuilders",
    "CaptureTestResultsAllBuilders",
)
HAS_NEW_CAPTURES = all(hasattr(statistics, name) for name in NEW_CAPTURES)
HEADER = HEADER.replace("@NEW_CAPTURES@", repr(NEW_CAPTURES))

STEPS = "[steps.ShellCommand(command=['true']), RunTests()]"

SERVICES = """
captures = [
    statistics.CaptureBuildDurationAllBuilders(),
    statistics.CaptureBuildStartTime('b1'),
    statistics.CaptureBuildEndTimeAllBuilders(),
    statistics.CaptureBuildResultsAllBuilders(),
    statistics.CaptureProperty('b1', 'test_count'),
    statistics.CapturePropertyAllBuilders('workername'),
    statistics.CaptureDataAllBuilders('timings'),
    StepFinished(),
    TestSetCompleted(),
] + [
    # the step, queue-time and test-result captures, where this version has them
    getattr(statistics, name)() for name in NEW_CAPTURES if hasattr(statistics, name)
]
c['services'].append(
    statistics.StatsService(
        storage_backends=[
            statistics.InfluxStorageService(
                '127.0.0.1', {port}, 'user', 'pw', 'bbstats_' + TARGET, captures, name='influx'
            ),
            statistics.SQLiteStorageService('stats-' + TARGET + '.sqlite', captures, name='sqlite'),
        ],
        name='StatsService',
        max_retry_delay=2,
    )
)
"""

# series of the values posted with yieldMetricsValue, and live state's: not in the database, not backfilled
NOT_BACKFILLED = {"b1-timings", "b2-timings", "buildbot-live"}


# --------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture
def influx(influx: InfluxServer) -> InfluxServer:
    for target in "abcd":
        influx.create_database(f"bbstats_{target}")
    return influx


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def run_master(
    make_master: MakeMaster, influx: InfluxServer, db_url: str
) -> tuple[RealMaster, subprocess.CompletedProcess[str]]:
    """A master that ran CHANGES builds per builder with the service writing live to target A; stopped.

    Before it stops, ``backfill`` into target D runs beside it (its result is returned).
    """
    m = make_master(
        {b: STEPS for b in BUILDERS},
        header=HEADER,
        services=SERVICES.format(port=influx.port),
        db_url=db_url,
        # Builds of one builder run one after the other: Buildbot 4.3's test_names table has
        # no unique index, so on PostgreSQL two builds of one builder adding the same new test
        # names at once can both insert them, and every later addTestResults of those names
        # then fails inside Buildbot (KeyError in db/test_results.py) -- a Buildbot race,
        # not the plugin's.
        workers={f"local-worker-{i}": {"max_builds": 1} for i in range(1, len(BUILDERS) + 1)},
        builder_workers={b: [f"local-worker-{i}"] for i, b in enumerate(BUILDERS, 1)},
    )
    m.start()
    m.sendchange(CHANGES)
    m.wait_for_builds(CHANGES * len(BUILDERS))
    beside = backfill(m.basedir, "d")
    assert m.is_running()
    # the live points are written once the service flushed at stop
    m.stop()
    assert m.tracebacks() == []
    return m, beside


def master_db_digest(basedir: Path) -> str | None:
    """SHA-256 of the master's SQLite database file (None on PostgreSQL)."""
    path = basedir / "state.sqlite"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def backfill(basedir: Path, target: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BBS_TARGET=target)
    return subprocess.run(
        [sys.executable, "-m", "buildbot_stats.cli", "backfill", str(basedir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


def influx_state(server: InfluxServer, target: str) -> dict[str, list[dict[str, Any]]]:
    db = f"bbstats_{target}"
    return {
        name: sorted(server.points(name, db), key=lambda r: json.dumps(r, sort_keys=True))
        for name in server.measurements(db)
        if name not in NOT_BACKFILLED
    }


def store_state(basedir: Path, target: str) -> list[tuple[str, int, str, str]]:
    path = basedir / f"stats-{target}.sqlite"
    if not path.exists():
        return []
    with open_store(str(path)) as store:
        return sorted(
            (p.series, p.time_ns, json.dumps(p.tags, sort_keys=True), json.dumps(p.fields, sort_keys=True))
            for p in store.points()
            if p.series not in NOT_BACKFILLED
        )


def written(output: str) -> dict[str, int]:
    """Points written per backend, from backfill's last line."""
    m = re.search(r"points written \((.*)\)", output)
    assert m, output
    return {k: int(v) for k, v in (part.rsplit(" ", 1) for part in m.group(1).split(", "))}


def dry_run_counts(output: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"backend (\S+): (\d+) points", output)}


def checkpointed(basedir: Path, db: str) -> bool:
    """True once backfill saved progress for the InfluxDB backend writing to ``db``."""
    try:
        state = json.loads((basedir / "stats-backfill.json").read_text())
    except (OSError, ValueError):
        return False
    runs = state["services"].get("StatsService", {}).values()
    return any(f"db={db!r}" in run.get("influx", {}).get("target", "") for run in runs)


def check_live_series(live: dict[str, list[dict[str, Any]]]) -> None:
    """The live run captured what the test expects, so that A == B means something."""
    new: set[str] = set()
    if HAS_NEW_CAPTURES:
        new = {f"{b}-{s}" for b in BUILDERS for s in ("step-times", "test-results")}
    assert (
        set(live)
        == {
            "b1-build-times",
            "b2-build-times",
            "b1-build-results",
            "b2-build-results",
            "b1-test_count",
            "b1-workername",
            "b2-workername",
            "user-step-times",
            "user-test-sets",
        }
        | new
    )
    if HAS_NEW_CAPTURES:
        assert sum(len(live[f"{b}-step-times"]) for b in BUILDERS) == CHANGES * len(BUILDERS) * 3
        assert sum(len(live[f"{b}-test-results"]) for b in BUILDERS) == CHANGES * len(BUILDERS)
        assert all(r["queue-time"] is not None for b in BUILDERS for r in live[f"{b}-build-times"])
    assert len(live["b1-build-times"]) == len(live["b2-build-times"]) == CHANGES
    # worker_preparation, the shell command, run-tests
    assert len(live["user-step-times"]) == CHANGES * len(BUILDERS) * 3
    assert len(live["user-test-sets"]) == CHANGES * len(BUILDERS)
    assert {(r["passed"], r["failed"]) for r in live["user-test-sets"]} == {
        (n + 1, 0) for n in range(1, CHANGES + 1)
    } | {(n, 1) for n in range(1, CHANGES + 1)}
    assert all(r["start-time"] and r["duration"] is not None for r in live["b1-build-times"])


def backfill_scenario(make_master: MakeMaster, influx: InfluxServer, db_url: str) -> None:
    m, beside = run_master(make_master, influx, db_url)
    basedir = m.basedir
    # the master really ran on the database given (no SQLite file when on PostgreSQL)
    assert (basedir / "state.sqlite").exists() == (db_url == SQLITE_URL)
    live = influx_state(influx, "a")
    live_store = store_state(basedir, "a")
    check_live_series(live)
    assert len(live_store) == sum(len(rows) for rows in live.values())

    # backfill while the master ran: the same points
    assert beside.returncode == 0, beside.stderr
    assert influx_state(influx, "d") == live
    assert store_state(basedir, "d") == live_store

    # --dry-run: counts, writes nothing
    dry = backfill(basedir, "b", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "6 builds" in dry.stdout
    assert influx_state(influx, "b") == {}
    assert store_state(basedir, "b") == []

    # the real run: B equals A, field for field; the master's database is only read
    before = master_db_digest(basedir)
    done = backfill(basedir, "b", "--rate", "100")
    assert done.returncode == 0, done.stderr
    assert master_db_digest(basedir) == before
    assert influx_state(influx, "b") == live
    assert store_state(basedir, "b") == live_store
    assert written(done.stdout) == dry_run_counts(dry.stdout)
    assert "error" not in done.stderr, done.stderr

    # again: nothing to do (state file), and from scratch: nothing stored twice
    again = backfill(basedir, "b")
    assert again.returncode == 0, again.stderr
    assert "backfilled 0 builds" in again.stdout
    restart = backfill(basedir, "b", "--restart")
    assert restart.returncode == 0, restart.stderr
    assert "backfilled 6 builds" in restart.stdout
    assert influx_state(influx, "b") == live
    assert store_state(basedir, "b") == live_store

    # interrupted with SIGINT, then run again: the same points
    env = dict(os.environ, BBS_TARGET="c")
    proc = subprocess.Popen(
        [sys.executable, "-m", "buildbot_stats.cli", "backfill", str(basedir), "--rate", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # as a person's Ctrl-C, also when the suite runs as a background job
    )
    try:
        deadline = time.monotonic() + 60
        # interrupt after the first checkpoint of target C (every 2 s; at 1 build/s)
        while time.monotonic() < deadline and proc.poll() is None and not checkpointed(basedir, "bbstats_c"):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert "interrupted after" in err
    partial = influx_state(influx, "c")
    assert 0 < len(partial.get("b1-build-times", [])) + len(partial.get("b2-build-times", [])) < 6
    rerun = backfill(basedir, "c")
    assert rerun.returncode == 0, rerun.stderr
    assert "continuing after build id" in rerun.stderr
    n = int(re.search(r"backfilled (\d+) builds", rerun.stdout).group(1))
    assert 0 < n < 6
    assert influx_state(influx, "c") == live
    assert store_state(basedir, "c") == live_store


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


def test_backfill_sqlite_master_equals_live_capture(influx: InfluxServer, make_master: MakeMaster) -> None:
    backfill_scenario(make_master, influx, SQLITE_URL)


def test_backfill_postgresql_master_equals_live_capture(
    influx: InfluxServer, postgres: PostgresServer, make_master: MakeMaster
) -> None:
    backfill_scenario(make_master, influx, postgres.create_database("bbmaster"))


# --------------------------------------------------------------------------
# a database it cannot open: exit 2, one line, no password
# --------------------------------------------------------------------------


def master_dir(tmp_path: Path, db_url: str) -> Path:
    """A master directory whose master.cfg has a StatsService and ``db_url`` (no master ever ran)."""
    cfg = make_master_cfg(
        {"b1": "[]"},
        pb_port=free_port(),
        header="from buildbot_stats import statistics",
        services="c['services'].append(statistics.StatsService(storage_backends=["
        "statistics.SQLiteStorageService('stats.sqlite', [statistics.CaptureBuildDurationAllBuilders()])]))",
        db_url=db_url,
    )
    basedir = tmp_path / "master"
    basedir.mkdir()
    (basedir / "master.cfg").write_text(cfg)
    return basedir


@pytest.mark.parametrize(
    "db_url, problem",
    [
        ("sqlite:///state.sqlite", "state.sqlite does not exist"),
        ("sqlite:///garbage.sqlite", "file is not a database"),
        ("postgresql+psycopg://user:s3cret@127.0.0.1:{port}/bb", "connection"),
    ],
)
def test_database_it_cannot_open(tmp_path: Path, db_url: str, problem: str) -> None:
    basedir = master_dir(tmp_path, db_url.format(port=free_port()))
    (basedir / "garbage.sqlite").write_bytes(b"not a database at all" * 100)
    proc = backfill(basedir, "b")
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("buildbot-stats: error: cannot open the database ")
    assert problem in proc.stderr
    assert "s3cret" not in proc.stderr
    assert not (basedir / "state.sqlite").exists()  # not created by looking
    assert not (basedir / "stats.sqlite").exists()
