"""Captures of buildbot.statistics (same series, fields, tags): properties, build times, results, data;
build captures stamp points with the build's own time, so that a point sent again overwrites itself."""

from __future__ import annotations

import datetime
import re
from typing import Any

from buildbot import config
from buildbot.process.results import Results
from twisted.internet import defer

from buildbot_stats.capture.base import (
    BUILD_FINISHED,
    YIELD_DATA,
    Callback,
    _AllBuilders,
    _BuilderCapture,
    _OneBuilder,
    duration_callback,
)
from buildbot_stats.errors import CaptureCallbackError
from buildbot_stats.point import as_datetime

__all__ = [
    "CaptureBuildDuration",
    "CaptureBuildDurationAllBuilders",
    "CaptureBuildEndTime",
    "CaptureBuildEndTimeAllBuilders",
    "CaptureBuildStartTime",
    "CaptureBuildStartTimeAllBuilders",
    "CaptureBuildResults",
    "CaptureBuildResultsAllBuilders",
    "CaptureBuildTimes",
    "CaptureData",
    "CaptureDataAllBuilders",
    "CaptureDataBase",
    "CaptureProperty",
    "CapturePropertyAllBuilders",
    "CapturePropertyBase",
]


class CapturePropertyBase(_BuilderCapture):
    """Captures build properties (by name, or by regular expression)."""

    def __init__(
        self, property_name: str, callback: Callback = None, regex: bool = False, **unknown: Any
    ) -> None:
        self._property_name = property_name
        self._regex = regex
        if not isinstance(property_name, str):
            config.error(f"{type(self).__name__}: property_name must be a string, not {property_name!r}")
        elif regex:
            try:
                self._pattern = re.compile(property_name)
            except re.error as e:
                config.error(f"{type(self).__name__}: invalid regular expression {property_name!r}: {e}")
        super().__init__(BUILD_FINISHED, callback or _property_value, **unknown)

    @defer.inlineCallbacks
    def consume(self, routingKey: tuple, msg: dict[str, Any]) -> Any:
        builder_info = yield self._builder_info(msg["builderid"])
        if not self._builder_name_matches(builder_info):
            return
        builder_name = builder_info["name"]
        properties = (yield self.master.data.get(("builds", msg["buildid"], "properties"))) or {}
        names = [p for p in properties if self._pattern.match(p)] if self._regex else [self._property_name]
        context = yield self._build_context(msg, builder_name)
        failures = []
        for pn in names:
            try:
                value = self._callback(properties, pn)
            except KeyError:
                failures.append(f"property {pn!r} not found")
                continue
            except Exception as e:
                failures.append(f"callback failed for property {pn!r}: {type(e).__name__}: {e}")
                continue
            point = {"name": pn, "value": value}
            yield self._store(point, f"{builder_name}-{pn}", context, msg.get("complete_at"))
        if failures:
            raise CaptureCallbackError(
                f"{type(self).__name__} failed for build number {msg['number']} on builder "
                f"{builder_name}: {'; '.join(failures)}"
            )


def _property_value(props: dict[str, Any], property_name: str) -> Any:
    return props[property_name][0]  # a property is (value, source)


def _identity(value: Any) -> Any:
    return value


class CaptureProperty(_OneBuilder, CapturePropertyBase):
    """Captures a build property of one builder into series ``<builder>-<property>``."""

    def __init__(
        self,
        builder_name: str,
        property_name: str,
        callback: Callback = None,
        regex: bool = False,
        **unknown: Any,
    ) -> None:
        self._builder_name = builder_name
        super().__init__(property_name, callback, regex, **unknown)


class CapturePropertyAllBuilders(_AllBuilders, CapturePropertyBase):
    """Captures a build property on every builder."""


class CaptureBuildTimes(_BuilderCapture):
    """Base of the captures of a build's times and result (series ``<builder>-build-times``): the callback
    gets what :meth:`_retValParams` gives (maybe a Deferred), by default the ``_time_keys`` as datetimes."""

    _series_suffix = "build-times"
    _time_keys: tuple[str, ...] = ()
    #: whether the worker tag is always there (else only with ``extra_tags``)
    _worker_tag: bool | None = None

    def __init__(self, builder_name: str | None, callback: Any, time_type: str, **unknown: Any) -> None:
        self._builder_name: str | None = builder_name
        self._time_type = time_type
        super().__init__(BUILD_FINISHED, callback, **unknown)

    def _post_data(self, ret_val: Any) -> dict[str, Any]:
        return {self._time_type: ret_val}

    def _retValParams(self, msg: dict[str, Any]) -> Any:
        return [as_datetime(msg[key]) for key in self._time_keys]

    @defer.inlineCallbacks
    def consume(self, routingKey: tuple, msg: dict[str, Any]) -> Any:
        builder_info = yield self._builder_info(msg["builderid"])
        if not self._builder_name_matches(builder_info):
            return
        name = builder_info["name"]
        try:
            ret_val = self._callback(*(yield self._retValParams(msg)))
        except CaptureCallbackError as e:  # what the message lacks
            raise CaptureCallbackError(f"{self._err_msg(msg, name)} {e}") from None
        except Exception as e:
            raise CaptureCallbackError(
                f"{self._err_msg(msg, name)} Exception raised: {type(e).__name__} with message: {e!s}"
            ) from e
        context = yield self._build_context(msg, name, self._worker_tag)
        post_data = self._post_data(ret_val)
        yield self._store(post_data, f"{name}-{self._series_suffix}", context, msg.get("complete_at"))

    def _err_msg(self, build_data: dict[str, Any], builder_name: str) -> str:
        return f"{type(self).__name__} failed on build {build_data['number']} on builder {builder_name}."


class CaptureBuildStartTime(_OneBuilder, CaptureBuildTimes):
    """Captures the build start time (ISO 8601 by default) as field ``start-time``."""

    _time_keys = ("started_at",)

    def __init__(self, builder_name: str | None, callback: Callback = None, **unknown: Any) -> None:
        super().__init__(builder_name, callback or datetime.datetime.isoformat, "start-time", **unknown)


class CaptureBuildStartTimeAllBuilders(_AllBuilders, CaptureBuildStartTime):
    """Captures the build start time on every builder."""

    def __init__(self, callback: Callback = None, **unknown: Any) -> None:
        super().__init__(None, callback, **unknown)


class CaptureBuildEndTime(_OneBuilder, CaptureBuildTimes):
    """Captures the build end time (ISO 8601 by default) as field ``end-time``."""

    _time_keys = ("complete_at",)

    def __init__(self, builder_name: str | None, callback: Callback = None, **unknown: Any) -> None:
        super().__init__(builder_name, callback or datetime.datetime.isoformat, "end-time", **unknown)


class CaptureBuildEndTimeAllBuilders(_AllBuilders, CaptureBuildEndTime):
    """Captures the build end time on every builder."""

    def __init__(self, callback: Callback = None, **unknown: Any) -> None:
        super().__init__(None, callback, **unknown)


class CaptureBuildDuration(_OneBuilder, CaptureBuildTimes):
    """Captures the build duration in ``report_in`` units as field ``duration``."""

    _time_keys = ("started_at", "complete_at")

    def __init__(
        self, builder_name: str | None, report_in: str = "seconds", callback: Callback = None, **unknown: Any
    ) -> None:
        super().__init__(builder_name, duration_callback(self, report_in, callback), "duration", **unknown)


class CaptureBuildDurationAllBuilders(_AllBuilders, CaptureBuildDuration):
    """Captures the build duration on every builder."""

    def __init__(self, report_in: str = "seconds", callback: Callback = None, **unknown: Any) -> None:
        super().__init__(None, report_in, callback, **unknown)


class CaptureBuildResults(_OneBuilder, CaptureBuildTimes):
    """Captures the build result into series ``<builder>-build-results`` (not in buildbot.statistics):
    fields ``results`` (Buildbot's code, 0 is success, or what a callback makes of it) and ``result``
    (its name, e.g. ``"failure"``); always tagged with the ``worker``."""

    _series_suffix = "build-results"
    _worker_tag = True

    def __init__(self, builder_name: str | None, callback: Callback = None, **unknown: Any) -> None:
        super().__init__(builder_name, callback or _identity, "results", **unknown)

    def _retValParams(self, msg: dict[str, Any]) -> list[Any]:
        if msg.get("results") is None:
            raise ValueError("the build has no result")
        return [msg["results"]]

    def _post_data(self, ret_val: Any) -> dict[str, Any]:
        name = Results[ret_val] if isinstance(ret_val, int) and 0 <= ret_val < len(Results) else str(ret_val)
        return {"results": ret_val, "result": name}


class CaptureBuildResultsAllBuilders(_AllBuilders, CaptureBuildResults):
    """Captures the build result on every builder."""

    def __init__(self, callback: Callback = None, **unknown: Any) -> None:
        super().__init__(None, callback, **unknown)


class CaptureDataBase(_BuilderCapture):
    """Captures values posted with ``yieldMetricsValue`` under ``data_name``."""

    def __init__(self, data_name: str, callback: Callback = None, **unknown: Any) -> None:
        if not isinstance(data_name, str):
            config.error(f"{type(self).__name__}: data_name must be a string, not {data_name!r}")
        self._data_name = data_name
        super().__init__(YIELD_DATA, callback or _identity, **unknown)

    def consume(self, routingKey: tuple, msg: dict[str, Any]) -> defer.Deferred:
        """Store the value of a ``stats-yield-data`` message; the Deferred fires once that is done.

        Run once per posted value: with the builder (and worker) known, no Deferred chain.
        """
        if msg["data_name"] != self._data_name:
            return defer.succeed(None)
        build_data = msg["build_data"]
        builder_info = self._lookups.builders.known(build_data["builderid"])
        if builder_info is None:  # a builder's first value: one query
            d = self._builder_info(build_data["builderid"])
            return d.addCallback(self._consume_data, build_data, msg)
        try:
            return self._consume_data(builder_info, build_data, msg)
        except Exception:
            return defer.fail()

    def _consume_data(self, builder_info: Any, build_data: dict[str, Any], msg: dict[str, Any]) -> Any:
        if not self._builder_name_matches(builder_info):
            return defer.succeed(None)
        series = f"{builder_info['name']}-{self._data_name}"
        try:
            post_data = self._callback(msg["post_data"])
        except Exception as e:
            raise CaptureCallbackError(
                f"CaptureData failed for build {build_data['number']} of builder {builder_info['name']} "
                f"(series {series}). Exception generated: {type(e).__name__} with message {e!s}"
            ) from e
        # stamped now: with Buildbot's simple MQ, the time of the yieldMetricsValue call; not
        # waited for: the point is queued, kept until written (yieldMetricsValue waits for that)
        if not self._extra_worker_tag():  # the usual case: the tags at once, no Deferred
            self._store(post_data, series, self._defaultContext(build_data, builder_info["name"]))
            return defer.succeed(None)
        d = self._build_context(build_data, builder_info["name"], worker=True)
        return d.addCallback(self._stored, post_data, series)

    def _stored(self, context: dict[str, Any], post_data: Any, series: str) -> None:
        self._store(post_data, series, context)


class CaptureData(_OneBuilder, CaptureDataBase):
    """Captures ``yieldMetricsValue`` data of one builder into ``<builder>-<data_name>``."""

    def __init__(self, data_name: str, builder_name: str, callback: Callback = None, **unknown: Any) -> None:
        self._builder_name = builder_name
        super().__init__(data_name, callback, **unknown)


class CaptureDataAllBuilders(_AllBuilders, CaptureDataBase):
    """Captures ``yieldMetricsValue`` data on every builder."""
