"""Posting values from build steps without knowing where the service lives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer

__all__ = ["StatsStepMixin", "get_stats_service"]


def get_stats_service(master: Any, name: str | None = None) -> Any:
    """The running StatsService called ``name``, else the first (the ``CaptureData`` of every
    service receive a posted value); :class:`LookupError` if there is none.

    Buildbot 4 keeps services under ``master.service_manager.namedServices``, not
    ``master.namedServices`` as the old statistics documentation says: both are searched.
    """
    from buildbot_stats.stats_service import StatsService

    for parent in (getattr(master, "service_manager", None), master):
        for svc_name, svc in (getattr(parent, "namedServices", None) or {}).items():
            if isinstance(svc, StatsService) and (name is None or svc_name == name):
                return svc
    what = f"named {name!r}" if name else "configured"
    raise LookupError(f"no buildbot_stats StatsService {what} on this master")


class StatsStepMixin:
    """Mix into a BuildStep to post values: ``await self.yieldMetricsValue(name, data)``
    (through the service ``stats_service_name``, see :func:`get_stats_service`)."""

    stats_service_name: str | None = None

    def _stats_service(self) -> Any:
        # looked up once per step: a step may post thousands of values
        svc = self.__dict__.get("_found_stats_service")
        if svc is None or not svc.running:
            svc = get_stats_service(self.master, self.stats_service_name)  # type: ignore[attr-defined]
            self._found_stats_service = svc
        return svc

    def yieldMetricsValue(self, data_name: str, post_data: dict[str, Any]) -> defer.Deferred:
        """Post one value (a dict of fields) for the current build."""
        return self._stats_service().yieldMetricsValue(data_name, post_data, self.build.buildid)  # type: ignore[attr-defined]

    def yieldMetricsValues(self, data_name: str, post_data_list: Sequence[dict[str, Any]]) -> defer.Deferred:
        """Post many values for the current build in one call."""
        return self._stats_service().yieldMetricsValues(data_name, post_data_list, self.build.buildid)  # type: ignore[attr-defined]
