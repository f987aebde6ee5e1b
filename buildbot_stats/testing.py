"""Test doubles for users' own tests (and ours): :class:`RecordingStorage` keeps what it was given
in memory, and can be told to fail, so that a master.cfg's captures can be checked with Buildbot's
fake master (an example in docs/testing.rst)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from buildbot_stats.errors import TransientWriteError
from buildbot_stats.point import Point
from buildbot_stats.storage_backends.base import StatsStorageBase, WriteReport

__all__ = ["RecordingStorage"]


class RecordingStorage(StatsStorageBase):
    """Records every point written to it; ``fail_next(n)`` makes the next n writes fail."""

    def __init__(self, captures: Sequence[Any] = (), name: str = "RecordingStorage") -> None:
        self.captures = list(captures)
        self.name = name
        self.points: list[Point] = []
        self.batches: list[int] = []
        self._failures: list[BaseException] = []
        self._lock = threading.Lock()

    @property
    def stored_data(self) -> list[tuple[dict[str, Any], str, dict[str, Any]]]:
        """``(post_data, series_name, context)`` triples, as buildbot's fake recorded them."""
        return [(p.fields, p.series, p.tags) for p in self.points]

    def fail_next(self, n: int = 1, error: BaseException | None = None) -> None:
        """Make the next ``n`` writes raise ``error`` (a transient error by default)."""
        with self._lock:
            self._failures.extend([error or TransientWriteError("RecordingStorage told to fail")] * n)

    def _maybe_fail(self) -> None:
        with self._lock:
            if self._failures:
                raise self._failures.pop(0)

    def thd_postStatsValue(
        self, post_data: dict[str, Any], series_name: str, context: dict[str, Any] | None = None
    ) -> None:
        self._maybe_fail()
        with self._lock:
            self.points.append(Point(series_name, post_data, context or {}, 0))
            self.batches.append(1)

    def thd_postStatsValues(self, points: list[Point]) -> WriteReport | None:
        self._maybe_fail()
        with self._lock:
            self.points.extend(points)
            self.batches.append(len(points))
        return None
