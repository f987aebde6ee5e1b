"""The captures of a StatsService on Buildbot's MQ: one consumer per capture and routing key.

A failure is one log line per burst, never an error in Buildbot's MQ.  With ``CaptureData``
captures, each build's start message is kept: ``yieldMetricsValue`` then needs no query.
"""

from __future__ import annotations

import inspect
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from buildbot_stats.burst_log import BurstLog
from buildbot_stats.capture.base import YIELD_DATA
from buildbot_stats.capture.multimaster import MasterFilter, with_datetimes
from buildbot_stats.errors import CaptureCallbackError

__all__ = ["BUILD_NEW", "CaptureConsumers"]

#: the message of a build that starts (after its properties are set, before its steps run)
BUILD_NEW = ("builds", None, "new")


class CaptureConsumers:
    """Starts the MQ consumers of one service's captures and reports their failures."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.log = BurstLog(service.master.reactor)
        #: set while ``yieldMetricsValue`` produces: consumers still working (a first lookup) go here
        self.waits: list[defer.Deferred] | None = None
        #: skips messages of other masters' builds (a cluster's WAMP MQ only)
        self._filter: MasterFilter | None = None

    @defer.inlineCallbacks
    def start(self, backends: list[Any]) -> Any:
        """Start consuming for every capture of ``backends``; returns the consumers."""
        service = self.service
        master = service.master
        self._filter = MasterFilter(master, service.lookups) if MasterFilter.needed(master) else None
        captures = {id(cap): cap for backend in backends for cap in backend.captures}
        consumers = []
        posted_values = False
        for cap in captures.values():
            cap.parent_svcs = [b for b in backends if any(c is cap for c in b.captures)]
            cap.master = master
            cap._stats_service = service
            # a capture may listen to several kinds of message (``routingKeys``)
            for routing_key in getattr(cap, "routingKeys", None) or [cap.routingKey]:
                posted_values = posted_values or tuple(routing_key) == YIELD_DATA
                consumers.append((yield master.mq.startConsuming(self._consumer(cap), routing_key)))
        if posted_values:
            consumers.append((yield master.mq.startConsuming(self._build_started, BUILD_NEW)))
        return consumers

    def _build_started(self, routingKey: tuple, msg: dict[str, Any]) -> None:
        """Keep a build of this master as it starts: ``yieldMetricsValue`` then needs no query."""
        lookups = self.service.lookups
        if lookups is None or not isinstance(msg, dict) or "buildid" not in msg:
            return
        if self._filter is not None:
            # a cluster: other masters' builds are not posted to here; WAMP times are numbers
            if msg.get("masterid") != getattr(self.service.master, "masterid", None):
                return
            msg = with_datetimes(msg)
        lookups.builds.put(msg["buildid"], dict(msg))

    def _consumer(self, cap: Any) -> Any:
        call = cap.consume
        failed = self.failed

        def consume(routingKey: tuple, msg: dict[str, Any]) -> defer.Deferred | None:
            # (run once per posted value: no maybeDeferred, whose Deferred is seldom needed)
            try:
                result = call(routingKey, msg)
            except BaseException:  # (as maybeDeferred: never into Buildbot's MQ)
                failed(Failure(), cap)
                return None
            if isinstance(result, Failure):
                return failed(result, cap)
            if not isinstance(result, defer.Deferred):
                if not inspect.iscoroutine(result):
                    return None  # a plain value (a custom capture's)
                result = defer.ensureDeferred(result)
            d = result.addErrback(failed, cap)
            if d.called and not d.paused:
                return None  # done (a failure was logged just now): Buildbot's MQ need not track it
            if self.waits is not None:
                self.waits.append(d)  # still working: yieldMetricsValue waits for it too
            return d

        master_filter = self._filter
        if master_filter is None:
            return consume

        def consume_own(routingKey: tuple, msg: dict[str, Any]) -> Any:
            # a cluster: every master sees every message; capture only our builds'
            foreign = master_filter.foreign(msg)
            msg = with_datetimes(msg)  # WAMP sends times as epoch numbers
            if foreign is False:
                return consume(routingKey, msg)
            if foreign is True:
                return None
            return foreign.addCallback(lambda skip: None if skip else consume(routingKey, msg))

        return consume_own

    def failed(self, failure: Failure, cap: Any) -> None:
        """One log line per burst of the same failure of a capture."""
        message = failure.getErrorMessage()
        if failure.check(CaptureCallbackError):
            cause = failure.value.__cause__  # type: ignore[union-attr]
            kind = type(cause).__name__ if cause is not None else ""
        else:  # a bug in a (custom) capture or callback: say where, in one line
            kind = failure.type.__name__  # type: ignore[union-attr]
            where = " (in {}, {}:{})".format(*failure.frames[-1][:3]) if failure.frames else ""
            message = f"{type(cap).__name__} could not handle a message: {kind}: {message}{where}"
        self.log.failed((id(cap), failure.type, kind), message)
