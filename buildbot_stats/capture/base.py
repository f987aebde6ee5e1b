"""The base of every capture: which MQ messages it consumes and how its points reach the service."""

from __future__ import annotations

import abc
import datetime
from collections.abc import Callable
from typing import Any, Optional

from buildbot import config
from twisted.internet import defer

from buildbot_stats.arguments import reject_unknown
from buildbot_stats.errors import CaptureCallbackError

BUILD_FINISHED = ("builders", None, "builds", None, "finished")
YIELD_DATA = ("stats-yieldMetricsValue", "stats-yield-data")
#: a capture's callback argument (None: the capture's default)
Callback = Optional[Callable[..., Any]]


class Capture(abc.ABC):
    """Base class of all captures; subclasses implement :meth:`consume`.  ``routingKey``, ``parent_svcs``,
    ``master``, ``_defaultContext`` and ``_retValParams`` are buildbot.statistics's names, kept (camelCase
    included) so that its custom captures work."""

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
        """The service's cached lookups of builders, builds, workers."""
        return self._stats_service.lookups

    def _extra_worker_tag(self) -> bool:
        return "worker" in (getattr(self._stats_service, "extra_tags", ()) or ())

    def _build_context(self, build: dict[str, Any], builder_name: str, worker: bool | None = None) -> Any:
        """A Deferred of the build's tags; with the worker's name if ``worker`` (None: per ``extra_tags``)."""
        context = self._defaultContext(build, builder_name)
        if not (self._extra_worker_tag() if worker is None else worker):
            return defer.succeed(context)
        return self._lookups.workers.get(build.get("workerid")).addCallback(_with_worker, context)

    @abc.abstractmethod
    def consume(self, routingKey: tuple, msg: dict[str, Any]) -> Any:
        """Called by the MQ layer with each message matching ``routingKey``."""

    def _store(self, post_data: Any, series_name: str, context: Any, time: Any = None) -> defer.Deferred:
        """Hand one point (``time``: datetime, epoch seconds or ns; default now) to every backend
        of this capture; the Deferred fires once it is spooled."""
        return self._stats_service.store(self, post_data, series_name, context, time)  # type: ignore[no-any-return]


def _with_worker(worker: Any, context: dict[str, str]) -> dict[str, str]:
    if worker is not None:  # no (known) worker, no tag: InfluxDB drops empty tags anyway
        context["worker"] = str(worker["name"])
    return context


class _BuilderCapture(Capture):
    """A capture of builds: a subclass says which builders (:meth:`_builder_name_matches`)."""

    @abc.abstractmethod
    def _builder_name_matches(self, builder_info: dict[str, Any]) -> bool:
        """Whether builds of this builder (its data API dict) are captured."""

    @defer.inlineCallbacks
    def _builder_info(self, builderid: Any) -> Any:
        info = yield self._lookups.builders.get(builderid)
        if info is None:
            raise CaptureCallbackError(f"{type(self).__name__}: unknown builder id {builderid!r}")
        return info


class _OneBuilder:
    """A capture of the builder named ``builder_name``."""

    _builder_name: str | None

    @property
    def builder_name(self) -> str | None:
        """The builder captured; None for the ``AllBuilders`` captures, which take every builder."""
        return self._builder_name

    def _builder_name_matches(self, builder_info: dict[str, Any]) -> bool:
        return self._builder_name == builder_info["name"]


class _AllBuilders:
    builder_name = None

    def _builder_name_matches(self, builder_info: dict[str, Any]) -> bool:
        return True


REPORT_IN_DIVISORS = {"seconds": 1, "minutes": 60, "hours": 3600}


def duration_callback(capture: Capture, report_in: Any, callback: Callback) -> Callable[..., Any]:
    """``callback``, or ``end - start`` in ``report_in`` units (0 if the clock went backwards): the one home
    of buildbot.statistics's ``report_in`` rule and message; ``capture.report_in`` tells backends the unit."""
    capture.report_in = report_in  # type: ignore[attr-defined]
    known = isinstance(report_in, str) and report_in in REPORT_IN_DIVISORS
    divisor = REPORT_IN_DIVISORS[report_in] if known else 1
    if not known:
        config.error(
            f"Error during initialization of class {type(capture).__name__}. "
            "`report_in` parameter must be one of 'seconds', 'minutes' or 'hours', "
            f"not {report_in!r}"
        )

    def interval(start: datetime.datetime, end: datetime.datetime) -> float:
        return max(end - start, datetime.timedelta(0)).total_seconds() / divisor

    return callback or interval
