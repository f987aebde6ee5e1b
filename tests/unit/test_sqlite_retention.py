"""SQLiteStorageService's ``retention``: old points of matching series are pruned as it writes."""

from __future__ import annotations

import sqlite3
import time

import pytest
from buildbot.config.errors import capture_config_errors

from buildbot_stats.point import Point
from buildbot_stats.storage_backends import sqlite as sqlite_backend
from buildbot_stats.storage_backends.sqlite import SQLiteStorageService

DAY_NS = 86400 * 10**9


def stored(path) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT series, time_ns FROM points"))


def write(store, *points):
    store.thd_postStatsValues(list(points))


def test_default_keeps_live_points_30_days_and_everything_else_for_ever(tmp_path):
    path = tmp_path / "stats.sqlite"
    store = SQLiteStorageService(str(path), [])
    now = time.time_ns()
    old, recent = now - 31 * DAY_NS, now - 29 * DAY_NS
    write(
        store,
        Point("buildbot-live", {"workers_connected": 1}, {}, old),
        Point("buildbot-live", {"workers_connected": 2}, {}, recent),
        Point("b-build-times", {"duration": 3}, {"builder_name": "b"}, now - 3650 * DAY_NS),
    )
    assert stored(path) == [
        ("b-build-times", now - 3650 * DAY_NS),
        ("buildbot-live", recent),
    ]
    store.close()


def test_patterns_and_ages(tmp_path):
    path = tmp_path / "stats.sqlite"
    store = SQLiteStorageService(str(path), [], retention={"*-build-times": "2d", "buildbot-live": 3600})
    now = time.time_ns()
    write(
        store,
        Point("b1-build-times", {"duration": 1}, {}, now - 3 * DAY_NS),
        Point("b1-build-times", {"duration": 1}, {}, now - DAY_NS),
        Point("buildbot-live", {"workers_busy": 0}, {}, now - 2 * 3600 * 10**9),
        Point("b1-steps", {"duration": 1}, {}, now - 365 * DAY_NS),
    )
    assert stored(path) == [("b1-build-times", now - DAY_NS), ("b1-steps", now - 365 * DAY_NS)]
    store.close()


def test_empty_retention_keeps_everything(tmp_path):
    path = tmp_path / "stats.sqlite"
    store = SQLiteStorageService(str(path), [], retention={})
    write(store, Point("buildbot-live", {"workers_busy": 0}, {}, time.time_ns() - 400 * DAY_NS))
    assert len(stored(path)) == 1
    store.close()


def test_a_big_backlog_is_pruned_a_bounded_chunk_per_write(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_backend, "PRUNE_ROWS", 100)
    path = tmp_path / "stats.sqlite"
    store = SQLiteStorageService(str(path), [], retention={"buildbot-live": "1d"})
    old = time.time_ns() - 10 * DAY_NS
    write(store, *[Point("x", {"v": i}, {}, old + i) for i in range(250)])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE points SET series = 'buildbot-live'")
    for left in (150, 50, 0):
        write(store, Point("y", {"v": 1}, {}, time.time_ns()))
        assert sum(1 for series, _ in stored(path) if series == "buildbot-live") == left
    store.close()


@pytest.mark.parametrize(
    "retention",
    [
        {"buildbot-live": "30 days"},
        {"buildbot-live": -1},
        {"buildbot-live": 0},
        {"": "1d"},
        {"x": None},
        {"x": float("nan")},
        {"x": float("inf")},
        {3: "1d"},
        ["buildbot-live", "30d"],
        "30d",
    ],
)
def test_bad_retention_is_a_config_error(retention):
    with capture_config_errors() as errors:
        SQLiteStorageService("stats.sqlite", [], retention=retention)
    assert [e for e in errors.errors if "retention must map series patterns" in e], errors.errors
