"""Spools written by older versions (schemas 2, 3 and 4, pickled points) are migrated to schema 5 (msgpack).

The files in tests/data were written by the old code itself (tests/data/make_old_spools.py).
"""

from __future__ import annotations

import os
import pickle
import shutil
import sqlite3
from pathlib import Path

import pytest
from twisted.internet import defer

from buildbot_stats.cli.spool_info import read_spool_info
from buildbot_stats.delivery import spool as spool_file
from buildbot_stats.delivery.spool import COLUMNS, SQLiteSpool
from buildbot_stats.point import Point
from tests.unit.test_spool import SpoolCase

DATA = Path(__file__).parent.parent / "data"
T0 = 10**18

#: the points make_old_spools.py wrote, as the spool gives them back (plain values)
EXPECTED = [Point("builder1-m", {"i": i, "f": i / 4}, {"t": "x"}, T0 + i) for i in range(5)] + [
    Point(
        "builder1-m",
        {
            "nan": float("nan"),
            "inf": float("inf"),
            "ninf": float("-inf"),
            "big": 2**70,
            "neg": -(2**65),
            "b": "\ufffd",  # the bytes b"\xff", decoded as to_plain does
            "d": {"k": [1, 2]},
            "s": "\u00e9\nx",
            "n": None,
            "t": True,
            "i": 5,
        },
        {"t": "y", "u": "\u00fc"},
        T0 + 5,
    )
]


def old_spool(directory: Path, schema: int) -> str:
    path = str(directory / "spool.sqlite")
    shutil.copyfile(DATA / f"spool-schema-{schema}.sqlite", path)
    return path


def rows(path: str, sql: str) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


class MigratedMasterTests(SpoolCase):
    """A master started on an old spool delivers exactly the points it holds, and the file is schema 5."""

    @defer.inlineCallbacks
    def check(self, schema):
        path = old_spool(Path(self.dir), schema)
        before = read_spool_info(path)  # shown as it is, not migrated
        self.assertEqual((before["schema"], [b["points"] for b in before["backends"]][:1]), (schema, [6]))
        self.assertEqual(rows(path, "PRAGMA user_version"), [(schema,)])
        up = self.recorder()
        yield self.replace_service(up, spool_path=path)
        self.assertLogged(f"the spool .*spool.sqlite was migrated from schema {schema} to 5 \\(2 segment")
        self.assertEqual(repr(up.points), repr(EXPECTED))  # repr: NaN is not equal to itself
        self.assertEqual(rows(path, "PRAGMA user_version"), [(5,)])
        self.assertEqual(
            rows(path, "SELECT COUNT(*) FROM buildbot_stats_segments WHERE queue_key LIKE '%/influx'"), [(0,)]
        )
        yield self.stats.disownServiceParent()
        again = self.recorder()
        yield self.replace_service(again, spool_path=path)
        self.assertEqual(again.points, [])

    def test_schema_2(self):
        return self.check(2)

    def test_schema_3(self):
        return self.check(3)

    def test_schema_4(self):
        return self.check(4)


@pytest.mark.parametrize("schema", [2, 3, 4])
def test_migrated_file_holds_msgpack_columns_with_their_times(tmp_path: Path, schema: int) -> None:
    path = old_spool(tmp_path, schema)
    spool = SQLiteSpool(path)
    spool.thd_open()
    try:
        assert f"migrated from schema {schema} to 5" in " ".join(spool.notices)
        batch, state = spool.thd_take("StatsService/influx", 100)
        assert (state.pending, state.quarantined) == (6, 0)
        assert (len(batch.ids), batch.n, batch.encoding) == (2, 6, COLUMNS)
        assert repr(batch.payload) == repr(EXPECTED)
        if schema == 4:  # a backend's own encoding is kept byte for byte
            lines, _ = spool.thd_take("StatsService/lp", 100)
            assert (lines.encoding, lines.payload) == ("influx-lp/ns", b"m i=0i %d\nm i=1i %d" % (T0, T0 + 1))
    finally:
        spool.thd_close()
    assert rows(
        path,
        "SELECT encoding, first_ns, last_ns FROM buildbot_stats_segments WHERE queue_key LIKE '%/influx'",
    ) == [(COLUMNS, T0, T0 + 2), (COLUMNS, T0 + 3, T0 + 5)]
    assert not any(b"columns-1" in data for (data,) in rows(path, "SELECT data FROM buildbot_stats_segments"))


def replace_second_segment(path: str, data: bytes) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE buildbot_stats_segments SET data = ? WHERE id = 2", (data,))
    db.commit()
    db.close()


class _Call:
    """Pickles as a call of ``os.system``: a pickle that would run a command when loaded."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def shared_list_bomb(depth: int) -> list:
    """A small pickle whose lists, expanded, hold 2**depth items."""
    value: list = []
    for _ in range(depth):
        value = [value, value]
    return value


@pytest.mark.parametrize(
    "payload, error",
    [
        ("code", "UnpicklingError: the spool holds plain values only, not posix.system"),
        ("bomb", "more than 1,000 objects"),
        ("small bomb", "objects"),  # the real bounds: 190 bytes may not expand to 4 M objects
        ("large", "bytes (more than 1,000)"),
        ("garbage", "UnpicklingError"),
    ],
)
def test_pickled_segment_beyond_the_bounds_is_set_aside_unread(tmp_path, monkeypatch, payload, error):
    path = old_spool(tmp_path, 4)
    marker = tmp_path / "ran"
    data = {
        "code": pickle.dumps(("columns-1", ["s"], [{"v": _Call(f"touch {marker}")}], [{}], [1])),
        "bomb": pickle.dumps(("columns-1", ["s"], [{"v": shared_list_bomb(40)}], [{}], [1])),
        "large": pickle.dumps(("columns-1", ["s"], [{"v": "x" * 2000}], [{}], [1])),
        "garbage": b"\x80\x05garbage",
        "small bomb": pickle.dumps(("columns-1", ["s"], [{"v": shared_list_bomb(22)}], [{}], [1])),
    }[payload]
    assert len(data) < 2000 or payload == "large"
    if payload != "small bomb":
        monkeypatch.setattr(spool_file, "LEGACY_MAX_BYTES", 1000)
        monkeypatch.setattr(spool_file, "LEGACY_MAX_OBJECTS", 1000)
    replace_second_segment(path, data)
    spool = SQLiteSpool(path)
    spool.thd_open()
    try:
        assert "migrated from schema 4 to 5 (1 segment(s) converted, 1 unreadable moved" in spool.notices[0]
        batch, state = spool.thd_take("StatsService/influx", 100)
        assert batch.ids == [1] and state.pending == 3
    finally:
        spool.thd_close()
    assert not marker.exists()
    [(key, sid, encoding, kept, why)] = rows(path, "SELECT * FROM buildbot_stats_unreadable")
    assert (key, sid, encoding, kept) == ("StatsService/influx", 2, "columns-1", data)
    assert error in why
