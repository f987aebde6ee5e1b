"""The base of every capture: which MQ messages it consumes and how its points reach the service."""

from __future__ import annotations

import abc
import datetime
from collections.abc import Callable
from typing import Any

from buildbot import config
from twisted.internet import defer, threads

from buildbot_stats.arguments import reject_unknown
from buildbot_stats.errors import CaptureCallbackError

BUILD_FINISHED = ("builders", None, "builds", None, "finished")
YIELD_DATA = ("stats-yieldMetricsValue", "stats-yield-data")


class Capture(abc.ABC):
    """Base class of all captures; subclasses implement :meth:`consume`.

    ``routingKey``, ``parent_svcs``, ``master``, ``_defaultContext`` and
    ``_retValParams`` are the names of ``buildbot.statistics``'s captures,
    kept (camelCase included) so that custom captures written for it work.
    """

    def __init__(self, routingKey: tuple, callback: Callable[..., Any], **unknown: Any) -> None:
        reject_unknown(self, unknown)
        if callback is not None and not callable(callback):  # custom captures may pass None
            config.error(f"{type(self).__name__}: callback must be callable, not {callback!r}")
        self.routingKey = routingKey
        self._callback = callback
        # set by StatsService when it registers this capture
        self.parent_svcs: list[Any] = []
        self.master: Any = None
        self._stats_service: Any = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.routingKey!r}>"

    def _defaultContext(self, msg: dict[str, Any], builder_name: str) -> dict[str, str]:
        return {"build_number": str(msg["number"]), "builder_name": builder_name}

    @property
    def _lookups(self) -> Any:
        """The service's cached lookups (own ones without a StatsService)."""
        service = self._stats_service
        if service is not None and service.lookups is not None:
            return service.lookups
        own = self.__dict__.get("_own_lookups")
        if own is None or own.master is not self.master:
            from buildbot_stats.capture.lookups import BuildLookups

            own = self.__dict__["_own_lookups"] = BuildLookups(self.master)
        return own

    def _extra_tags(self) -> tuple[str, ...]:
        return tuple(getattr(self._stats_service, "extra_tags", ()) or ())

    def _build_context(
        self, build: dict[str, Any], builder_name: str, worker: bool | None = None
    ) -> defer.Deferred:
        """Build number, builder name and, if ``worker`` (default: per ``extra_tags``), the worker."""
        context = self._defaultContext(build, builder_name)
        if worker is None:
            worker = "worker" in self._extra_tags()
        if not worker:
            return defer.succeed(context)
        return self._lookups.worker_name(build.get("workerid")).addCallback(_with_worker, context)

    @abc.abstractmethod
    def consume(self, routingKey: tuple, msg: dict[str, Any]) -> Any:
        """Called by the MQ layer with each message matching ``routingKey``."""

    def _store(
        self, post_data: Any, series_name: str, context: dict[str, Any] | None, time: Any = None
    ) -> defer.Deferred:
        """Hand one point (``time``: datetime, epoch seconds or ns; default now) to every backend
        of this capture; the Deferred fires once it is spooled."""
        service = self._stats_service
        if service is None:
            # Used without a StatsService (as buildbot.statistics did): post directly.
            return defer.gatherResults(
                [
                    threads.deferToThread(svc.thd_postStatsValue, post_data, series_name, context)
                    for svc in self.parent_svcs
                ],
                consumeErrors=True,
            )
        return service.store(self, post_data, series_name, context, time)

    def _builder_info(self, builderid: Any) -> defer.Deferred:
        return self._lookups.builder(builderid).addCallback(self._known_builder, builderid)

    def _known_builder(self, info: Any, builderid: Any) -> Any:
        if info is None:
            raise CaptureCallbackError(f"{type(self).__name__}: unknown builder id {builderid!r}")
        return info


def _with_worker(name: Any, context: dict[str, str]) -> dict[str, str]:
    # a build without a (known) worker gets no tag: InfluxDB drops empty tags anyway
    if name is not None:
        context["worker"] = str(name)
    return context


class _OneBuilder:
    _builder_name: str | None

    def _builder_name_matches(self, builder_info: dict[str, Any]) -> bool:
        return self._builder_name == builder_info["name"]


class _AllBuilders:
    def _builder_name_matches(self, builder_info: dict[str, Any]) -> bool:
        return True


REPORT_IN_DIVISORS = {"seconds": 1, "minutes": 60, "hours": 3600}


def duration_callback(
    capture: Capture, report_in: Any, callback: Callable[..., Any] | None
) -> Callable[..., Any]:
    """``callback``, or ``end - start`` in ``report_in`` units (0 if the clock went backwards).

    The one home of the ``report_in`` rule (buildbot.statistics's message): anything
    but a unit name is a config error, then seconds.  ``capture.report_in`` tells backends.
    """
    capture.report_in = report_in  # type: ignore[attr-defined]
    if isinstance(report_in, str) and report_in in REPORT_IN_DIVISORS:
        divisor = REPORT_IN_DIVISORS[report_in]
    else:
        divisor = 1
        config.error(
            f"Error during initialization of class {type(capture).__name__}. "
            "`report_in` parameter must be one of 'seconds', 'minutes' or 'hours', "
            f"not {report_in!r}"
        )

    def interval(start: datetime.datetime, end: datetime.datetime) -> float:
        return max(end - start, datetime.timedelta(0)).total_seconds() / divisor

    return callback or interval
