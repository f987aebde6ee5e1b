"""The spool file: its interface, and a spool of the previous schema read and migrated."""

from __future__ import annotations

import sqlite3

from buildbot_stats.point import Point
from buildbot_stats.spool import MemorySpool, Spool, SQLiteSpool, dump_points

SCHEMA_2 = """
CREATE TABLE buildbot_stats_segments (
    backend TEXT NOT NULL, id INTEGER NOT NULL, last_id INTEGER NOT NULL,
    ids TEXT NOT NULL, points BLOB NOT NULL, PRIMARY KEY (backend, id));
CREATE TABLE buildbot_stats_unreadable (
    backend TEXT NOT NULL, id INTEGER NOT NULL, ids TEXT NOT NULL, points BLOB NOT NULL, error TEXT NOT NULL);
CREATE VIEW buildbot_stats_spool (id, backend) AS
    SELECT j.value, s.backend FROM buildbot_stats_segments AS s, json_each(s.ids) AS j;
PRAGMA user_version = 2;
"""


def points(n: int, first: int = 0) -> list[Point]:
    return [Point("b-data", {"v": i}, {"builder_name": "b"}, 10**18 + i) for i in range(first, first + n)]


def test_both_spools_implement_the_interface():
    for spool in (MemorySpool(), SQLiteSpool(":memory:")):
        assert isinstance(spool, Spool)
        assert isinstance(spool.durable, bool)
    assert not isinstance(object(), Spool)


def test_schema_2_spool_is_migrated_with_its_points(tmp_path):
    path = str(tmp_path / "stats-spool.sqlite")
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_2)
    db.execute(
        "INSERT INTO buildbot_stats_segments VALUES (?,?,?,?,?)",
        ("StatsService/influx", 1, 3, "[1,2,3]", dump_points(points(3))),
    )
    db.execute(
        "INSERT INTO buildbot_stats_segments VALUES (?,?,?,?,?)",
        ("StatsService/other", 4, 4, "[4]", dump_points(points(1, 3))),
    )
    db.commit()
    db.close()

    spool = SQLiteSpool(path)
    spool.thd_open()
    try:
        assert spool.set_aside is None  # migrated, not set aside
        assert spool.thd_last_id() == 4
        assert spool.thd_pending_counts() == {"StatsService/influx": 3, "StatsService/other": 1}
        segments, unreadable = spool.thd_read_pending("StatsService/influx")
        assert unreadable == 0
        assert segments == [(1, [1, 2, 3], points(3))]
        spool.thd_release("StatsService/influx", [1])
        assert spool.thd_pending_counts() == {"StatsService/other": 1}
    finally:
        spool.thd_close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    assert db.execute(
        "SELECT queue_key, COUNT(*) FROM buildbot_stats_spool GROUP BY queue_key"
    ).fetchall() == [("StatsService/other", 1)]
    db.close()


def test_segments_round_trip_and_release(tmp_path):
    spool = SQLiteSpool(str(tmp_path / "s.sqlite"))
    spool.thd_open()
    try:
        spool.thd_append("svc/a", [(1, [1, 2], points(2)), (3, [3], points(1, 2))])
        spool.thd_append("svc/b", [(4, [4], points(1, 3))])
        assert spool.thd_read_pending("svc/a") == ([(1, [1, 2], points(2)), (3, [3], points(1, 2))], 0)
        spool.thd_release("svc/a", [1, 3])
        assert spool.thd_read_pending("svc/a") == ([], 0)
        assert spool.thd_pending_counts() == {"svc/b": 1}
    finally:
        spool.thd_close()
