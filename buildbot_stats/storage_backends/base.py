"""What a storage backend is: the :class:`IStatsStorage` interface, its optional hooks and its base class."""

from __future__ import annotations

import abc
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from buildbot import config
from twisted.internet import defer
from twisted.python import log
from zope.interface import Attribute, Interface, implementer

from buildbot_stats.errors import PartialDeliveryError
from buildbot_stats.point import Clock, Point, PointProblem

try:  # a backend written for Buildbot's own statistics module works unchanged
    from buildbot.statistics.storage_backends.base import StatsStorageBase as _BuildbotStatsStorageBase
except ImportError:  # pragma: no cover - Buildbot may drop the module one day
    _BuildbotStatsStorageBase = None

__all__ = [
    "IBackendLifecycle",
    "IBatchWrites",
    "IEncodedWrites",
    "IPreparedWrites",
    "IStatsStorage",
    "StatsStorageBase",
    "WriteReport",
    "provides",
]


class IStatsStorage(Interface):
    """Where statistics are stored; ``thd_*`` methods run in a thread. Optional hooks: interfaces below."""

    name = Attribute("A name, unique among the service's backends; it keys the spool.")
    captures = Attribute("The Capture objects whose points go to this backend.")

    def thd_postStatsValue(post_data, series_name, context=None):  # noqa: N805
        """Store one point (fields ``post_data`` of ``series_name``, tags ``context``)."""


class IBatchWrites(Interface):
    """A backend that stores many points in one request."""

    def thd_postStatsValues(points):  # noqa: N805
        """Store a batch of :class:`~buildbot_stats.point.Point`; may return a :class:`WriteReport`."""


class IEncodedWrites(Interface):
    """A backend whose wire format is made once, on the spool thread, and kept in the spool."""

    def thd_encode(points):  # noqa: N805
        """Return ``(encoding name, bytes with one point per line, WriteReport or None)``."""

    def thd_post_encoded(data, encoding):  # noqa: N805
        """Write such bytes (maybe only some of their lines); may return a :class:`WriteReport`."""


class IPreparedWrites(Interface):
    """A backend with work to do in the reactor before it writes (render its secrets)."""

    def prepare(master):  # noqa: N805
        """Called before the first write and after a refused one; may return a Deferred."""


class IBackendLifecycle(Interface):
    """A backend owning a resource (a socket): hooks run in the reactor; a failure is logged, not raised."""

    def startBackend(service):  # noqa: N802, N805
        """Configured into ``service`` (every reconfig, before its points); idempotent."""

    def stopBackend():  # type: ignore[misc]  # noqa: N802
        """The backend left the configuration, or the service stopped."""


DEFAULT_LIVE_INTERVAL = 60.0  # seconds between two buildbot-live points of a backend (docs/live.rst)


def live_interval_checked(backend: Any, name: str | None, seconds: Any) -> float:
    """A backend's ``live_interval``: 0 (off) or 1 s to a day; else a ``config.error`` and 0."""
    if type(seconds) in (int, float) and (seconds == 0 or 1 <= seconds <= 86400):
        return float(seconds)
    owner = f"{type(backend).__name__} {name or type(backend).__name__!r}"
    config.error(f"{owner}: live_interval must be 0 (off) or 1 to 86400 s, not {seconds!r}")
    return 0.0


def provides(backend: Any, interface: Any, *names: str) -> bool:
    """Whether ``backend`` declares ``interface`` or (older) has its methods ``names`` (default: all)."""
    if interface.providedBy(backend):
        return True
    return all(callable(getattr(backend, name, None)) for name in names or interface.names())


_warned_classes: weakref.WeakSet[type] = weakref.WeakSet()


def warn_deprecated_attributes(backend: Any) -> None:
    """A backend class that sets ``concurrent_writes`` gets one warning: it is ignored now."""
    cls = type(backend)
    if hasattr(cls, "concurrent_writes") and cls not in _warned_classes:
        _warned_classes.add(cls)
        message = f"{cls.__name__}.concurrent_writes is deprecated and ignored: one write at a time"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        log.msg(f"buildbot_stats: {message}")


@dataclass
class WriteReport:
    """What a batch write had to convert or reject; ``rejected_points`` were not stored at all."""

    problems: list[PointProblem] = field(default_factory=list)
    rejected_points: int = 0


@implementer(IStatsStorage, IBatchWrites)
class StatsStorageBase(abc.ABC):
    """A backend's base: implement :meth:`thd_postStatsValue`, and :meth:`thd_postStatsValues` for batches."""

    name: str | None = None
    captures: Sequence[Any] = ()

    @abc.abstractmethod
    def thd_postStatsValue(
        self, post_data: dict[str, Any], series_name: str, context: dict[str, Any] | None = None
    ) -> None:
        """Store one point.  Runs in a thread."""

    def thd_postStatsValues(self, points: list[Point]) -> WriteReport | None:
        """Store a batch of points, by default one by one.  Runs in a thread."""
        for done, point in enumerate(points):
            try:
                self.thd_postStatsValue(point.fields, point.series, point.tags)
            except Exception as e:
                if done:
                    raise PartialDeliveryError(done, e) from e
                raise
        return None


class BatchBackend(StatsStorageBase):
    """A backend that stores batches: one point is a batch of one, stamped now, its problems logged."""

    def thd_postStatsValue(
        self, post_data: dict[str, Any], series_name: str, context: dict[str, Any] | None = None
    ) -> None:
        point = Point(series_name, post_data, dict(context or {}), _CLOCK.now_ns())
        report = self.thd_postStatsValues([point])  # (a subclass's may return None)
        for p in getattr(report, "problems", None) or ():
            log.msg(f"{self.name}: {p.series} {p.field}: {p.reason}")


_CLOCK = Clock()  # two points of one series posted in the same nanosecond keep apart


if _BuildbotStatsStorageBase is not None:  # isinstance() holds for it, as code written for it expects
    StatsStorageBase.register(_BuildbotStatsStorageBase)


def post_points(backend: Any, points: list[Point]) -> WriteReport | None:
    """Write ``points`` to ``backend`` by its batch method if it has one.  Runs in a thread."""
    if provides(backend, IBatchWrites):
        return backend.thd_postStatsValues(points)  # type: ignore[no-any-return]
    return StatsStorageBase.thd_postStatsValues(backend, points)  # the default, for any backend


def start_backends(service: Any, backends: Sequence[Any], previous: Sequence[Any] = ()) -> defer.Deferred:
    """``startBackend(service)`` of ``backends``, then ``stopBackend()`` of the ``previous``
    ones not among them (so a replacement takes over a port); failures are logged."""
    kept = {id(b) for b in backends}
    stopped = [(b, "stopBackend", ()) for b in previous if id(b) not in kept]
    return _call_hooks([(b, "startBackend", (service,)) for b in backends] + stopped)


def stop_backends(backends: Sequence[Any]) -> defer.Deferred:
    """Call the optional ``stopBackend()`` of each backend; failures are logged."""
    return _call_hooks([(b, "stopBackend", ()) for b in backends])


@defer.inlineCallbacks
def _call_hooks(calls: list[tuple[Any, str, tuple]]) -> Any:
    for backend, hook, args in calls:
        if provides(backend, IBackendLifecycle, hook):
            try:
                yield defer.maybeDeferred(getattr(backend, hook), *args)
            except Exception as e:
                log.msg(f"buildbot_stats: {hook} of backend {backend!r} failed: {type(e).__name__}: {e}")
