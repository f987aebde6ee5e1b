"""``buildbot-stats summary``: the figures, checked against values computed by hand.

The stores are written by the real ``SQLiteStorageService``; the expected
figures are worked out in ``tests/summary_data.py``.
"""

from __future__ import annotations

import json
import re
import sqlite3

from buildbot_stats.cli.report_html import render_html
from buildbot_stats.cli.summary import (
    format_table,
    nearest_rank,
    summarize_path,
    summarize_points,
)
from buildbot_stats.point import Point
from buildbot_stats.storage_backends.sqlite import SQLiteStorageService
from tests.summary_data import (
    BUILDER_ROWS,
    FULL_BUILDER_HEADERS,
    FULL_BUILDER_ROWS,
    FULL_TOTAL_POINTS,
    LINUX_QUEUE,
    SERIES_ROWS,
    STEP_ROWS_ALL,
    STEPS,
    TEST_ROWS,
    TOTAL_POINTS,
    make_points,
    run_cli,
    table_section,
)

# -- a store as before issue 9: the output it always had ------------------------


def test_nearest_rank():
    assert nearest_rank([], 50) is None
    assert nearest_rank([7.0], 95) == 7.0
    assert nearest_rank([1.0, 2.0], 50) == 1.0
    values = [float(v) for v in range(1, 21)]
    assert nearest_rank(values, 50) == 10.0
    assert nearest_rank(values, 95) == 19.0  # not the interpolated 19.05
    assert nearest_rank(values, 100) == 20.0


def test_table_figures_match_hand_computation(store, capsys):
    code, out, err = run_cli(capsys, "summary", store)
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"Store: {store} ({TOTAL_POINTS} points)"
    header, rows = table_section(out, "Builders")
    expected = [
        "builder",
        "builds",
        "unsuccessful",
        "success",
        "dur p50 (s)",
        "dur p95 (s)",
        "dur max (s)",
        "last build",
    ]
    assert header == expected
    assert rows == BUILDER_ROWS
    header, rows = table_section(out, "Data series")
    assert header == ["series", "points", "field", "n", "min", "mean", "max"]
    assert rows == SERIES_ROWS


def test_table_columns_are_aligned(store, capsys):
    _, out, _ = run_cli(capsys, "summary", store)
    lines = out.splitlines()
    start = lines.index("Builders")
    block = lines[start + 1 : start + 3 + len(BUILDER_ROWS)]
    # right-aligned numeric columns end at the same offsets as their dashes
    ends = [m.end() for m in re.finditer(r"-+", block[1])]
    for line in block[2:]:
        for end in ends[1:]:
            assert line[end - 1] != " ", (line, end)


def test_json_matches_hand_computation_and_table(store, capsys):
    code, out, err = run_cli(capsys, "summary", store, "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["store"] == store
    assert doc["points"] == TOTAL_POINTS
    builders = {b["builder"]: b for b in doc["builders"]}
    assert list(builders) == ["arm", "big", "linux", "mac", "win&<x>"]
    assert builders["linux"] == {
        "builder": "linux",
        "builds": 5,
        "results_known": 5,
        "successes": 3,
        "success_rate": 0.6,
        "durations": 5,
        "duration_p50": 30.0,
        "duration_p95": 50.0,
        "duration_max": 50.0,
        "last_build": "2024-05-01T15:00:00Z",
    }
    assert builders["big"]["success_rate"] == 16 / 21
    assert (builders["big"]["durations"], builders["big"]["builds"]) == (20, 21)
    assert (builders["big"]["duration_p50"], builders["big"]["duration_p95"]) == (10.0, 19.0)
    assert builders["arm"]["success_rate"] is None and builders["arm"]["results_known"] == 0
    assert builders["mac"]["duration_p50"] is None and builders["mac"]["success_rate"] == 0.0
    series = {s["series"]: s for s in doc["series"]}
    assert list(series) == ["linux-coverage", "linux-tests", "mac-notes", "win&<x>-size"]  # no linux-branch
    assert series["linux-coverage"] == {
        "series": "linux-coverage",
        "count": 3,
        "fields": {"percent": {"count": 2, "min": 80.5, "mean": 80.875, "max": 81.25}},
    }
    assert series["linux-tests"]["fields"] == {
        "failed": {"count": 5, "min": 0, "mean": 0.6, "max": 2},
        "passed": {"count": 5, "min": 10, "mean": 14.0, "max": 18},
    }
    assert series["mac-notes"] == {"series": "mac-notes", "count": 1, "fields": {}}

    # the JSON says what the table says
    _, table, _ = run_cli(capsys, "summary", store)
    _, builder_rows = table_section(table, "Builders")
    _, series_rows = table_section(table, "Data series")

    def num(value):
        return "-" if value is None else f"{value:g}"

    for row, b in zip(builder_rows, doc["builders"]):
        rate = "-" if b["success_rate"] is None else f"{b['success_rate'] * 100:.1f}%"
        unsuccessful = str(b["results_known"] - b["successes"]) if b["results_known"] else "-"
        expected = [b["builder"], str(b["builds"]), unsuccessful, rate]
        expected += [num(b["duration_p50"]), num(b["duration_p95"]), num(b["duration_max"]), b["last_build"]]
        assert row == expected
    json_rows = []
    for s in doc["series"]:
        if not s["fields"]:
            json_rows.append([s["series"], str(s["count"]), "-", "0", "-", "-", "-"])
        for name, f in s["fields"].items():
            values = [num(round(f[k], 3)) for k in ("min", "mean", "max")]
            json_rows.append([s["series"], str(s["count"]), name, str(f["count"]), *values])
    assert series_rows == json_rows


def test_empty_store(tmp_path, capsys):
    path = str(tmp_path / "empty.sqlite")
    backend = SQLiteStorageService(path, [])
    backend.thd_postStatsValues([Point("x-prop", {"name": "x", "value": 1}, {}, 1)])
    backend.close()
    code, out, _ = run_cli(capsys, "summary", path)
    assert code == 0
    assert "(no build data)" in out and "(no data series)" in out
    code, out, _ = run_cli(capsys, "summary", path, "--json")
    assert json.loads(out) == {"store": path, "points": 1, "builders": [], "series": []}
    page = render_html(summarize_points([]))
    assert "No build data." in page and "<svg" not in page


def test_store_without_new_series_has_no_new_tables_or_keys(store, capsys):
    _, out, _ = run_cli(capsys, "summary", store)
    assert [line for line in out.splitlines() if line and not line[0].isspace() and "  " not in line] == [
        f"Store: {store} ({TOTAL_POINTS} points)",
        "Builders",
        "Data series",
    ]
    doc = json.loads(run_cli(capsys, "summary", store, "--json")[1])
    assert set(doc) == {"store", "points", "builders", "series"}
    assert "queue_p50" not in doc["builders"][0]


def test_summarize_points_matches_the_store(store):
    from_store = summarize_path(store)
    from_points = summarize_points(make_points(), path=store)
    assert format_table(from_points) == format_table(from_store)
    assert from_points.durations == from_store.durations


# -- issue 9: queue time, steps, tests ---------------------------------------------


def test_full_table_matches_hand_computation(full_store, capsys):
    code, out, err = run_cli(capsys, "summary", full_store)
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"Store: {full_store} ({FULL_TOTAL_POINTS} points)"
    header, rows = table_section(out, "Builders")
    assert header == FULL_BUILDER_HEADERS
    assert rows == FULL_BUILDER_ROWS
    header, rows = table_section(out, f"Slowest steps (by p95; 10 of {len(STEPS) + 1})")
    assert header == ["builder", "step", "steps", "dur p50 (s)", "dur p95 (s)", "dur max (s)"]
    assert rows == STEP_ROWS_ALL[:10]
    header, rows = table_section(out, "Tests")
    assert header == ["builder", "result sets", "tests", "passed", "failed", "pass rate"]
    assert rows == TEST_ROWS
    # the step and test series are not repeated as data series
    assert table_section(out, "Data series")[1] == SERIES_ROWS


def test_steps_option(full_store, capsys):
    _, out, _ = run_cli(capsys, "summary", full_store, "--steps", "0")
    assert (
        table_section(out, f"Slowest steps (by p95; {len(STEPS) + 1} of {len(STEPS) + 1})")[1]
        == STEP_ROWS_ALL
    )
    _, out, _ = run_cli(capsys, "summary", full_store, "--steps", "3")
    assert table_section(out, f"Slowest steps (by p95; 3 of {len(STEPS) + 1})")[1] == STEP_ROWS_ALL[:3]
    code, _, err = run_cli(capsys, "summary", full_store, "--steps", "-1")
    assert code == 2 and "argument --steps: must be 0 or more, not -1" in err


def test_full_json_matches_hand_computation(full_store, capsys):
    code, out, err = run_cli(capsys, "summary", full_store, "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["points"] == FULL_TOTAL_POINTS
    builders = {b["builder"]: b for b in doc["builders"]}
    assert builders["linux"] == {
        "builder": "linux",
        "builds": 5,
        "results_known": 5,
        "successes": 3,  # the results re-sent with a worker tag are the same builds
        "success_rate": 0.6,
        "durations": 5,
        "duration_p50": 30.0,
        "duration_p95": 50.0,
        "duration_max": 50.0,
        "last_build": "2024-05-01T15:00:00Z",
        "queue_times": 5,
        "queue_p50": 5.0,
        "queue_p95": 9.0,
    }
    assert sorted(LINUX_QUEUE)[2] == 5 and sorted(LINUX_QUEUE)[4] == 9  # ranks ceil(2.5), ceil(4.75)
    assert (builders["win&<x>"]["queue_p50"], builders["win&<x>"]["queue_p95"]) == (30.0, 60.0)
    assert (builders["arm"]["queue_times"], builders["arm"]["queue_p50"]) == (0, None)
    steps = [(s["builder"], s["step"]) for s in doc["steps"]]
    assert steps == [(r[0], r[1]) for r in STEP_ROWS_ALL]
    by_name = {(s["builder"], s["step"]): s for s in doc["steps"]}
    assert by_name[("linux", "test")] == {
        "builder": "linux",
        "step": "test",
        "count": 5,
        "durations": 5,
        "duration_p50": 25,
        "duration_p95": 100,
        "duration_max": 100,
    }
    assert by_name[("big", "s")]["duration_p95"] == 19.0
    assert by_name[("mac", "pending")] == {
        "builder": "mac",
        "step": "pending",
        "count": 1,
        "durations": 0,
        "duration_p50": None,
        "duration_p95": None,
        "duration_max": None,
    }
    for (builder, step), durations in STEPS.items():
        values = sorted(durations)
        got = by_name[(builder, step)]
        assert got["duration_p50"] == nearest_rank(values, 50) == values[max(1, -(-len(values) // 2)) - 1]
        assert got["duration_max"] == values[-1]
    tests = {t["builder"]: t for t in doc["tests"]}
    assert tests["linux"] == {
        "builder": "linux",
        "result_sets": 5,
        "tests_total": 62,
        "tests_passed": 47,
        "tests_failed": 3,
        "pass_rate": 47 / 50,
    }
    assert tests["win&<x>"]["pass_rate"] == 0.0 and tests["mac"]["pass_rate"] is None


def test_duration_samples_carry_the_build_result(full_store):
    summary = summarize_path(full_store)
    assert [s.results for s in summary.durations["linux"]] == [0, 0, 2, 0, 1]
    assert [s.results for s in summary.durations["arm"]] == [None]
    assert summarize_path(full_store, charts=False).durations == {}


def test_step_percentiles_of_many_points(tmp_path):
    # 1000 step points of one step in random order: the window-function percentiles equal the
    # nearest-rank values of the sorted list
    import random

    rnd = random.Random(7)
    durations = [round(rnd.uniform(0, 100), 3) for _ in range(1000)]
    points = [
        Point(
            "b-step-times",
            {"duration": d, "result": 0},
            {"builder_name": "b", "step_name": "x", "n": i},
            i + 1,
        )
        for i, d in enumerate(durations)
    ]
    [step] = summarize_points(points).steps
    values = sorted(durations)
    assert (step.count, step.durations) == (1000, 1000)
    assert (step.duration_p50, step.duration_p95, step.duration_max) == (values[499], values[949], values[-1])


def test_html_page_of_the_full_store(full_store):
    page = render_html(summarize_path(full_store))
    assert page.count('class="queue-bar"') == 4
    assert page.count('class="step-p95"') == 10 and page.count('class="tests-bar"') == 2
    assert re.search(r'data-result="failure"', page)


def test_store_without_the_series_index_gives_the_same_figures(full_store, tmp_path):
    # a store copied without its indexes (e.g. by a hand-written export): the summary does not
    # rely on the index, it only reads faster with it
    copy = str(tmp_path / "copy.sqlite")
    db = sqlite3.connect(copy)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("CREATE TABLE points (id INTEGER PRIMARY KEY, series, time_ns, tags, fields)")
    db.execute("ATTACH DATABASE ? AS original", (full_store,))
    db.execute("INSERT INTO meta SELECT * FROM original.meta")
    db.execute("INSERT INTO points SELECT id, series, time_ns, tags, fields FROM original.points")
    db.commit()
    db.close()
    with_index, without = summarize_path(full_store), summarize_path(copy)
    without.path = with_index.path
    assert format_table(without, steps=0) == format_table(with_index, steps=0)
    assert without.durations == with_index.durations
