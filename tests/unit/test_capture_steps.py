"""Step, queue-time and test-result captures, the worker tag and epoch (WAMP) times, on Buildbot's fakes."""

from __future__ import annotations

import datetime

from buildbot import config
from buildbot.test import fakedb
from buildbot.test.util.logging import LoggingMixin
from twisted.internet import defer

from buildbot_stats import capture, statistics
from buildbot_stats.point import as_datetime, to_ns
from tests.fakes import COMPLETE, STARTED, StatsTestCase

UTC = datetime.timezone.utc
SUBMITTED = STARTED - datetime.timedelta(seconds=30)
STEP_STARTED = STARTED + datetime.timedelta(seconds=10)
STEP_DONE = STARTED + datetime.timedelta(seconds=25)
CONTEXT = {"build_number": "1", "builder_name": "builder1"}
STEP_TAGS = {**CONTEXT, "step_name": "compile", "step_number": "2", "hidden": "false", "worker": "w1"}


def epoch(dt: datetime.datetime) -> int:
    return int(dt.timestamp())


class _Base(StatsTestCase, LoggingMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.setUpLogging()
        self.queries: list[tuple] = []
        real_get = self.master.data.get

        def counting_get(path, *args, **kwargs):
            self.queries.append(tuple(path))
            return real_get(path, *args, **kwargs)

        self.master.data.get = counting_get

    @defer.inlineCallbacks
    def add_build(self, buildid=1, builderid=1, number=1, submitted=SUBMITTED, request=True, **kwargs):
        if not getattr(self, "_worker_added", False):
            yield self.master.db.insert_test_data([fakedb.Worker(id=1, name="w1")])
            self._worker_added = True
        rows = [fakedb.Buildset(id=buildid, reason="x")]
        if request:
            rows.append(
                fakedb.BuildRequest(
                    id=buildid, buildsetid=buildid, builderid=builderid, submitted_at=epoch(submitted)
                )
            )
        rows.append(
            fakedb.Build(
                id=buildid,
                masterid=fakedb.FakeDBConnector.MASTER_ID,
                workerid=1,
                builderid=builderid,
                buildrequestid=buildid,
                number=number,
                started_at=epoch(STARTED),
            )
        )
        yield self.master.db.insert_test_data(rows)

    def step_msg(self, stepid=10, buildid=1, name="compile", number=2, **overrides):
        msg = {
            "stepid": stepid,
            "number": number,
            "name": name,
            "buildid": buildid,
            "started_at": STEP_STARTED,
            "locks_acquired_at": STEP_STARTED,
            "complete": True,
            "complete_at": STEP_DONE,
            "results": 0,
            "state_string": "done",
            "urls": [],
            "hidden": False,
        }
        msg.update(overrides)
        return msg

    def finish_step(self, **kwargs):
        msg = self.step_msg(**kwargs)
        self.master.mq.callConsumer(
            ("builds", str(msg["buildid"]), "steps", str(msg["stepid"]), "finished"), msg
        )
        return msg

    def set_msg(self, setid=5, stepid=10, buildid=1, builderid=1, passed=7, failed=2, **overrides):
        msg = {
            "test_result_setid": setid,
            "builderid": builderid,
            "buildid": buildid,
            "stepid": stepid,
            "description": "unit tests",
            "category": "pass_fail",
            "value_unit": "boolean",
            "tests_passed": passed,
            "tests_failed": failed,
            "complete": True,
        }
        msg.update(overrides)
        return msg

    def complete_set(self, **kwargs):
        msg = self.set_msg(**kwargs)
        self.master.mq.callConsumer(("test_result_sets", str(msg["test_result_setid"]), "completed"), msg)
        return msg

    def assert_one_log_line(self, pattern):
        self.assertLogged(pattern)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.master.mq.productions, [])


class StepDurationTests(_Base):
    @defer.inlineCallbacks
    def test_exact_point_per_finished_step(self):
        backend = yield self.use(statistics.CaptureStepDuration("builder1"))
        yield self.add_build()
        self.finish_step()
        self.finish_step(
            stepid=11,
            name="test",
            number=3,
            results=2,
            complete_at=STEP_DONE + datetime.timedelta(seconds=60),
        )
        self.assertEqual(
            backend.stored_data,
            [
                ({"duration": 15.0, "result": 0}, "builder1-step-times", STEP_TAGS),
                (
                    {"duration": 75.0, "result": 2},
                    "builder1-step-times",
                    {**STEP_TAGS, "step_name": "test", "step_number": "3"},
                ),
            ],
        )
        self.assertEqual(backend.points[0].time_ns, to_ns(STEP_DONE))

    @defer.inlineCallbacks
    def test_one_lookup_of_each_kind_per_build(self):
        yield self.use(statistics.CaptureStepDurationAllBuilders())
        yield self.add_build()
        for i in range(20):
            self.finish_step(stepid=100 + i, name=f"s{i}", number=i)
        self.assertEqual(sorted(self.queries), [("builders", 1), ("builds", 1), ("workers", 1)])

    @defer.inlineCallbacks
    def test_step_name_exact_and_regex(self):
        backend = yield self.use(
            statistics.CaptureStepDuration("builder1", "compile"),
            statistics.CaptureStepDurationAllBuilders("te.*", regex=True, report_in="minutes"),
        )
        yield self.add_build()
        self.finish_step()
        self.finish_step(stepid=11, name="test", number=3)
        self.finish_step(stepid=12, name="compile_1", number=4)
        self.finish_step(stepid=13, name="pretest", number=5)
        self.assertEqual(
            sorted((p.tags["step_name"], p.fields["duration"]) for p in backend.points),
            [("compile", 15.0), ("test", 0.25)],
        )

    def test_bad_regex_and_report_in_are_config_errors(self):
        with self.assertRaises(config.ConfigErrors):
            statistics.CaptureStepDuration("b", "te(", regex=True)
        with self.assertRaises(config.ConfigErrors):
            statistics.CaptureStepDurationAllBuilders(report_in="days")
        with self.assertRaises(config.ConfigErrors):
            statistics.CaptureBuildQueueTimeAllBuilders(report_in="weeks")

    @defer.inlineCallbacks
    def test_other_builder_ignored_all_builders_not(self):
        backend = yield self.use(
            statistics.CaptureStepDuration("builder2"), statistics.CaptureStepDurationAllBuilders()
        )
        yield self.add_build()
        self.finish_step()
        self.assertEqual(len(backend.points), 1)

    @defer.inlineCallbacks
    def test_hidden_step_is_captured_and_tagged(self):
        backend = yield self.use(statistics.CaptureStepDurationAllBuilders(report_in="hours"))
        yield self.add_build()
        self.finish_step(hidden=True, results=3)
        self.assertEqual(
            backend.stored_data,
            [
                (
                    {"duration": 15.0 / 3600, "result": 3},
                    "builder1-step-times",
                    {**STEP_TAGS, "hidden": "true"},
                )
            ],
        )

    @defer.inlineCallbacks
    def test_epoch_times_as_the_wamp_mq_sends_them(self):
        backend = yield self.use(statistics.CaptureStepDurationAllBuilders())
        yield self.add_build()
        self.finish_step(started_at=epoch(STEP_STARTED), complete_at=epoch(STEP_DONE))
        self.assertEqual(
            backend.stored_data, [({"duration": 15.0, "result": 0}, "builder1-step-times", STEP_TAGS)]
        )
        self.assertEqual(backend.points[0].time_ns, to_ns(STEP_DONE))

    @defer.inlineCallbacks
    def test_step_that_never_started_has_no_duration(self):
        backend = yield self.use(statistics.CaptureStepDurationAllBuilders())
        yield self.add_build()
        self.finish_step(started_at=None, results=6)
        self.assertEqual(backend.stored_data, [({"result": 6}, "builder1-step-times", STEP_TAGS)])

    @defer.inlineCallbacks
    def test_step_of_unknown_build_logs_one_line(self):
        backend = yield self.use(statistics.CaptureStepDurationAllBuilders())
        yield self.add_build()
        self.finish_step(buildid=99)
        self.assertEqual(backend.stored_data, [])
        self.assert_one_log_line(
            "CaptureStepDurationAllBuilders: step 'compile' \\(id 10\\) of unknown build id 99"
        )

    @defer.inlineCallbacks
    def test_callback_error_logs_one_line(self):
        def cb(start, end):
            raise ValueError("boom")

        backend = yield self.use(statistics.CaptureStepDuration("builder1", callback=cb))
        yield self.add_build()
        self.finish_step()
        self.assertEqual(backend.stored_data, [])
        self.assert_one_log_line("CaptureStepDuration failed for step 'compile'.*builder1: ValueError: boom")

    @defer.inlineCallbacks
    def test_callback_gets_datetimes_even_from_epoch_times(self):
        seen = []

        def cb(start, end):
            seen.append((start, end))
            return (end - start).total_seconds() * 1000

        backend = yield self.use(statistics.CaptureStepDuration("builder1", callback=cb))
        yield self.add_build()
        self.finish_step(started_at=epoch(STEP_STARTED), complete_at=epoch(STEP_DONE))
        self.assertEqual(seen, [(STEP_STARTED, STEP_DONE)])
        self.assertEqual(backend.points[0].fields["duration"], 15000.0)


class QueueTimeTests(_Base):
    @defer.inlineCallbacks
    def test_queue_time_lands_in_the_build_times_point(self):
        backend = yield self.use(
            statistics.CaptureBuildQueueTime("builder1"), statistics.CaptureBuildDuration("builder1")
        )
        yield self.add_build()
        self.finish()
        self.assertEqual(
            sorted(backend.stored_data, key=str),
            [
                ({"duration": 90.0}, "builder1-build-times", CONTEXT),
                ({"queue-time": 30.0}, "builder1-build-times", CONTEXT),
            ],
        )
        # same series, tags and time: InfluxDB merges them into one point
        self.assertEqual({p.time_ns for p in backend.points}, {to_ns(COMPLETE)})

    @defer.inlineCallbacks
    def test_all_builders_minutes_and_epoch_times(self):
        backend = yield self.use(statistics.CaptureBuildQueueTimeAllBuilders(report_in="minutes"))
        yield self.add_build(buildid=2, builderid=2, number=4)
        self.finish(buildid=2, builderid=2, number=4, started=epoch(STARTED), complete=epoch(COMPLETE))
        self.assertEqual(
            backend.stored_data,
            [
                (
                    {"queue-time": 0.5},
                    "builder2-build-times",
                    {"build_number": "4", "builder_name": "builder2"},
                )
            ],
        )
        self.assertEqual(backend.points[0].time_ns, to_ns(COMPLETE))

    @defer.inlineCallbacks
    def test_missing_build_request_logs_one_line(self):
        backend = yield self.use(statistics.CaptureBuildQueueTime("builder1"))
        yield self.add_build(request=False)
        self.finish()
        self.assertEqual(backend.stored_data, [])
        self.assert_one_log_line(
            "CaptureBuildQueueTime failed on build 1 on builder builder1. No build request 1"
        )

    @defer.inlineCallbacks
    def test_callback_error_logs_one_line(self):
        def cb(submitted, started):
            raise KeyError("x")

        backend = yield self.use(statistics.CaptureBuildQueueTime("builder1", callback=cb))
        yield self.add_build()
        self.finish()
        self.assertEqual(backend.stored_data, [])
        self.assert_one_log_line(
            "CaptureBuildQueueTime failed on build 1 on builder builder1. Exception raised: KeyError"
        )

    @defer.inlineCallbacks
    def test_callback_gets_submitted_and_started(self):
        seen = []
        yield self.use(
            statistics.CaptureBuildQueueTime("builder1", callback=lambda s, b: seen.append((s, b)) or 1)
        )
        yield self.add_build()
        self.finish()
        self.assertEqual(seen, [(SUBMITTED, STARTED)])


class TestResultsTests(_Base):
    TAGS = {
        **CONTEXT,
        "step_name": "compile",
        "description": "unit tests",
        "category": "pass_fail",
        "value_unit": "boolean",
        "worker": "w1",
    }

    @defer.inlineCallbacks
    def test_set_waits_for_its_step_and_takes_its_time(self):
        backend = yield self.use(statistics.CaptureTestResults("builder1"))
        yield self.add_build()
        self.complete_set()  # Buildbot completes a step's sets just before it finishes the step
        self.assertEqual(backend.stored_data, [])
        self.finish_step()
        self.assertEqual(
            backend.stored_data,
            [({"tests_passed": 7, "tests_failed": 2, "tests_total": 9}, "builder1-test-results", self.TAGS)],
        )
        self.assertEqual(backend.points[0].time_ns, to_ns(STEP_DONE))

    @defer.inlineCallbacks
    def test_set_completed_after_its_step_finished(self):
        backend = yield self.use(statistics.CaptureTestResultsAllBuilders())
        yield self.add_build()
        self.finish_step(complete_at=epoch(STEP_DONE), started_at=epoch(STEP_STARTED))
        self.complete_set()
        self.assertEqual(len(backend.points), 1)
        self.assertEqual(backend.points[0].time_ns, to_ns(STEP_DONE))

    @defer.inlineCallbacks
    def test_two_sets_of_one_step(self):
        backend = yield self.use(statistics.CaptureTestResultsAllBuilders())
        yield self.add_build()
        self.complete_set()
        self.complete_set(
            setid=6, passed=1, failed=0, description="lint", category="code_issue", value_unit="issues"
        )
        self.finish_step()
        self.assertEqual(
            [(p.fields, p.tags["description"]) for p in backend.points],
            [
                ({"tests_passed": 7, "tests_failed": 2, "tests_total": 9}, "unit tests"),
                ({"tests_passed": 1, "tests_failed": 0, "tests_total": 1}, "lint"),
            ],
        )

    @defer.inlineCallbacks
    def test_none_counts_are_omitted_not_zero(self):
        backend = yield self.use(statistics.CaptureTestResultsAllBuilders())
        yield self.add_build()
        self.complete_set(passed=None, failed=3, category="fail_only")
        self.complete_set(setid=6, passed=None, failed=None, category="performance")
        self.finish_step()
        self.assertEqual([p.fields for p in backend.points], [{"tests_failed": 3, "tests_total": 3}])
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_other_builder_ignored(self):
        backend = yield self.use(statistics.CaptureTestResults("builder2"))
        yield self.add_build()
        self.complete_set()
        self.finish_step()
        self.assertEqual(backend.stored_data, [])

    @defer.inlineCallbacks
    def test_unknown_build_logs_one_line(self):
        backend = yield self.use(statistics.CaptureTestResultsAllBuilders())
        yield self.add_build()
        self.complete_set(buildid=99)
        self.finish_step(buildid=99)
        self.assertEqual(backend.stored_data, [])
        self.assert_one_log_line("test results of step 'compile' \\(id 10\\) of unknown build id 99")

    @defer.inlineCallbacks
    def test_callback(self):
        backend = yield self.use(
            statistics.CaptureTestResults("builder1", callback=lambda s: {"rate": s["tests_passed"] / 10})
        )
        yield self.add_build()
        self.complete_set()
        self.finish_step()
        self.assertEqual(backend.stored_data, [({"rate": 0.7}, "builder1-test-results", self.TAGS)])

    @defer.inlineCallbacks
    def test_callback_error_logs_one_line(self):
        def cb(result_set):
            raise ZeroDivisionError("no")

        backend = yield self.use(statistics.CaptureTestResults("builder1", callback=cb))
        yield self.add_build()
        self.complete_set()
        self.finish_step()
        self.assertEqual(backend.stored_data, [])
        self.assert_one_log_line(
            "CaptureTestResults failed for build 1 on builder builder1: callback failed for test result set 5"
        )

    @defer.inlineCallbacks
    def test_step_that_never_finishes_keeps_its_sets_bounded(self):
        from buildbot_stats.capture import steps as capture_steps

        backend = yield self.use(statistics.CaptureTestResultsAllBuilders())
        yield self.add_build()
        self.patch(capture_steps, "MAX_PENDING_STEPS", 3)
        for stepid in range(5):
            self.complete_set(setid=stepid, stepid=stepid)
        self.assertLogged("step 1 did not finish; dropped its 1 test result set")
        self.finish_step(stepid=4)
        self.assertEqual(len(backend.points), 1)
        self.assertEqual(len(backend.captures[0]._pending), 2)


class WorkerTagTests(_Base):
    @defer.inlineCallbacks
    def test_build_results_carry_the_worker(self):
        backend = yield self.use(statistics.CaptureBuildResultsAllBuilders())
        yield self.add_build()
        self.finish()
        self.assertEqual(
            backend.stored_data,
            [({"results": 0, "result": "success"}, "builder1-build-results", {**CONTEXT, "worker": "w1"})],
        )

    @defer.inlineCallbacks
    def test_statistics_captures_keep_their_context_by_default(self):
        backend = yield self.use(
            statistics.CaptureBuildDuration("builder1"),
            statistics.CaptureBuildQueueTime("builder1"),
            statistics.CapturePropertyAllBuilders("p"),
            statistics.CaptureDataAllBuilders("d"),
        )
        yield self.add_build()
        yield self.master.db.insert_test_data(
            [fakedb.BuildProperty(buildid=1, name="p", value=1, source="t")]
        )
        self.finish()
        yield self.stats.yieldMetricsValue("d", {"x": 1}, 1)
        self.master.mq.callConsumer(self.master.mq.productions[-1][0], self.master.mq.productions[-1][1])
        self.assertEqual(len(backend.points), 4)
        self.assertEqual([p.tags for p in backend.points], [CONTEXT] * 4)

    @defer.inlineCallbacks
    def test_extra_tags_worker_adds_it_to_the_statistics_captures(self):
        backend = yield self.use(
            statistics.CaptureBuildDuration("builder1"),
            statistics.CaptureBuildQueueTime("builder1"),
            statistics.CaptureBuildStartTime("builder1"),
            statistics.CapturePropertyAllBuilders("p"),
            statistics.CaptureDataAllBuilders("d"),
            extra_tags=["worker"],
        )
        yield self.add_build()
        yield self.master.db.insert_test_data(
            [fakedb.BuildProperty(buildid=1, name="p", value=1, source="t")]
        )
        self.finish()
        yield self.stats.yieldMetricsValue("d", {"x": 1}, 1)
        self.master.mq.callConsumer(self.master.mq.productions[-1][0], self.master.mq.productions[-1][1])
        self.assertEqual(len(backend.points), 5)
        self.assertEqual([p.tags for p in backend.points], [{**CONTEXT, "worker": "w1"}] * 5)

    @defer.inlineCallbacks
    def test_extra_tags_worker_on_posted_values_looks_the_worker_up_once(self):
        backend = yield self.use(statistics.CaptureData("d", "builder1"), extra_tags=["worker"])
        yield self.add_build()
        build_data = yield self.master.data.get(("builds", 1))
        self.queries.clear()
        for i in range(10):
            self.master.mq.callConsumer(
                ("stats-yieldMetricsValue", "stats-yield-data"),
                {"data_name": "d", "post_data": {"i": i}, "build_data": build_data},
            )
        self.assertEqual(sorted(self.queries), [("builders", 1), ("workers", 1)])
        self.assertEqual([p.fields["i"] for p in backend.points], list(range(10)))
        self.assertEqual(
            {tuple(sorted(p.tags.items())) for p in backend.points},
            {tuple(sorted({**CONTEXT, "worker": "w1"}.items()))},
        )

    def test_extra_tags_mistakes_are_config_errors(self):
        for bad in ("worker", ["worker", "os"], 3):
            with self.assertRaises(config.ConfigErrors, msg=repr(bad)) as cm:
                statistics.StatsService(storage_backends=[], extra_tags=bad)
            self.assertIn("extra_tags", str(cm.exception))


class EpochTimeTests(_Base):
    """The WAMP MQ sends times as epoch seconds: the same values as the simple MQ's datetimes."""

    @defer.inlineCallbacks
    def check(self, cap, fields, series="builder1-build-times", tags=CONTEXT):
        backend = yield self.use(cap)
        yield self.add_build()
        self.finish(started=epoch(STARTED), complete=epoch(COMPLETE))
        self.assertEqual(backend.stored_data, [(fields, series, tags)])
        self.assertEqual(backend.points[0].time_ns, to_ns(COMPLETE))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_start_time(self):
        return self.check(capture.CaptureBuildStartTime("builder1"), {"start-time": STARTED.isoformat()})

    def test_end_time(self):
        return self.check(capture.CaptureBuildEndTimeAllBuilders(), {"end-time": COMPLETE.isoformat()})

    def test_duration(self):
        return self.check(capture.CaptureBuildDurationAllBuilders(report_in="minutes"), {"duration": 1.5})

    def test_queue_time(self):
        return self.check(capture.CaptureBuildQueueTime("builder1"), {"queue-time": 30.0})

    def test_results(self):
        return self.check(
            capture.CaptureBuildResults("builder1"),
            {"results": 0, "result": "success"},
            "builder1-build-results",
            {**CONTEXT, "worker": "w1"},
        )

    @defer.inlineCallbacks
    def test_property(self):
        backend = yield self.use(capture.CaptureProperty("builder1", "p"))
        yield self.add_build()
        yield self.master.db.insert_test_data(
            [fakedb.BuildProperty(buildid=1, name="p", value=2, source="t")]
        )
        self.finish(started=epoch(STARTED), complete=epoch(COMPLETE))
        self.assertEqual(backend.points[0].time_ns, to_ns(COMPLETE))

    def test_float_epoch_gives_the_iso_string_of_the_datetime(self):
        self.assertEqual(as_datetime(STARTED.timestamp() + 0.25), STARTED + datetime.timedelta(seconds=0.25))
        self.assertIs(as_datetime(STARTED), STARTED)
        with self.assertRaises(TypeError):
            as_datetime("2026-11-01")
