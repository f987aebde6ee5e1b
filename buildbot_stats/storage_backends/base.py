"""What a storage backend is: the :class:`IStatsStorage` interface and its base class."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from zope.interface import Attribute, Interface, implementer

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
class StatsStorageBase(abc.ABC):
    """Base class for storage backends.

    Subclasses implement :meth:`thd_postStatsValue`; a backend that can store
    many points in one request also overrides :meth:`thd_postStatsValues`.
    """

    name: str | None = None
    captures: Sequence[Any] = ()

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
