"""Cached lookups of builders, builds, workers and build requests: one query per key, not per point."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

BUILD_CACHE_SIZE = 256
STEP_CACHE_SIZE = 1024


class _Memo:
    """A bounded LRU cache of one data API path; lookups of a key whose query runs wait for it.
    ``None`` answers (unknown ids) are not cached: the object may appear later."""

    def __init__(self, master: Any, path: str, size: int | None) -> None:
        self.master = master
        self.path = path
        self.size = size
        self.values: OrderedDict[Any, dict[str, Any]] = OrderedDict()
        self._waiters: dict[Any, list[defer.Deferred]] = {}

    def known(self, key: Any) -> dict[str, Any] | None:
        """The value if cached, else None (no query)."""
        return self.values.get(key)

    def get(self, key: Any) -> defer.Deferred:
        """The value (None for an unknown or missing id); one query however many ask meanwhile."""
        value = self.values.get(key)
        if value is not None or key is None:
            return defer.succeed(value)
        d: defer.Deferred = defer.Deferred()
        self._waiters.setdefault(key, []).append(d)
        if len(self._waiters[key]) == 1:  # the first to ask: the query
            defer.maybeDeferred(self.master.data.get, (self.path, key)).addBoth(self._answered, key)
        return d

    def _answered(self, result: Any, key: Any) -> None:
        if result is not None and not isinstance(result, Failure):
            self.put(key, result)
        for waiter in self._waiters.pop(key):
            waiter.callback(result)  # a Failure goes down the waiter's errbacks

    def put(self, key: Any, value: dict[str, Any]) -> None:
        self.values[key] = value
        self.values.move_to_end(key)
        if self.size is not None and len(self.values) > self.size:
            self.values.popitem(last=False)


class BuildLookups:
    """The builders and recent builds of one master, looked up once each.  Builds are cached as first
    seen: only what never changes during a build (number, builder, worker, build request, master,
    start time) may be read from them; a build's ``new`` message is put here as it starts."""

    def __init__(self, master: Any, build_cache_size: int = BUILD_CACHE_SIZE) -> None:
        self.master = master
        self.builders = _Memo(master, "builders", None)
        self.builds = _Memo(master, "builds", build_cache_size)
        self.workers = _Memo(master, "workers", None)
        self.buildrequests = _Memo(master, "buildrequests", build_cache_size)
        #: the finished messages of recent steps (never queried)
        self.finished_steps = _Memo(master, "steps", STEP_CACHE_SIZE)
