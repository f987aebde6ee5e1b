"""``spool_path`` never destroys a file that is not a spool, and the spool's thread never outlives the master.

A mistyped ``spool_path`` (``state.sqlite``, ``master.cfg``) used to be
renamed aside as "unreadable" and replaced by a spool.  Now only a file the
plugin recognises as its own spool is opened or, when damaged, set aside;
anything else is a configuration error and stays byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path

import pytest
from buildbot import config
from buildbot.config.errors import capture_config_errors
from buildbot.config.master import loadConfigDict
from twisted.internet import defer

from buildbot_stats.delivery.spool import (
    APPLICATION_ID,
    ForeignSpoolFileError,
    SQLiteSpool,
    foreign_file_problem,
)
from buildbot_stats.stats_service import StatsService
from buildbot_stats.testing import RecordingStorage
from tests.fakes import StatsTestCase

MASTER_CFG = "from buildbot.plugins import *\nc = BuildmasterConfig = {}\n"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def buildbot_db(path: Path) -> Path:
    """An SQLite database of somebody else (here: tables like Buildbot's state.sqlite)."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE builds (id INTEGER PRIMARY KEY, number INTEGER)")
    db.execute("CREATE TABLE masters (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO builds VALUES (1, 7)")
    db.commit()
    db.close()
    return path


def our_spool(path: Path) -> Path:
    spool = SQLiteSpool(str(path))
    spool.thd_open()
    spool.thd_close()
    return path


def damage(path: Path) -> Path:
    """Garbage after the 100-byte header: SQLite cannot read the file any more."""
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"garbage!" * 600)
    return path


def spool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "buildbot_stats-spool" in t.name]


# -- which file is ours -----------------------------------------------------------


def test_a_new_spool_carries_the_mark_in_its_header(tmp_path: Path) -> None:
    path = our_spool(tmp_path / "spool.sqlite")
    assert int.from_bytes(path.read_bytes()[68:72], "big") == APPLICATION_ID


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p,  # no file yet
        lambda p: p.write_bytes(b"") and p,  # empty: nothing to lose
        lambda p: (sqlite3.connect(p).execute("VACUUM"), p)[1],  # an empty SQLite database
        our_spool,
        lambda p: damage(our_spool(p)),  # damaged, but marked: ours, set aside at start
    ],
    ids=["missing", "empty", "empty-sqlite", "spool", "damaged-spool"],
)
def test_files_the_spool_may_use(tmp_path: Path, make) -> None:
    path = tmp_path / "spool.sqlite"
    make(path)
    assert foreign_file_problem(str(path)) is None


def test_a_spool_written_before_the_mark_is_ours(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE buildbot_stats_segments "
        "(queue_key TEXT, id INTEGER, last_id INTEGER, ids TEXT, points BLOB)"
    )
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    assert foreign_file_problem(str(path)) is None
    spool = SQLiteSpool(str(path))
    spool.thd_open()  # opened, and marked from now on
    spool.thd_close()
    assert int.from_bytes(path.read_bytes()[68:72], "big") == APPLICATION_ID


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p.write_text(MASTER_CFG) and p, "is not an SQLite file"),
        (buildbot_db, "is an SQLite database with other tables (builds, masters)"),
        (lambda p: damage(buildbot_db(p)), "is an SQLite file that cannot be read"),
        (lambda p: p.mkdir(), "is not a regular file"),
    ],
    ids=["master.cfg", "state.sqlite", "damaged-foreign-sqlite", "directory"],
)
def test_files_that_are_somebody_elses(tmp_path: Path, make, problem: str) -> None:
    path = tmp_path / "target"
    make(path)
    before = sorted(os.listdir(tmp_path))
    found = foreign_file_problem(str(path))
    assert found is not None and found.startswith(problem), found
    with pytest.raises(ForeignSpoolFileError, match="is not a buildbot_stats spool"):
        SQLiteSpool(str(path)).thd_open()
    assert sorted(os.listdir(tmp_path)) == before  # nothing renamed, no -wal/-shm created


def test_foreign_file_is_left_byte_for_byte(tmp_path: Path) -> None:
    path = buildbot_db(tmp_path / "state.sqlite")
    before = digest(path)
    with pytest.raises(ForeignSpoolFileError):
        SQLiteSpool(str(path)).thd_open()
    assert digest(path) == before


# -- checkconfig ------------------------------------------------------------------------


def test_checkconfig_refuses_a_foreign_file_at_an_absolute_path(tmp_path: Path) -> None:
    path = buildbot_db(tmp_path / "state.sqlite")
    with capture_config_errors() as errors:
        StatsService(storage_backends=[], name="stats", spool_path=str(path))
    assert len(errors.errors) == 1
    assert errors.errors[0].startswith(
        f"StatsService: spool_path {str(path)!r}: {path} is not a buildbot_stats spool"
    )


@pytest.mark.parametrize("target", ["state.sqlite", "master.cfg"])
def test_checkconfig_resolves_a_relative_path_in_the_master_basedir(tmp_path: Path, target: str) -> None:
    """As ``buildbot checkconfig DIR`` loads master.cfg: from another working directory."""
    buildbot_db(tmp_path / "state.sqlite")
    cfg = MASTER_CFG + (
        "from buildbot_stats import statistics\n"
        f"c['services'] = [statistics.StatsService(storage_backends=[], name='s', spool_path={target!r})]\n"
    )
    (tmp_path / "master.cfg").write_text(cfg)
    assert Path.cwd() != tmp_path
    with capture_config_errors() as errors:
        loadConfigDict(str(tmp_path), "master.cfg")
    assert len(errors.errors) == 1, errors.errors
    assert f"spool_path {target!r}: {tmp_path / target} is not a buildbot_stats spool" in errors.errors[0]


def test_checkconfig_accepts_the_spool_of_the_last_run(tmp_path: Path) -> None:
    our_spool(tmp_path / "stats-spool.sqlite")
    (tmp_path / "master.cfg").write_text(
        MASTER_CFG + "from buildbot_stats import statistics\n"
        "c['services'] = [statistics.StatsService(storage_backends=[], name='s')]\n"
    )
    with capture_config_errors() as errors:
        loadConfigDict(str(tmp_path), "master.cfg")
    assert errors.errors == []


# -- at start, and every way out of the service stops its thread -------------------------


class StartTests(StatsTestCase):
    @defer.inlineCallbacks
    def start(self, **kwargs):
        yield self.stats.disownServiceParent()
        self.stats = StatsService(storage_backends=[RecordingStorage()], name="StatsService", **kwargs)
        yield self.stats.setServiceParent(self.master)

    @defer.inlineCallbacks
    def start_failing(self, stats):
        """Start ``stats`` as Buildbot does, expecting the start to fail; returns the error."""
        yield self.stats.disownServiceParent()
        try:
            yield stats.setServiceParent(self.master)
        except Exception as e:
            error = e
        else:
            self.fail("the start did not fail")
        # the failed service stays a child of the master, as in Buildbot; it is not stopped again
        self.master.services.remove(stats)
        del self.master.namedServices[stats.name]
        return error

    @defer.inlineCallbacks
    def test_start_refuses_a_foreign_file_and_leaves_it(self):
        top = tempfile.mkdtemp(prefix="bbstats-spool-path-")
        self.addCleanup(shutil.rmtree, top, True)
        directory = Path(top) / "master"
        directory.mkdir()
        path = buildbot_db(directory / "state.sqlite")
        before = digest(path)
        # checkConfig cannot resolve a relative path without a basedir; the start can
        stats = StatsService(
            storage_backends=[RecordingStorage()], name="StatsService", spool_path="state.sqlite"
        )
        self.master.basedir = str(directory)
        error = yield self.start_failing(stats)
        self.assertIsInstance(error, config.ConfigErrors)
        self.assertEqual(
            error.errors,
            [
                f"StatsService: spool_path 'state.sqlite': {path} is not a buildbot_stats spool: it is an "
                "SQLite database with other tables (builds, masters); it is left untouched "
                "(choose another spool_path)"
            ],
        )
        self.assertEqual(digest(path), before)
        self.assertEqual(sorted(os.listdir(directory)), ["state.sqlite"])
        self.assertIsNone(stats.spool)

    @defer.inlineCallbacks
    def test_failed_first_configuration_closes_the_spool(self):
        opened = []

        class FailingStats(StatsService):
            def registerConsumers(self):
                opened.append((self.spool, self.spool.spool.durable))
                raise RuntimeError("cannot consume")

        stats = FailingStats(
            storage_backends=[RecordingStorage()], name="StatsService", spool_path=self.spool()
        )
        error = yield self.start_failing(stats)
        self.assertIsInstance(error, RuntimeError)
        self.assertTrue(opened[0][1])  # a spool file, open then
        self.assertFalse(opened[0][0].running)
        self.assertIsNone(stats.spool)

    def spool(self):
        top = tempfile.mkdtemp(prefix="bbstats-spool-path-")
        self.addCleanup(shutil.rmtree, top, True)
        directory = Path(top) / "master"
        directory.mkdir()
        return str(directory / "spool.sqlite")

    @defer.inlineCallbacks
    def test_reactor_shutdown_stops_the_spool_thread_of_a_service_never_stopped(self):
        yield self.start(spool_path=self.spool())
        spool = self.stats.spool
        self.assertTrue(spool.running)
        self.reactor.fireSystemEvent("shutdown")  # as after a failed start: stopService never ran
        self.assertFalse(spool.running)
        # a later stop does not wait for the thread that is gone
        yield self.stats.disownServiceParent()
        self.assertIsNone(self.stats.spool)

    @defer.inlineCallbacks
    def test_stop_stops_the_thread_and_a_later_shutdown_changes_nothing(self):
        yield self.start(spool_path=self.spool())
        spool = self.stats.spool
        yield self.stats.disownServiceParent()
        self.assertFalse(spool.running)
        self.reactor.fireSystemEvent("shutdown")  # the trigger finds the thread stopped already
        self.assertFalse(spool.running)
