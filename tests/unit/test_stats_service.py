"""StatsService configuration, reconfiguration, backend compatibility and step access."""

from __future__ import annotations

from unittest import mock

from buildbot import config
from buildbot.mq.simple import SimpleMQ
from buildbot.test.fake import fakestats
from buildbot.test.util.logging import LoggingMixin
from twisted.internet import defer
from zope.interface import implementer

from buildbot_stats import capture, statistics
from buildbot_stats.errors import StorageBackendTypeError
from buildbot_stats.point import as_datetime
from buildbot_stats.stats_service import YIELD_CHUNK, StatsService
from buildbot_stats.steps import StatsStepMixin, get_stats_service
from buildbot_stats.storage_backends.base import IStatsStorage, StatsStorageBase
from buildbot_stats.testing import RecordingStorage
from tests.fakes import YIELD_KEY, StatsTestCase

CONTEXT = {"build_number": "1", "builder_name": "builder1"}


@implementer(IStatsStorage)
class InterfaceOnlyBackend:
    """A backend that does not subclass anything: it only provides the interface."""

    name = "iface"

    def __init__(self, captures):
        self.captures = captures
        self.stored = []

    def thd_postStatsValue(self, post_data, series_name, context=None):
        self.stored.append((post_data, series_name, context))


class ConfigTests(StatsTestCase):
    def test_statistics_module_exports_the_spec_names(self):
        for name in (
            "StatsService StatsStorageBase InfluxStorageService Capture CapturePropertyBase CaptureProperty "
            "CapturePropertyAllBuilders CaptureBuildTimes CaptureBuildStartTime "
            "CaptureBuildStartTimeAllBuilders "
            "CaptureBuildEndTime CaptureBuildEndTimeAllBuilders CaptureBuildDuration "
            "CaptureBuildDurationAllBuilders CaptureDataBase CaptureData CaptureDataAllBuilders"
        ).split():
            self.assertTrue(hasattr(statistics, name), name)
            self.assertIn(name, statistics.__all__)

    def test_storage_base_is_abstract(self):
        with self.assertRaises(TypeError):
            StatsStorageBase()

        class NoPost(StatsStorageBase):
            pass

        with self.assertRaises(TypeError):
            NoPost()

    @defer.inlineCallbacks
    def test_bad_backend_is_type_error_and_config_error(self):
        for bad in (mock.Mock(), object(), "influx"):
            with self.assertRaises(TypeError):
                yield self.stats.reconfigService([bad])
        with self.assertRaises(config.ConfigErrors) as cm:
            StatsService(storage_backends=[object()], name="x")
        self.assertIsInstance(cm.exception, StorageBackendTypeError)
        self.assertIn("invalid storage backend 'object'", str(cm.exception))

    def test_bad_arguments_are_config_errors(self):
        for kwargs in (
            {"storage_backends": RecordingStorage()},
            {"storage_backends": [RecordingStorage(captures="nope")]},
            {"storage_backends": [], "batch_size": 0},
            {"storage_backends": [], "max_spool_points": "many"},
            {"storage_backends": [], "max_retry_delay": -1},
            {"storage_backends": [], "spool_path": 3},
            {"storage_backends": [], "batchsize": 10},
        ):
            with self.assertRaises(config.ConfigErrors, msg=repr(kwargs)):
                StatsService(name="x", **kwargs)

    def test_errors_are_collected_when_loading_master_cfg(self):
        errors = config.ConfigErrors()
        with mock.patch.object(config.errors, "_errors", errors):
            StatsService(storage_backends=[], batch_size=0, name="x")
            capture.CaptureBuildDuration("b", report_in="weeks")
        self.assertEqual(len(errors.errors), 2)

    @defer.inlineCallbacks
    def test_reconfig_registers_backends(self):
        for backends in ([], [RecordingStorage(name="One"), RecordingStorage(name="Two")]):
            yield self.stats.reconfigService(backends)
            self.assertEqual(self.stats.registeredStorageServices, backends)
            self.assertEqual(list(self.stats.queues), [b.name for b in backends])

    @defer.inlineCallbacks
    def test_reconfig_never_doubles_consumers(self):
        cap = capture.CaptureProperty("builder1", "p")
        backend = RecordingStorage(captures=[cap])
        for _ in range(3):
            yield self.stats.reconfigService([backend])
        self.assertEqual(len(self.master.mq.qrefs), 1)
        self.assertEqual(cap.parent_svcs, [backend])
        yield self.add_build(properties={"p": 1})
        self.finish()
        self.assertEqual(backend.stored_data, [({"name": "p", "value": 1}, "builder1-p", CONTEXT)])

    @defer.inlineCallbacks
    def test_stop_removes_consumers_and_restart_registers_them_again(self):
        cap = capture.CaptureProperty("builder1", "p")
        yield self.stats.reconfigService([RecordingStorage(captures=[cap])])
        self.assertEqual(len(self.master.mq.qrefs), 1)
        yield self.stats.removeConsumers()
        self.assertEqual((self.master.mq.qrefs, self.stats.consumers), ([], []))
        yield self.stats.registerConsumers()
        self.assertEqual(len(self.master.mq.qrefs), 1)
        yield self.stats.disownServiceParent()  # stops the service
        self.assertEqual((self.master.mq.qrefs, self.stats.consumers), ([], []))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_default_context_and_error_message(self):
        cap = capture.CaptureBuildDuration("b")
        self.assertEqual(cap._defaultContext({"number": 7}, "b"), {"build_number": "7", "builder_name": "b"})
        self.assertEqual(
            cap._err_msg({"number": 7}, "b"), "CaptureBuildDuration failed on build 7 on builder b."
        )
        # epoch seconds (WAMP MQ) reach callbacks as the datetimes the simple MQ gives
        one, two = as_datetime(1), as_datetime(2)
        self.assertEqual(cap._retValParams({"started_at": 1, "complete_at": 2}), [one, two])
        self.assertEqual(capture.CaptureBuildStartTime("b")._retValParams({"started_at": 1}), [one])
        self.assertEqual(capture.CaptureBuildEndTime("b")._retValParams({"complete_at": 2}), [two])

    @defer.inlineCallbacks
    def test_capture_shared_by_two_backends_stores_once_in_each(self):
        cap = capture.CaptureProperty("builder1", "p")
        one, two = RecordingStorage([cap], name="one"), RecordingStorage([cap], name="two")
        yield self.stats.reconfigService([one, two])
        self.assertEqual(len(self.master.mq.qrefs), 1)
        yield self.add_build(properties={"p": 1})
        self.finish()
        self.assertEqual(one.stored_data, [({"name": "p", "value": 1}, "builder1-p", CONTEXT)])
        self.assertEqual(two.stored_data, one.stored_data)

    @defer.inlineCallbacks
    def test_capture_listed_twice_by_one_backend_stores_once(self):
        cap = capture.CaptureProperty("builder1", "p")
        backend = RecordingStorage([cap, cap])
        yield self.stats.reconfigService([backend])
        self.assertEqual(len(self.master.mq.qrefs), 1)
        yield self.add_build(properties={"p": 1})
        self.finish()
        self.assertEqual(backend.stored_data, [({"name": "p", "value": 1}, "builder1-p", CONTEXT)])

    @defer.inlineCallbacks
    def test_unnamed_backends_of_one_class_get_distinct_queues(self):
        backends = [RecordingStorage(), RecordingStorage()]
        yield self.stats.reconfigService(backends)
        self.assertEqual(list(self.stats.queues), ["RecordingStorage", "RecordingStorage#2"])

    @defer.inlineCallbacks
    def test_a_capture_of_the_previous_config_stores_into_its_own_unnamed_backends_queue(self):
        # A capture still busy when the master reconfigures (a first builder lookup)
        # stores afterwards, holding the backend objects of the old config: the
        # second of two unnamed backends of one class is "RecordingStorage#2", not
        # "RecordingStorage" (its name).
        def config():
            caps = [capture.CaptureProperty("builder1", "p"), capture.CaptureProperty("builder1", "q")]
            return [RecordingStorage(captures=[caps[0]]), RecordingStorage(captures=[caps[1]])]

        old = config()
        yield self.stats.reconfigService(old)
        old_second_capture = old[1].captures[0]
        new = config()
        yield self.stats.reconfigService(new)
        yield old_second_capture._store({"value": 1}, "builder1-q", {})
        yield self.stats.reconfigService([])  # stops the queues: they deliver what they hold
        self.assertEqual([p.series for p in new[0].points], [])
        self.assertEqual([p.series for p in new[1].points], ["builder1-q"])

    @defer.inlineCallbacks
    def test_buildbot_statistics_backend_works_unchanged(self):
        backend = fakestats.FakeStatsStorageService()
        self.assertIsInstance(backend, StatsStorageBase)
        backend.captures = [capture.CaptureProperty("builder1", "p")]
        yield self.stats.reconfigService([backend])
        yield self.add_build(properties={"p": "v"})
        self.finish()
        self.assertEqual(backend.stored_data, [({"name": "p", "value": "v"}, "builder1-p", CONTEXT)])

    @defer.inlineCallbacks
    def test_interface_provider_is_a_backend(self):
        backend = InterfaceOnlyBackend([capture.CaptureBuildDuration("builder1")])
        yield self.stats.reconfigService([backend])
        yield self.add_build()
        self.finish()
        self.assertEqual(backend.stored, [({"duration": 90.0}, "builder1-build-times", CONTEXT)])

    @defer.inlineCallbacks
    def test_buildbot_statistics_captures_are_accepted(self):
        from buildbot.statistics import capture as bb_capture

        backend = RecordingStorage(captures=[bb_capture.CaptureProperty("builder1", "p")])
        yield self.stats.reconfigService([backend])
        yield self.add_build(properties={"p": "v"})
        self.finish()
        self.assertEqual(backend.stored_data, [({"name": "p", "value": "v"}, "builder1-p", CONTEXT)])

    def test_service_reachable_from_steps(self):
        self.assertIs(get_stats_service(self.master), self.stats)
        self.assertIs(get_stats_service(self.master, "StatsService"), self.stats)
        with self.assertRaises(LookupError):
            get_stats_service(self.master, "nope")

    @defer.inlineCallbacks
    def test_documented_master_named_services_path_works_under_a_service_manager(self):
        from buildbot.util import service as bbservice

        manager = bbservice.AsyncMultiService()
        manager.name = "service_manager"
        yield manager.setServiceParent(self.master)
        self.master.service_manager = manager
        svc = StatsService(storage_backends=[], name="stats2", spool_path=None)
        yield svc.setServiceParent(manager)
        self.assertIs(self.master.namedServices["stats2"], svc)
        self.assertIs(get_stats_service(self.master, "stats2"), svc)
        yield svc.disownServiceParent()
        self.assertNotIn("stats2", self.master.namedServices)

    @defer.inlineCallbacks
    def test_step_mixin_posts_for_its_build(self):
        backend = yield self.use(capture.CaptureDataAllBuilders("metric"))
        yield self.add_build()

        class Step(StatsStepMixin):
            master = self.master
            build = mock.Mock(buildid=1)

        step = Step()
        yield step.yieldMetricsValue("metric", {"x": 1})
        yield step.yieldMetricsValues("metric", [{"x": 2}, {"x": 3}])
        posted = [m["post_data"] for _, m in self.master.mq.productions]
        self.assertEqual(posted, [{"x": 1}, {"x": 2}, {"x": 3}])
        self.assertEqual(backend.stored_data, [])  # the fake MQ does not deliver productions


class CountersTests(StatsTestCase):
    @defer.inlineCallbacks
    def test_counters(self):
        backend = yield self.use(
            capture.CaptureBuildDuration("builder1"), capture.CaptureBuildEndTime("builder1")
        )
        yield self.add_build()
        self.finish()
        self.assertEqual(
            self.stats.counters,
            {"captured": 2, "spooled": 0, "written": 2, "retried": 0, "dropped": 0, "pending": 0},
        )
        self.assertEqual(len(backend.points), 2)

    @defer.inlineCallbacks
    def test_step_mixin_without_a_name_works_beside_a_second_service(self):
        # a posted value is an MQ message every service's CaptureData receives,
        # so a second service must not break steps that name none
        second = StatsService(storage_backends=[], name="stats2", spool_path=None)
        yield second.setServiceParent(self.master)
        yield self.add_build()

        class Step(StatsStepMixin):
            master = self.master
            build = mock.Mock(buildid=1)

        yield Step().yieldMetricsValue("metric", {"x": 1})
        self.assertEqual([m["post_data"] for _, m in self.master.mq.productions], [{"x": 1}])
        self.assertIn(get_stats_service(self.master), (self.stats, second))
        yield second.disownServiceParent()


class BuildbotSimpleMQTests(StatsTestCase, LoggingMixin):
    """Posted values through Buildbot's real SimpleMQ (the fake MQ only records messages)."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.mq = SimpleMQ()
        self.patch(self.master.mq, "produce", self.mq.produce)
        self.patch(self.master.mq, "startConsuming", self.mq.startConsuming)
        yield self.add_build()

    def yield_consumers(self):
        return [q for q in self.mq.qrefs if q.filter == YIELD_KEY and q.callback is not None]

    @defer.inlineCallbacks
    def test_values_posted_together_reach_every_consumer_once_each_in_order(self):
        backend = yield self.use(capture.CaptureDataAllBuilders("m"))
        seen, other = [], []
        yield self.mq.startConsuming(
            lambda key, msg: seen.append(msg["post_data"]["i"]), (YIELD_KEY[0], None)
        )
        yield self.mq.startConsuming(lambda key, msg: other.append(msg), ("builds", None, "new"))
        yield self.stats.yieldMetricsValues("m", [{"i": i} for i in range(3)], 1)
        yield self.stats.yieldMetricsValue("m", {"i": 3}, 1)
        self.assertEqual(seen, [0, 1, 2, 3])
        self.assertEqual(other, [])
        self.assertEqual(backend.stored_data, [({"i": i}, "builder1-m", CONTEXT) for i in range(4)])

    @defer.inlineCallbacks
    def test_capture_data_consumer_returns_no_deferred_once_the_point_is_recorded(self):
        # Buildbot's MQ adds an errback to a returned Deferred and tracks it: per value, most of the cost
        backend = yield self.use(capture.CaptureDataAllBuilders("m"))
        yield self.stats.yieldMetricsValue("m", {"i": 0}, 1)  # the first builder lookup
        build_data = yield self.master.data.get(("builds", 1))
        (consumer,) = self.yield_consumers()
        msg = {"data_name": "m", "post_data": {"i": 1}, "build_data": build_data}
        self.assertIsNone(consumer.callback(YIELD_KEY, msg))
        yield self.stats.wait_spooled()
        self.assertEqual([p.fields for p in backend.points], [{"i": 0}, {"i": 1}])

    @defer.inlineCallbacks
    def test_custom_capture_overriding_consume_is_called_and_waited_for(self):
        later = defer.Deferred()
        calls = []

        class LaterData(capture.CaptureDataAllBuilders):
            def consume(self, routingKey, msg):
                calls.append(msg["post_data"])
                return later.addCallback(lambda _: super(LaterData, self).consume(routingKey, msg))

        backend = yield self.use(LaterData("m"))
        d = self.stats.yieldMetricsValues("m", [{"i": 1}, {"i": 2}], 1)
        self.assertEqual(calls, [{"i": 1}, {"i": 2}])
        self.assertFalse(d.called)  # the capture is still working
        later.callback(None)
        yield d
        self.assertEqual([p.fields for p in backend.points], [{"i": 1}, {"i": 2}])

    @defer.inlineCallbacks
    def test_custom_capture_results_and_errors(self):
        self.setUpLogging()

        class Plain(capture.Capture):
            def __init__(self, result):
                super().__init__(YIELD_KEY, None)
                self.result = result

            def consume(self, routingKey, msg):
                if isinstance(self.result, Exception):
                    raise self.result
                if self.result == "coroutine":
                    return self.coroutine(msg)
                return self.result

            async def coroutine(self, msg):
                await self._store(msg["post_data"], "coro", {})

        backend = yield self.use(
            Plain(None),
            Plain(5),
            Plain(defer.fail(ValueError("late"))),
            Plain(KeyError("k")),
            Plain("coroutine"),
        )
        yield self.stats.yieldMetricsValue("m", {"i": 1}, 1)
        self.assertEqual(backend.stored_data, [({"i": 1}, "coro", {})])
        self.assertLogged("Plain could not handle a message: ValueError: late")
        self.assertLogged("Plain could not handle a message: KeyError: 'k'")

    @defer.inlineCallbacks
    def test_values_of_a_started_build_need_no_build_query(self):
        backend = yield self.use(capture.CaptureDataAllBuilders("m"))
        yield self.stats.yieldMetricsValue("m", {"i": 0}, 1)  # builder 1 is known from now on
        yield self.add_build(buildid=2, number=2)
        build = yield self.master.data.get(("builds", 2))
        self.mq.produce(("builds", "2", "new"), build)  # as Buildbot does before the build's steps run
        asked = []
        real_get = self.master.data.get
        self.patch(
            self.master.data, "get", lambda path, *a, **kw: asked.append(path) or real_get(path, *a, **kw)
        )
        yield self.stats.yieldMetricsValues("m", [{"i": 1}, {"i": 2}], 2)
        self.assertEqual(asked, [])
        self.assertEqual(
            backend.stored_data[1:],
            [({"i": i}, "builder1-m", {"build_number": "2", "builder_name": "builder1"}) for i in (1, 2)],
        )

    @defer.inlineCallbacks
    def test_value_is_stamped_with_the_time_of_the_call(self):
        backend = yield self.use(capture.CaptureDataAllBuilders("m"))
        self.stats.clock.now_ns = lambda: 1_790_000_000_000_000_007
        yield self.stats.yieldMetricsValue("m", {"i": 1}, 1)
        self.assertEqual([p.time_ns for p in backend.points], [1_790_000_000_000_000_007])

    @defer.inlineCallbacks
    def test_a_long_list_is_produced_in_chunks_with_reactor_turns_between_in_order(self):
        backend = yield self.use(capture.CaptureDataAllBuilders("m"))
        yield self.stats.yieldMetricsValue("m", {"i": -1}, 1)  # builder and build known from now on
        seen = []
        yield self.mq.startConsuming(lambda key, msg: seen.append(msg["post_data"]["i"]), YIELD_KEY)
        n = YIELD_CHUNK * 2 + 1
        d = self.stats.yieldMetricsValues("m", [{"i": i} for i in range(n)], 1)
        self.assertEqual(seen, list(range(YIELD_CHUNK)))  # the first chunk at once
        single = self.stats.yieldMetricsValue("m", {"i": n}, 1)  # waits for its turn: order kept
        self.assertEqual(len(seen), YIELD_CHUNK)
        self.assertFalse(d.called)
        self.reactor.advance(0)  # the reactor's turns: the rest, chunk by chunk, then the single value
        self.assertEqual(seen, list(range(n + 1)))
        yield d
        yield single
        self.assertEqual([p.fields["i"] for p in backend.points], list(range(-1, n + 1)))
        self.assertIsNone(self.stats._producing)

    @defer.inlineCallbacks
    def test_values_from_a_generator(self):
        backend = yield self.use(capture.CaptureDataAllBuilders("m"))
        yield self.stats.yieldMetricsValues("m", ({"i": i} for i in range(3)), 1)
        self.assertEqual([p.fields["i"] for p in backend.points], [0, 1, 2])

    @defer.inlineCallbacks
    def test_consumers_that_start_or_stop_between_posts(self):
        backend = yield self.use(capture.CaptureDataAllBuilders("m"))
        seen = []
        yield self.stats.yieldMetricsValues("m", [{"i": 0}, {"i": 1}], 1)
        late = yield self.mq.startConsuming(lambda key, msg: seen.append(msg["post_data"]["i"]), YIELD_KEY)
        yield self.stats.yieldMetricsValue("m", {"i": 2}, 1)
        yield self.stats.yieldMetricsValues("m", [{"i": 3}, {"i": 4}], 1)
        yield late.stopConsuming()
        yield self.stats.yieldMetricsValues("m", [{"i": 5}, {"i": 6}], 1)
        self.assertEqual(seen, [2, 3, 4])
        self.assertEqual([p.fields["i"] for p in backend.points], list(range(7)))
