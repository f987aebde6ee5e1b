"""Cached lookups of builders and builds in the master's data API.

Captures and ``yieldMetricsValue`` need a build's builder name and data for
every point; asking the data API each time would cost a query per point.
Builder ids never change their name, so builders are cached for good; builds
are kept in a bounded LRU cache (a step posting many values asks once).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from buildbot_stats.errors import CaptureCallbackError

__all__ = ["BuildLookups"]

BUILD_CACHE_SIZE = 256


class BuildLookups:
    """The builders and recent builds of one master, looked up once each."""

    def __init__(self, master: Any, build_cache_size: int = BUILD_CACHE_SIZE) -> None:
        self.master = master
        self._builders: dict[Any, dict[str, Any]] = {}
        self._builder_waiters: dict[Any, list[defer.Deferred]] = {}
        self._builds: OrderedDict[Any, dict[str, Any]] = OrderedDict()
        self._build_cache_size = build_cache_size

    def known_builder(self, builderid: Any) -> dict[str, Any] | None:
        """The builder's data if already looked up, else None (no Deferred)."""
        return self._builders.get(builderid)

    def builder(self, builderid: Any) -> defer.Deferred:
        """The builder's data (None for an unknown id).

        Lookups made while the first query for that builder runs wait for it:
        a step posting many values at once makes one query, not one each.
        """
        info = self._builders.get(builderid)
        if info is not None:
            return defer.succeed(info)
        d: defer.Deferred = defer.Deferred()
        waiters = self._builder_waiters.get(builderid)
        if waiters is not None:
            waiters.append(d)
            return d
        self._builder_waiters[builderid] = [d]

        def done(result: Any) -> None:
            for waiter in self._builder_waiters.pop(builderid, []):
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    if result is not None:
                        self._builders[builderid] = result
                    waiter.callback(result)

        defer.maybeDeferred(self.master.data.get, ("builders", builderid)).addBoth(done)
        return d

    def known_build(self, buildid: Any) -> dict[str, Any] | None:
        """The build's data if cached, else None (no Deferred)."""
        return self._builds.get(buildid)

    @defer.inlineCallbacks
    def build(self, buildid: Any) -> Any:
        """The build's data; :class:`CaptureCallbackError` for an unknown id."""
        build = self._builds.get(buildid)
        if build is None:
            build = yield self.master.data.get(("builds", buildid))
            if build is None:
                raise CaptureCallbackError(f"yieldMetricsValue: no build with id {buildid!r}")
            self._builds[buildid] = build
            if len(self._builds) > self._build_cache_size:
                self._builds.popitem(last=False)
        return build
