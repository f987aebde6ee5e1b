"""Live state: workers, pending build requests and running builds, as they are now (issue 21).

The snapshot types are the contract between the live-state keeper and its readers (the
Prometheus backend, the ``buildbot-live`` series, the Statistics page).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BuilderLive:
    """One builder now; every figure is 0 when nothing waits or runs."""

    requests_pending: int = 0
    oldest_pending_seconds: float = 0.0
    builds_running: int = 0
    longest_running_seconds: float = 0.0


@dataclass(frozen=True)
class LiveSnapshot:
    """A copy taken on the reactor, safe to read from any thread."""

    workers_connected: int = 0
    workers_busy: int = 0
    #: every configured builder (zeros when idle); a builder removed by a reconfig is absent
    builders: Mapping[str, BuilderLive] = field(default_factory=dict)
    #: per connected worker name: the builds it runs now
    worker_builds_running: Mapping[str, int] = field(default_factory=dict)
    #: (worker name, result name such as "success") -> builds finished since the master started
    worker_builds_total: Mapping[tuple[str, str], int] = field(default_factory=dict)
