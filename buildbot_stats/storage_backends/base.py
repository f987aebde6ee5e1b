"""What a storage backend is: the :class:`IStatsStorage` interface and its base class."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.python import log
from zope.interface import Attribute, Interface, implementer

from buildbot_stats.arguments import ChecksArguments
from buildbot_stats.errors import PartialDeliveryError
from buildbot_stats.point import Point, PointProblem

try:  # a backend written for Buildbot's own statistics module works unchanged
    from buildbot.statistics.storage_backends.base import StatsStorageBase as _BuildbotStatsStorageBase
except ImportError:  # pragma: no cover - Buildbot may drop the module one day
    _BuildbotStatsStorageBase = None

__all__ = ["IStatsStorage", "StatsStorageBase", "WriteReport"]


class IStatsStorage(Interface):
    """A place where statistics are stored.

    Only ``thd_postStatsValue`` and ``captures`` are required.  Methods named
    ``thd_*`` run in a thread, never in the reactor.

    Optional lifecycle hooks, called in the reactor by the StatsService when
    the backend has them (for a backend that owns a resource, such as a
    listening socket):

    - ``startBackend(service)``: the backend is (re)configured into ``service``;
      called on every reconfig of the service, for each configured backend,
      before its points are delivered and before the backends a reconfig
      replaced are stopped.  Must be idempotent.  May return a Deferred.
    - ``stopBackend()``: the backend left the configuration (replaced by a
      reconfig) or the service stopped.  May return a Deferred.

    Neither should raise: a failure is logged and does not stop the master.
    """

    name = Attribute("A name, unique among the service's backends; it keys the spool.")
    captures = Attribute("The Capture objects whose points go to this backend.")

    def thd_postStatsValue(post_data, series_name, context=None):  # noqa: N805
        """Store one point (fields ``post_data`` of ``series_name``, tags ``context``)."""


@dataclass
class WriteReport:
    """What a batch write stored: the values it had to convert or reject.

    ``rejected_points`` counts points that were not stored at all.
    """

    problems: list[PointProblem] = field(default_factory=list)
    rejected_points: int = 0


@implementer(IStatsStorage)
class StatsStorageBase(metaclass=ChecksArguments):
    """Base class for storage backends.

    Subclasses implement :meth:`thd_postStatsValue`; a backend that can store
    many points in one request also overrides :meth:`thd_postStatsValues`.
    """

    name: str | None = None
    captures: Sequence[Any] = ()
    #: how many writes of encoded points (``thd_post_encoded``) may run at once:
    #: 2 when the backend's writes are thread-safe and its server takes two
    #: in parallel (see :mod:`buildbot_stats.delivery.queue` for when it does so)
    concurrent_writes: int = 1

    @abc.abstractmethod
    def thd_postStatsValue(
        self, post_data: dict[str, Any], series_name: str, context: dict[str, Any] | None = None
    ) -> None:
        """Store one point.  Runs in a thread."""

    def thd_postStatsValues(self, points: list[Point]) -> WriteReport | None:
        """Store a batch of points.  Runs in a thread.

        The default calls :meth:`thd_postStatsValue` once per point.
        """
        _post_one_by_one(self, points)
        return None


def _post_one_by_one(backend: Any, points: list[Point]) -> None:
    for done, point in enumerate(points):
        try:
            backend.thd_postStatsValue(point.fields, point.series, point.tags)
        except Exception as e:
            if done:
                raise PartialDeliveryError(done, e) from e
            raise


if _BuildbotStatsStorageBase is not None:
    # A backend written for buildbot.statistics is one of ours too, so that
    # ``isinstance(backend, StatsStorageBase)`` holds for it, as code and tests
    # written for Buildbot's module expect.
    StatsStorageBase.register(_BuildbotStatsStorageBase)


def is_storage_backend(obj: Any) -> bool:
    """True for a provider of :class:`IStatsStorage` or a Buildbot statistics backend."""
    return IStatsStorage.providedBy(obj) or isinstance(obj, StatsStorageBase)


def post_points(backend: Any, points: list[Point]) -> WriteReport | None:
    """Write ``points`` to ``backend`` by its batch method if it has one.  Runs in a thread."""
    batch = getattr(backend, "thd_postStatsValues", None)
    if batch is None:
        _post_one_by_one(backend, points)
        return None
    return batch(points)


@defer.inlineCallbacks
def start_backends(service: Any, backends: Sequence[Any], previous: Sequence[Any] = ()) -> Any:
    """Call the optional ``startBackend(service)`` of ``backends``, then the
    ``stopBackend()`` of the ``previous`` ones that are not among them.

    Starting first lets a replacement take over a resource (a port) of the
    backend it replaces.  Failures are logged, never raised.
    """
    for backend in backends:
        yield _call_hook(backend, "startBackend", service)
    kept = {id(b) for b in backends}
    yield stop_backends([b for b in previous if id(b) not in kept])


@defer.inlineCallbacks
def stop_backends(backends: Sequence[Any]) -> Any:
    """Call the optional ``stopBackend()`` of each backend; failures are logged."""
    for backend in backends:
        yield _call_hook(backend, "stopBackend")


@defer.inlineCallbacks
def _call_hook(backend: Any, name: str, *args: Any) -> Any:
    hook = getattr(backend, name, None)
    if hook is None:
        return
    try:
        yield defer.maybeDeferred(hook, *args)
    except Exception as e:
        log.msg(f"buildbot_stats: {name} of backend {backend!r} failed: {type(e).__name__}: {e}")
