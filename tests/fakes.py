"""Shared set-up for unit tests on Buildbot's fake master."""

from __future__ import annotations

import datetime
import re
from typing import Any

from buildbot.test import fakedb
from buildbot.test.fake import fakemaster
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.util.logging import LoggingMixin
from twisted.internet import defer
from twisted.python import log
from twisted.trial import unittest

from buildbot_stats.delivery.queue import backend_keys
from buildbot_stats.stats_service import StatsService
from buildbot_stats.testing import RecordingStorage

UTC = datetime.timezone.utc
STARTED = datetime.datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
COMPLETE = datetime.datetime(2026, 11, 1, 12, 1, 30, tzinfo=UTC)
FINISHED_KEY = ("builders", "1", "builds", "1", "finished")
YIELD_KEY = ("stats-yieldMetricsValue", "stats-yield-data")


def put_points(stats: StatsService, points: list[Any]) -> defer.Deferred:
    """Record ``points`` for every backend of ``stats`` as a capture would (one spool write).

    Fires once they are in the spool.
    """
    keys = tuple(backend_keys(stats.registeredStorageServices))
    return stats._queues.writer.add_many([(keys, p.series, p.fields, p.tags, p.time_ns) for p in points])


class StatsTestCase(TestReactorMixin, unittest.TestCase):
    """A fake master with two builders and a StatsService using RecordingStorage."""

    BUILDERS = {1: "builder1", 2: "builder2"}
    service_kwargs: dict[str, Any] = {"spool_path": None}

    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        self.master = yield fakemaster.make_master(self, wantMq=True, wantData=True, wantDb=True)
        yield self.master.db.insert_test_data(
            [fakedb.Builder(id=bid, name=name) for bid, name in self.BUILDERS.items()]
        )
        self.backend = RecordingStorage()
        self.stats = StatsService(storage_backends=[self.backend], name="StatsService", **self.service_kwargs)
        yield self.stats.setServiceParent(self.master)
        yield self.master.startService()
        self.addCleanup(self.master.stopService)
        self.master.mq.verifyMessages = False

    def put_points(self, points):
        """Record ``points`` for every configured backend as a capture would (one spool write)."""
        return put_points(self.stats, points)

    @defer.inlineCallbacks
    def use(self, *captures, **kwargs):
        """Reconfigure with one RecordingStorage holding ``captures``."""
        self.backend = RecordingStorage(captures=list(captures))
        yield self.stats.reconfigService([self.backend], **{**self.service_kwargs, **kwargs})
        return self.backend

    @defer.inlineCallbacks
    def add_build(self, buildid=1, builderid=1, number=1, properties=None, finish=True):
        if not getattr(self, "_worker_added", False):
            yield self.master.db.insert_test_data([fakedb.Worker(id=1, name="w1")])
            self._worker_added = True
        yield self.master.db.insert_test_data(
            [
                fakedb.Buildset(id=buildid, reason="x"),
                fakedb.BuildRequest(id=buildid, buildsetid=buildid, builderid=builderid),
                fakedb.Build(
                    id=buildid,
                    masterid=fakedb.FakeDBConnector.MASTER_ID,
                    workerid=1,
                    builderid=builderid,
                    buildrequestid=buildid,
                    number=number,
                    started_at=int(STARTED.timestamp()),
                ),
            ]
            + [
                fakedb.BuildProperty(buildid=buildid, name=k, value=v, source="test")
                for k, v in (properties or {}).items()
            ]
        )

    def finished_msg(self, buildid=1, builderid=1, number=1, started=STARTED, complete=COMPLETE):
        return {
            "buildid": buildid,
            "number": number,
            "builderid": builderid,
            "buildrequestid": buildid,
            "workerid": 1,
            "masterid": fakedb.FakeDBConnector.MASTER_ID,
            "started_at": started,
            "complete": True,
            "complete_at": complete,
            "state_string": "",
            "results": 0,
        }

    def finish(self, **kwargs):
        msg = self.finished_msg(**kwargs)
        key = ("builders", str(msg["builderid"]), "builds", str(msg["number"]), "finished")
        self.master.mq.callConsumer(key, msg)
        return msg


class LoggedStatsTestCase(StatsTestCase, LoggingMixin):
    """A StatsTestCase that looks at the service's counters and, after ``setUpLogging()``, its log."""

    def assertCounters(self, **expected: int) -> None:
        counters = self.stats.counters
        self.assertEqual({k: counters[k] for k in expected}, expected, counters)

    def log_lines(self, pattern: str) -> list[str]:
        lines = [log.textFromEventDict(e) or "" for e in self._logEvents]
        return [line for line in lines if re.search(pattern, line)]
