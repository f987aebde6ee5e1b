"""One log line per burst of the same failure, not one per value.

A ``CaptureData`` callback that raises for each of 20,000 values used to
write 20,000 lines (3 MB) into twistd.log per build.  Now the first failure
is logged at once (naming capture, builder and series) and the repeats are
summed up in one line, ``window`` seconds later on the reactor's clock.
"""

from __future__ import annotations

from buildbot.test.util.logging import LoggingMixin
from twisted.internet import defer, task

from buildbot_stats import capture
from buildbot_stats.burst_log import DEFAULT_WINDOW, BurstLog
from tests.fakes import YIELD_KEY, StatsTestCase


def make_log(window: float = 10.0) -> tuple[BurstLog, task.Clock, list[str]]:
    clock, lines = task.Clock(), []
    return BurstLog(clock, window=window, emit=lines.append), clock, lines


def test_first_failure_at_once_repeats_in_one_line_after_the_window() -> None:
    burst, clock, lines = make_log()
    for i in range(20_000):
        burst.failed("cap", f"value {i} failed")
    assert lines == ["buildbot_stats: value 0 failed"]
    clock.advance(10)
    assert lines[1:] == [
        "buildbot_stats: 19999 more failure(s) like this in 10 s: value 0 failed (last: value 19999 failed)"
    ]
    clock.advance(10)  # a quiet window: the burst is over, no timer left
    assert len(lines) == 2 and not burst._bursts and clock.getDelayedCalls() == []


def test_a_long_burst_gets_one_line_per_window_and_a_quiet_window_ends_it() -> None:
    burst, clock, lines = make_log()
    burst.failed("cap", "a")
    for _ in range(3):  # three windows, each with failures: one summary each
        clock.advance(5)
        burst.failed("cap", "b")
        clock.advance(5)
    assert len(lines) == 4 and all("1 more failure(s) like this" in line for line in lines[1:])
    clock.advance(10)  # a window without failure ends the burst
    assert len(lines) == 4 and not burst._bursts
    burst.failed("cap", "c")  # a new burst: logged at once
    assert lines[-1] == "buildbot_stats: c"


def test_kinds_of_failure_are_counted_apart() -> None:
    burst, clock, lines = make_log()
    for _ in range(3):
        burst.failed(("cap1", KeyError), "cap1 KeyError")
        burst.failed(("cap2", KeyError), "cap2 KeyError")
        burst.failed(("cap1", ValueError), "cap1 ValueError")
    assert lines == [
        "buildbot_stats: cap1 KeyError",
        "buildbot_stats: cap2 KeyError",
        "buildbot_stats: cap1 ValueError",
    ]
    clock.advance(10)
    assert len(lines) == 6


def test_flush_sums_up_and_cancels_the_timers() -> None:
    burst, clock, lines = make_log()
    burst.failed("a", "x")
    burst.failed("a", "y")
    burst.failed("b", "z")  # alone: no summary
    burst.flush()
    assert lines == [
        "buildbot_stats: x",
        "buildbot_stats: z",
        "buildbot_stats: 1 more failure(s) like this in 0 s: x (last: y)",
    ]
    assert clock.getDelayedCalls() == [] and not burst._bursts


class CaptureFailureLogTests(StatsTestCase, LoggingMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.setUpLogging()
        yield self.add_build()
        self.build_data = yield self.master.data.get(("builds", 1))

    def post(self, values):
        for value in values:
            self.master.mq.callConsumer(
                YIELD_KEY, {"data_name": "m", "post_data": value, "build_data": self.build_data}
            )

    def stats_lines(self):
        return [
            str(m) for m in self._logEvents if "buildbot_stats: " in str(m) and "configuring" not in str(m)
        ]

    def stats_lines_text(self):
        from twisted.python import log

        return [
            log.textFromEventDict(e)
            for e in self._logEvents
            if "buildbot_stats: " in (log.textFromEventDict(e) or "")
        ]

    @defer.inlineCallbacks
    def test_callback_raising_for_20000_values_logs_two_lines(self):
        def callback(value):
            return {"ratio": 1 / value["n"]}

        backend = yield self.use(capture.CaptureData("m", "builder1", callback=callback))
        self.post([{"n": 0}] * 20_000 + [{"n": 4}])
        self.assertEqual([p.fields for p in backend.points], [{"ratio": 0.25}])
        lines = [line for line in self.stats_lines_text() if "configuring" not in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("CaptureData failed for build 1 of builder builder1 (series builder1-m)", lines[0])
        self.assertIn("ZeroDivisionError", lines[0])
        self.reactor.advance(DEFAULT_WINDOW)
        lines = [line for line in self.stats_lines_text() if "configuring" not in line]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("19999 more failure(s) like this in 60 s: CaptureData failed for build 1", lines[1])
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_repeats_are_summed_up_when_the_service_stops(self):
        yield self.use(capture.CaptureData("m", "builder1", callback=lambda v: v["missing"]))
        self.post([{}] * 5)
        yield self.stats.disownServiceParent()
        lines = [line for line in self.stats_lines_text() if "configuring" not in line]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("4 more failure(s) like this", lines[1])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
