"""Live state (issue 21): the keeper's figures after each MQ event, against Buildbot's data API.

Buildbot's fake master with its real data API: every event is one the data API's
update methods produce (delivered to the consumers as the simple MQ would), and
every figure is checked against what users would read in the web UI.
"""

from __future__ import annotations

from typing import Any

from buildbot.config.errors import capture_config_errors
from buildbot.process.results import CANCELLED, RETRY, SUCCESS
from buildbot.test import fakedb
from buildbot.test.fake import fakemaster
from buildbot.test.reactor import TestReactorMixin
from buildbot.util import tuplematch
from twisted.internet import defer
from twisted.trial import unittest

from buildbot_stats.capture.live import LIVE_SERIES, BuilderLive, LiveSnapshot, live_points
from buildbot_stats.stats_service import StatsService
from buildbot_stats.storage_backends.sqlite import SQLiteStorageService
from buildbot_stats.testing import RecordingStorage
from tests.support.live_probe import data_api_figures, snapshot_figures

OWN = fakedb.FakeDBConnector.MASTER_ID
OTHER = OWN + 1


class LiveStorage(RecordingStorage):
    """A time-series backend as ours are: it asks for the ``buildbot-live`` series."""

    def __init__(self, live_interval: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.live_interval = live_interval


class ScrapedStorage(RecordingStorage):
    """A backend reading the figures itself, as the Prometheus backend does."""

    wants_live_state = True


def deliver_like_simple_mq(master: Any) -> None:
    """The fake MQ records what it is given; deliver it too, at once, as the simple MQ does."""
    mq, record = master.mq, master.mq.produce

    def produce(key: tuple, data: Any) -> None:
        record(key, data)
        for qref in list(mq.qrefs):
            if tuplematch.matchTuple(key, qref.filter):
                qref.callback(key, data)

    mq.produce = produce


class LiveTestCase(TestReactorMixin, unittest.TestCase):
    BUILDERS = {1: "b1", 2: "b2"}

    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        self.reactor.advance(1_800_000_000)  # a plausible epoch: ages are reactor time minus data API times
        self.master = yield fakemaster.make_master(self, wantMq=True, wantData=True, wantDb=True)
        deliver_like_simple_mq(self.master)
        rows: list[Any] = [fakedb.Master(id=OWN), fakedb.Master(id=OTHER, name="other")]
        for bid, name in self.BUILDERS.items():
            rows += [fakedb.Builder(id=bid, name=name), fakedb.BuilderMaster(builderid=bid, masterid=OWN)]
        rows += [fakedb.Worker(id=w, name=f"w{w}") for w in (1, 2, 3)]
        yield self.master.db.insert_test_data(rows)
        self.updates = self.master.data.updates
        self.backend = LiveStorage()
        self.stats: StatsService | None = None

    @defer.inlineCallbacks
    def start(self, *backends):
        self.stats = StatsService(storage_backends=list(backends or [self.backend]), spool_path=None)
        yield self.stats.setServiceParent(self.master)
        yield self.master.startService()
        self.addCleanup(self.master.stopService)

    def snap(self):
        return self.stats.live_snapshot()

    @defer.inlineCallbacks
    def assert_matches_data_api(self):
        expected = yield data_api_figures(self.master)
        self.assertEqual(snapshot_figures(self.snap()), expected)
        return expected

    @defer.inlineCallbacks
    def request(self, builderid=1):
        _, brids = yield self.updates.addBuildset(
            waited_for=False,
            scheduler="s",
            sourcestamps=[
                {"codebase": "", "repository": "r", "branch": None, "revision": None, "project": ""}
            ],
            builderids=[builderid],
        )
        return brids[builderid]

    @defer.inlineCallbacks
    def start_build(self, brid, builderid=1, workerid=1):
        yield self.updates.claimBuildRequests([brid])
        buildid, _ = yield self.updates.addBuild(builderid=builderid, buildrequestid=brid, workerid=workerid)
        yield self.updates.generateNewBuildEvent(buildid)  # as Build.startBuild does, properties set
        return buildid

    @defer.inlineCallbacks
    def finish_build(self, buildid, brid, results=SUCCESS):
        yield self.updates.finishBuild(buildid=buildid, results=results)
        if results != RETRY:
            yield self.updates.completeBuildRequests([brid], results)
        else:
            yield self.updates.unclaimBuildRequests([brid])


class TransitionTests(LiveTestCase):
    @defer.inlineCallbacks
    def test_idle_master_every_builder_with_zeros(self):
        yield self.start()
        self.assertEqual(self.snap().workers_connected, 0)
        self.assertEqual(dict(self.snap().builders), {"b1": BuilderLive(), "b2": BuilderLive()})

    @defer.inlineCallbacks
    def test_request_waits_then_runs_then_finishes(self):
        yield self.start()
        yield self.updates.workerConnected(workerid=1, masterid=OWN, workerinfo={})
        brid = yield self.request()
        self.reactor.advance(30)
        b1 = self.snap().builders["b1"]
        self.assertEqual((b1.requests_pending, b1.oldest_pending_seconds), (1, 30.0))
        yield self.assert_matches_data_api()
        buildid = yield self.start_build(brid)
        self.reactor.advance(12)
        snap = self.snap()
        self.assertEqual(snap.builders["b1"], BuilderLive(0, 0.0, 1, 12.0))
        self.assertEqual((snap.workers_busy, dict(snap.worker_builds_running)), (1, {"w1": 1}))
        yield self.assert_matches_data_api()
        yield self.finish_build(buildid, brid)
        snap = self.snap()
        self.assertEqual(snap.builders["b1"], BuilderLive())
        self.assertEqual((snap.workers_busy, dict(snap.worker_builds_total)), (0, {("w1", "success"): 1}))
        yield self.assert_matches_data_api()

    @defer.inlineCallbacks
    def test_oldest_pending_is_the_oldest_of_many(self):
        yield self.start()
        yield self.request()
        self.reactor.advance(50)
        second = yield self.request()
        self.reactor.advance(10)
        self.assertEqual(self.snap().builders["b1"], BuilderLive(2, 60.0, 0, 0.0))
        yield self.updates.claimBuildRequests([second])
        self.assertEqual(self.snap().builders["b1"], BuilderLive(1, 60.0, 0, 0.0))

    @defer.inlineCallbacks
    def test_worker_disconnects_mid_build(self):
        yield self.start()
        for w in (1, 2):
            yield self.updates.workerConnected(workerid=w, masterid=OWN, workerinfo={})
        brid = yield self.request()
        buildid = yield self.start_build(brid, workerid=1)
        yield self.updates.workerDisconnected(workerid=1, masterid=OWN)
        snap = self.snap()
        # the build still runs (Buildbot ends it soon, as a retry); the worker is gone
        self.assertEqual((snap.workers_connected, snap.workers_busy), (1, 0))
        self.assertEqual(dict(snap.worker_builds_running), {"w2": 0})
        self.assertEqual(snap.builders["b1"].builds_running, 1)
        yield self.assert_matches_data_api()
        yield self.finish_build(buildid, brid, RETRY)
        snap = self.snap()
        self.assertEqual(snap.builders["b1"], BuilderLive(1, 0.0, 0, 0.0))
        self.assertEqual(dict(snap.worker_builds_total), {("w1", "retry"): 1})
        yield self.assert_matches_data_api()

    @defer.inlineCallbacks
    def test_request_cancelled_while_pending(self):
        yield self.start()
        brid = yield self.request()
        self.assertEqual(self.snap().builders["b1"].requests_pending, 1)
        # what Botmaster does for a cancel: claim in the database, complete, then 'cancel'
        yield self.master.db.buildrequests.claimBuildRequests(brids=[brid])
        yield self.updates.completeBuildRequests([brid], CANCELLED)
        self.master.mq.produce(("buildrequests", str(brid), "cancel"), {"buildrequestid": brid})
        self.assertEqual(self.snap().builders["b1"], BuilderLive())
        yield self.assert_matches_data_api()

    @defer.inlineCallbacks
    def test_build_stopped(self):
        yield self.start()
        yield self.updates.workerConnected(workerid=1, masterid=OWN, workerinfo={})
        brid = yield self.request()
        buildid = yield self.start_build(brid)
        yield self.finish_build(buildid, brid, CANCELLED)  # a stopped build ends 'cancelled'
        snap = self.snap()
        self.assertEqual((snap.builders["b1"], snap.workers_busy), (BuilderLive(), 0))
        self.assertEqual(dict(snap.worker_builds_total), {("w1", "cancelled"): 1})
        yield self.assert_matches_data_api()

    @defer.inlineCallbacks
    def test_reconfig_removing_a_builder_drops_its_figures(self):
        yield self.start()
        yield self.request(builderid=2)
        self.assertEqual(self.snap().builders["b2"].requests_pending, 1)
        # Botmaster's reconfig updates the builder list, then the services reconfigure
        yield self.updates.updateBuilderList(OWN, ["b1"])
        self.assertEqual(set(self.snap().builders), {"b1"})
        yield self.stats.reconfigService([self.backend], spool_path=None)
        self.assertEqual(set(self.snap().builders), {"b1"})
        yield self.stats.reconfigService([LiveStorage()], spool_path=None)
        self.reactor.advance(10)
        yield self.stats.wait_spooled()
        self.assertNotIn("b2", repr(self.stats.registeredStorageServices[0].points))

    @defer.inlineCallbacks
    def test_other_masters_workers_and_builds_are_not_counted_but_their_queue_is(self):
        yield self.start()
        yield self.updates.workerConnected(workerid=3, masterid=OTHER, workerinfo={})
        brid = yield self.request()
        yield self.updates.claimBuildRequests([brid])
        buildid = yield self.master.db.builds.addBuild(
            builderid=1, buildrequestid=brid, workerid=3, masterid=OTHER, state_string="x"
        )
        yield self.master.data.rtypes.build.generateEvent(buildid[0], "new")
        yield self.request()
        snap = self.snap()
        self.assertEqual((snap.workers_connected, snap.builders["b1"]), (0, BuilderLive(1, 0.0, 0, 0.0)))
        yield self.assert_matches_data_api()


class RecountTests(LiveTestCase):
    @defer.inlineCallbacks
    def test_start_after_restart_with_builds_queued_and_running(self):
        # left by the master's previous run: one running build, three waiting requests
        yield self.updates.workerConnected(workerid=1, masterid=OWN, workerinfo={})
        running = yield self.request()
        yield self.start_build(running)
        for _ in range(2):
            yield self.request()
        yield self.request(builderid=2)
        self.reactor.advance(40)
        yield self.start()
        snap = self.snap()
        self.assertEqual(snap.builders["b1"], BuilderLive(2, 40.0, 1, 40.0))
        self.assertEqual(snap.builders["b2"], BuilderLive(1, 40.0, 0, 0.0))
        yield self.assert_matches_data_api()

    @defer.inlineCallbacks
    def test_periodic_recount_fixes_a_missed_event(self):
        yield self.start()
        brid = yield self.request()
        yield self.updates.claimBuildRequests([brid])
        self.assertEqual(self.snap().builders["b1"].requests_pending, 0)
        # the claiming master dies: Buildbot unclaims its requests in the database, no event
        yield self.master.db.buildrequests.unclaimBuildRequests([brid])
        self.assertEqual(self.snap().builders["b1"].requests_pending, 0)
        self.reactor.advance(60)
        self.assertEqual(self.snap().builders["b1"].requests_pending, 1)
        yield self.assert_matches_data_api()

    @defer.inlineCallbacks
    def test_events_during_a_recount_are_not_lost(self):
        yield self.start()
        keeper = self.stats._live
        first = yield self.request()
        waiting: list[tuple[defer.Deferred, Any]] = []
        real_get = self.master.data.get

        def slow_get(*args, **kwargs):
            waiting.append((defer.Deferred(), real_get(*args, **kwargs)))  # read now, answered later
            return waiting[-1][0]

        self.master.data.get = slow_get
        recount = keeper.recount()  # reads the data API before the claim and the request below
        self.master.data.get = real_get
        yield self.updates.claimBuildRequests([first])
        yield self.request()
        yield self.request()
        for answer, read in waiting:
            read.chainDeferred(answer)
        yield recount
        self.assertEqual(self.snap().builders["b1"].requests_pending, 2)
        yield self.assert_matches_data_api()


class ServiceTests(LiveTestCase):
    @defer.inlineCallbacks
    def test_no_backend_asks_no_live_state_no_consumer(self):
        yield self.start(RecordingStorage())
        self.assertIsNone(self.snap())
        self.assertEqual(len(self.master.mq.qrefs), 0)

    @defer.inlineCallbacks
    def test_a_master_not_running_gets_no_live_state(self):
        # buildbot_stats backfill configures the services on a BuildMaster it never starts
        self.master.masterid = None
        yield self.start()
        self.assertIsNone(self.snap())
        self.assertEqual(len(self.master.mq.qrefs), 0)

    @defer.inlineCallbacks
    def test_scraped_backend_gets_live_state_but_no_series(self):
        backend = ScrapedStorage()
        yield self.start(backend)
        yield self.updates.workerConnected(workerid=1, masterid=OWN, workerinfo={})
        self.assertEqual(self.snap().workers_connected, 1)
        self.reactor.advance(120)
        yield self.stats.wait_spooled()
        self.assertEqual(backend.points, [])

    @defer.inlineCallbacks
    def test_series_every_interval_only_to_the_backends_that_asked(self):
        fast, slow, plain = LiveStorage(5, name="fast"), LiveStorage(20, name="slow"), RecordingStorage()
        yield self.start(fast, slow, plain)
        yield self.updates.workerConnected(workerid=1, masterid=OWN, workerinfo={})
        yield self.request(builderid=2)
        self.reactor.advance(7)
        for _ in range(4):
            self.reactor.advance(5)
        yield self.stats.wait_spooled()
        self.reactor.advance(1)  # the queues send
        live = [p for p in fast.points if p.series == LIVE_SERIES]
        self.assertEqual(len(live), 3 * 5)  # workers + b1 + b2, at 5, 10, ..., 25 s
        self.assertEqual(len([p for p in slow.points if p.series == LIVE_SERIES]), 3)
        self.assertEqual(plain.points, [])
        last = {tuple(sorted(p.tags.items())): p.fields for p in live[-3:]}
        self.assertEqual(last[()], {"workers_connected": 1, "workers_busy": 0})
        self.assertEqual(last[(("builder_name", "b2"),)]["requests_pending"], 1)
        self.assertEqual(last[(("builder_name", "b2"),)]["oldest_pending_seconds"], 27.0)

    @defer.inlineCallbacks
    def test_reconfig_turning_live_state_off_stops_consuming(self):
        yield self.start()
        self.assertGreater(len(self.master.mq.qrefs), 0)
        yield self.stats.reconfigService([LiveStorage(0)], spool_path=None)
        self.assertIsNone(self.snap())
        self.assertEqual(len(self.master.mq.qrefs), 0)
        yield self.stats.reconfigService([self.backend], spool_path=None)
        self.assertIsNotNone(self.snap())

    def test_live_points_of_a_snapshot(self):
        points = live_points(LiveSnapshot(2, 1, {"b": BuilderLive(3, 4.5, 1, 9.0)}))
        self.assertEqual(
            points,
            [
                ({"workers_connected": 2, "workers_busy": 1}, {}),
                (
                    {
                        "requests_pending": 3,
                        "oldest_pending_seconds": 4.5,
                        "builds_running": 1,
                        "longest_running_seconds": 9.0,
                    },
                    {"builder_name": "b"},
                ),
            ],
        )


class LiveIntervalOptionTests(unittest.TestCase):
    """``live_interval`` of our time-series backends: seconds, 60 by default, 0 off."""

    def backends(self, **kwargs):
        from buildbot_stats.storage_backends.influxdb_client import InfluxStorageService
        from buildbot_stats.storage_backends.influxdb_http import (
            InfluxDB2StorageService,
            InfluxDB3StorageService,
        )
        from buildbot_stats.storage_backends.sqlite import SQLiteStorageService

        yield lambda: SQLiteStorageService("stats.sqlite", [], **kwargs)
        yield lambda: InfluxStorageService("localhost", 8086, None, None, "db", [], **kwargs)
        yield lambda: InfluxDB2StorageService("http://127.0.0.1:8086", "org", "bucket", "t", [], **kwargs)
        yield lambda: InfluxDB3StorageService("http://127.0.0.1:8181", "db", "t", [], **kwargs)

    def test_default_and_given(self):
        for make in self.backends():
            self.assertEqual(make().live_interval, 60.0)
        for make in self.backends(live_interval=0):
            self.assertEqual(make().live_interval, 0.0)
        for make in self.backends(live_interval=5):
            self.assertEqual(make().live_interval, 5.0)

    def test_bad_values_are_config_errors(self):
        for bad in (-1, 0.5, float("nan"), float("inf"), "60", True, None, 86401):
            for make in self.backends(live_interval=bad):
                with capture_config_errors() as errors:
                    make()
                self.assertTrue(any("live_interval" in e for e in errors.errors), (bad, errors.errors))
        # with two backends of a kind, the error names the one that is wrong
        with capture_config_errors() as errors:
            SQLiteStorageService("a.sqlite", [], name="fine")
            SQLiteStorageService("b.sqlite", [], name="nightly", live_interval=-1)
        self.assertEqual(
            errors.errors,
            ["SQLiteStorageService 'nightly': live_interval must be 0 (off) or 1 to 86400 s, not -1"],
        )
