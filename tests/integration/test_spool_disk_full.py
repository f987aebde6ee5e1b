"""A spool on a real full disk (a small tmpfs): points kept in memory within the bound, then resumed;
a spool that cannot even be opened at start (first start or restart) is opened once space returns.

Needs root (to mount a tmpfs); skipped otherwise, with the reason.
"""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile

from buildbot.test.util.logging import LoggingMixin
from twisted.internet import defer
from twisted.trial import unittest

from buildbot_stats import capture
from buildbot_stats.stats_service import StatsService
from buildbot_stats.testing import RecordingStorage
from tests.fakes import YIELD_KEY, StatsTestCase


def _mount_tmpfs(size: str) -> str:
    if os.geteuid() != 0:
        raise unittest.SkipTest("mounting a tmpfs to fill needs root")
    where = tempfile.mkdtemp(prefix="bbstats-tmpfs-")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where], capture_output=True, text=True
    )
    if proc.returncode != 0:
        os.rmdir(where)
        raise unittest.SkipTest(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    return where


def _fill(directory: str) -> str:
    """Write a file until the file system is full; return its path."""
    path = os.path.join(directory, "filler")
    with open(path, "wb", buffering=0) as f:
        try:
            for _ in range(100_000):  # bounded: 100,000 x 4 KB
                f.write(b"\0" * 4096)
                f.flush()
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return path


class DiskFullTests(StatsTestCase, LoggingMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.setUpLogging()
        yield self.add_build()
        self.build_data = yield self.master.data.get(("builds", 1))
        self.mnt = _mount_tmpfs("512k")

    def tearDown(self):
        subprocess.run(["umount", "-l", self.mnt], check=False)
        os.rmdir(self.mnt)

    def post(self, n, start=0):
        for i in range(start, start + n):
            self.master.mq.callConsumer(
                YIELD_KEY, {"data_name": "m", "post_data": {"i": i}, "build_data": self.build_data}
            )

    @defer.inlineCallbacks
    def test_full_disk_keeps_capturing_in_memory_and_resumes_when_space_returns(self):
        backend = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name="influx")
        backend.fail_next(100_000)
        yield self.stats.disownServiceParent()
        self.stats = StatsService(
            storage_backends=[backend],
            name="StatsService",
            spool_path=os.path.join(self.mnt, "spool.sqlite"),
            max_spool_points=150,
            max_retry_delay=100,
        )
        yield self.stats.setServiceParent(self.master)
        self.post(5)
        self.assertEqual(self.stats.counters["spooled"], 5)
        filler = _fill(self.mnt)
        self.post(200, start=5)  # no exception into the MQ
        self.assertLogged("cannot write the spool .*(full|disk).*kept in memory")
        counters = self.stats.counters
        self.assertEqual((counters["pending"], counters["dropped"]), (150, 55))
        self.assertLess(counters["spooled"], 205)
        os.remove(filler)
        self.post(1, start=205)
        self.assertLogged("can be written again")
        self.assertGreaterEqual(self.stats.counters["spooled"], 151)
        with backend._lock:
            backend._failures.clear()
        self.reactor.advance(100)
        self.assertEqual([p.fields["i"] for p in backend.points], list(range(56, 206)))
        self.assertEqual(self.stats.counters["pending"], 0)
        yield self.stats.disownServiceParent()

    @defer.inlineCallbacks
    def start(self, backend, **kwargs):
        if self.stats.parent is not None:
            yield self.stats.disownServiceParent()
        self.stats = StatsService(
            storage_backends=[backend],
            name="StatsService",
            spool_path=os.path.join(self.mnt, "spool.sqlite"),
            max_retry_delay=100,
            flush_timeout=0,
            **kwargs,
        )
        yield self.stats.setServiceParent(self.master)

    @defer.inlineCallbacks
    def test_first_start_on_a_full_disk_opens_the_spool_once_space_returns(self):
        backend = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name="influx")
        backend.fail_next(100_000)
        filler = _fill(self.mnt)
        yield self.start(backend)
        self.assertLogged("cannot open the spool .*spool.sqlite \\(OSError: \\[Errno 28\\] No space left")
        self.assertFalse(self.stats.spool.spool.durable)
        self.post(5)  # no exception into the MQ: kept in memory
        self.assertEqual(self.stats.counters["pending"], 5)
        os.remove(filler)
        self.reactor.advance(1)
        self.assertLogged("can be written again; the points kept in memory moved to it")
        self.assertTrue(self.stats.spool.spool.durable)
        self.assertEqual(self.stats.counters["spooled"], 5)
        yield self.stats.disownServiceParent()
        up = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name="influx")
        yield self.start(up)
        self.assertEqual([p.fields["i"] for p in up.points], list(range(5)))
        yield self.stats.disownServiceParent()

    @defer.inlineCallbacks
    def test_restart_on_a_full_disk_delivers_what_the_spool_held_once_space_returns(self):
        backend = RecordingStorage(captures=[capture.CaptureData("m", "builder1")], name="influx")
        backend.fail_next(100_000)
        yield self.start(backend)
        self.post(3)
        yield self.stats.disownServiceParent()
        filler = _fill(self.mnt)
        yield self.start(backend)
        self.assertLogged("cannot open the spool .*spool.sqlite \\(OperationalError: disk I/O error\\)")
        self.post(2, start=3)
        os.remove(filler)
        self.reactor.advance(1)
        self.assertTrue(self.stats.spool.spool.durable)
        self.assertEqual(self.stats.counters["pending"], 5)
        with backend._lock:
            backend._failures.clear()
        self.reactor.advance(100)
        self.assertEqual(sorted(p.fields["i"] for p in backend.points), list(range(5)))
        self.assertEqual(self.stats.counters["pending"], 0)
        yield self.stats.disownServiceParent()
