"""The shipped Grafana dashboard, query by query, against a real influxd holding demo-like points.

Every panel query runs with ``$timeFilter``, ``$__interval``, ``$builder`` and
``$data`` substituted as Grafana does it for an InfluxDB data source
(multi-value variables in a regex become ``(a|b)`` of regex-escaped values),
and returns what ``buildbot-stats summary`` computes from the same points
(written through the real backends into influxd and an SQLite store), or, for
what the summary does not cover (queue time, steps, tests), what the points
themselves say.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from buildbot_stats.cli import main
from buildbot_stats.cli.dashboard import load_dashboard, panel_targets
from buildbot_stats.cli.summary import Summary, nearest_rank, summarize_path, summarize_points
from buildbot_stats.point import Point
from buildbot_stats.storage_backends.influxdb_client import InfluxStorageService
from buildbot_stats.storage_backends.sqlite import SQLiteStorageService
from tests.support.influxd import InfluxServer, fresh_database, require_influxd, shared_server

HOUR = 3600
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
INTERVAL = "1h"  # what Grafana computes for a few days on a wide panel, rounded
BUILDERS = {"linux-x86_64": 22, "docs.site": 9, "win": 6}  # builds each; summary's p95 rule holds for these
STEPS = ("checkout", "compile", "test")
OWN_PANELS = ("-step-times", "-test-results")  # series the summary lists as data, the dashboard apart


def assert_close(got: dict[Any, tuple[float, ...]], expected: dict[Any, tuple[float, ...]]) -> None:
    """Dicts of tuples equal within float rounding (pytest.approx takes no tuples in dicts)."""
    assert got.keys() == expected.keys()
    for key, values in expected.items():
        assert got[key] == pytest.approx(values), key


def demo_points() -> list[Point]:
    """What the captures write for a few days of builds, as the demo's builders would."""
    points: list[Point] = []
    for b_index, (builder, count) in enumerate(BUILDERS.items()):
        for n in range(1, count + 1):
            start = T0 + n * 2 * HOUR + b_index * 17 * 60 + (n % 3) * 1300
            duration = float(30 + (n * 37 + b_index * 11) % 200)
            end = start + int(duration)
            result = [0, 0, 2, 0, 1, 0, 4, 0, 3, 0, 5, 0, 6][(n + b_index) % 13]
            tags = {"builder_name": builder, "build_number": str(n)}
            t = end * 10**9
            points.append(
                Point(f"{builder}-build-times", {"duration": duration, "end-time": str(end)}, tags, t)
            )
            points.append(Point(f"{builder}-build-times", {"queue-time": float((n * 7) % 40)}, tags, t))
            names = ["success", "warnings", "failure", "skipped", "exception", "retry", "cancelled"]
            points.append(
                Point(f"{builder}-build-results", {"results": result, "result": names[result]}, tags, t)
            )
            points.append(
                Point(f"{builder}-workername", {"name": "workername", "value": f"w{n % 2}"}, tags, t)
            )
            step_end = start
            for number, step in enumerate(STEPS):
                step_duration = float((n + number * 5 + b_index) % 11 * (number + 1))
                step_end += int(step_duration) + 1
                step_tags = {**tags, "step_name": step, "step_number": str(number), "worker": f"w{n % 2}"}
                points.append(
                    Point(
                        f"{builder}-step-times",
                        {"duration": step_duration, "result": result if step == "test" else 0},
                        step_tags,
                        step_end * 10**9,
                    )
                )
            passed, failed = 20 + n, (n + b_index) % 3
            points.append(
                Point(
                    f"{builder}-test-results",
                    {"tests_passed": passed, "tests_failed": failed, "tests_total": passed + failed},
                    {**tags, "step_name": "test", "description": "unit", "category": "pass_fail"},
                    step_end * 10**9,
                )
            )
            for i in range(3):
                points.append(
                    Point(
                        f"{builder}-timings",
                        {"seconds": n / 4 + i, "test": f"t{i}"},
                        tags,
                        (start + 10 + i) * 10**9,
                    )
                )
    return points


@pytest.fixture(scope="module")
def stored(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[InfluxServer, str, Summary, list[Point]]]:
    """The demo points written by the real backends into influxd and an SQLite store; the store's summary."""
    require_influxd()
    server = shared_server()
    db = fresh_database(server, "dashboard")
    points = demo_points()
    influx = InfluxStorageService("127.0.0.1", server.port, "user", "pw", db, [])
    report = influx.thd_postStatsValues(points)
    assert report.problems == [] and report.rejected_points == 0
    path = tmp_path_factory.mktemp("dashboard") / "stats.sqlite"
    store = SQLiteStorageService(str(path), [])
    store.thd_postStatsValues(points)
    store.close()
    yield server, db, summarize_path(str(path)), points
    server.drop_database(db)


# -- Grafana's substitutions -------------------------------------------------------


def regex_escape(value: str) -> str:
    """Grafana's escapeRegex (@grafana/data), used for multi-value variables in InfluxDB queries."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(0), value)


def multi_value(values: list[str]) -> str:
    escaped = [regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(query: str, variables: dict[str, list[str]], start_s: int, end_s: int) -> str:
    text = query.replace("$timeFilter", f"time >= {start_s * 1000}ms and time <= {end_s * 1000}ms")
    text = text.replace("$__interval", INTERVAL)
    for name in sorted(variables, key=len, reverse=True):
        text = text.replace(f"${name}", multi_value(variables[name]))
    assert "$" not in text.replace("$/", "/").replace("$)", ")"), text
    return text


def variable_options(
    server: InfluxServer, db: str, variable: dict[str, Any], known: dict[str, list[str]]
) -> list[str]:
    """A query variable's options: its query run (with the variables before it), its regex's first group."""
    query = variable["query"]
    for name, values in known.items():
        query = query.replace(f"${name}", multi_value(values))
    pattern = re.compile(variable["regex"].strip("/"))
    found = []
    for result in server.query_checked(query, db):
        for series in result.get("series", []):
            for (name,) in series["values"]:
                m = pattern.search(name)
                if m:
                    found.append(next(g for g in m.groups() if g is not None))
    return sorted(found)


def rows(server: InfluxServer, db: str, query: str) -> list[dict[str, Any]]:
    """Every row of every series, with the series' name and tags in it."""
    out = []
    for result in server.query_checked(query, db):
        for series in result.get("series", []):
            for values in series["values"]:
                row = dict(zip(series["columns"], values))
                row.update(series.get("tags", {}))
                row["_name"] = series["name"]
                out.append(row)
    return out


@pytest.fixture(scope="module")
def dashboard_run(stored: Any) -> dict[str, Any]:
    """Each panel's queries, substituted and run: {title: {refId: rows}}; and the variables."""
    server, db, summary, points = stored
    dashboard = load_dashboard()
    variables: dict[str, list[str]] = {}
    for variable in dashboard["templating"]["list"]:
        variables[variable["name"]] = variable_options(server, db, variable, variables)  # "All" selected
    start = min(p.time_ns for p in points) // 10**9 - HOUR
    end = max(p.time_ns for p in points) // 10**9 + HOUR
    panels: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(dict)
    for title, ref, query in panel_targets(dashboard):
        panels[title][ref] = rows(server, db, substitute(query, variables, start, end))
    return {"variables": variables, "panels": panels}


def buckets(points: list[Point], seconds: int) -> dict[int, list[Point]]:
    """Points by GROUP BY time(seconds) bucket (aligned on the epoch, in ns)."""
    out: dict[int, list[Point]] = defaultdict(list)
    step = seconds * 10**9
    for p in points:
        out[p.time_ns - p.time_ns % step].append(p)
    return out


def of_suffix(points: list[Point], suffix: str) -> list[Point]:
    return [p for p in points if p.series.endswith(suffix)]


# -- the checks ------------------------------------------------------------------


def test_dashboard_is_importable_json_with_every_panel_asked_for() -> None:
    dashboard = load_dashboard()
    assert dashboard["__inputs"][0]["pluginId"] == "influxdb"
    titles = [p["title"] for p in dashboard["panels"]]
    assert titles == [
        "Build duration p50 / p95",
        "Success rate",
        "Builds per day by result",
        "Queue time",
        "Builders",
        "Slowest steps",
        "Tests passed / failed",
        "Posted data (mean per interval)",
        "Posted data",
    ]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    builder = dashboard["templating"]["list"][0]
    assert (builder["name"], builder["query"]) == (
        "builder",
        "SHOW MEASUREMENTS WITH MEASUREMENT =~ /-build-times$/",
    )
    # bound to a data source: no input left to ask for
    bound = load_dashboard("my-influx")
    assert "__inputs" not in bound and "${DS_INFLUXDB}" not in json.dumps(bound)
    assert {p["datasource"]["uid"] for p in bound["panels"]} == {"my-influx"}


def test_dashboard_command_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--datasource-uid", "abc"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == load_dashboard("abc")
    assert main(["dashboard"]) == 0
    assert json.loads(capsys.readouterr().out) == load_dashboard()


def test_variables_list_the_builders_and_data_series_of_the_summary(stored: Any, dashboard_run: Any) -> None:
    _, _, summary, points = stored
    variables = dashboard_run["variables"]
    assert variables["builder"] == sorted(b.builder for b in summary.builders) == sorted(BUILDERS)
    # data series: the summary's except those with panels of their own, plus property series
    # (the summary tells those by their fields, a variable cannot)
    assert set(variables["data"]) == {
        s.series for s in summary.series if not s.series.endswith(OWN_PANELS)
    } | {f"{b}-workername" for b in BUILDERS}


def test_builders_table_equals_summary(stored: Any, dashboard_run: Any) -> None:
    _, _, summary, _ = stored
    durations = {r["builder_name"]: r for r in dashboard_run["panels"]["Builders"]["A"]}
    results = {r["builder_name"]: r for r in dashboard_run["panels"]["Builders"]["B"]}
    for b in summary.builders:
        row = durations[b.builder]
        assert row["builds with duration"] == b.durations == BUILDERS[b.builder]
        assert (row["p50"], row["p95"], row["max"]) == (b.duration_p50, b.duration_p95, b.duration_max)
        row = results[b.builder]
        assert (row["builds with result"], row["successes"]) == (b.results_known, b.successes)
        assert row["success rate"] == pytest.approx(b.success_rate)


def test_duration_and_success_rate_over_time_equal_summary_per_interval(
    stored: Any, dashboard_run: Any
) -> None:
    _, _, _, points = stored
    panels = dashboard_run["panels"]
    durations = {(r["builder_name"], r["time"]): r for r in panels["Build duration p50 / p95"]["A"]}
    rates = {(r["builder_name"], r["time"]): r for r in panels["Success rate"]["A"]}
    expected_durations, expected_rates = {}, {}
    for start, pts in buckets(points, 3600).items():
        for b in summarize_points(pts).builders:
            if b.durations:
                expected_durations[(b.builder, start)] = (b.duration_p50, b.duration_p95)
            if b.results_known:
                expected_rates[(b.builder, start)] = b.success_rate
    assert len(expected_durations) == len(expected_rates) == sum(BUILDERS.values())
    assert {k: (r["p50"], r["p95"]) for k, r in durations.items()} == expected_durations
    assert {k: r["success rate"] for k, r in rates.items()} == pytest.approx(expected_rates)


def test_builds_per_day_by_result(stored: Any, dashboard_run: Any) -> None:
    _, _, _, points = stored
    got = {
        (r["builder_name"], r["time"], name): value
        for r in (row for ref in dashboard_run["panels"]["Builds per day by result"].values() for row in ref)
        for name, value in r.items()
        if name not in ("time", "builder_name", "_name")
    }
    expected: dict[tuple[str, int, str], int] = defaultdict(int)
    for start, pts in buckets(of_suffix(points, "-build-results"), 86400).items():
        for p in pts:
            expected[(p.tags["builder_name"], start, p.fields["result"])] += 1
    assert got == expected
    assert sum(got.values()) == sum(BUILDERS.values())


def test_queue_time_steps_and_tests(stored: Any, dashboard_run: Any) -> None:
    _, _, _, points = stored
    panels = dashboard_run["panels"]
    # queue time: mean and max per interval
    expected_q = {}
    for start, pts in buckets([p for p in points if "queue-time" in p.fields], 3600).items():
        by_builder: dict[str, list[float]] = defaultdict(list)
        for p in pts:
            by_builder[p.tags["builder_name"]].append(p.fields["queue-time"])
        for builder, values in by_builder.items():
            expected_q[(builder, start)] = (sum(values) / len(values), max(values))
    got_q = {(r["builder_name"], r["time"]): (r["mean"], r["max"]) for r in panels["Queue time"]["A"]}
    assert_close(got_q, expected_q)
    # slowest steps: per builder and step over the range
    steps: dict[tuple[str, str], list[float]] = defaultdict(list)
    for p in of_suffix(points, "-step-times"):
        steps[(p.tags["builder_name"], p.tags["step_name"])].append(p.fields["duration"])
    got_s = {
        (r["builder_name"], r["step_name"]): (r["max"], r["mean"], r["runs"])
        for r in panels["Slowest steps"]["A"]
    }
    assert_close(got_s, {k: (max(v), sum(v) / len(v), len(v)) for k, v in steps.items()})
    # tests passed / failed per interval
    expected_t: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for start, pts in buckets(of_suffix(points, "-test-results"), 3600).items():
        for p in pts:
            sums = expected_t[(p.tags["builder_name"], start)]
            sums[0] += p.fields["tests_passed"]
            sums[1] += p.fields["tests_failed"]
    got_t = {
        (r["builder_name"], r["time"]): [r["passed"], r["failed"]]
        for r in panels["Tests passed / failed"]["A"]
    }
    assert got_t == dict(expected_t)


def test_posted_data_equals_summary(stored: Any, dashboard_run: Any) -> None:
    _, _, summary, points = stored
    table = {r["_name"]: r for r in dashboard_run["panels"]["Posted data"]["A"]}
    for s in summary.series:
        if s.series.endswith(OWN_PANELS):
            continue
        row = table[s.series]
        for name, f in s.fields.items():
            assert row[f"count_{name}"] == f.count
            assert (row[f"min_{name}"], row[f"max_{name}"]) == (f.min, f.max)
            assert row[f"mean_{name}"] == pytest.approx(f.mean)
    # the step and test-result series have tables (and panels) of their own
    assert {s.series for s in summary.series} == {f"{b}-timings" for b in BUILDERS}
    # over time: the mean of each numeric field per interval
    got = {
        (r["_name"], r["time"]): r["mean_seconds"]
        for r in dashboard_run["panels"]["Posted data (mean per interval)"]["A"]
        if r.get("mean_seconds") is not None
    }
    expected = {}
    for start, pts in buckets(of_suffix(points, "-timings"), 3600).items():
        by_series: dict[str, list[float]] = defaultdict(list)
        for p in pts:
            by_series[p.series].append(p.fields["seconds"])
        for series, values in by_series.items():
            expected[(series, start)] = sum(values) / len(values)
    assert got == pytest.approx(expected)


def test_p95_of_influxdb_and_summary_differ_only_where_documented() -> None:
    """InfluxDB's percentile rounds the rank, the summary takes its ceiling (docs/dashboard.rst)."""

    def influx_rank(n: int, p: int) -> int:  # influxql: int(floor(n*p/100 + 0.5)) - 1, as an index
        return max(0, int(math.floor(n * p / 100 + 0.5)) - 1)

    values = list(range(1, 101))
    for n in range(1, 101):
        same = nearest_rank(values[:n], 95) == values[influx_rank(n, 95)]
        assert same == (n % 20 not in range(11, 20)), n
        assert nearest_rank(values[:n], 50) == values[influx_rank(n, 50)], n
    assert all(n % 20 not in range(11, 20) for n in BUILDERS.values())
