"""SQLiteStorageService and the read API, tested directly (no master needed)."""

from __future__ import annotations

import datetime
import decimal
import math
import sqlite3
import threading

import pytest
from buildbot.config.errors import ConfigErrors

from buildbot_stats.errors import RefusedWriteError
from buildbot_stats.point import Point, PointProblem
from buildbot_stats.storage_backends.base import IStatsStorage, WriteReport
from buildbot_stats.storage_backends.sqlite import SCHEMA_VERSION, SQLiteStorageService
from buildbot_stats.ui.store import StoreError, open_store

T0 = 1_714_557_600 * 10**9  # 2024-05-01T10:00:00Z
TAGS = {"builder_name": "b1", "build_number": "1"}


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "stats.sqlite")


@pytest.fixture
def backend(path):
    b = SQLiteStorageService(path, [])
    yield b
    b.close()


def read_all(path, **kw):
    with open_store(path) as store:
        return list(store.points(**kw))


def raw_rows(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT series, time_ns, tags, fields FROM points ORDER BY id").fetchall()
    finally:
        db.close()


def test_is_a_storage_backend(backend):
    assert IStatsStorage.providedBy(backend)
    assert backend.name == "SQLiteStorageService"
    assert SQLiteStorageService("x.sqlite", [], name="mine").name == "mine"


def test_batch_write_and_read_back(backend, path):
    points = [
        Point("b1-build-times", {"duration": 12.5}, TAGS, T0),
        Point("b1-build-results", {"results": 0, "result": "success"}, TAGS, T0),
        Point("b2-tests", {"passed": 10, "failed": 2}, {"builder_name": "b2", "build_number": "7"}, T0 + 1),
        Point("untagged", {"v": "text"}, {}, T0 + 2),
    ]
    report = backend.thd_postStatsValues(points)
    assert report == WriteReport()
    back = read_all(path)
    assert sorted(back, key=lambda p: p.series) == sorted(points, key=lambda p: p.series)
    with open_store(path) as store:
        assert store.count() == 4
        assert store.series() == ["b1-build-results", "b1-build-times", "b2-tests", "untagged"]
        assert [p.series for p in store.points(prefix="b1-")] == ["b1-build-results", "b1-build-times"]
        assert [p.series for p in store.points(suffix="-build-times")] == ["b1-build-times"]
        assert [p.series for p in store.points(prefix="b2", suffix="tests")] == ["b2-tests"]
        assert list(store.points(prefix="b1-", suffix="-tests")) == []
        assert store.meta == {"format": "buildbot_stats", "schema_version": str(SCHEMA_VERSION)}


def test_prefix_and_suffix_are_literal(backend, path):
    backend.thd_postStatsValues(
        [Point("a%_b-x", {"v": 1}, {}, T0), Point("aXYb-x", {"v": 2}, {}, T0), Point("x", {"v": 3}, {}, T0)]
    )
    assert [p.fields["v"] for p in read_all(path, prefix="a%_")] == [1]
    assert [p.fields["v"] for p in read_all(path, suffix="%_b-x")] == [1]
    assert [p.fields["v"] for p in read_all(path, suffix="b-x")] == [1, 2]
    assert [p.fields["v"] for p in read_all(path, suffix="longer-than-x")] == []


def test_fields_of_one_point_are_merged(backend, path):
    """start-time, end-time and duration of one build: three points, one row with three fields."""
    start, end = "2024-05-01T09:59:00+00:00", "2024-05-01T10:00:00+00:00"
    backend.thd_postStatsValues([Point("b1-build-times", {"start-time": start}, TAGS, T0)])
    backend.thd_postStatsValues(
        [
            Point("b1-build-times", {"end-time": end}, TAGS, T0),
            Point("b1-build-times", {"duration": 60.0}, TAGS, T0),
        ]
    )
    rows = raw_rows(path)
    assert len(rows) == 1
    assert read_all(path) == [
        Point("b1-build-times", {"start-time": start, "end-time": end, "duration": 60.0}, TAGS, T0)
    ]


def test_points_differing_in_tags_or_time_are_not_merged(backend, path):
    backend.thd_postStatsValues(
        [
            Point("s", {"a": 1}, TAGS, T0),
            Point("s", {"a": 2}, {**TAGS, "build_number": "2"}, T0),
            Point("s", {"a": 3}, TAGS, T0 + 1),
        ]
    )
    assert len(raw_rows(path)) == 3


def test_tag_order_does_not_matter(backend, path):
    backend.thd_postStatsValues([Point("s", {"a": 1}, {"x": "1", "y": "2"}, T0)])
    backend.thd_postStatsValues([Point("s", {"b": 2}, {"y": "2", "x": "1"}, T0)])
    assert read_all(path) == [Point("s", {"a": 1, "b": 2}, {"x": "1", "y": "2"}, T0)]


def test_resend_overwrites_without_duplicates(backend, path):
    batch = [Point("b1-build-results", {"results": 2, "result": "failure"}, TAGS, T0 + i) for i in range(5)]
    backend.thd_postStatsValues(batch)
    backend.thd_postStatsValues(batch)
    assert len(raw_rows(path)) == 5
    backend.thd_postStatsValues([Point("b1-build-results", {"results": 0, "result": "success"}, TAGS, T0)])
    rows = read_all(path)
    assert len(rows) == 5
    assert rows[0].fields == {"results": 0, "result": "success"}
    # a duplicate inside one batch is merged too
    backend.thd_postStatsValues([Point("d", {"a": 1}, {}, T0), Point("d", {"a": 2, "b": 3}, {}, T0)])
    assert read_all(path, prefix="d") == [Point("d", {"a": 2, "b": 3}, {}, T0)]


class Odd:
    def __str__(self):
        return "odd<object>"


def test_awkward_values(backend, path):
    when = datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.timezone.utc)
    fields = {
        "none": None,
        "true": True,
        "false": False,
        "zero": 0,
        "negative": -17,
        "huge": 2**70,
        "tiny": -(2**80),
        "float": 0.1,
        "nan": float("nan"),
        "inf": float("inf"),
        "-inf": float("-inf"),
        "empty": "",
        "unicode": "h\u00e9\u4e2d\U0001f600",
        "surrogate": "a\ud800b",
        "nul": "a\x00b",
        "newline": "a\nb\r\n",
        "quote": "\"'\\",
        "big": "x" * 1_000_000,
        "bytes": b"ok\xff",
        "datetime": when,
        "date": datetime.date(2024, 5, 1),
        "tuple": (1, "a"),
        "set": {3},
        "nested": {"k": [1, float("nan"), {"z": None}], 5: "int key"},
        "decimal": decimal.Decimal("1.10"),
        "object": Odd(),
        "": "empty key",
        7: "int key",
    }
    tags = {"builder_name": 'b<&>"1', "build_number": 3, "none": None, "nan": float("nan")}
    report = backend.thd_postStatsValues([Point("s\u00e9ries with spaces,=\n", fields, tags, T0)])
    assert report.rejected_points == 0
    [point] = read_all(path)
    assert point.series == "s\u00e9ries with spaces,=\n"
    assert point.time_ns == T0
    got = point.fields
    assert math.isnan(got.pop("nan"))
    assert math.isnan(got["nested"]["k"].pop(1))
    assert got == {
        "none": None,
        "true": True,
        "false": False,
        "zero": 0,
        "negative": -17,
        "huge": 2**70,
        "tiny": -(2**80),
        "float": 0.1,
        "inf": float("inf"),
        "-inf": float("-inf"),
        "empty": "",
        "unicode": "h\u00e9\u4e2d\U0001f600",
        "surrogate": "a\ud800b",
        "nul": "a\x00b",
        "newline": "a\nb\r\n",
        "quote": "\"'\\",
        "big": "x" * 1_000_000,
        "bytes": "ok\ufffd",
        "datetime": "2024-05-01T10:00:00+00:00",
        "date": "2024-05-01",
        "tuple": [1, "a"],
        "set": [3],
        "nested": {"k": [1, {"z": None}], "5": "int key"},
        "decimal": "1.10",
        "object": "odd<object>",
        "": "empty key",
        "7": "int key",
    }
    assert math.isnan(point.tags.pop("nan"))
    assert point.tags == {"builder_name": 'b<&>"1', "build_number": 3, "none": None}


def test_empty_series_and_non_dict_fields(backend, path):
    report = backend.thd_postStatsValues([Point("", {"a": 1}, {}, T0), Point("s", 42, {}, T0)])  # type: ignore
    assert report.rejected_points == 1
    assert report.problems[0] == PointProblem("", "*", "empty series name", True)
    assert report.problems[1].rejected is False
    assert read_all(path) == [Point("s", {"value": 42}, {}, T0)]
    assert backend.thd_postStatsValues([]) == WriteReport()


def test_post_one_value_stamps_the_current_time(backend, path):
    before = datetime.datetime.now(datetime.timezone.utc).timestamp() * 1e9
    backend.thd_postStatsValue({"v": 1}, "s", {"builder_name": "b"})
    backend.thd_postStatsValue({"v": 2}, "s", {"builder_name": "b"})
    backend.thd_postStatsValue({"v": 3}, "s")
    first, second, third = read_all(path)
    assert [p.fields["v"] for p in (first, second, third)] == [1, 2, 3]
    assert before - 1e9 < first.time_ns < second.time_ns < third.time_ns
    assert third.tags == {}


def test_schema(backend, path):
    backend.thd_postStatsValues([Point("s", {"a": 1}, {}, T0)])
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert dict(db.execute("SELECT key, value FROM meta")) == {
            "format": "buildbot_stats",
            "schema_version": "1",
        }
        columns = [r[1] for r in db.execute("PRAGMA table_info(points)")]
        assert columns == ["id", "series", "time_ns", "tags", "fields"]
        indexes = {r[1]: r for r in db.execute("PRAGMA index_list(points)")}
        assert "points_series_time" in indexes
        assert [r[2] for r in db.execute("PRAGMA index_info(points_series_time)")] == ["series", "time_ns"]
        unique = [name for name, r in indexes.items() if r[2] == 1]
        assert [[c[2] for c in db.execute(f"PRAGMA index_info('{u}')")] for u in unique] == [
            ["series", "tags", "time_ns"]
        ]
        assert db.execute("SELECT tags FROM points").fetchone() == ("{}",)
    finally:
        db.close()


def test_second_instance_appends(path):
    first = SQLiteStorageService(path, [])
    first.thd_postStatsValues([Point("s", {"run": 1}, {}, T0 + i) for i in range(3)])
    first.close()
    second = SQLiteStorageService(path, [])  # the next master run
    second.thd_postStatsValues([Point("s", {"run": 2}, {}, T0 + 10 + i) for i in range(2)])
    second.close()
    assert [p.fields["run"] for p in read_all(path)] == [1, 1, 1, 2, 2]
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT COUNT(*) FROM meta").fetchone() == (2,)
    finally:
        db.close()


def test_two_instances_write_at_the_same_time(path):
    backends = [SQLiteStorageService(path, [], name=f"b{i}") for i in range(2)]
    errors = []

    def write(n, b):
        try:
            for j in range(50):
                batch = [Point(f"s{n}", {"j": j, "k": k}, {}, T0 + j * 100 + k) for k in range(20)]
                b.thd_postStatsValues(batch)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n, b)) for n, b in enumerate(backends)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for b in backends:
        b.close()
    assert errors == []
    with open_store(path) as store:
        assert store.count() == 2 * 50 * 20


def test_one_instance_many_threads(backend, path):
    """The reactor's thread pool may call one backend from several threads."""
    errors = []

    def write(n):
        try:
            for j in range(30):
                backend.thd_postStatsValues([Point("s", {"n": n}, {"t": str(n)}, T0 + j)])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(raw_rows(path)) == 8 * 30


def test_reader_while_writing(backend, path):
    """The CLI reads while the master writes: no 'database is locked', counts only grow."""
    backend.thd_postStatsValues([Point("warmup", {"v": 0}, {}, T0)])
    batches, per_batch = 150, 40
    done = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []

    def writer():
        try:
            for i in range(batches):
                tags = {"build_number": str(i)}
                batch = [Point(f"b{j % 3}-build-times", {"d": j}, tags, T0 + j) for j in range(per_batch)]
                backend.thd_postStatsValues(batch)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    def reader():
        try:
            with open_store(path) as long_lived:
                while not done.is_set():
                    with open_store(path) as store:  # a fresh CLI run
                        n = store.count()
                        points = list(store.points(suffix="-build-times"))
                        # one read transaction per query: a batch is all there or not at all
                        assert len(points) % per_batch == 0
                    seen.append(n)
                    # a connection kept open sees new batches too (13 b1 points per batch)
                    assert len(list(long_lived.points(prefix="b1-"))) % 13 == 0
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(set(seen)) > 2, f"the reader did not overlap the writer: {seen}"
    assert seen == sorted(seen)
    with open_store(path) as store:
        assert store.count() == 1 + batches * per_batch


def test_relative_path_is_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    b = SQLiteStorageService("sub/dir/stats.sqlite", [])
    b.thd_postStatsValues([Point("s", {"a": 1}, {}, T0)])
    b.close()
    assert (tmp_path / "sub" / "dir" / "stats.sqlite").exists()


@pytest.mark.parametrize("bad", [None, 42, b"stats.sqlite", ""])
def test_path_must_be_a_string(bad):
    with pytest.raises(ConfigErrors, match="path must be a non-empty string"):
        SQLiteStorageService(bad, [])  # type: ignore[arg-type]


def test_pathlike_is_accepted(tmp_path):
    b = SQLiteStorageService(tmp_path / "p.sqlite", [])  # type: ignore[arg-type]
    assert b.path == str(tmp_path / "p.sqlite")


def test_refuses_a_foreign_database(tmp_path):
    # made after the config was checked (checkconfig refuses an existing one: test_sqlite_store_path)
    foreign = tmp_path / "state.sqlite"
    b = SQLiteStorageService(str(foreign), [])
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE builds (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(RefusedWriteError, match="not a buildbot_stats store"):
        b.thd_postStatsValues([Point("s", {"a": 1}, {}, T0)])
    db = sqlite3.connect(foreign)
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["builds"]
    db.close()


def test_refuses_a_text_file(tmp_path):
    text = tmp_path / "notes.txt"
    b = SQLiteStorageService(str(text), [])
    text.write_text("hello\n" * 200)
    with pytest.raises(RefusedWriteError, match="not usable"):
        b.thd_postStatsValues([Point("s", {"a": 1}, {}, T0)])
    assert text.read_text() == "hello\n" * 200


def test_refuses_a_newer_schema(backend, path):
    backend.thd_postStatsValues([Point("s", {"a": 1}, {}, T0)])
    backend.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(RefusedWriteError, match="schema version '99'"):
        SQLiteStorageService(path, []).thd_postStatsValues([Point("s", {"a": 1}, {}, T0)])
    with pytest.raises(StoreError, match="schema version '99' is not supported"):
        open_store(path)


def test_open_store_errors(tmp_path):
    with pytest.raises(StoreError, match="no such file"):
        open_store(tmp_path / "missing.sqlite")
    with pytest.raises(StoreError, match="is a directory"):
        open_store(tmp_path)
    text = tmp_path / "t.txt"
    text.write_text("not a database at all\n" * 100)
    with pytest.raises(StoreError, match=r"not a buildbot_stats store \(not an SQLite database\)"):
        open_store(text)
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(StoreError, match="not a buildbot_stats store"):
        open_store(empty)
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE meta (k, v)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a buildbot_stats store"):
        open_store(other)


def test_reader_is_read_only(backend, path):
    backend.thd_postStatsValues([Point("s", {"a": 1}, {}, T0)])
    with open_store(path) as store, pytest.raises(sqlite3.OperationalError, match="readonly"):
        store._db.execute("DELETE FROM points")
