"""Delivery: group commit, retries, spool durability and bounds, on Buildbot's fake master."""

from __future__ import annotations

import json
import os
import random
import tempfile
import warnings

from buildbot.test.util.logging import LoggingMixin
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, threads
from twisted.python import log

from buildbot_stats import capture
from buildbot_stats.delivery.queue import State
from buildbot_stats.errors import (
    BatchTooLargeError,
    PartialDeliveryError,
    RefusedWriteError,
    TransientWriteError,
)
from buildbot_stats.point import Point, PointProblem
from buildbot_stats.stats_service import StatsService
from buildbot_stats.storage_backends.base import StatsStorageBase, WriteReport
from buildbot_stats.testing import RecordingStorage
from tests.fakes import YIELD_KEY, StatsTestCase


class ControlledThreads:
    """Replaces deferToThread: calls wait until the test runs them, so writes can be in flight."""

    def __init__(self, testcase):
        self.calls = []
        testcase.patch(threads, "deferToThread", self)

    def __call__(self, f, *args, **kwargs):
        d = defer.Deferred()
        self.calls.append((d, f, args))
        return d

    def run_next(self, index=0):
        """Run the oldest call waiting (or the one at ``index``: a later one ends first)."""
        d, f, args = self.calls.pop(index)
        try:
            result = f(*args)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)

    def run_all(self, between=None):
        while self.calls:
            self.run_next()
            if not self.calls and between:
                between()


class DataTestCase(StatsTestCase, LoggingMixin):
    """Posts values through CaptureData so that each call makes one point."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.setUpLogging()
        yield self.add_build()
        self.build_data = yield self.master.data.get(("builds", 1))

    def post(self, n, start=0):
        for i in range(start, start + n):
            self.master.mq.callConsumer(
                YIELD_KEY, {"data_name": "m", "post_data": {"i": i}, "build_data": self.build_data}
            )

    def values(self, backend):
        return [p.fields["i"] for p in backend.points]


class GroupCommitTests(DataTestCase):
    @defer.inlineCallbacks
    def test_points_arriving_during_a_write_form_the_next_batch(self):
        threads_ = ControlledThreads(self)
        backend = yield self.use(capture.CaptureData("m", "builder1"), batch_size=4)
        self.post(1)  # written at once
        self.assertEqual(len(threads_.calls), 1)
        self.post(9, start=1)  # queued while the first write is in flight
        self.assertEqual(len(threads_.calls), 1)
        threads_.run_all()
        self.assertEqual(backend.batches, [1, 4, 4, 1])
        self.assertEqual(self.values(backend), list(range(10)))


class SplitWriteTests(StatsTestCase):
    @defer.inlineCallbacks
    def test_a_burst_of_many_writes_finishing_at_once_is_spooled_without_recursion(self):
        # Buildbot's test reactor runs the spool thread's calls at once (so does a
        # stopped spool thread, failing): the writes of a burst must follow each
        # other in a loop, not each from the end of the one before.
        from buildbot_stats.delivery import writer as spool_writer

        self.patch(spool_writer, "MAX_RECORDS_PER_WRITE", 1)
        n = 1500  # more writes than Python's recursion limit allows frames
        yield self.put_points([Point("s", {"i": i}, {}, 10**18 + i) for i in range(n)])
        yield self.stats.reconfigService([])  # stops the queue: it delivers what it holds
        self.assertEqual([p.fields["i"] for p in self.backend.points], list(range(n)))


class RetryTests(DataTestCase):
    @defer.inlineCallbacks
    def test_transient_failure_is_retried_with_backoff_and_stored_once(self):
        backend = yield self.use(capture.CaptureData("m", "builder1"), max_retry_delay=8)
        backend.fail_next(3)
        self.post(5)
        self.assertEqual(backend.points, [])
        self.assertLogged("writing 1 point to backend 'RecordingStorage' failed")
        for _ in range(10):
            self.reactor.advance(8)
        self.assertEqual(self.values(backend), [0, 1, 2, 3, 4])
        counters = self.stats.counters
        self.assertEqual((counters["written"], counters["pending"], counters["dropped"]), (5, 0, 0))
        self.assertGreater(counters["retried"], 0)
        self.assertLogged("accepts writes again")

    def test_backoff_grows_and_is_capped(self):
        from buildbot_stats.options import DeliveryPolicy

        policy = DeliveryPolicy(min_retry_delay=0.5, max_retry_delay=60)
        delays = [policy.retry_delay(a) for a in range(1, 20)]
        self.assertTrue(all(0.25 <= d <= 60 for d in delays))
        self.assertLessEqual(delays[0], 0.5)
        self.assertGreaterEqual(delays[-1], 30)
        self.assertEqual(policy.retry_delay(1, needs_fixing=True), 60)

    @defer.inlineCallbacks
    def test_configuration_error_is_retried_slowly(self):
        backend = yield self.use(capture.CaptureData("m", "builder1"), max_retry_delay=30)
        backend.fail_next(1, RefusedWriteError("database 'x' not found"))
        self.post(2)
        self.assertLogged("database 'x' not found")
        self.reactor.advance(29)
        self.assertEqual(backend.points, [])
        self.reactor.advance(1)
        self.assertEqual(self.values(backend), [0, 1])

    @defer.inlineCallbacks
    def test_batch_too_large_is_halved(self):
        threads_ = ControlledThreads(self)
        backend = yield self.use(capture.CaptureData("m", "builder1"))
        self.post(1)
        self.post(8, start=1)
        threads_.run_next()
        backend.fail_next(1, BatchTooLargeError("too big"))
        threads_.run_all()
        self.assertEqual(sorted(self.values(backend)), list(range(9)))
        self.assertEqual(backend.batches, [1, 4, 4])

    @defer.inlineCallbacks
    def test_unnamed_bad_point_is_found_by_splitting_and_dropped_alone(self):
        from buildbot_stats.errors import SplitBatchError

        class RejectsSeven(RecordingStorage):
            def thd_postStatsValues(self, points):
                if any(p.fields["i"] == 7 for p in points):
                    raise SplitBatchError("field type conflict")
                return super().thd_postStatsValues(points)

        threads_ = ControlledThreads(self)
        backend = RejectsSeven(captures=[capture.CaptureData("m", "builder1")])
        yield self.stats.reconfigService([backend], spool_path=None)
        self.post(1)
        self.post(15, start=1)
        threads_.run_all()
        self.assertEqual(sorted(self.values(backend)), [i for i in range(16) if i != 7])
        self.assertEqual(self.stats.counters["dropped"], 1)
        self.assertLogged(
            "rejected field '\\*' of series 'builder1-m': refused by the backend: field type conflict"
        )

    @defer.inlineCallbacks
    def test_old_style_backend_partial_failure_resends_only_the_rest(self):
        class Flaky(StatsStorageBase):
            name = "flaky"

            def __init__(self):
                self.captures = [capture.CaptureData("m", "builder1")]
                self.stored = []
                self.fail_at = 2

            def thd_postStatsValue(self, post_data, series_name, context=None):
                if len(self.stored) == self.fail_at:
                    self.fail_at = None
                    raise ConnectionError("reset")
                self.stored.append(post_data["i"])

        threads_ = ControlledThreads(self)
        backend = Flaky()
        yield self.stats.reconfigService([backend], spool_path=None)
        self.post(1)
        self.post(4, start=1)
        threads_.run_all(between=lambda: self.reactor.advance(60))
        self.assertEqual(backend.stored, [0, 1, 2, 3, 4])

    @defer.inlineCallbacks
    def test_rejected_values_are_counted_and_logged_once_per_field(self):
        class Rejecting(RecordingStorage):
            def thd_postStatsValues(self, points):
                super().thd_postStatsValues(points)
                problems = [PointProblem(p.series, "i", "NaN cannot be stored") for p in points]
                return WriteReport(problems=problems, rejected_points=len(points))

        backend = Rejecting(captures=[capture.CaptureData("m", "builder1")])
        yield self.stats.reconfigService([backend], spool_path=None)
        self.post(3)
        self.assertLogged("rejected field 'i' of series 'builder1-m': NaN cannot be stored")
        self.assertEqual(self.stats.counters["dropped"], 3)


class SpoolTests(DataTestCase):
    def spool_path(self):
        directory = tempfile.mkdtemp(prefix="bbstats-spool-")
        self.addCleanup(lambda: [os.remove(os.path.join(directory, f)) for f in os.listdir(directory)])
        return os.path.join(directory, "spool.sqlite")

    @defer.inlineCallbacks
    def replace_service(self, backend, **kwargs):
        if self.stats.parent is not None:
            yield self.stats.disownServiceParent()
        self.stats = StatsService(storage_backends=[backend], name="StatsService", **kwargs)
        yield self.stats.setServiceParent(self.master)

    @defer.inlineCallbacks
    def test_points_pending_at_stop_are_sent_after_restart(self):
        path = self.spool_path()
        down = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name="influx")
        down.fail_next(1000)
        yield self.replace_service(down, spool_path=path, flush_timeout=1)
        self.post(20)
        self.assertEqual(self.stats.counters["spooled"], 20)
        yield self.stats.disownServiceParent()  # stops: points stay in the spool
        self.assertEqual(down.points, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

        up = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name="influx")
        yield self.replace_service(up, spool_path=path)
        self.assertEqual(self.values(up), list(range(20)))
        self.post(1, start=20)
        self.assertEqual(self.values(up), list(range(21)))
        yield self.stats.disownServiceParent()

        # everything was acknowledged: a third start sends nothing again
        again = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name="influx")
        yield self.replace_service(again, spool_path=path)
        self.assertEqual(again.points, [])

    @defer.inlineCallbacks
    def test_spool_keeps_points_of_each_backend_apart(self):
        path = self.spool_path()
        cap = capture.CaptureData("m", "builder1")
        a, b = RecordingStorage([cap], name="a"), RecordingStorage([cap], name="b")
        a.fail_next(100)
        b.fail_next(100)
        yield self.stats.disownServiceParent()
        self.stats = StatsService(
            storage_backends=[a, b], name="StatsService", spool_path=path, flush_timeout=0
        )
        yield self.stats.setServiceParent(self.master)
        self.post(3)
        yield self.stats.disownServiceParent()
        cap2 = capture.CaptureData("m", "builder1")
        only_b = RecordingStorage([cap2], name="b")
        yield self.replace_service(only_b, spool_path=path)
        self.assertEqual(self.values(only_b), [0, 1, 2])

    @defer.inlineCallbacks
    def test_full_spool_drops_oldest_and_counts(self):
        path = self.spool_path()
        backend = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name="influx")
        backend.fail_next(1)
        yield self.replace_service(backend, spool_path=path, max_spool_points=5, max_retry_delay=10)
        self.post(12)
        self.assertEqual(self.stats.counters["dropped"], 7)
        self.assertLogged("spool of backend 'influx' is full")
        self.reactor.advance(10)
        self.assertEqual(self.values(backend), [7, 8, 9, 10, 11])
        self.assertLogged("7 points of backend 'influx' were dropped")
        yield self.stats.disownServiceParent()
        again = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name="influx")
        yield self.replace_service(again, spool_path=path)
        self.assertEqual(again.points, [])

    @defer.inlineCallbacks
    def test_unusable_spool_path_falls_back_to_memory_with_a_log_line(self):
        backend = RecordingStorage(captures=[capture.CaptureData("m", "builder1")])
        yield self.replace_service(backend, spool_path="/proc/no/such/dir/spool.sqlite")
        self.assertLogged("cannot open the spool /proc/no/such/dir/spool.sqlite")
        self.post(2)
        self.assertEqual(self.values(backend), [0, 1])

    @defer.inlineCallbacks
    def test_default_spool_lives_in_master_basedir(self):
        backend = RecordingStorage(captures=[capture.CaptureData("m", "builder1")])
        yield self.replace_service(backend)
        self.assertEqual(self.stats.spool.path, os.path.join(self.master.basedir, "stats-spool.sqlite"))
        self.assertTrue(os.path.exists(self.stats.spool.path))

    def test_spool_round_trips_awkward_values(self):
        from buildbot_stats.delivery.spool import dump_points, load_points

        point = Point(
            "s,é x",
            {"nan": float("nan"), "inf": float("-inf"), "big": 2**70, "b": b"\xff", "d": {"k": [1, None]}},
            {"t": 1},
            123,
        )
        (back,) = load_points(dump_points([point]))
        self.assertEqual(back.series, "s,é x")
        self.assertTrue(back.fields["nan"] != back.fields["nan"])
        self.assertEqual(back.fields["inf"], float("-inf"))
        self.assertEqual(back.fields["big"], 2**70)
        self.assertEqual(back.fields["b"], "\ufffd")
        self.assertEqual(back.fields["d"], {"k": [1, None]})
        self.assertEqual((back.tags, back.time_ns), ({"t": 1}, 123))


class SegmentTests(DataTestCase):
    """The spool writes segments of points; a segment goes once all its points are accepted."""

    spool_path = SpoolTests.spool_path
    replace_service = SpoolTests.replace_service

    def spool_rows(self, path, what="COUNT(*)"):
        import sqlite3

        conn = sqlite3.connect(path)
        try:
            return conn.execute(f"SELECT {what} FROM buildbot_stats_segments").fetchone()[0] or 0
        finally:
            conn.close()

    def points(self, start, n):
        return [Point("builder1-m", {"i": i}, {"t": "x"}, 10**18 + i) for i in range(start, start + n)]

    @defer.inlineCallbacks
    def test_partly_accepted_segment_is_sent_again_after_a_restart(self):

        class AcceptsThree(RecordingStorage):
            """Stores the first 3 points of the first write, then the connection breaks."""

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.down = False

            def thd_postStatsValues(self, points):
                if self.down:
                    raise ConnectionError("down")
                self.down = True
                super().thd_postStatsValues(points[:3])
                raise PartialDeliveryError(3, ConnectionError("reset"))

        path = self.spool_path()
        first = AcceptsThree(captures=[capture.CaptureData("m", "builder1")], name="influx")
        yield self.replace_service(first, spool_path=path, flush_timeout=0, batch_size=10)
        yield self.put_points(self.points(0, 10))
        self.assertEqual(self.values(first), [0, 1, 2])
        self.assertEqual(self.stats.counters["written"], 3)
        self.assertEqual(self.spool_rows(path), 1)  # one segment of 10 points
        self.assertEqual(self.spool_rows(path, "SUM(n)"), 10)
        yield self.stats.disownServiceParent()

        # the whole segment comes back: the 3 accepted points again (same
        # timestamps: InfluxDB overwrites them), and the 7 others
        up = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name="influx")
        yield self.replace_service(up, spool_path=path, batch_size=4)
        self.assertEqual(self.values(up), list(range(10)))
        self.assertEqual([p.time_ns for p in up.points], [10**18 + i for i in range(10)])
        yield self.stats.disownServiceParent()
        self.assertEqual(self.spool_rows(path), 0)

    @defer.inlineCallbacks
    def test_segment_accepted_in_parts_leaves_only_when_all_are_accepted(self):
        path = self.spool_path()
        backend = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name="influx")
        backend.fail_next(1)
        yield self.replace_service(backend, spool_path=path, batch_size=8, max_retry_delay=10)
        queue = self.stats.queues["influx"]
        yield self.put_points(self.points(0, 8))  # one segment; its write fails
        self.assertEqual(self.spool_rows(path), 1)
        queue._batch_limit = 3  # as after a "batch too large": the segment goes in parts
        threads_ = ControlledThreads(self)
        self.reactor.advance(10)
        threads_.run_next()  # points 0-2 accepted
        self.assertEqual(self.values(backend), [0, 1, 2])
        yield self.stats.spool.call(lambda spool: None)  # the spool thread is idle
        self.assertEqual(self.spool_rows(path), 1)
        threads_.run_all()
        self.assertEqual(self.values(backend), list(range(8)))
        yield self.stats.spool.call(lambda spool: None)
        self.assertEqual(self.spool_rows(path), 0)
        yield self.stats.disownServiceParent()
        again = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name="influx")
        yield self.replace_service(again, spool_path=path)
        self.assertEqual(again.points, [])

    @defer.inlineCallbacks
    def test_spool_writes_one_row_per_segment(self):
        path = self.spool_path()
        down = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name="influx")
        down.fail_next(1000)
        yield self.replace_service(down, spool_path=path, flush_timeout=0, batch_size=4)
        yield self.put_points(self.points(0, 10))
        self.assertEqual(self.spool_rows(path), 3)  # 4 + 4 + 2
        self.assertEqual(self.spool_rows(path, "SUM(n)"), 10)
        yield self.stats.disownServiceParent()
        up = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name="influx")
        yield self.replace_service(up, spool_path=path)
        self.assertEqual(self.values(up), list(range(10)))

    def test_segment_round_trips_awkward_values(self):
        import datetime
        import enum

        from buildbot_stats.delivery.spool import dump_points, load_points
        from buildbot_stats.point import to_json_value
        from buildbot_stats.ui.store import from_json_value

        def via_json(p):
            return Point(
                str(p.series),
                from_json_value(json.loads(json.dumps(to_json_value(p.fields)))),
                from_json_value(json.loads(json.dumps(to_json_value(p.tags)))),
                p.time_ns,
            )

        class Level(enum.IntEnum):
            HIGH = 3

        awkward = Point(
            "s,é x",
            {
                "nan": float("nan"),
                "inf": float("-inf"),
                "big": 2**70,
                "b": b"\xff",
                "d": {"k": [1, None], True: (1, 2), None: {3}},
                "e": Level.HIGH,
                "when": datetime.datetime(2020, 1, 2, 3, 4, 5),
            },
            {"t": 1, 2: "x"},
            123,
        )
        plain = Point("s", {"i": 1, "f": 0.5, "s": "x", "n": None}, {"a": "b"}, 5)
        for p in (plain, awkward):
            (back,) = load_points(dump_points([p]))
            self.assertEqual(repr(back), repr(via_json(p)))
        self.assertEqual(load_points(dump_points([plain])), [plain])

    def test_spool_refuses_pickled_objects(self):
        import pickle

        from buildbot_stats.delivery.spool import load_pickled_points, load_points

        data = pickle.dumps(("columns-1", ["s"], [{"x": os.getcwd}], [{}], [1]))
        with self.assertRaises(pickle.UnpicklingError):  # (read only to migrate a spool of schema 2 to 4)
            load_pickled_points(data)
        with self.assertRaises(ValueError):  # the spool's own codec is msgpack
            load_points(data)


class SpoolRobustnessTests(DataTestCase):
    """A damaged spool, a shared spool file, a reconfig mid-capture: the master starts, nothing mixes."""

    spool_path = SpoolTests.spool_path
    replace_service = SpoolTests.replace_service

    def recorder(self, name="influx", down=False):
        backend = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name=name)
        if down:
            backend.fail_next(1000)
        return backend

    @defer.inlineCallbacks
    def spool_some(self, path, n=6, **kwargs):
        yield self.replace_service(self.recorder(down=True), spool_path=path, flush_timeout=0, **kwargs)
        for i in range(n):  # one spool write (one segment) per post
            self.post(1, start=i)
        yield self.stats.disownServiceParent()

    @defer.inlineCallbacks
    def test_unreadable_segment_is_set_aside_and_the_rest_delivered(self):
        import sqlite3

        path = self.spool_path()
        yield self.spool_some(path)
        conn = sqlite3.connect(path)
        first = conn.execute("SELECT MIN(id) FROM buildbot_stats_segments").fetchone()[0]
        conn.execute("UPDATE buildbot_stats_segments SET data = x'00112233' WHERE id = ?", (first,))
        conn.commit()
        conn.close()
        up = self.recorder()
        yield self.replace_service(up, spool_path=path)
        self.assertEqual(self.values(up), [1, 2, 3, 4, 5])
        self.assertLogged(
            "1 point of backend 'influx' could not be read from the spool; .* moved to the table"
        )
        conn = sqlite3.connect(path)
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM buildbot_stats_unreadable").fetchone()[0], 1)
        conn.close()

    @defer.inlineCallbacks
    def test_unreadable_spool_file_is_renamed_and_a_new_one_used(self):
        from buildbot_stats.delivery.spool import SQLiteSpool

        path = self.spool_path()
        spool = SQLiteSpool(path)  # a spool of ours, then damaged after its header
        spool.thd_open()
        spool.thd_close()
        with open(path, "r+b") as f:
            f.seek(100)
            f.write(b"this is not an SQLite database, it is garbage" * 100)
        up = self.recorder()
        yield self.replace_service(up, spool_path=path)
        self.assertLogged("could not be read .*; it was moved to .*unreadable-")
        self.assertTrue(self.stats.spool.spool.durable)
        self.post(2)
        self.assertEqual(self.values(up), [0, 1])
        aside = [f for f in os.listdir(os.path.dirname(path)) if ".unreadable-" in f]
        self.assertEqual(len(aside), 1)

    @defer.inlineCallbacks
    def test_two_services_sharing_a_spool_file_keep_their_points_apart(self):
        path = self.spool_path()
        a = StatsService(storage_backends=[self.recorder(down=True)], name="stats-a", spool_path=path)
        b = StatsService(storage_backends=[self.recorder(down=True)], name="stats-b", spool_path=path)
        yield self.stats.disownServiceParent()
        yield a.setServiceParent(self.master)
        yield b.setServiceParent(self.master)
        self.post(3)  # both services capture the same three values
        yield a.disownServiceParent()
        yield b.disownServiceParent()
        up_a, up_b = self.recorder(), self.recorder()
        a2 = StatsService(storage_backends=[up_a], name="stats-a", spool_path=path)
        yield a2.setServiceParent(self.master)
        self.assertEqual(self.values(up_a), [0, 1, 2])
        b2 = StatsService(storage_backends=[up_b], name="stats-b", spool_path=path)
        yield b2.setServiceParent(self.master)
        self.assertEqual(self.values(up_b), [0, 1, 2])
        yield a2.disownServiceParent()
        yield b2.disownServiceParent()

    @defer.inlineCallbacks
    def test_points_waiting_when_their_backend_is_removed_stay_spooled_until_it_returns(self):
        path = self.spool_path()
        yield self.replace_service(self.recorder(down=True), spool_path=path, flush_timeout=0)
        writer = self.stats._queues.writer
        held = HeldSpoolCalls(self, writer)
        self.post(1)  # a spool write in flight ...
        self.post(2, start=1)  # ... and two values waiting for the next
        self.assertEqual(len(held.calls), 1)
        # a reconfig removes the backend meanwhile
        reconfigured = self.stats.reconfigService([self.recorder(name="other")], spool_path=path)
        while held.calls:
            held.run_next()
        yield reconfigured
        self.assertLogged("backend 'influx' is no longer configured: its points that were on their way")
        yield self.stats.disownServiceParent()
        up = self.recorder()
        yield self.replace_service(up, spool_path=path)
        self.assertEqual(self.values(up), [0, 1, 2])

    @defer.inlineCallbacks
    def test_points_of_a_removed_backend_are_announced_at_start(self):
        path = self.spool_path()
        yield self.spool_some(path, n=2)
        other = self.recorder(name="other")
        yield self.replace_service(other, spool_path=path)
        self.assertLogged("the spool holds 2 point.* of backend 'influx', which is not configured")

    @defer.inlineCallbacks
    def test_capture_busy_during_reconfig_stores_into_the_new_backend(self):
        cap = capture.CaptureData("m", "builder1")
        old = RecordingStorage(captures=[cap], name="influx")
        yield self.stats.reconfigService([old], spool_path=None)
        new = RecordingStorage(captures=[cap], name="influx")
        # the capture started before the reconfig and still holds the old backend
        parents = cap.parent_svcs
        yield self.stats.reconfigService([new], spool_path=None)
        cap.parent_svcs = parents
        yield cap._store({"i": 7}, "builder1-m", {})
        self.assertEqual((old.points, self.values(new)), ([], [7]))

    @defer.inlineCallbacks
    def test_stop_without_spool_says_pending_points_are_lost(self):
        down = self.recorder(down=True)
        yield self.replace_service(down, spool_path=None, flush_timeout=0)
        self.post(2)
        yield self.stats.disownServiceParent()
        self.assertLogged("2 points of backend 'influx' are lost: there is no spool file")


class PreparingStorage(RecordingStorage):
    """A backend with the optional ``prepare(master)`` hook: counts calls, may fail them."""

    def __init__(self, captures):
        super().__init__(captures=captures)
        self.prepared = []
        self.prepare_error = None

    def prepare(self, master):
        self.prepared.append(master)
        if self.prepare_error is not None:
            raise self.prepare_error


class PrepareHookTests(DataTestCase):
    @defer.inlineCallbacks
    def use_preparing(self, **kwargs):
        self.backend = PreparingStorage([capture.CaptureData("m", "builder1")])
        yield self.stats.reconfigService([self.backend], spool_path=None, **kwargs)
        return self.backend

    @defer.inlineCallbacks
    def test_prepare_runs_once_before_writes_and_again_after_a_refusal(self):
        backend = yield self.use_preparing(max_retry_delay=5)
        self.assertEqual(backend.prepared, [self.master])  # at configure, before any point
        self.post(2)
        self.assertEqual(len(backend.prepared), 1)
        backend.fail_next(1, RefusedWriteError("HTTP 401"))
        self.post(1, start=2)
        self.assertEqual(len(backend.prepared), 1)
        self.reactor.advance(5)
        self.assertEqual(len(backend.prepared), 2)  # e.g. the password rendered again
        self.assertEqual(self.values(backend), [0, 1, 2])

    @defer.inlineCallbacks
    def test_failing_prepare_keeps_points_and_is_tried_again(self):
        backend = PreparingStorage([capture.CaptureData("m", "builder1")])
        backend.prepare_error = KeyError("secret key pw is not found in any provider")
        yield self.stats.reconfigService([backend], spool_path=None, max_retry_delay=5)
        self.post(3)
        self.assertEqual(backend.points, [])
        self.assertLogged("backend 'RecordingStorage' is not ready .KeyError: 'secret key pw is not found")
        self.assertEqual(self.stats.counters["pending"], 3)
        backend.prepare_error = None
        self.reactor.advance(5)
        self.assertEqual(self.values(backend), [0, 1, 2])

    @defer.inlineCallbacks
    def test_retry_after_is_waited_for_even_beyond_the_backoff(self):

        backend = yield self.use(capture.CaptureData("m", "builder1"), max_retry_delay=2)
        backend.fail_next(1, TransientWriteError("HTTP 429", retry_after=40))
        self.post(1)
        self.reactor.advance(39)
        self.assertEqual(backend.points, [])
        self.reactor.advance(1)
        self.assertEqual(self.values(backend), [0])


class ProblemBurstTests(DataTestCase):
    @defer.inlineCallbacks
    def test_a_value_rejected_in_every_write_is_one_line_per_burst(self):
        class Rejecting(RecordingStorage):
            def thd_postStatsValues(self, points):
                problems = [PointProblem(p.series, "i", "NaN cannot be stored") for p in points]
                return WriteReport(problems=problems, rejected_points=len(points))

        backend = Rejecting(captures=[capture.CaptureData("m", "builder1")])
        yield self.stats.reconfigService([backend], spool_path=None)
        for i in range(5):  # a quiet master: each value is a write of its own
            self.post(1, start=i)
            yield self.stats.wait_spooled()
        self.assertEqual(self.stats.counters["dropped"], 5)
        rejected = [m for m in self.logged_messages() if "rejected field 'i'" in m]
        self.assertEqual(len(rejected), 1, rejected)
        self.reactor.advance(60)  # the burst's window: one summary of the repeats
        summaries = [m for m in self.logged_messages() if "more failure(s) like this" in m]
        self.assertEqual(len(summaries), 1, summaries)
        self.assertIn("rejected field 'i' of series 'builder1-m'", summaries[0])

    def logged_messages(self):
        return [log.textFromEventDict(e) or "" for e in self._logEvents]


class HeldSpoolCalls:
    """The spool writer's calls wait until the test runs them (a spool write in flight)."""

    def __init__(self, testcase, writer):
        self.real = writer.spool
        self.calls = []
        testcase.patch(writer, "spool", self)

    def call(self, f, *args):
        d = defer.Deferred()
        self.calls.append((d, f, args))
        return d

    def run_next(self, index=0):
        """Run the oldest call waiting (or the one at ``index``: a later one ends first)."""
        d, f, args = self.calls.pop(index)
        self.real.call(f, *args).chainDeferred(d)


class DeliveryHoldTests(DataTestCase):
    """Values awaited one by one: each is spooled at once, and sent with the others."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.threads = ControlledThreads(self)
        self.backend = yield self.use(capture.CaptureData("m", "builder1"))
        self.patch(self.master.mq, "produce", self.master.mq.callConsumer)  # calls consumers at once
        self.writer = self.stats._queues.writer
        self.spool = HeldSpoolCalls(self, self.writer)
        self.acknowledged = []

    def awaited_loop(self, n, i=0):
        """Post value i; once it is acknowledged (spooled), the next: as ``await`` in a loop does."""
        if i < n:
            d = self.stats.yieldMetricsValue("m", {"i": i}, 1)
            d.addCallback(lambda _: self.acknowledged.append(i))
            d.addCallback(lambda _: self.awaited_loop(n, i + 1))

    def test_values_awaited_one_by_one_are_sent_together_once_the_writer_is_quiet(self):
        self.awaited_loop(5)
        for i in range(5):
            self.assertEqual(len(self.spool.calls), 1)
            self.assertEqual(self.threads.calls, [])  # nothing read back or sent meanwhile
            self.spool.run_next()
            self.assertEqual(self.acknowledged, list(range(i + 1)))  # spooled: acknowledged at once
        self.assertEqual(self.spool.calls, [])
        self.threads.run_all()
        self.assertEqual(self.backend.batches, [5])
        self.assertEqual(self.values(self.backend), list(range(5)))
        self.assertEqual(self.stats.counters["written"], 5)

    @defer.inlineCallbacks
    def test_a_burst_is_sent_while_it_is_still_being_spooled(self):
        from buildbot_stats.delivery import writer as spool_writer

        self.patch(spool_writer, "MAX_RECORDS_PER_WRITE", 3)
        backend = yield self.use(capture.CaptureData("m", "builder1"), batch_size=4)
        self.assertEqual((self.spool.calls, self.threads.calls), ([], []))
        self.stats.yieldMetricsValues("m", [{"i": i} for i in range(12)], 1)
        self.spool.run_next()  # 3 spooled, the next 3 being written: held (less than a batch)
        self.assertEqual(self.threads.calls, [])
        self.spool.run_next()  # 6 spooled, more being written: a batch waits, so it is sent now
        self.assertEqual(len(self.spool.calls), 1)
        self.assertEqual(len(self.threads.calls), 1)
        while self.spool.calls or self.threads.calls:
            (self.spool.run_next if self.spool.calls else self.threads.run_next)()
        self.assertEqual(self.values(backend), list(range(12)))

    @defer.inlineCallbacks
    def test_a_stream_is_sent_hold_points_at_a_time_when_a_batch_is_larger(self):
        from buildbot_stats.delivery import queue as queue_module

        self.patch(queue_module, "HOLD_POINTS", 3)
        backend = yield self.use(capture.CaptureData("m", "builder1"), batch_size=100)
        self.awaited_loop(9)
        for _ in range(8):
            self.spool.run_next()
            self.threads.run_all()
        self.spool.run_next()
        self.threads.run_all()
        self.assertEqual(self.values(backend), list(range(9)))
        self.assertEqual(backend.batches, [3, 3, 3])

    @defer.inlineCallbacks
    def test_a_stream_is_sent_before_the_spool_bounds_would_drop_any_of_it(self):
        # max_spool_points below batch_size: a "full batch" is all that the bounds keep
        backend = yield self.use(capture.CaptureData("m", "builder1"), batch_size=10, max_spool_points=3)
        self.awaited_loop(30)
        for _ in range(29):  # a stream that never pauses, to a backend that is up
            self.spool.run_next()
            self.threads.run_all()
        self.assertGreater(len(self.values(backend)), 20)  # sent while the stream goes on
        self.spool.run_next()
        self.threads.run_all()
        self.assertEqual(self.values(backend), list(range(30)))
        self.assertEqual(self.stats.counters["dropped"], 0)

    @defer.inlineCallbacks
    def test_a_stream_that_never_pauses_is_sent_a_full_batch_at_a_time(self):
        backend = yield self.use(capture.CaptureData("m", "builder1"), batch_size=4)
        self.awaited_loop(10)
        for _ in range(3):
            self.spool.run_next()
        self.assertEqual(self.threads.calls, [])  # held: less than a batch spooled, the next write runs
        self.spool.run_next()  # a whole batch waits: sent now, while the stream goes on
        self.assertEqual(len(self.spool.calls), 1)
        self.assertEqual(len(self.threads.calls), 1)
        self.threads.run_all()
        self.assertEqual(self.values(backend), list(range(4)))
        for _ in range(6):
            self.spool.run_next()
        self.threads.run_all()
        self.assertEqual(self.values(backend), list(range(10)))
        self.assertEqual(backend.batches, [4, 4, 2])

    @defer.inlineCallbacks
    def test_stopping_during_a_stream_of_writes_sends_what_is_spooled(self):
        self.awaited_loop(3)
        self.spool.run_next()
        self.spool.run_next()  # delivery is held: the third write runs
        stopped = self.stats.disownServiceParent()
        while self.spool.calls or self.threads.calls:
            if self.spool.calls:
                self.spool.run_next()
            else:
                self.threads.run_next()
        yield stopped
        self.assertEqual(self.values(self.backend), [0, 1, 2])


def test_a_burst_is_spooled_in_writes_of_bounded_size_each_acknowledged_once_spooled(monkeypatch):
    from buildbot_stats.delivery import writer as spool_writer

    monkeypatch.setattr(spool_writer, "MAX_RECORDS_PER_WRITE", 3)
    writes = []

    class InFlight:
        """A spool thread whose writes finish when the test says so."""

        def call(self, f, records, *args):
            d = defer.Deferred()
            writes.append((d, [fields["i"] for fields in records[2::5]]))
            return d

    writer = spool_writer.SpoolWriter(InFlight(), lambda result: None)
    first = writer.add(((), "s", {"i": 0}, {}, 10**18))  # written at once
    burst = [writer.add(((), "s", {"i": i}, {}, 10**18 + i)) for i in range(1, 9)]
    assert [w[1] for w in writes] == [[0]]
    writes[0][0].callback(None)
    assert first.called and not any(d.called for d in burst)
    writes[1][0].callback(None)
    assert [d.called for d in burst] == [True] * 3 + [False] * 5  # 1, 2 and 3 are in the spool
    while not burst[-1].called:
        writes[-1][0].callback(None)
    assert [w[1] for w in writes] == [[0], [1, 2, 3], [4, 5, 6], [7, 8]]
    assert all(d.called for d in burst)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_split_writes_keep_every_record_once_in_order_and_acknowledge_only_what_is_spooled(seed):
    """A model check of SpoolWriter: any mix of posts, waits and writes finishing at once or later.

    Callbacks on an acknowledgement post again (as a step awaiting each value does).
    """
    from buildbot_stats.delivery import writer as spool_writer

    rnd = random.Random(seed)  # not hypothesis' own Random: callbacks may outlive a failing example
    in_flight, written, waits = [], [], []
    posted = [0]

    class Spool:
        def call(self, f, records, *args):
            ids = [fields["i"] for fields in records[2::5]]
            assert 0 < len(ids) <= spool_writer.MAX_RECORDS_PER_WRITE
            if rnd.random() < 0.5:
                written.extend(ids)
                return defer.succeed(None)
            d = defer.Deferred()
            in_flight.append((d, ids))
            return d

    def post(n, depth=0):
        start = posted[0]
        posted[0] += n
        records = [((), "s", {"i": start + j}, {}, 10**18) for j in range(n)]
        d = writer.add(records[0]) if n == 1 else writer.add_many(records)
        waits.append((d, posted[0]))
        if depth < 2 and rnd.random() < 0.3:

            def again(result):
                post(rnd.randint(1, 4), depth + 1)
                return result

            d.addCallback(again)

    def finish_one():
        d, ids = in_flight.pop(0)
        written.extend(ids)
        d.callback(None)

    original = spool_writer.MAX_RECORDS_PER_WRITE
    spool_writer.MAX_RECORDS_PER_WRITE = 2
    try:
        writer = spool_writer.SpoolWriter(Spool(), lambda result: None)
        for _ in range(40):
            op = rnd.random()
            if op < 0.5:
                post(rnd.randint(1, 6))
            elif op < 0.6:
                waits.append((writer.waiter(), posted[0]))
            elif in_flight:
                finish_one()
            for d, upto in waits:
                assert not d.called or len(written) >= upto  # acknowledged means kept
        for _ in range(10_000):
            if not in_flight:
                break
            finish_one()
    finally:
        spool_writer.MAX_RECORDS_PER_WRITE = original
    assert written == list(range(posted[0]))
    assert all(d.called for d, _ in waits)


class UnstoredValueTests(DataTestCase):
    @defer.inlineCallbacks
    def test_values_that_cannot_become_points_are_one_line_per_burst_and_the_others_are_kept(self):
        cap = capture.CaptureData("m", "builder1")
        backend = yield self.use(cap)
        for i in range(50):  # e.g. a custom capture passing a time that is no time
            cap._store({"i": i}, "builder1-m", {}, object())
        yield cap._store({"i": 99}, "builder1-m", {})
        messages = [log.textFromEventDict(e) or "" for e in self._logEvents]
        lines = [m for m in messages if "was not stored" in m]
        self.assertEqual(
            lines,
            [
                "buildbot_stats: a value of series 'builder1-m' was not stored: "
                "TypeError: cannot use object as a timestamp"
            ],
        )
        yield self.stats.disownServiceParent()
        messages = [log.textFromEventDict(e) or "" for e in self._logEvents]
        summaries = [m for m in messages if "more failure(s) like this" in m]
        self.assertEqual(len(summaries), 1, summaries)
        self.assertIn("49 more failure(s)", summaries[0])
        self.assertEqual(self.values(backend), [99])


class LineProtocolRecorder(RecordingStorage):
    """Records line protocol as InfluxStorageService makes it: encoded once, on the spool thread."""

    def __init__(self, captures, precision="n"):
        super().__init__(captures=captures)
        self.precision = precision
        self.lines: list[bytes] = []

    def thd_encode(self, points):
        from buildbot_stats.lineprotocol import encode_body

        body, problems, skipped = encode_body(points, self.precision)
        return f"influx-lp/{self.precision}", body, WriteReport(problems, skipped)

    def thd_post_encoded(self, data, encoding):
        self._maybe_fail()
        with self._lock:
            self.lines.extend(data.split(b"\n"))
            self.batches.append(data.count(b"\n") + 1)
        return WriteReport()


class OneWriteInFlightTests(DataTestCase):
    """One write at a time per backend, whatever the backend asks for."""

    def values(self, backend):
        return [int(line.split(b" ")[1].split(b",")[0][2:-1]) for line in backend.lines]

    @defer.inlineCallbacks
    def start(self, backend_class=LineProtocolRecorder):
        """One write in flight (1 point), 20 points spooled behind it: returns (threads, backend)."""
        threads_ = ControlledThreads(self)
        backend = backend_class([capture.CaptureData("m", "builder1")])
        yield self.stats.reconfigService([backend], spool_path=None, batch_size=5, max_retry_delay=1)
        points = [Point("m", {"i": i}, {"builder": "b"}, 10**18 + i) for i in range(21)]
        yield self.put_points(points[:1])
        yield self.put_points(points[1:])
        return threads_, backend

    def run_all(self, threads_):
        """Run every write (and the retries, 2 s apart); how many were in flight at once, at most."""
        most = 0
        while threads_.calls:
            most = max(most, len(threads_.calls))
            threads_.run_next()
            if not threads_.calls:
                self.reactor.advance(2)
        return most

    @defer.inlineCallbacks
    def test_writes_run_one_at_a_time_in_order(self):
        threads_, backend = yield self.start()
        self.assertEqual(self.run_all(threads_), 1)
        self.assertEqual(self.values(backend), list(range(21)))
        self.assertEqual(backend.batches, [1, 5, 5, 5, 5])

    @defer.inlineCallbacks
    def test_failures_are_retried_in_order_one_write_at_a_time(self):
        threads_, backend = yield self.start()
        backend.fail_next(2)
        self.assertEqual(self.run_all(threads_), 1)
        self.assertEqual(self.values(backend), list(range(21)))
        counters = self.stats.counters
        self.assertEqual((counters["written"], counters["pending"], counters["dropped"]), (21, 0, 0))
        self.assertEqual(counters["retried"], 2)

    @defer.inlineCallbacks
    def test_a_backend_that_sets_concurrent_writes_is_warned_once_and_gets_one_write_at_a_time(self):
        class TwoAtOnce(LineProtocolRecorder):
            concurrent_writes = 2

        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            threads_, backend = yield self.start(TwoAtOnce)
        self.assertEqual([w.category for w in warned], [DeprecationWarning])
        self.assertIn("TwoAtOnce.concurrent_writes is deprecated", str(warned[0].message))
        self.assertLogged("TwoAtOnce.concurrent_writes is deprecated and ignored")
        self.assertEqual(self.run_all(threads_), 1)
        self.assertEqual(self.values(backend), list(range(21)))
        # once per class: a reconfig with another object of the class says nothing more
        self._logEvents.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield self.stats.reconfigService(
                [TwoAtOnce([capture.CaptureData("m", "builder1")])], spool_path=None
            )
        self.assertNotLogged("is deprecated")

    @defer.inlineCallbacks
    def test_stopping_waits_for_the_write_in_flight_and_sends_the_rest(self):
        threads_, backend = yield self.start()
        stopped = self.stats.disownServiceParent()
        threads_.run_all()
        yield stopped
        self.assertEqual(self.values(backend), list(range(21)))

    @defer.inlineCallbacks
    def test_a_backend_replaced_while_a_write_runs_is_prepared_before_its_first_write(self):
        threads_ = ControlledThreads(self)
        old = LineProtocolRecorder([capture.CaptureData("m", "builder1")])
        yield self.stats.reconfigService([old], spool_path=None, batch_size=5, max_retry_delay=1)
        points = [Point("m", {"i": i}, {"builder": "b"}, 10**18 + i) for i in range(21)]
        yield self.put_points(points[:1])
        self.assertEqual(len(threads_.calls), 1)  # the first write runs (old backend)
        preparing = defer.Deferred()

        class Prepared(LineProtocolRecorder):
            prepared = False

            def prepare(self, master):
                def done(_):
                    self.prepared = True

                return preparing.addCallback(done)

            def thd_post_encoded(self, data, encoding):
                assert self.prepared, "written before prepare()"
                return super().thd_post_encoded(data, encoding)

        new = Prepared([capture.CaptureData("m", "builder1")])
        yield self.stats.reconfigService([new], spool_path=None, batch_size=5, max_retry_delay=1)
        yield self.put_points(points[1:])
        threads_.run_next()  # the old backend's write ends
        self.assertEqual(threads_.calls, [])  # nothing for the new backend before prepare()
        (queue,) = self.stats._queues.queues.values()
        self.assertEqual(queue.state, State.PREPARING)
        preparing.callback(None)
        threads_.run_all()
        self.assertEqual(self.values(old) + self.values(new), list(range(21)))
        self.assertEqual((queue.counters.written, queue.pending, queue.state), (21, 0, State.IDLE))
