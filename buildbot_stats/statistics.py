"""Everything a master.cfg needs: ``from buildbot_stats import statistics``."""

from buildbot_stats.capture import (
    Capture,
    CaptureBuildDuration,
    CaptureBuildDurationAllBuilders,
    CaptureBuildEndTime,
    CaptureBuildEndTimeAllBuilders,
    CaptureBuildResults,
    CaptureBuildResultsAllBuilders,
    CaptureBuildStartTime,
    CaptureBuildStartTimeAllBuilders,
    CaptureBuildTimes,
    CaptureData,
    CaptureDataAllBuilders,
    CaptureDataBase,
    CaptureProperty,
    CapturePropertyAllBuilders,
    CapturePropertyBase,
)
from buildbot_stats.errors import CaptureCallbackError
from buildbot_stats.stats_service import StatsService
from buildbot_stats.steps import StatsStepMixin, get_stats_service
from buildbot_stats.storage_backends.base import IStatsStorage, StatsStorageBase
from buildbot_stats.storage_backends.influxdb_client import InfluxStorageService
from buildbot_stats.storage_backends.prometheus import PrometheusStorageService

__all__ = [
    "Capture",
    "CaptureBuildDuration",
    "CaptureBuildDurationAllBuilders",
    "CaptureBuildEndTime",
    "CaptureBuildEndTimeAllBuilders",
    "CaptureBuildStartTime",
    "CaptureBuildStartTimeAllBuilders",
    "CaptureBuildResults",
    "CaptureBuildResultsAllBuilders",
    "CaptureBuildTimes",
    "CaptureCallbackError",
    "CaptureData",
    "CaptureDataAllBuilders",
    "CaptureDataBase",
    "CaptureProperty",
    "CapturePropertyAllBuilders",
    "CapturePropertyBase",
    "IStatsStorage",
    "InfluxStorageService",
    "PrometheusStorageService",
    "StatsService",
    "StatsStepMixin",
    "StatsStorageBase",
    "get_stats_service",
]
