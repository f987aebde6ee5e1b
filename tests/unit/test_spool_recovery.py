"""A spool file that cannot be opened at start, one deleted while the master runs, crafted rows.

Issue 22, items 5, 6 and 9: the file is tried again with backoff and the points kept in
memory meanwhile move into it (with what it held); a deleted file is noticed at the next
commit and made again with every point not yet delivered; a row's point count and its
msgpack payload are checked when read, and a crafted row is set aside like a damaged one.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import time
import tracemalloc

from twisted.internet import defer

from buildbot_stats.delivery import spool as spool_file
from buildbot_stats.delivery.spool import SQLiteSpool, encode_segment
from buildbot_stats.point import Point
from tests.unit.test_spool import SpoolCase


class UnopenableAtStartTests(SpoolCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.attempts: list[float] = []  # reactor time of each attempt to open the file
        self.failing = True
        real = spool_file.connect_wal

        def connect_wal(path, timeout):
            self.attempts.append(self.reactor.seconds())
            if self.failing:  # as on a full disk at a restart: the -wal and -shm files cannot be made
                raise sqlite3.OperationalError("disk I/O error")
            return real(path, timeout)

        self.patch(spool_file, "connect_wal", connect_wal)

    @defer.inlineCallbacks
    def spool_left_by_a_previous_run(self, n):
        self.failing = False
        yield self.replace_service(self.recorder(down=True), spool_path=self.path, flush_timeout=0)
        self.post(n)
        yield self.stats.disownServiceParent()
        self.failing, self.attempts = True, []

    @defer.inlineCallbacks
    def test_file_is_tried_again_with_backoff_then_holds_memory_points_and_its_own(self):
        yield self.spool_left_by_a_previous_run(3)
        down = self.recorder(down=True)
        yield self.replace_service(down, spool_path=self.path, flush_timeout=0, max_retry_delay=600)
        self.assertLogged(
            "cannot open the spool .*spool.sqlite \\(OperationalError: disk I/O error\\); new points"
        )
        self.assertFalse(self.stats.spool.spool.durable)
        self.post(2, start=10)  # kept in memory meanwhile
        self.assertEqual(self.stats.counters["pending"], 2)
        for _ in range(183):  # a second at a time
            self.reactor.advance(1)
        self.assertEqual(
            [b - a for a, b in zip(self.attempts, self.attempts[1:])], [1, 2, 4, 8, 16, 32, 60, 60]
        )
        self.failing = False
        self.reactor.advance(60)
        self.assertLogged(
            "the spool .*spool.sqlite can be written again; the points kept in memory moved to it"
        )
        self.assertTrue(self.stats.spool.spool.durable)
        self.assertEqual(self.stats.counters["pending"], 5)  # its own 3 and the 2 kept in memory
        self.assertEqual(self.rows("SELECT SUM(n) FROM buildbot_stats_segments"), [(5,)])
        self.assertEqual(self.stats.counters["spooled"], 2)  # (the 3 were spooled by the previous run)
        with down._lock:
            down._failures.clear()
        self.reactor.advance(600)
        self.assertEqual(sorted(self.values(down)), [0, 1, 2, 10, 11])
        self.assertEqual(self.rows("SELECT COUNT(*) FROM buildbot_stats_segments"), [(0,)])
        self.reactor.advance(600)
        self.assertEqual(len(self.attempts), 10)  # open: no more attempts

    @defer.inlineCallbacks
    def test_a_quiet_master_delivers_the_points_of_a_file_opened_late(self):
        yield self.spool_left_by_a_previous_run(3)
        up = self.recorder()
        yield self.replace_service(up, spool_path=self.path)
        self.assertEqual(self.values(up), [])
        self.failing = False
        self.reactor.advance(1)  # no point stored meanwhile: the retry alone finds them
        self.assertEqual(self.values(up), [0, 1, 2])
        self.assertEqual(self.stats.counters["pending"], 0)
        yield self.stats.disownServiceParent()
        again = self.recorder()
        yield self.replace_service(again, spool_path=self.path)
        self.assertEqual(again.points, [])


class DeletedWhileRunningTests(SpoolCase):
    def remove_spool_files(self):
        for name in os.listdir(self.dir):  # rm stats-spool.sqlite*
            os.remove(os.path.join(self.dir, name))

    @defer.inlineCallbacks
    def test_deleted_file_is_made_again_with_every_point_not_yet_delivered(self):
        backend = self.recorder()
        yield self.replace_service(backend, spool_path=self.path, flush_timeout=0, max_retry_delay=600)
        self.post(2)  # delivered
        backend.fail_next(10_000)
        self.post(3, start=2)  # pending
        self.remove_spool_files()
        self.post(2, start=5)
        self.assertLogged(
            "the spool .*spool.sqlite was deleted or replaced while the master ran: its 3 pending point"
        )
        self.assertEqual(self.rows("SELECT SUM(n) FROM buildbot_stats_segments"), [(5,)])
        self.assertTrue(os.path.exists(self.path + ".lock"))
        self.post(1, start=7)
        self.assertEqual(self.stats.counters["spooled"], 8)  # each point once
        self.assertEqual(self.stats.counters["pending"], 6)
        yield self.stats.disownServiceParent()
        self.assertEqual(self.logged("deleted or replaced"), 1)
        up = self.recorder()
        yield self.replace_service(up, spool_path=self.path)
        self.assertEqual(self.values(up), [2, 3, 4, 5, 6, 7])

    @defer.inlineCallbacks
    def test_deletion_is_noticed_at_stop_too(self):
        yield self.replace_service(self.recorder(down=True), spool_path=self.path, flush_timeout=0)
        self.post(3)
        self.remove_spool_files()
        yield self.stats.disownServiceParent()  # no point stored since
        up = self.recorder()
        yield self.replace_service(up, spool_path=self.path)
        self.assertEqual(self.values(up), [0, 1, 2])

    def logged(self, text):
        return sum(text in " ".join(map(str, event.get("message", ()))) for event in self._logEvents)


def write_rows(path, *rows):
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO buildbot_stats_segments VALUES (?,?,?,?,?,?,?)", rows)
    db.commit()
    db.close()


def _msgpack_array32(n):
    return b"\xdd" + struct.pack(">I", n)


#: payloads whose headers announce far more than they hold, or nest without end
CRAFTED = {
    "array": _msgpack_array32(2**32 - 1),
    "columns": b"\x94" + _msgpack_array32(10**9) + b"\x90\x90\x90",
    "string": b"\x94\x91\xdb" + struct.pack(">I", 2**31) + b"x" * 16 + b"\x90\x90\x90",
    "ext": b"\x94\x90\x90\x90\x91\xc9" + struct.pack(">I", 2**31) + b"\x01",
    "nested": b"\x94" + b"\x91" * 100_000 + b"\xc0" + b"\x90\x90\x90",
}


def test_crafted_rows_are_set_aside_without_expanding_and_the_pending_figure_stays_sane(tmp_path):
    path = str(tmp_path / "spool.sqlite")
    spool = SQLiteSpool(path)
    spool.thd_open()
    good, _ = encode_segment("k", [Point("s", {"v": i}, {}, 10**18 + i) for i in range(3)], None)
    lines = b"m v=1i 1\nm v=2i 2"
    spool.thd_write([good], {})
    spool.thd_close()
    write_rows(
        path,
        ("k", 10, 10**15, None, None, good.encoding, good.data),  # a count its data does not hold
        ("k", 11, 0, None, None, good.encoding, good.data),
        ("k", 12, -5, None, None, good.encoding, good.data),
        ("lp", 13, 3, None, None, "influx-lp/ns", lines),  # two lines, no string: two points
        ("lp", 14, 1, None, None, "influx-lp/ns", lines),
        ("lp", 15, 2, None, None, "influx-lp/ns", lines),
        *[("k", 20 + i, 1, None, None, good.encoding, data) for i, data in enumerate(CRAFTED.values())],
    )
    spool = SQLiteSpool(path)
    spool.thd_open()
    try:
        pending = spool.thd_pending_counts()
        assert pending["k"] <= sum(len(d) for d in (good.data, *CRAFTED.values())) + 3 * len(good.data)
        tracemalloc.start()
        started = time.monotonic()
        taken, state = spool.thd_take("k", 10**9)
        lp_taken, lp_state = spool.thd_take("lp", 10**9)
        seconds = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert (taken.ids, taken.n) == ([1], 3)
        assert (lp_taken.ids, lp_taken.n) == ([15], 2)
        assert (state.pending, lp_state.pending) == (3, 2)  # the rest set aside, not counted
        assert seconds < 1 and peak < 20 * 2**20, (seconds, peak)
    finally:
        spool.thd_close()
    db = sqlite3.connect(path)
    errors = dict(db.execute("SELECT id, error FROM buildbot_stats_unreadable").fetchall())
    db.close()
    assert sorted(errors) == [10, 11, 12, 13, 14, 20, 21, 22, 23, 24]
    assert all("which its data does not hold" in errors[i] for i in (10, 11, 12, 13, 14))
    assert all(errors[i].startswith("ValueError: ") for i in (20, 21, 22, 23)), errors
    assert errors[24].startswith("StackError")
