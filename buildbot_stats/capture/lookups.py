"""Cached lookups of builders, builds, workers and build requests: one query per key, not per point."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from buildbot_stats.errors import CaptureCallbackError

__all__ = ["BuildLookups"]

BUILD_CACHE_SIZE = 256
STEP_CACHE_SIZE = 1024


class _Memo:
    """A bounded LRU cache of one data API path; lookups of a key whose query runs wait for it.

    ``None`` answers (unknown ids) are not cached: the object may appear later.
    """

    def __init__(self, master: Any, path: str, size: int | None) -> None:
        self.master = master
        self.path = path
        self.size = size
        self.values: OrderedDict[Any, dict[str, Any]] = OrderedDict()
        self._waiters: dict[Any, list[defer.Deferred]] = {}

    def known(self, key: Any) -> dict[str, Any] | None:
        return self.values.get(key)

    def get(self, key: Any) -> defer.Deferred:
        value = self.values.get(key)
        if value is not None or key is None:  # no query for a missing id
            return defer.succeed(value)
        d: defer.Deferred = defer.Deferred()
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.append(d)
            return d
        self._waiters[key] = [d]

        def done(result: Any) -> None:
            if not isinstance(result, Failure) and result is not None:
                self.put(key, result)
            for waiter in self._waiters.pop(key, []):
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        defer.maybeDeferred(self.master.data.get, (self.path, key)).addBoth(done)
        return d

    def put(self, key: Any, value: dict[str, Any]) -> None:
        self.values[key] = value
        self.values.move_to_end(key)
        if self.size is not None and len(self.values) > self.size:
            self.values.popitem(last=False)


class BuildLookups:
    """The builders and recent builds of one master, looked up once each."""

    def __init__(self, master: Any, build_cache_size: int = BUILD_CACHE_SIZE) -> None:
        self.master = master
        self._builders = _Memo(master, "builders", None)
        # cached as first seen: only what never changes during a build (number,
        # builder, worker, build request, master, start time) may be read from it
        self._builds = _Memo(master, "builds", build_cache_size)
        self._workers = _Memo(master, "workers", None)
        self._buildrequests = _Memo(master, "buildrequests", build_cache_size)
        self._finished_steps: OrderedDict[Any, dict[str, Any]] = OrderedDict()

    def known_builder(self, builderid: Any) -> dict[str, Any] | None:
        """The builder's data if already looked up, else None (no Deferred)."""
        return self._builders.known(builderid)

    def builder(self, builderid: Any) -> defer.Deferred:
        """The builder's data (None for an unknown id); one query however many ask meanwhile."""
        return self._builders.get(builderid)

    def known_build(self, buildid: Any) -> dict[str, Any] | None:
        """The build's data if cached, else None (no Deferred)."""
        return self._builds.known(buildid)

    def find_build(self, buildid: Any) -> defer.Deferred:
        """The build's data, None for an unknown id."""
        return self._builds.get(buildid)

    @defer.inlineCallbacks
    def build(self, buildid: Any) -> Any:
        """The build's data; :class:`CaptureCallbackError` for an unknown id."""
        build = yield self.find_build(buildid)
        if build is None:
            raise CaptureCallbackError(f"yieldMetricsValue: no build with id {buildid!r}")
        return build

    def remember_build(self, build: dict[str, Any]) -> None:
        """Keep the data of a build that starts (its ``new`` message is what a lookup would give)."""
        self._builds.put(build["buildid"], dict(build))

    def worker_name(self, workerid: Any) -> defer.Deferred:
        """The worker's name (None if ``workerid`` is None or unknown)."""
        return self._workers.get(workerid).addCallback(lambda w: w["name"] if w else None)

    def buildrequest(self, buildrequestid: Any) -> defer.Deferred:
        """The build request's data (None for an unknown or missing id)."""
        return self._buildrequests.get(buildrequestid)

    def remember_finished_step(self, step: dict[str, Any]) -> None:
        """Keep a step's finished message (bounded) for :meth:`finished_step`."""
        steps = self._finished_steps
        steps[step["stepid"]] = step
        steps.move_to_end(step["stepid"])
        if len(steps) > STEP_CACHE_SIZE:
            steps.popitem(last=False)

    def finished_step(self, stepid: Any) -> dict[str, Any] | None:
        """The finished message of a recently finished step, None if not seen."""
        return self._finished_steps.get(stepid)
