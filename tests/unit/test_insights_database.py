"""Reading the insights' records from a Buildbot database (SQLite, Buildbot's schema)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from buildbot_stats.insights.database import open_readonly, read_history
from buildbot_stats.insights.flaky import find_flaky
from tests.insights_data import planted_history, write_sqlite


@pytest.fixture(scope="module")
def planted_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    planted = planted_history(8, revisions=50)
    path = tmp_path_factory.mktemp("db") / "state.sqlite"
    write_sqlite(str(path), planted)
    return planted, path


def _flaky(builds, sets, rows) -> dict:
    return {(t.builder, t.test): (t.passes, t.failures) for t in find_flaky(builds, sets, rows)}


def test_reads_what_was_written_and_only_reads(planted_db) -> None:
    planted, path = planted_db
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    engine = open_readonly("sqlite:///state.sqlite", str(path.parent))
    history = read_history(engine)
    assert [(b.builder, b.number, b.revision) for b in history.builds] == [
        (b.builder, b.number, b.revision) for b in planted.builds
    ]
    assert history.test_results == len(planted.rows)
    assert _flaky(history.builds, history.sets, history.rows) == _flaky(
        planted.builds, planted.sets, planted.rows
    )
    assert len(history.rows) < len(planted.rows) / 2  # only the tests that ever failed came to Python
    with engine.connect() as conn, pytest.raises(Exception, match="readonly|read-only|query_only"):
        conn.exec_driver_sql("DELETE FROM builds")
    engine.dispose()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_since_and_builders_select_builds(planted_db) -> None:
    planted, path = planted_db
    engine = open_readonly(f"sqlite:///{path}", "/")
    middle = planted.builds[len(planted.builds) // 2].complete_at
    recent = read_history(engine, since=middle, builders=["windows"])
    assert {b.builder for b in recent.builds} == {"windows"}
    assert all(b.complete_at >= middle for b in recent.builds)
    assert len(recent.builds) == sum(
        1 for b in planted.builds if b.builder == "windows" and b.complete_at >= middle
    )
    assert read_history(engine, builders=["nosuch"]).builds == []


def test_a_test_name_with_two_ids_is_one_test(planted_db, tmp_path) -> None:
    # two masters adding one new name at once can both insert it (Buildbot 4.3 on PostgreSQL)
    planted, path = planted_db
    copy = tmp_path / "state.sqlite"
    copy.write_bytes(path.read_bytes())
    builder, name = next(t for t in sorted(planted.flaky) if t[1].startswith("tests."))
    conn = sqlite3.connect(copy)
    with conn:
        (nameid, builderid) = conn.execute(
            "SELECT test_names.id, test_names.builderid FROM test_names"
            " JOIN builders ON builders.id = builderid WHERE test_names.name = ? AND builders.name = ?",
            (name, builder),
        ).fetchone()
        conn.execute("INSERT INTO test_names (id, builderid, name) VALUES (9999, ?, ?)", (builderid, name))
        # the later passes were recorded under the second id
        moved = conn.execute(
            "UPDATE test_results SET test_nameid = 9999 WHERE test_nameid = ? AND value = '1' AND id % 2 = 0",
            (nameid,),
        ).rowcount
    assert moved > 10
    conn.close()
    history = read_history(open_readonly(f"sqlite:///{copy}", "/"))
    found = _flaky(history.builds, history.sets, history.rows)
    assert found[(builder, name)] == _flaky(planted.builds, planted.sets, planted.rows)[(builder, name)]


def test_missing_file_is_not_created(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        open_readonly("sqlite:///%(basedir)s/state.sqlite", str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_a_test_without_code_path_is_not_one_with_a_path(tmp_path) -> None:
    # test_x without a path is broken from revision 6 on; test_x in pkg/other.py always passes
    from buildbot_stats.insights.records import Build, ResultRow, ResultSet, Step
    from tests.insights_data import Planted

    planted = Planted()
    for i in range(1, 21):
        revision = f"{(i + 1) // 2:040x}"  # every revision built twice
        planted.builds.append(
            Build(i, 1, "linux", i, 1_700_000_000 + i * 1000, 1_700_000_100 + i * 1000, 0, revision)
        )
        planted.steps.append(Step(i, "test", 1_700_000_000 + i * 1000, 1_700_000_050 + i * 1000, 0))
        planted.sets.append(ResultSet(i, i, "unit", "pass_fail", "boolean"))
        planted.rows.append(ResultRow(i, "test_x", "", "0" if i >= 11 else "1"))
        planted.rows.append(ResultRow(i, "test_x", "pkg/other.py", "1"))
    write_sqlite(str(tmp_path / "state.sqlite"), planted)
    history = read_history(open_readonly("sqlite:///state.sqlite", str(tmp_path)))
    assert find_flaky(planted.builds, planted.sets, planted.rows) == []
    assert find_flaky(history.builds, history.sets, history.rows) == []
