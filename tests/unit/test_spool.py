"""The spool as the backlog: formats, migrations, damaged files, full disks, acknowledgements."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile

from buildbot.test.util.logging import LoggingMixin
from twisted.internet import defer

from buildbot_stats import capture
from buildbot_stats.cli import main as cli_main
from buildbot_stats.delivery import spool as spool_module
from buildbot_stats.delivery.spool import SQLiteSpool
from buildbot_stats.errors import SplitBatchError
from buildbot_stats.point import Point
from buildbot_stats.stats_service import StatsService
from buildbot_stats.storage_backends.base import WriteReport
from buildbot_stats.testing import RecordingStorage
from tests.fakes import YIELD_KEY, StatsTestCase


class EncodingStorage(RecordingStorage):
    """A backend that encodes once (one point per line) and is given the bytes back."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.posted: list[bytes] = []
        self.split_on: str | None = None

    def thd_encode(self, points):
        lines = [json.dumps([p.series, p.fields, p.tags, p.time_ns]) for p in points]
        return "test-json", "\n".join(lines).encode(), WriteReport()

    def thd_post_encoded(self, data, encoding):
        assert encoding == "test-json"
        self._maybe_fail()
        if self.split_on is not None and self.split_on.encode() in data:
            raise SplitBatchError("bad point somewhere")
        self.posted.append(data)
        for line in data.split(b"\n"):
            series, fields, tags, t = json.loads(line)
            self.points.append(Point(series, fields, tags, t))
        self.batches.append(data.count(b"\n") + 1)
        return WriteReport()


class SpoolCase(StatsTestCase, LoggingMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.setUpLogging()
        yield self.add_build()
        self.build_data = yield self.master.data.get(("builds", 1))
        self.dir = tempfile.mkdtemp(prefix="bbstats-spool-")
        self.addCleanup(lambda: [os.remove(os.path.join(self.dir, f)) for f in os.listdir(self.dir)])
        self.path = os.path.join(self.dir, "spool.sqlite")

    def post(self, n, start=0):
        for i in range(start, start + n):
            self.master.mq.callConsumer(
                YIELD_KEY, {"data_name": "m", "post_data": {"i": i}, "build_data": self.build_data}
            )

    def recorder(self, down=False, cls=RecordingStorage):
        backend = cls(captures=[capture.CaptureData("m", "builder1")], name="influx")
        if down:
            backend.fail_next(10_000)
        return backend

    @defer.inlineCallbacks
    def replace_service(self, backend, **kwargs):
        if self.stats.parent is not None:
            yield self.stats.disownServiceParent()
        self.stats = StatsService(storage_backends=[backend], name="StatsService", **kwargs)
        yield self.stats.setServiceParent(self.master)

    def values(self, backend):
        return [p.fields["i"] for p in backend.points]

    def rows(self, sql, path=None):
        conn = sqlite3.connect(path or self.path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


class EncodeOnceTests(SpoolCase):
    @defer.inlineCallbacks
    def test_backend_gets_the_bytes_it_encoded_once_for_every_attempt(self):
        backend = self.recorder(cls=EncodingStorage)
        backend.fail_next(2)
        yield self.replace_service(backend, spool_path=self.path, max_retry_delay=5)
        self.post(3)
        self.assertEqual(self.rows("SELECT DISTINCT encoding FROM buildbot_stats_segments"), [("test-json",)])
        for _ in range(5):
            self.reactor.advance(5)
        self.assertEqual(self.values(backend), [0, 1, 2])
        self.assertEqual(self.stats.counters["pending"], 0)
        self.assertEqual(self.rows("SELECT COUNT(*) FROM buildbot_stats_segments"), [(0,)])

    @defer.inlineCallbacks
    def test_unnamed_bad_point_among_encoded_lines_is_found_by_splitting(self):
        backend = self.recorder(cls=EncodingStorage, down=True)
        yield self.replace_service(backend, spool_path=self.path, flush_timeout=0)
        self.post(8)
        yield self.stats.disownServiceParent()
        up = self.recorder(cls=EncodingStorage)
        up.split_on = '{"i": 5}'
        yield self.replace_service(up, spool_path=self.path)
        self.assertEqual(self.values(up), [0, 1, 2, 3, 4, 6, 7])
        self.assertEqual(self.stats.counters["dropped"], 1)
        self.assertLogged("refused by the backend")


class DamagedSpoolTests(SpoolCase):
    @defer.inlineCallbacks
    def spool_some(self, n=300):
        yield self.replace_service(self.recorder(down=True), spool_path=self.path, flush_timeout=0)
        self.post(n)
        yield self.stats.disownServiceParent()

    @defer.inlineCallbacks
    def test_spool_damaged_past_its_header_is_set_aside_and_a_fresh_one_used(self):
        yield self.spool_some()
        size = os.path.getsize(self.path)
        with open(self.path, "r+b") as f:  # keep the 100-byte header and the first page
            f.seek(4096)
            f.write(b"\xa5" * (size - 4096))
        up = self.recorder()
        yield self.replace_service(up, spool_path=self.path)
        self.assertLogged("could not be read .*; it was moved to .*spool.sqlite.unreadable-")
        self.assertTrue(self.stats.spool.spool.durable)
        self.post(2, start=1000)
        self.assertEqual(self.values(up), [1000, 1001])
        aside = [f for f in os.listdir(self.dir) if ".unreadable-" in f and not f.endswith(("-wal", "-shm"))]
        self.assertEqual(len(aside), 1)

    @defer.inlineCallbacks
    def test_empty_spool_file_is_logged(self):
        open(self.path, "wb").close()
        up = self.recorder()
        yield self.replace_service(up, spool_path=self.path)
        self.assertLogged("the spool .*spool.sqlite was an empty file \\(0 bytes\\)")
        self.post(1)
        self.assertEqual(self.values(up), [0])

    @defer.inlineCallbacks
    def test_spool_of_another_schema_version_is_kept_aside_with_its_version_in_the_name(self):
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE buildbot_stats_segments (x)")
        conn.execute("PRAGMA user_version = 9")
        conn.commit()
        conn.close()
        up = self.recorder()
        yield self.replace_service(up, spool_path=self.path)
        self.assertLogged("has schema version 9, which this version of buildbot_stats cannot read")
        aside = [f for f in os.listdir(self.dir) if ".schema-9-" in f]
        self.assertEqual(len(aside), 1)
        conn = sqlite3.connect(os.path.join(self.dir, aside[0]))
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], 9)  # kept as it was
        conn.close()
        self.post(1)
        self.assertEqual(self.values(up), [0])


class FullDisk(SQLiteSpool):
    """A spool whose file refuses writes while ``full`` is set (as a full disk does)."""

    full = False
    fail_deletes = 0

    def _try(self, db, *statements):
        sql = statements[0][0]
        if FullDisk.full and db is self._file and sql.startswith("INSERT"):
            return "OperationalError: database or disk is full"
        if sql.startswith("DELETE") and FullDisk.fail_deletes:
            FullDisk.fail_deletes -= 1
            return "OperationalError: database or disk is full"
        return super()._try(db, *statements)


class FullDiskTests(SpoolCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.patch(spool_module, "SQLiteSpool", FullDisk)
        FullDisk.full = False
        FullDisk.fail_deletes = 0

    @defer.inlineCallbacks
    def test_full_disk_keeps_points_in_memory_within_the_bound_and_resumes(self):
        down = self.recorder(down=True)
        yield self.replace_service(down, spool_path=self.path, max_spool_points=5, max_retry_delay=10)
        self.post(2)
        self.assertEqual(self.stats.counters["spooled"], 2)
        FullDisk.full = True
        self.post(6, start=2)  # no exception into the MQ
        self.assertEqual(self.stats.counters["spooled"], 2)  # not in the file: not counted
        self.assertEqual(self.stats.counters["pending"], 5)
        self.assertLogged("cannot write the spool .*database or disk is full.*kept in memory")
        # the bound dropped the 3 oldest, the two in the file among them; the rest is in memory
        self.assertEqual(self.stats.counters["dropped"], 3)
        self.assertEqual(self.rows("SELECT COUNT(*) FROM buildbot_stats_segments"), [(0,)])
        FullDisk.full = False
        self.post(1, start=8)
        self.assertLogged("can be written again")
        self.assertEqual(self.rows("SELECT SUM(n) FROM buildbot_stats_segments"), [(5,)])
        yield self.stats.disownServiceParent()
        up = self.recorder()
        yield self.replace_service(up, spool_path=self.path)
        self.assertEqual(self.values(up), [4, 5, 6, 7, 8])

    @defer.inlineCallbacks
    def test_failed_segment_deletions_are_retried(self):
        backend = self.recorder()
        yield self.replace_service(backend, spool_path=self.path)
        FullDisk.fail_deletes = 1
        self.post(1)
        self.assertEqual(self.rows("SELECT COUNT(*) FROM buildbot_stats_segments"), [(1,)])
        self.post(1, start=1)  # the next release retries the first
        self.assertEqual(self.rows("SELECT COUNT(*) FROM buildbot_stats_segments"), [(0,)])
        yield self.stats.disownServiceParent()
        again = self.recorder()
        yield self.replace_service(again, spool_path=self.path)
        self.assertEqual(again.points, [])


class HeldThread:
    """Spool calls wait until the test runs them."""

    held: list = []

    def __init__(self, spool):
        self.spool = spool

    def call(self, f, *args):
        d = defer.Deferred()
        HeldThread.held.append((d, f, (self.spool, *args)))
        return d

    @staticmethod
    def run_all():
        while HeldThread.held:
            d, f, args = HeldThread.held.pop(0)
            d.callback(f(*args))


class AcknowledgedMeansKeptTests(SpoolCase):
    @defer.inlineCallbacks
    def test_yield_metrics_value_fires_once_the_value_is_spooled(self):
        yield self.replace_service(self.recorder(down=True), spool_path=self.path, flush_timeout=0)
        self.patch(self.stats._queues.writer, "spool", HeldThread(self.stats.spool.spool))
        HeldThread.held = []

        # Buildbot's MQ calls consumers at once (the fake one only records messages)
        self.patch(self.master.mq, "produce", self.master.mq.callConsumer)
        d1 = self.stats.yieldMetricsValue("m", {"i": 1}, 1)
        d2 = self.stats.yieldMetricsValues("m", [{"i": 2}, {"i": 3}], 1)
        self.assertFalse(d1.called)
        self.assertFalse(d2.called)
        HeldThread.run_all()
        self.assertTrue(d1.called)
        self.assertTrue(d2.called)
        self.assertEqual(self.rows("SELECT SUM(n) FROM buildbot_stats_segments"), [(3,)])
        # 1 alone, then 2 and 3 together (group commit)
        self.assertEqual(self.rows("SELECT n FROM buildbot_stats_segments ORDER BY id"), [(1,), (2,)])

    @defer.inlineCallbacks
    def test_a_burst_split_in_writes_is_acknowledged_with_its_last_write_and_survives_a_stop(self):
        # (a value whose write was under way is acknowledged with that write, though a
        # burst was posted meanwhile)
        from buildbot_stats.delivery import writer as spool_writer

        self.patch(spool_writer, "MAX_RECORDS_PER_WRITE", 7)
        yield self.replace_service(self.recorder(down=True), spool_path=self.path, flush_timeout=0)
        self.patch(self.stats._queues.writer, "spool", HeldThread(self.stats.spool.spool))
        HeldThread.held = []

        # Buildbot's MQ calls the consumers at once
        self.patch(self.master.mq, "produce", self.master.mq.callConsumer)
        first = self.stats.yieldMetricsValue("m", {"i": 0}, 1)  # a write of its own, held
        burst = self.stats.yieldMetricsValues("m", [{"i": i} for i in range(1, 51)], 1)
        writes = 0
        while not burst.called:
            d, f, args = HeldThread.held.pop(0)
            d.callback(f(*args))
            writes += 1
            self.assertTrue(first.called)  # with its own write, not the next one
            spooled = self.rows("SELECT SUM(n) FROM buildbot_stats_segments")[0][0]
            self.assertEqual(burst.called, spooled == 51)  # acknowledged with the last write only
        self.assertEqual(writes, 1 + 8)  # 50 = 7 writes of 7, then 1
        # a stop while a burst is still being spooled waits for all of it
        self.post(20, start=51)
        stopped = self.stats.disownServiceParent()
        self.assertFalse(stopped.called)
        HeldThread.run_all()
        yield stopped
        up = self.recorder()
        yield self.replace_service(up, spool_path=self.path)
        self.assertEqual(self.values(up), list(range(71)))

    @defer.inlineCallbacks
    def test_memory_only_spool_is_bounded_too(self):
        down = self.recorder(down=True)
        yield self.replace_service(down, spool_path=None, max_spool_points=3)
        self.post(10)
        self.assertEqual(self.stats.counters["pending"], 3)
        self.assertEqual(self.stats.counters["dropped"], 7)


class SpoolCommandTests(SpoolCase):
    @defer.inlineCallbacks
    def test_spool_command_shows_pending_points_per_backend(self):
        yield self.replace_service(self.recorder(down=True), spool_path=self.path, flush_timeout=0)
        self.post(4)
        yield self.stats.disownServiceParent()
        from buildbot_stats.cli.spool_info import read_spool_info

        info = read_spool_info(self.path)
        self.assertEqual(info["schema"], 5)
        [backend] = info["backends"]
        self.assertEqual((backend["queue_key"], backend["points"]), ("StatsService/influx", 4))
        self.assertLess(backend["oldest_ns"], backend["newest_ns"])
        self.assertEqual(cli_main(["spool", self.path]), 0)

    def test_spool_command_refuses_a_file_that_is_not_a_spool(self):
        other = os.path.join(self.dir, "other.txt")
        with open(other, "w") as f:
            f.write("hello")
        self.assertEqual(cli_main(["spool", other]), 2)
        self.assertEqual(cli_main(["spool", os.path.join(self.dir, "missing")]), 2)

    def test_spool_command_names_a_schema_it_cannot_read(self):
        from buildbot_stats.cli.spool_info import NotASpoolError, read_spool_info

        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE buildbot_stats_segments (x)")
        conn.execute("PRAGMA user_version = 6")
        conn.close()
        with self.assertRaisesRegex(NotASpoolError, "a spool of schema 6, which this version cannot read"):
            read_spool_info(self.path)


class ByteBoundTests(SpoolCase):
    @defer.inlineCallbacks
    def test_spool_bounded_in_bytes_drops_the_oldest(self):
        down = self.recorder(down=True)
        yield self.replace_service(down, spool_path=self.path, max_spool_bytes=2000, max_retry_delay=10)
        self.post(100)
        size = self.rows("SELECT SUM(length(data)) FROM buildbot_stats_segments")[0][0]
        self.assertLessEqual(size, 2000)
        counters = self.stats.counters
        self.assertEqual(counters["pending"] + counters["dropped"], 100)
        self.assertGreater(counters["dropped"], 0)
        self.assertLogged("spool of backend 'influx' is full \\(5000000 points or 2000 bytes\\)")

    def test_max_spool_bytes_is_checked(self):
        from buildbot_stats.options import ServiceOptions

        self.assertEqual(ServiceOptions.problems({"max_spool_bytes": None}), [])
        self.assertEqual(
            ServiceOptions.problems({"max_spool_bytes": 0}),
            ["max_spool_bytes must be an integer >= 1 or None, not 0"],
        )


def test_msgpack_columns_keep_what_the_pickled_ones_kept():
    """Values msgpack has no type for come back as ``to_plain`` makes them, as they did from pickle."""
    from buildbot_stats.delivery.spool import dump_points, load_points

    fields = {
        "ints": [2**64 - 1, -(2**63), 2**64, -(2**200)],  # beyond 64 bits: the ext type
        "floats": (float("inf"), float("-inf"), 0.1),
        "text": "\udc80 not UTF-8 \u00e9",  # a lone surrogate (os.fsdecode) as it was
        (1, 2): "a tuple key",
        b"k": b"\xffbytes",
        None: {frozenset([1])},
    }
    (back,) = load_points(dump_points([Point("s", fields, {"t": 1, 2: "x"}, 2**63 - 1)]))
    assert back == Point(
        "s",
        {
            "ints": [2**64 - 1, -(2**63), 2**64, -(2**200)],
            "floats": [float("inf"), float("-inf"), 0.1],
            "text": "\udc80 not UTF-8 \u00e9",
            "(1, 2)": "a tuple key",
            "b'k'": "\ufffdbytes",
            "None": [[1]],
        },
        {"t": 1, "2": "x"},
        2**63 - 1,
    )
    nan = load_points(dump_points([Point("s", {"v": float("nan")}, {}, 1)]))[0].fields["v"]
    assert nan != nan


class ReplacedByAnotherKindTests(SpoolCase):
    """A backend replaced by another of the same name keeps the points pending for the old one."""

    @defer.inlineCallbacks
    def test_line_protocol_left_by_influxdb_v1_is_written_by_the_v2_backend_that_replaced_it(self):
        from buildbot_stats.storage_backends.influxdb_client import InfluxStorageService
        from buildbot_stats.storage_backends.influxdb_http import InfluxDB2StorageService
        from tests.support.influx_v2v3_endpoint import Endpoint, EndpointServer
        from tests.support.ports import free_port

        captures = [capture.CaptureData("m", "builder1")]
        v1 = InfluxStorageService("127.0.0.1", free_port(), "u", "p", "db", captures, name="influx")
        v1.time_precision = "ms"  # the spooled lines carry millisecond timestamps
        yield self.replace_service(v1, spool_path=self.path, flush_timeout=0, max_retry_delay=5)
        stamps = iter(range(1_700_000_000_000_000_000, 1_800_000_000_000_000_000, 1_000_000))  # 1 ms apart
        self.stats.clock.now_ns = lambda: next(stamps)
        self.post(3)
        self.assertEqual(self.stats.counters["pending"], 3)
        yield self.stats.disownServiceParent()  # nothing listens: the three stay in the spool file
        self.assertEqual(
            self.rows("SELECT DISTINCT encoding FROM buildbot_stats_segments"), [("influx-lp/ms",)]
        )

        endpoint = Endpoint("v2")
        server = EndpointServer(endpoint)
        self.addCleanup(server.close)
        v2 = InfluxDB2StorageService(server.url, "org", "bucket", "test-token", captures, name="influx")
        yield self.replace_service(v2, spool_path=self.path)
        self.stats.clock.now_ns = lambda: next(stamps)
        self.post(2, start=3)  # the v2 backend's own points, spooled as points
        yield self.stats.wait_spooled()
        for _ in range(10):
            if len(endpoint.stored()) == 5:
                break
            self.reactor.advance(1)
        stored = endpoint.stored("builder1-m")
        self.assertEqual(sorted(p.fields["i"] for p in stored), [0, 1, 2, 3, 4])
        precisions = [r.params["precision"] for r in endpoint.requests]  # v1's lines first, as spooled
        self.assertEqual((precisions[0], set(precisions[1:])), ("ms", {"ns"}))
        self.assertEqual([p.time_ns - stored[0].time_ns for p in stored], [i * 1_000_000 for i in range(5)])
        self.assertEqual((self.stats.counters["written"], self.stats.counters["dropped"]), (5, 0))
