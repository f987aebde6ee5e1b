"""Everything a master.cfg needs: ``from buildbot_stats import statistics``."""

from buildbot_stats.capture import Capture
from buildbot_stats.capture import CaptureBuildDuration
from buildbot_stats.capture import CaptureBuildDurationAllBuilders
from buildbot_stats.capture import CaptureBuildEndTime
from buildbot_stats.capture import CaptureBuildEndTimeAllBuilders
from buildbot_stats.capture import CaptureBuildStartTime
from buildbot_stats.capture import CaptureBuildStartTimeAllBuilders
from buildbot_stats.capture import CaptureBuildResults
from buildbot_stats.capture import CaptureBuildResultsAllBuilders
from buildbot_stats.capture import CaptureBuildTimes
from buildbot_stats.capture import CaptureData
from buildbot_stats.capture import CaptureDataAllBuilders
from buildbot_stats.capture import CaptureDataBase
from buildbot_stats.capture import CaptureProperty
from buildbot_stats.capture import CapturePropertyAllBuilders
from buildbot_stats.capture import CapturePropertyBase
from buildbot_stats.errors import CaptureCallbackError
from buildbot_stats.stats_service import StatsService
from buildbot_stats.steps import StatsStepMixin
from buildbot_stats.steps import get_stats_service
from buildbot_stats.storage_backends.base import IStatsStorage
from buildbot_stats.storage_backends.base import StatsStorageBase
from buildbot_stats.storage_backends.influxdb_client import InfluxStorageService

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
    "StatsService",
    "StatsStepMixin",
    "StatsStorageBase",
    "get_stats_service",
]
