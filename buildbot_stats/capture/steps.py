"""Captures of steps, queue times and test result sets (not in buildbot.statistics; docs/captures.rst):
every point carries a time from the master's database, so replaying the database gives the same point."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from buildbot import config
from twisted.internet import defer
from twisted.python import log

from buildbot_stats.capture.base import (
    Callback,
    _AllBuilders,
    _BuilderCapture,
    _OneBuilder,
    duration_callback,
)
from buildbot_stats.capture.builds import CaptureBuildTimes
from buildbot_stats.errors import CaptureCallbackError
from buildbot_stats.point import as_datetime

__all__ = [
    "CaptureBuildQueueTime",
    "CaptureBuildQueueTimeAllBuilders",
    "CaptureStepDuration",
    "CaptureStepDurationAllBuilders",
    "CaptureTestResults",
    "CaptureTestResultsAllBuilders",
]

STEP_FINISHED = ("builds", None, "steps", None, "finished")
TEST_RESULT_SET_COMPLETED = ("test_result_sets", None, "completed")
#: test result sets waiting for their step to finish, at most (oldest dropped beyond)
MAX_PENDING_STEPS = 1000
#: the tags of a test result set (left out when empty)
_SET_TAGS = ("description", "category", "value_unit")


class _StepCapture(_OneBuilder, _BuilderCapture):
    """A capture of one builder's steps; each point is stamped with its step's ``complete_at``."""

    @defer.inlineCallbacks
    def _step_point(self, step: dict[str, Any], what: str) -> Any:
        """``(build, builder name, tags, where)`` of the step, None if not captured here."""
        build = yield self._lookups.builds.get(step["buildid"])
        what = f"{what} {step.get('name')!r} (id {step.get('stepid')!r})"
        if build is None:
            raise CaptureCallbackError(
                f"{type(self).__name__}: {what} of unknown build id {step['buildid']!r}"
            )
        builder_info = yield self._builder_info(build["builderid"])
        if not self._builder_name_matches(builder_info):
            return None
        name = builder_info["name"]
        tags = yield self._build_context(build, name, worker=True)
        tags["step_name"] = str(step["name"])
        where = f"{type(self).__name__} failed for {what} of build {build['number']} on builder {name}"
        return build, name, tags, where


class CaptureStepDuration(_StepCapture):
    """Captures every finished step (or those named ``step_name``, a ``re.match`` pattern
    with ``regex=True``) into ``<builder>-step-times``, stamped with its ``complete_at``."""

    def __init__(
        self,
        builder_name: str | None,
        step_name: str | None = None,
        regex: bool = False,
        report_in: str = "seconds",
        callback: Callback = None,
        **unknown: Any,
    ) -> None:
        self._builder_name = builder_name
        self._pattern: re.Pattern[str] | None = None  # None: every step
        if step_name is not None and not isinstance(step_name, str):
            config.error(f"{type(self).__name__}: step_name must be a string or None, not {step_name!r}")
        elif step_name is not None:
            try:
                self._pattern = re.compile(step_name if regex else re.escape(step_name) + r"\Z")
            except re.error as e:
                config.error(f"{type(self).__name__}: invalid regular expression {step_name!r}: {e}")
        super().__init__(STEP_FINISHED, duration_callback(self, report_in, callback), **unknown)

    @defer.inlineCallbacks
    def consume(self, routingKey: tuple, msg: dict[str, Any]) -> Any:
        name = msg.get("name")
        if self._pattern is not None and not (isinstance(name, str) and self._pattern.match(name)):
            return
        found = yield self._step_point(msg, "step")
        if found is None:
            return
        build, builder_name, tags, where = found
        complete_at = msg.get("complete_at")
        if complete_at is None:
            raise CaptureCallbackError(f"{where}: the step has no complete_at")
        fields: dict[str, Any] = {}
        if msg.get("started_at") is not None:
            try:
                fields["duration"] = self._callback(as_datetime(msg["started_at"]), as_datetime(complete_at))
            except Exception as e:
                raise CaptureCallbackError(f"{where}: {type(e).__name__}: {e}") from e
        if msg.get("results") is not None:
            fields["result"] = msg["results"]
        if not fields:
            raise CaptureCallbackError(f"{where}: the step has neither start time nor result")
        tags["step_number"] = str(msg["number"])
        tags["hidden"] = "true" if msg.get("hidden") else "false"
        yield self._store(fields, f"{builder_name}-step-times", tags, complete_at)


class CaptureStepDurationAllBuilders(_AllBuilders, CaptureStepDuration):
    """Captures finished steps on every builder."""

    def __init__(
        self,
        step_name: str | None = None,
        regex: bool = False,
        report_in: str = "seconds",
        callback: Callback = None,
        **unknown: Any,
    ) -> None:
        super().__init__(None, step_name, regex, report_in, callback, **unknown)


class CaptureBuildQueueTime(_OneBuilder, CaptureBuildTimes):
    """Captures how long a build waited for a worker as field ``queue-time`` of ``<builder>-build-times``,
    in the same point (tags, time) as the ``duration``, ``start-time`` and ``end-time`` captures."""

    def __init__(
        self, builder_name: str | None, report_in: str = "seconds", callback: Callback = None, **unknown: Any
    ) -> None:
        super().__init__(builder_name, duration_callback(self, report_in, callback), "queue-time", **unknown)

    @defer.inlineCallbacks
    def _retValParams(self, msg: dict[str, Any]) -> Any:
        request = yield self._lookups.buildrequests.get(msg.get("buildrequestid"))
        if request is None or request.get("submitted_at") is None:
            raise CaptureCallbackError(
                f"No build request {msg.get('buildrequestid')!r} to take the queue time from."
            )
        return [as_datetime(request["submitted_at"]), as_datetime(msg["started_at"])]


class CaptureBuildQueueTimeAllBuilders(_AllBuilders, CaptureBuildQueueTime):
    """Captures the queue time of builds on every builder."""

    def __init__(self, report_in: str = "seconds", callback: Callback = None, **unknown: Any) -> None:
        super().__init__(None, report_in, callback, **unknown)


def _test_counts(result_set: dict[str, Any]) -> dict[str, Any]:
    """The default fields: the counts Buildbot knows ("not counted", None, is not zero), and their sum."""
    fields = {k: result_set[k] for k in ("tests_passed", "tests_failed") if result_set.get(k) is not None}
    if fields:
        fields["tests_total"] = sum(fields.values())
    return fields


class CaptureTestResults(_StepCapture):
    """Captures each completed test result set into ``<builder>-test-results``, stamped with
    the ``complete_at`` of its step: a step completes its sets just before it finishes, so a
    set waits (in memory, bounded) for its step's finished message."""

    def __init__(self, builder_name: str | None, callback: Callback = None, **unknown: Any) -> None:
        self._builder_name = builder_name
        super().__init__(TEST_RESULT_SET_COMPLETED, callback or _test_counts, **unknown)
        #: the two messages this capture needs (StatsService subscribes to each)
        self.routingKeys = [TEST_RESULT_SET_COMPLETED, STEP_FINISHED]
        self._pending: OrderedDict[Any, list[dict[str, Any]]] = OrderedDict()

    def consume(self, routingKey: tuple, msg: dict[str, Any]) -> Any:
        # No inlineCallbacks here: parking a set and taking it back must happen
        # at once, in message order, before any lookup yields.
        if routingKey and routingKey[0] == "test_result_sets":
            return self._set_completed(msg)
        self._lookups.finished_steps.put(msg["stepid"], msg)
        sets = self._pending.pop(msg.get("stepid"), None)
        return self._emit(sets, msg) if sets else None

    def _set_completed(self, result_set: dict[str, Any]) -> Any:
        known = self._lookups.builders.known(result_set.get("builderid"))
        if known is not None and not self._builder_name_matches(known):
            return None
        stepid = result_set.get("stepid")
        step = self._lookups.finished_steps.known(stepid)
        if step is not None:
            return self._emit([result_set], step)
        self._pending.setdefault(stepid, []).append(result_set)
        self._pending.move_to_end(stepid)
        if len(self._pending) > MAX_PENDING_STEPS:
            dropped_step, dropped = self._pending.popitem(last=False)
            log.msg(
                f"buildbot_stats: {type(self).__name__}: step {dropped_step!r} did not finish; "
                f"dropped its {len(dropped)} test result set(s)"
            )
        return None

    @defer.inlineCallbacks
    def _emit(self, sets: list[dict[str, Any]], step: dict[str, Any]) -> Any:
        found = yield self._step_point(step, "test results of step")
        if found is None:
            return
        build, builder_name, step_tags, _ = found
        complete_at = step.get("complete_at")
        failures = []
        for result_set in sets:
            where = f"test result set {result_set.get('test_result_setid')!r}"
            if complete_at is None:
                failures.append(f"{where}: its step has no complete_at")
                continue
            try:
                fields = self._callback(result_set)
            except Exception as e:
                failures.append(f"callback failed for {where}: {type(e).__name__}: {e}")
                continue
            if not fields:
                continue
            tags = dict(step_tags)
            tags.update((k, str(result_set[k])) for k in _SET_TAGS if result_set.get(k) not in (None, ""))
            yield self._store(fields, f"{builder_name}-test-results", tags, complete_at)
        if failures:
            raise CaptureCallbackError(
                f"{type(self).__name__} failed for build {build['number']} on builder {builder_name}: "
                + "; ".join(failures)
            )


class CaptureTestResultsAllBuilders(_AllBuilders, CaptureTestResults):
    """Captures completed test result sets on every builder."""

    def __init__(self, callback: Callback = None, **unknown: Any) -> None:
        super().__init__(None, callback, **unknown)
