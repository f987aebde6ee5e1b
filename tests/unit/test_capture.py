"""Every documented capture on Buildbot's fake master: the exact points stored."""

from __future__ import annotations

import json

from buildbot import config
from buildbot.test.util.logging import LoggingMixin
from twisted.internet import defer

from buildbot_stats import capture
from buildbot_stats.errors import CaptureCallbackError
from buildbot_stats.point import to_ns
from tests.fakes import COMPLETE, STARTED, YIELD_KEY, StatsTestCase

CONTEXT = {"build_number": "1", "builder_name": "builder1"}


class PropertyCaptureTests(StatsTestCase):
    @defer.inlineCallbacks
    def test_property(self):
        backend = yield self.use(capture.CaptureProperty("builder1", "test_name"))
        yield self.add_build(properties={"test_name": "test_value", "other": 1})
        self.finish()
        self.assertEqual(
            backend.stored_data,
            [({"name": "test_name", "value": "test_value"}, "builder1-test_name", CONTEXT)],
        )
        # the point carries the build's end time, so a re-send overwrites it
        self.assertEqual(backend.points[0].time_ns, to_ns(COMPLETE))

    @defer.inlineCallbacks
    def test_property_other_builder_ignored(self):
        backend = yield self.use(capture.CaptureProperty("builder2", "test_name"))
        yield self.add_build(properties={"test_name": "test_value"})
        self.finish()
        self.assertEqual(backend.stored_data, [])

    @defer.inlineCallbacks
    def test_property_all_builders(self):
        backend = yield self.use(capture.CapturePropertyAllBuilders("test_name"))
        yield self.add_build(buildid=1, builderid=1, properties={"test_name": "a"})
        yield self.add_build(buildid=2, builderid=2, number=7, properties={"test_name": "b"})
        self.finish()
        self.finish(buildid=2, builderid=2, number=7)
        self.assertEqual(
            backend.stored_data,
            [
                ({"name": "test_name", "value": "a"}, "builder1-test_name", CONTEXT),
                (
                    {"name": "test_name", "value": "b"},
                    "builder2-test_name",
                    {"build_number": "7", "builder_name": "builder2"},
                ),
            ],
        )

    @defer.inlineCallbacks
    def test_property_regex(self):
        backend = yield self.use(capture.CaptureProperty("builder1", "test_n.*", regex=True))
        yield self.add_build(properties={"test_name": "v1", "test_nose": 3, "other_test_name": "no"})
        self.finish()
        self.assertEqual(
            sorted(backend.stored_data, key=lambda t: t[1]),
            [
                ({"name": "test_name", "value": "v1"}, "builder1-test_name", CONTEXT),
                ({"name": "test_nose", "value": 3}, "builder1-test_nose", CONTEXT),
            ],
        )

    def test_property_bad_regex_is_config_error(self):
        with self.assertRaises(config.ConfigErrors):
            capture.CaptureProperty("builder1", "test_(", regex=True)

    @defer.inlineCallbacks
    def test_property_callback(self):
        calls = []

        def cb(props, name):
            calls.append((dict(props), name))
            return props[name][0] * 2

        backend = yield self.use(capture.CaptureProperty("builder1", "n", callback=cb))
        yield self.add_build(properties={"n": 21})
        self.finish()
        self.assertEqual(backend.stored_data, [({"name": "n", "value": 42}, "builder1-n", CONTEXT)])
        self.assertEqual(calls, [({"n": (21, "test")}, "n")])

    @defer.inlineCallbacks
    def test_missing_property_raises_capture_callback_error(self):
        backend = yield self.use(capture.CaptureProperty("builder1", "missing"))
        yield self.add_build(properties={"test_name": "x"})
        cap = backend.captures[0]
        yield self.assertFailure(cap.consume(("x",), self.finished_msg()), CaptureCallbackError)
        self.assertEqual(backend.stored_data, [])

    @defer.inlineCallbacks
    def test_failing_property_does_not_stop_the_others(self):
        def cb(props, name):
            if name == "test_bad":
                raise ValueError("boom")
            return props[name][0]

        backend = yield self.use(capture.CaptureProperty("builder1", "test_.*", callback=cb, regex=True))
        yield self.add_build(properties={"test_bad": 1, "test_good": 2})
        cap = backend.captures[0]
        failure = yield self.assertFailure(cap.consume(("x",), self.finished_msg()), CaptureCallbackError)
        self.assertIn("test_bad", str(failure))
        self.assertEqual(
            backend.stored_data, [({"name": "test_good", "value": 2}, "builder1-test_good", CONTEXT)]
        )


class BuildTimeCaptureTests(StatsTestCase):
    @defer.inlineCallbacks
    def check(self, cap, expected_fields, series="builder1-build-times"):
        backend = yield self.use(cap)
        yield self.add_build()
        self.finish()
        self.assertEqual(backend.stored_data, [(expected_fields, series, CONTEXT)])
        self.assertEqual(backend.points[0].time_ns, to_ns(COMPLETE))

    def test_start_time(self):
        return self.check(capture.CaptureBuildStartTime("builder1"), {"start-time": STARTED.isoformat()})

    def test_start_time_all_builders(self):
        return self.check(capture.CaptureBuildStartTimeAllBuilders(), {"start-time": STARTED.isoformat()})

    def test_end_time(self):
        return self.check(capture.CaptureBuildEndTime("builder1"), {"end-time": COMPLETE.isoformat()})

    def test_end_time_all_builders(self):
        return self.check(capture.CaptureBuildEndTimeAllBuilders(), {"end-time": COMPLETE.isoformat()})

    def test_duration_seconds(self):
        return self.check(capture.CaptureBuildDuration("builder1"), {"duration": 90.0})

    def test_duration_minutes(self):
        return self.check(capture.CaptureBuildDuration("builder1", report_in="minutes"), {"duration": 1.5})

    def test_duration_hours(self):
        return self.check(capture.CaptureBuildDuration("builder1", report_in="hours"), {"duration": 0.025})

    def test_duration_all_builders(self):
        return self.check(capture.CaptureBuildDurationAllBuilders(report_in="minutes"), {"duration": 1.5})

    def test_duration_callback(self):
        return self.check(
            capture.CaptureBuildDuration("builder1", callback=lambda s, e: (e - s).total_seconds() * 1000),
            {"duration": 90000.0},
        )

    def test_start_time_callback(self):
        return self.check(capture.CaptureBuildStartTime("builder1", lambda s: s.year), {"start-time": 2026})

    @defer.inlineCallbacks
    def test_results(self):
        # not a buildbot.statistics capture: it carries the worker's name too
        backend = yield self.use(capture.CaptureBuildResults("builder1"))
        yield self.add_build()
        self.finish()
        self.assertEqual(
            backend.stored_data,
            [({"results": 0, "result": "success"}, "builder1-build-results", {**CONTEXT, "worker": "w1"})],
        )
        self.assertEqual(backend.points[0].time_ns, to_ns(COMPLETE))

    @defer.inlineCallbacks
    def test_results_all_builders_failure(self):
        backend = yield self.use(capture.CaptureBuildResultsAllBuilders())
        yield self.add_build()
        msg = self.finished_msg()
        msg["results"] = 2
        self.master.mq.callConsumer(("builders", "1", "builds", "1", "finished"), msg)
        self.assertEqual(
            backend.stored_data,
            [({"results": 2, "result": "failure"}, "builder1-build-results", {**CONTEXT, "worker": "w1"})],
        )

    @defer.inlineCallbacks
    def test_negative_duration_is_zero(self):
        backend = yield self.use(capture.CaptureBuildDuration("builder1"))
        yield self.add_build()
        self.finish(started=COMPLETE, complete=STARTED)
        self.assertEqual(backend.stored_data, [({"duration": 0.0}, "builder1-build-times", CONTEXT)])

    def test_report_in_error(self):
        with self.assertRaises(config.ConfigErrors) as cm:
            capture.CaptureBuildDuration("builder1", report_in="days")
        self.assertIn("report_in", str(cm.exception))
        with self.assertRaises(config.ConfigErrors):
            capture.CaptureBuildDurationAllBuilders(report_in="fortnights")

    @defer.inlineCallbacks
    def test_callback_errors(self):
        def cb(*args):
            raise TypeError("nope")

        for cls in (capture.CaptureBuildStartTime, capture.CaptureBuildEndTime, capture.CaptureBuildDuration):
            backend = yield self.use(cls("builder1", callback=cb))
            yield self.assertFailure(
                backend.captures[0].consume(("x",), self.finished_msg()), CaptureCallbackError
            )
            self.assertEqual(backend.stored_data, [])


class DataCaptureTests(StatsTestCase):
    @defer.inlineCallbacks
    def yield_value(self, data_name="test", post_data=None):
        yield self.add_build()
        build_data = yield self.master.data.get(("builds", 1))
        msg = {"data_name": data_name, "post_data": post_data or {"test": "test"}, "build_data": build_data}
        self.master.mq.callConsumer(YIELD_KEY, msg)
        return msg

    @defer.inlineCallbacks
    def test_capture_data(self):
        backend = yield self.use(capture.CaptureData("test", "builder1"))
        yield self.yield_value()
        self.assertEqual(backend.stored_data, [({"test": "test"}, "builder1-test", CONTEXT)])

    @defer.inlineCallbacks
    def test_capture_data_other_name_or_builder_ignored(self):
        backend = yield self.use(
            capture.CaptureData("other", "builder1"), capture.CaptureData("test", "builder2")
        )
        yield self.yield_value()
        self.assertEqual(backend.stored_data, [])

    @defer.inlineCallbacks
    def test_capture_data_all_builders(self):
        backend = yield self.use(capture.CaptureDataAllBuilders("test"))
        yield self.yield_value()
        self.assertEqual(backend.stored_data, [({"test": "test"}, "builder1-test", CONTEXT)])

    @defer.inlineCallbacks
    def test_capture_data_callback(self):
        backend = yield self.use(capture.CaptureData("test", "builder1", lambda d: {"n": len(d)}))
        yield self.yield_value()
        self.assertEqual(backend.stored_data, [({"n": 1}, "builder1-test", CONTEXT)])

    @defer.inlineCallbacks
    def test_capture_data_error(self):
        def cb(d):
            raise TypeError

        backend = yield self.use(capture.CaptureData("test", "builder1", cb))
        yield self.add_build()
        build_data = yield self.master.data.get(("builds", 1))
        msg = {"data_name": "test", "post_data": {}, "build_data": build_data}
        yield self.assertFailure(backend.captures[0].consume(YIELD_KEY, msg), CaptureCallbackError)

    @defer.inlineCallbacks
    def test_yield_metrics_value_produces_the_documented_message(self):
        yield self.use(capture.CaptureData("test", "builder1"))
        yield self.add_build()
        yield self.stats.yieldMetricsValue("test", {"test": "test"}, 1)
        build_data = yield self.master.data.get(("builds", 1))
        # buildbot.statistics's keys, no more (the point is stamped when consumed)
        self.master.mq.assertProductions(
            [(YIELD_KEY, {"data_name": "test", "post_data": {"test": "test"}, "build_data": build_data})]
        )

    @defer.inlineCallbacks
    def test_yield_metrics_values_one_message_per_value(self):
        yield self.use(capture.CaptureData("test", "builder1"))
        yield self.add_build()
        yield self.stats.yieldMetricsValues("test", [{"i": 1}, {"i": 2}], 1)
        self.assertEqual([m["post_data"] for _, m in self.master.mq.productions], [{"i": 1}, {"i": 2}])

    @defer.inlineCallbacks
    def test_values_posted_together_keep_distinct_timestamps(self):
        backend = yield self.use(capture.CaptureData("test", "builder1"))
        yield self.add_build()
        build_data = yield self.master.data.get(("builds", 1))
        for i in range(50):
            self.master.mq.callConsumer(
                YIELD_KEY, {"data_name": "test", "post_data": {"i": i}, "build_data": build_data}
            )
        stamps = [p.time_ns for p in backend.points]
        self.assertEqual(len(set(stamps)), 50)
        self.assertEqual(stamps, sorted(stamps))

    @defer.inlineCallbacks
    def test_non_dict_post_data_is_stored_as_value(self):
        backend = yield self.use(capture.CaptureData("test", "builder1", lambda d: 5))
        yield self.yield_value()
        self.assertEqual(backend.stored_data, [({"value": 5}, "builder1-test", CONTEXT)])


class AbstractClassTests(StatsTestCase):
    def test_abstract_classes_raise_type_error(self):
        for cls, args in (
            (capture.Capture, (("a",), None)),
            (capture.CapturePropertyBase, ("p",)),
            (capture.CaptureBuildTimes, ("b", None, "t")),
            (capture.CaptureDataBase, ("d",)),
        ):
            with self.assertRaises(TypeError, msg=cls.__name__):
                cls(*args)

    def test_subclass_without_consume_raises_type_error(self):
        class NoConsume(capture.Capture):
            pass

        with self.assertRaises(TypeError):
            NoConsume(("a",), None)


class RobustnessTests(StatsTestCase, LoggingMixin):
    @defer.inlineCallbacks
    def test_unknown_builder_logs_one_line(self):
        self.setUpLogging()
        backend = yield self.use(capture.CaptureBuildDurationAllBuilders())
        yield self.add_build()
        self.finish(builderid=99)
        self.assertEqual(backend.stored_data, [])
        self.assertLogged("unknown builder id 99")
        self.flushLoggedErrors()
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_missing_times_log_one_line_and_other_captures_still_run(self):
        self.setUpLogging()
        backend = yield self.use(
            capture.CaptureBuildDuration("builder1"), capture.CaptureProperty("builder1", "p")
        )
        yield self.add_build(properties={"p": 1})
        self.finish(complete=None)
        self.assertEqual(backend.stored_data, [({"name": "p", "value": 1}, "builder1-p", CONTEXT)])
        self.assertLogged("CaptureBuildDuration failed on build 1 on builder builder1")
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_unserialisable_values_reach_backend_untouched(self):
        # conversion is the backend's business (see test_lineprotocol); the service keeps values
        backend = yield self.use(capture.CaptureProperty("builder1", "p"))
        yield self.add_build(properties={"p": {"a": [1, 2]}})
        self.finish()
        self.assertEqual(json.dumps(backend.stored_data[0][0]), '{"name": "p", "value": {"a": [1, 2]}}')


class CustomCaptureTests(StatsTestCase, LoggingMixin):
    @defer.inlineCallbacks
    def test_capture_written_for_buildbot_statistics_stores_through_store(self):
        class CaptureWorkerCount(capture.Capture):
            """As a buildbot.statistics user would write it: _store with three arguments."""

            def __init__(self):
                super().__init__(("builders", None, "builds", None, "finished"), None)

            @defer.inlineCallbacks
            def consume(self, routingKey, msg):
                yield self._store({"workers": 2}, "workers", {"builder": "x"})

        backend = yield self.use(CaptureWorkerCount())
        yield self.add_build()
        self.finish()
        self.assertEqual(backend.stored_data, [({"workers": 2}, "workers", {"builder": "x"})])
        self.assertGreater(backend.points[0].time_ns, 0)

    @defer.inlineCallbacks
    def test_bug_in_a_custom_capture_is_one_line_that_says_where(self):
        self.setUpLogging()

        class Buggy(capture.Capture):
            def __init__(self):
                super().__init__(("builders", None, "builds", None, "finished"), None)

            def consume(self, routingKey, msg):
                return {}["missing"]

        yield self.use(Buggy())
        yield self.add_build()
        self.finish()
        self.assertLogged(
            r"Buggy could not handle a message: KeyError: 'missing' \(in consume, .*test_capture.py:\d+\)"
        )
        self.assertEqual(self.flushLoggedErrors(), [])
