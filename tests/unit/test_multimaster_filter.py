"""A cluster's MQ delivers every master's messages to every master: each is captured once.

The fake master plays one master (id ``OWN``) of a cluster whose MQ is WAMP;
messages of builds run by master ``OTHER`` arrive as they would through
crossbar, with epoch-number times.  Every kind of message a capture listens
to is checked both ways: ours stored, the other master's skipped without a
data API query (build, request and yield-data messages) or with one cached
build lookup (steps, test result sets).
"""

from __future__ import annotations

from typing import Any

from buildbot.test import fakedb
from twisted.internet import defer

from buildbot_stats import capture
from buildbot_stats.capture.multimaster import MasterFilter, with_datetimes
from buildbot_stats.point import to_ns
from tests.fakes import COMPLETE, STARTED, YIELD_KEY, StatsTestCase

OWN = fakedb.FakeDBConnector.MASTER_ID
OTHER = OWN + 1
STEP_FINISHED = ("builds", None, "steps", None, "finished")
TRS_COMPLETED = ("test_result_sets", None, "completed")
BUILD_NEW = ("builders", None, "builds", None, "new")
REQUEST_CLAIMED = ("buildrequests", None, "claimed")


class Recorder(capture.Capture):
    """A capture that stores one point per message it is given (any routing key)."""

    def __init__(self, routingKey: tuple) -> None:
        super().__init__(routingKey, lambda msg: msg)
        self.seen: list[dict[str, Any]] = []

    def consume(self, routingKey: tuple, msg: dict[str, Any]) -> Any:
        self.seen.append(msg)
        return self._store({"seen": 1}, "recorded", {"key": ".".join(map(str, routingKey))}, 1)


class ClusterTestCase(StatsTestCase):
    """The fake master as one master of a WAMP cluster, with a build of its own and one of OTHER."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.master.config.mq = {"type": "wamp", "router_url": "ws://127.0.0.1:1/ws", "realm": "realm1"}
        yield self.master.db.insert_test_data([fakedb.Master(id=OWN), fakedb.Master(id=OTHER)])
        yield self.add_build(buildid=1, number=1, properties={"p": 1})
        # build 2 ran on the other master
        yield self.master.db.insert_test_data(
            [
                fakedb.Buildset(id=2, reason="x"),
                fakedb.BuildRequest(id=2, buildsetid=2, builderid=1),
                fakedb.Build(
                    id=2,
                    masterid=OTHER,
                    workerid=1,
                    builderid=1,
                    buildrequestid=2,
                    number=2,
                    started_at=int(STARTED.timestamp()),
                ),
                fakedb.BuildProperty(buildid=2, name="p", value=2, source="test"),
            ]
        )
        self.queries: list[tuple] = []
        real_get = self.master.data.get

        def counting_get(path, *args, **kwargs):
            self.queries.append(tuple(path))
            return real_get(path, *args, **kwargs)

        self.master.data.get = counting_get

    def wamp_finished(self, buildid, number, masterid, **kwargs):
        """A build-finished message as it arrives through crossbar: epoch-number times."""
        msg = self.finished_msg(buildid=buildid, number=number, **kwargs)
        msg["masterid"] = masterid
        msg["started_at"] = int(msg["started_at"].timestamp())
        msg["complete_at"] = int(msg["complete_at"].timestamp())
        self.master.mq.callConsumer(("builders", "1", "builds", str(number), "finished"), msg)
        return msg

    @defer.inlineCallbacks
    def build_data(self, buildid):
        data = yield self.master.data.get(("builds", buildid))
        self.queries.clear()
        return data


class BuildMessageTests(ClusterTestCase):
    @defer.inlineCallbacks
    def test_build_finished_of_another_master_is_skipped_without_a_query(self):
        backend = yield self.use(
            capture.CaptureBuildDurationAllBuilders(),
            capture.CaptureBuildEndTimeAllBuilders(),
            capture.CaptureBuildStartTimeAllBuilders(),
            capture.CaptureBuildResultsAllBuilders(),
            capture.CapturePropertyAllBuilders("p"),
        )
        self.queries.clear()
        self.wamp_finished(2, 2, OTHER)
        self.assertEqual(backend.points, [])
        self.assertEqual(self.queries, [])

    @defer.inlineCallbacks
    def test_own_build_finished_with_epoch_times_is_stored_once(self):
        backend = yield self.use(
            capture.CaptureBuildDurationAllBuilders(),
            capture.CaptureBuildEndTimeAllBuilders(),
            capture.CaptureBuildStartTimeAllBuilders(),
            capture.CaptureBuildResultsAllBuilders(),
            capture.CapturePropertyAllBuilders("p"),
        )
        self.wamp_finished(1, 1, OWN)
        yield self.stats.spool.call(lambda spool: None)
        stamp = to_ns(COMPLETE)
        got = sorted((p.series, tuple(sorted(p.fields.items())), p.time_ns) for p in backend.points)
        self.assertEqual(
            got,
            sorted(
                [
                    ("builder1-build-times", (("duration", 90.0),), stamp),
                    ("builder1-build-times", (("end-time", COMPLETE.isoformat()),), stamp),
                    ("builder1-build-times", (("start-time", STARTED.isoformat()),), stamp),
                    ("builder1-build-results", (("result", "success"), ("results", 0)), stamp),
                    ("builder1-p", (("name", "p"), ("value", 1)), stamp),
                ]
            ),
        )
        self.assertEqual({p.tags["build_number"] for p in backend.points}, {"1"})

    @defer.inlineCallbacks
    def test_build_new_of_another_master_is_skipped(self):
        rec = Recorder(BUILD_NEW)
        backend = yield self.use(rec)
        for buildid, masterid in ((1, OWN), (2, OTHER)):
            msg = self.finished_msg(buildid=buildid, number=buildid)
            msg.update(masterid=masterid, complete=False, complete_at=None, results=None)
            msg["started_at"] = int(STARTED.timestamp())
            self.master.mq.callConsumer(("builders", "1", "builds", str(buildid), "new"), msg)
        self.assertEqual([m["buildid"] for m in rec.seen], [1])
        self.assertEqual(len(backend.points), 1)
        self.assertEqual(self.queries, [])

    @defer.inlineCallbacks
    def test_build_request_claimed_by_another_master_is_skipped(self):
        rec = Recorder(REQUEST_CLAIMED)
        yield self.use(rec)
        for brid, masterid in ((1, OWN), (2, OTHER)):
            msg = {"buildrequestid": brid, "builderid": 1, "claimed": True, "claimed_by_masterid": masterid}
            self.master.mq.callConsumer(("buildrequests", str(brid), "claimed"), msg)
        self.assertEqual([m["buildrequestid"] for m in rec.seen], [1])
        self.assertEqual(self.queries, [])


class YieldDataTests(ClusterTestCase):
    @defer.inlineCallbacks
    def test_values_of_another_masters_build_are_skipped_without_a_query(self):
        backend = yield self.use(capture.CaptureDataAllBuilders("timings"))
        own, other = (yield self.build_data(1)), (yield self.build_data(2))
        for build in (other, own, other):
            msg = {"data_name": "timings", "post_data": {"b": build["buildid"]}, "build_data": build}
            self.master.mq.callConsumer(YIELD_KEY, msg)
        yield self.stats.spool.call(lambda spool: None)
        self.assertEqual([p.fields for p in backend.points], [{"b": 1}])
        self.assertEqual(self.queries, [("builders", 1)])  # the name of our build's builder only

    @defer.inlineCallbacks
    def test_posted_message_has_buildbots_keys_only_and_the_owner_stamps_it_on_arrival(self):
        backend = yield self.use(capture.CaptureDataAllBuilders("timings"))
        yield self.stats.reconfigService([backend], spool_path=None)
        build = yield self.build_data(1)
        yield self.stats.yieldMetricsValue("timings", {"s": 1.5}, 1)
        (message,) = [m for _, m in self.master.mq.productions]
        self.assertEqual(message, {"data_name": "timings", "post_data": {"s": 1.5}, "build_data": build})
        # the message as it comes back through crossbar: stamped when this master consumes it
        self.stats.clock.now_ns = lambda: 1_790_000_000_000_000_007
        self.master.mq.callConsumer(YIELD_KEY, message)
        yield self.stats.spool.call(lambda spool: None)
        self.assertEqual(
            [(p.series, p.fields, p.time_ns) for p in backend.points],
            [("builder1-timings", {"s": 1.5}, 1_790_000_000_000_000_007)],
        )

    @defer.inlineCallbacks
    def test_only_own_started_builds_are_remembered_with_datetimes(self):
        yield self.use(capture.CaptureDataAllBuilders("timings"))
        own, other = (yield self.build_data(1)), (yield self.build_data(2))
        for build in (own, other):  # as they arrive through crossbar: epoch-number times
            wamp = {**build, "started_at": int(build["started_at"].timestamp())}
            self.master.mq.callConsumer(("builds", str(build["buildid"]), "new"), wamp)
        self.assertEqual(self.stats.lookups.builds.known(1), own)
        self.assertIsNone(self.stats.lookups.builds.known(2))
        yield self.stats.yieldMetricsValue("timings", {"s": 1.5}, 1)
        self.assertEqual(self.queries, [])


class BuildOfMessageTests(ClusterTestCase):
    """Steps and test result sets name only their build: looked up once per build."""

    @defer.inlineCallbacks
    def check_once_per_build(self, key, make_msg):
        rec = Recorder(key)
        yield self.use(rec)
        for buildid in (1, 2, 1, 2, 2):
            self.master.mq.callConsumer(key, make_msg(buildid))
        yield self.stats.spool.call(lambda spool: None)
        self.assertEqual([m["buildid"] for m in rec.seen], [1, 1])
        self.assertEqual(sorted(self.queries), [("builds", 1), ("builds", 2)])

    def test_step_messages(self):
        return self.check_once_per_build(
            STEP_FINISHED,
            lambda buildid: {
                "stepid": 10 + buildid,
                "buildid": buildid,
                "number": 0,
                "name": "compile",
                "started_at": int(STARTED.timestamp()),
                "complete_at": int(COMPLETE.timestamp()),
                "results": 0,
                "hidden": False,
            },
        )

    def test_test_result_set_messages(self):
        return self.check_once_per_build(
            TRS_COMPLETED,
            lambda buildid: {
                "test_result_setid": 20 + buildid,
                "builderid": 1,
                "buildid": buildid,
                "stepid": 10 + buildid,
                "description": "unit",
                "category": "pass_fail",
                "value_unit": "boolean",
                "tests_passed": 3,
                "tests_failed": 0,
                "complete": True,
            },
        )

    @defer.inlineCallbacks
    def test_messages_arriving_during_the_lookup_wait_for_it(self):
        rec = Recorder(STEP_FINISHED)
        yield self.use(rec)
        answers = {}
        counting_get = self.master.data.get

        def slow_get(path, *args, **kwargs):
            answers[tuple(path)] = d = defer.Deferred()
            counting_get(path, *args, **kwargs).addCallback(lambda build: answers.setdefault("data", build))
            return d

        self.master.data.get = slow_get
        for stepid in (1, 2, 3):
            self.master.mq.callConsumer(STEP_FINISHED, {"stepid": stepid, "buildid": 1})
        self.assertEqual((self.queries, rec.seen), ([("builds", 1)], []))
        answers[("builds", 1)].callback(answers["data"])
        self.assertEqual([m["stepid"] for m in rec.seen], [1, 2, 3])

    @defer.inlineCallbacks
    def test_unknown_build_is_left_to_the_capture(self):
        rec = Recorder(STEP_FINISHED)
        yield self.use(rec)
        self.master.mq.callConsumer(STEP_FINISHED, {"stepid": 1, "buildid": 404})
        self.assertEqual([m["buildid"] for m in rec.seen], [404])


class SimpleMQTests(StatsTestCase):
    @defer.inlineCallbacks
    def test_one_master_filters_nothing(self):
        # the simple MQ is local: every message is this master's, whatever it says
        self.assertFalse(MasterFilter.needed(self.master))
        backend = yield self.use(capture.CaptureBuildDurationAllBuilders())
        msg = self.finished_msg()
        msg["masterid"] = OTHER
        self.master.mq.callConsumer(("builders", "1", "builds", "1", "finished"), msg)
        yield self.stats.spool.call(lambda spool: None)
        self.assertEqual([p.fields for p in backend.points], [{"duration": 90.0}])


def test_with_datetimes_converts_epoch_numbers_only():
    msg = {"started_at": 1_790_000_000, "complete_at": 1_790_000_090.5, "number": 3, "results": 0}
    out = with_datetimes(msg)
    assert out is not msg and msg["started_at"] == 1_790_000_000
    assert to_ns(out["started_at"]) == 1_790_000_000 * 10**9
    assert to_ns(out["complete_at"]) == 1_790_000_090_500_000_000
    assert out["number"] == 3
    assert with_datetimes({"started_at": STARTED, "complete_at": None}) == {
        "started_at": STARTED,
        "complete_at": None,
    }
    plain = {"number": 1}
    assert with_datetimes(plain) is plain
