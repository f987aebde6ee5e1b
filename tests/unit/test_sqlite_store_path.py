"""An SQLite store path must never name somebody else's file: a config error, the file untouched."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from buildbot.config.errors import capture_config_errors

from buildbot_stats.point import Point
from buildbot_stats.stats_service import StatsService
from buildbot_stats.storage_backends.sqlite import SQLiteStorageService


def errors_of(make):
    with capture_config_errors() as errors:
        make()
    return errors.errors


def test_a_database_of_another_application_is_a_config_error_and_untouched(tmp_path: Path):
    state = tmp_path / "state.sqlite"
    db = sqlite3.connect(state)
    db.execute("CREATE TABLE buildrequests (id INTEGER)")
    db.commit()
    db.close()
    before = state.read_bytes()
    (error,) = errors_of(lambda: SQLiteStorageService(str(state), []))
    assert "is not a buildbot_stats store" in error and "buildrequests" in error
    assert state.read_bytes() == before


def test_a_text_file_is_a_config_error(tmp_path: Path):
    cfg = tmp_path / "master.cfg"
    cfg.write_text("c = BuildmasterConfig = {}\n")
    (error,) = errors_of(lambda: SQLiteStorageService(str(cfg), []))
    assert "is not an SQLite file" in error
    assert cfg.read_text() == "c = BuildmasterConfig = {}\n"


def test_a_new_file_an_empty_file_and_an_existing_store_are_fine(tmp_path: Path):
    store = tmp_path / "stats.sqlite"
    assert errors_of(lambda: SQLiteStorageService(str(tmp_path / "new.sqlite"), [])) == []
    (tmp_path / "empty.sqlite").touch()
    assert errors_of(lambda: SQLiteStorageService(str(tmp_path / "empty.sqlite"), [])) == []
    SQLiteStorageService(str(store), []).thd_postStatsValues([Point("b-x", {"v": 1}, {}, 1)])
    assert errors_of(lambda: SQLiteStorageService(str(store), [])) == []


def test_the_spool_file_as_a_store_is_a_config_error(tmp_path: Path):
    path = str(tmp_path / "stats.sqlite")
    errors = errors_of(
        lambda: StatsService(
            storage_backends=[SQLiteStorageService(path, [], name="local")], name="s", spool_path=path
        )
    )
    assert len(errors) == 1 and "writes its store into the spool file" in errors[0], errors
