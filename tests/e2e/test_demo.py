"""``buildbot-stats demo``, run as a subprocess exactly as a person runs it.

The main test runs the demo (5 builds on a real master with LocalWorkers) and
checks the SQLite store point by point against the master's own database
(``master/state.sqlite``): builds, builder names, results, times, properties,
the values the step posted, steps, queue times and test result sets.  Then:
the same builds in a private InfluxDB (``--influxdb``), the errors a person
can cause (one line on stderr, exit 2, nothing started), and Ctrl-C/SIGTERM
while builds run (exit 130/143, nothing left).  Every test also checks that
no process runs inside the demo directory.
"""

from __future__ import annotations

import datetime
import json
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from buildbot.process.results import FAILURE, SUCCESS, Results

from buildbot_stats.cli.summary import format_table, summarize_path
from buildbot_stats.point import Point
from buildbot_stats.ui.store import open_store
from tests.e2e.conftest import kill_processes_in, processes_in
from tests.support.influxd import InfluxServer
from tests.support.ports import free_port
from tests.support.process import default_sigint

REPO = Path(__file__).resolve().parents[2]
BUILDERS = ("unit-tests", "integration", "docs")
N_BUILDS = 5
PER_BUILDER = {"unit-tests": 2, "integration": 2, "docs": 1}  # builds are dealt out in that order
TIMINGS_PER_BUILD = 5
DEMO_TIMEOUT = 180
PROGRESS = re.compile(
    r"^builds done (\d+)/(\d+), (\d+\.\d)s elapsed, \d+\.\d\d? builds/s, ETA (--:--|(\d+:)?\d+:\d\d)$"
)


# --------------------------------------------------------------------------
# running the command
# --------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("COLUMNS", None)
    return env


def demo_command(*args: str) -> list[str]:
    """The ``buildbot-stats demo ARGS`` command line, run by this interpreter."""
    return [sys.executable, "-m", "buildbot_stats.cli", "demo", *args]


def run(command: list[str], timeout: float = DEMO_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[Path]:
    """A not yet existing directory for one demo run; no process may outlive the test."""
    path = tmp_path / "demo"
    try:
        yield path
    finally:
        left = processes_in(tmp_path)
        kill_processes_in(tmp_path)
    assert left == [], "the demo left processes behind"


def assert_one_line(stderr: str, pattern: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert re.search(pattern, lines[0]), lines[0]


# --------------------------------------------------------------------------
# the master's own database, the store
# --------------------------------------------------------------------------


def master_builds(basedir: Path) -> list[dict[str, Any]]:
    """Builds from ``state.sqlite`` (read-only): builder, number, results, times, properties."""
    conn = sqlite3.connect(f"{(basedir / 'state.sqlite').as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        builds = [
            dict(row)
            for row in conn.execute(
                "SELECT b.id, bl.name AS builder, b.number, b.results, b.started_at, b.complete_at,"
                " w.name AS worker, br.submitted_at FROM builds b JOIN builders bl ON bl.id = b.builderid"
                " JOIN workers w ON w.id = b.workerid JOIN buildrequests br ON br.id = b.buildrequestid"
                " ORDER BY b.id"
            )
        ]
        for b in builds:
            rows = conn.execute("SELECT name, value FROM build_properties WHERE buildid = ?", (b["id"],))
            b["properties"] = {name: json.loads(value) for name, value in rows}
            b["steps"] = [
                dict(row)
                for row in conn.execute(
                    "SELECT name, number, started_at, complete_at, results, hidden"
                    " FROM steps WHERE buildid = ?",
                    (b["id"],),
                )
            ]
            b["test_result_sets"] = [
                dict(row)
                for row in conn.execute(
                    "SELECT t.description, t.category, t.value_unit, t.tests_passed, t.tests_failed,"
                    " s.name AS step_name, s.complete_at FROM test_result_sets t"
                    " JOIN steps s ON s.id = t.stepid WHERE t.buildid = ?",
                    (b["id"],),
                )
            ]
    finally:
        conn.close()
    return builds


def store_points(path: Path) -> list[Point]:
    with open_store(path) as store:
        return list(store.points())


def iso(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


def build_key(point: Point) -> tuple[str, int]:
    return point.tags["builder_name"], int(point.tags["build_number"])


def by_build(points: list[Point], series: str) -> dict[tuple[str, int], list[Point]]:
    found: dict[tuple[str, int], list[Point]] = {}
    for p in points:
        if p.series == series:
            found.setdefault(build_key(p), []).append(p)
    return found


def check_store_against_master(points: list[Point], builds: list[dict[str, Any]]) -> None:
    """Point by point: every build of the master's db in the store, with its own values; nothing else."""
    assert len(builds) == N_BUILDS
    assert all(b["complete_at"] is not None for b in builds)
    assert Counter(b["builder"] for b in builds) == PER_BUILDER
    keys = {(b["builder"], b["number"]) for b in builds}
    assert len(keys) == N_BUILDS

    expected_series = {
        f"{name}-{suffix}"
        for name in BUILDERS
        for suffix in (
            "build-times",
            "build-results",
            "tests_run",
            "tests_failed",
            "test-timings",
            "coverage",
            "step-times",
            "test-results",
        )
    }
    assert {p.series for p in points} == expected_series
    steps = sum(len(b["steps"]) for b in builds)
    assert steps == N_BUILDS * 5  # worker_preparation, checkout, compile, run-tests, upload
    assert len(points) == N_BUILDS * (4 + TIMINGS_PER_BUILD + 1 + 1) + steps
    for p in points:  # every point names a build the master ran, under its own builder's series
        assert build_key(p) in keys, p
        assert p.series.startswith(p.tags["builder_name"] + "-"), p

    for b in builds:
        name, key, end_ns = b["builder"], (b["builder"], b["number"]), b["complete_at"] * 10**9
        # results: exactly one point, the master's result, stamped with the build's end
        [result] = by_build(points, f"{name}-build-results")[key]
        assert result.fields == {"results": b["results"], "result": Results[b["results"]]}
        assert result.time_ns == end_ns
        assert result.tags["worker"] == b["worker"]
        # build times: start, end, duration and queue time merged into one row
        [times] = by_build(points, f"{name}-build-times")[key]
        assert times.time_ns == end_ns
        assert set(times.fields) == {"start-time", "end-time", "duration", "queue-time"}
        assert times.fields["queue-time"] == b["started_at"] - b["submitted_at"]
        assert abs(times.fields["duration"] - (b["complete_at"] - b["started_at"])) <= 1, (times, b)
        assert times.fields["start-time"] == iso(b["started_at"])
        assert times.fields["end-time"] == iso(b["complete_at"])
        # properties set by the step, as the master recorded them
        for prop in ("tests_run", "tests_failed"):
            [point] = by_build(points, f"{name}-{prop}")[key]
            assert point.fields == {"name": prop, "value": b["properties"][prop]}, (point, b)
            assert point.time_ns == end_ns
        tests_run, tests_failed = b["properties"]["tests_run"], b["properties"]["tests_failed"]
        assert 40 <= tests_run <= 200
        assert b["results"] == (FAILURE if tests_failed else SUCCESS)
        # values posted by the step while the build ran
        timings = by_build(points, f"{name}-test-timings")[key]
        assert sorted(p.fields["suite"] for p in timings) == [f"suite-{i}" for i in range(TIMINGS_PER_BUILD)]
        assert all(0.05 <= p.fields["seconds"] <= 2.0 for p in timings)
        [coverage] = by_build(points, f"{name}-coverage")[key]
        assert set(coverage.fields) == {"lines", "branches"}
        for p in [*timings, coverage]:
            assert b["started_at"] * 10**9 <= p.time_ns <= (b["complete_at"] + 1) * 10**9, (p, b)
        # every step once, with the master's times, result and worker
        step_points = {
            (p.tags["step_name"], int(p.tags["step_number"])): p
            for p in by_build(points, f"{name}-step-times")[key]
        }
        assert sorted(step_points) == sorted((s["name"], s["number"]) for s in b["steps"])
        for s in b["steps"]:
            p = step_points[(s["name"], s["number"])]
            assert p.time_ns == s["complete_at"] * 10**9
            assert p.fields["result"] == s["results"]
            assert abs(p.fields["duration"] - (s["complete_at"] - s["started_at"])) <= 1, (p, s)
            assert p.tags["worker"] == b["worker"]
            assert p.tags["hidden"] == ("true" if s["hidden"] else "false")
        # the run-tests step's test result set: its counts are the step's properties
        [test_set] = b["test_result_sets"]
        assert (test_set["tests_passed"], test_set["tests_failed"]) == (
            tests_run - tests_failed,
            tests_failed,
        )
        [tests] = by_build(points, f"{name}-test-results")[key]
        assert tests.fields == {
            "tests_passed": tests_run - tests_failed,
            "tests_failed": tests_failed,
            "tests_total": tests_run,
        }
        assert tests.time_ns == test_set["complete_at"] * 10**9
        assert tests.tags == {
            "builder_name": name,
            "build_number": str(b["number"]),
            "step_name": "run-tests",
            "description": "demo suite",
            "category": "pass_fail",
            "value_unit": "boolean",
            "worker": b["worker"],
        }
    # demo-worker-2 (max_builds=1) is the only worker of integration: its builds wait
    assert max(b["started_at"] - b["submitted_at"] for b in builds if b["builder"] == "integration") >= 1


def check_output(stdout: str, workdir: Path) -> None:
    """Progress lines, the summary table of the store, the printed paths."""
    lines = stdout.splitlines()
    assert lines[0] == f"buildbot-stats demo: {N_BUILDS} builds on a real master in {workdir / 'master'}"
    started = rf"^master running \(pid \d+, PB port \d+\); sending {N_BUILDS} changes$"
    assert re.match(started, lines[1]), lines[1]
    progress = [PROGRESS.match(line) for line in lines if line.startswith("builds done")]
    assert progress and all(progress), lines
    done = [int(m.group(1)) for m in progress if m]
    elapsed = [float(m.group(3)) for m in progress if m]
    assert {int(m.group(2)) for m in progress if m} == {N_BUILDS}
    assert done == sorted(done) and done[-1] == N_BUILDS and len(set(done)) == len(done)
    assert elapsed == sorted(elapsed)
    store = workdir / "stats.sqlite"
    # the printed table is the summary of the store; its rows name the three builders
    table = format_table(summarize_path(str(store)))
    assert "\n" + table + "\n" in stdout
    builder_rows = table.split("\nBuilders\n")[1].split("\n\n")[0].splitlines()[2:]
    assert [row.split()[:2] for row in builder_rows] == [
        [name, str(n)] for name, n in sorted(PER_BUILDER.items())
    ]
    assert stdout.endswith(
        f"statistics: {store}\nmaster:     {workdir / 'master'}\n"
        f"next: buildbot-stats summary {store} --html report.html\n"
    )


# --------------------------------------------------------------------------
# the demo runs
# --------------------------------------------------------------------------


def test_demo_records_every_build_of_the_master(demo_dir: Path) -> None:
    started = time.monotonic()
    proc = run(demo_command("--builds", str(N_BUILDS), "--dir", str(demo_dir)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    workdir = demo_dir.resolve()
    check_output(proc.stdout, workdir)
    assert processes_in(demo_dir) == [], "the demo left processes behind"
    check_store_against_master(store_points(workdir / "stats.sqlite"), master_builds(workdir / "master"))
    assert time.monotonic() - started < DEMO_TIMEOUT


TAG_KEYS = ("step_name", "step_number", "hidden", "worker", "description", "category", "value_unit")


def influx_points(server: InfluxServer, db: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """(measurement, time, builder, build number, other tags) -> fields, for every row in ``db``."""
    found = {}
    for measurement in server.measurements(db):
        for row in server.points(measurement, db) if measurement != "buildbot-live" else ():
            key = (
                measurement,
                row.pop("time"),
                row.pop("builder_name"),
                int(row.pop("build_number")),
                tuple(sorted((k, row.pop(k)) for k in TAG_KEYS if row.get(k) is not None)),
            )
            assert key not in found
            found[key] = {k: v for k, v in row.items() if v is not None}
    return found


def point_key(p: Point) -> tuple[Any, ...]:
    others = tuple(sorted((k, v) for k, v in p.tags.items() if k in TAG_KEYS))
    return (p.series, p.time_ns, *build_key(p), others)


def test_demo_with_influxdb_stores_the_same_points(demo_dir: Path, influx: InfluxServer) -> None:
    url = f"{influx.url}/demo_db"
    proc = run(demo_command("--builds", str(N_BUILDS), "--dir", str(demo_dir), "--influxdb", url))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"InfluxDB:   {influx.url} database demo_db\n" in proc.stdout
    workdir = demo_dir.resolve()
    points = store_points(workdir / "stats.sqlite")
    check_store_against_master(points, master_builds(workdir / "master"))
    rows = influx_points(influx, "demo_db")
    sqlite_rows = {point_key(p): p.fields for p in points}
    assert rows.keys() == sqlite_rows.keys()
    for key, fields in sqlite_rows.items():
        assert rows[key] == pytest.approx(fields), key  # InfluxDB returns 70.0 as 70


# --------------------------------------------------------------------------
# errors a person can cause: one line, exit 2, nothing started
# --------------------------------------------------------------------------


def test_busy_port(demo_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run(demo_command("--port", str(port), "--dir", str(demo_dir)))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line(proc.stderr, rf"^buildbot-stats: error: port {port} on 127\.0\.0\.1 is busy .*--port$")
    assert not demo_dir.exists()


def test_non_empty_dir(demo_dir: Path) -> None:
    demo_dir.mkdir()
    (demo_dir / "keep.txt").write_text("mine")
    proc = run(demo_command("--dir", str(demo_dir)))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line(proc.stderr, rf"^buildbot-stats: error: --dir {re.escape(str(demo_dir))} .*not empty")
    assert sorted(p.name for p in demo_dir.iterdir()) == ["keep.txt"]


def test_unreachable_influxdb(demo_dir: Path) -> None:
    port = free_port()  # nobody listens there: connections are refused
    proc = run(demo_command("--dir", str(demo_dir), "--influxdb", f"http://127.0.0.1:{port}/db"))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line(
        proc.stderr,
        rf"^buildbot-stats: error: cannot reach InfluxDB at http://127\.0\.0\.1:{port} \(.*refused",
    )
    assert not demo_dir.exists()


def test_missing_buildbot_worker(demo_dir: Path) -> None:
    # as if buildbot-worker were not installed: importing it fails in this process
    code = (
        "import sys; sys.modules['buildbot_worker'] = None; "
        "from buildbot_stats.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = run([sys.executable, "-c", code, "demo", "--dir", str(demo_dir)])
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line(
        proc.stderr, r"^buildbot-stats: error: the demo needs buildbot-worker, .*pip install buildbot-worker$"
    )
    assert not demo_dir.exists()


# --------------------------------------------------------------------------
# Ctrl-C and SIGTERM while builds run
# --------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_stops_everything(demo_dir: Path, signum: signal.Signals) -> None:
    proc = subprocess.Popen(
        demo_command("--builds", "30", "--dir", str(demo_dir)),
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # as a person's Ctrl-C, also when the suite runs as a background job
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stdout: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not any(PROGRESS.match(line.rstrip("\n")) for line in stdout):  # the master is up
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "".join(stdout)
            stdout.append(line)
        proc.send_signal(signum)
        sent = time.monotonic()
        returncode = proc.wait(timeout=30)
        took = time.monotonic() - sent
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    while (line := lines.get_nowait()) is not None:
        stdout.append(line)

    assert returncode == 128 + signum, "".join(stdout) + stderr
    assert took < 30
    assert_one_line(
        stderr,
        rf"^buildbot-stats: interrupted \({signum.name}\); stopped the demo master, "
        rf"files kept in {re.escape(str(demo_dir.resolve()))}$",
    )
    assert stdout[-1] == "interrupted: stopping the demo master ...\n"
    assert processes_in(demo_dir) == []
    # it was interrupted in the middle: the master ran, but not every build to its end
    assert "BuildMaster is running" in (demo_dir / "master" / "twistd.log").read_text()
    finished = [b for b in master_builds(demo_dir / "master") if b["results"] in (SUCCESS, FAILURE)]
    assert len(finished) < 30
