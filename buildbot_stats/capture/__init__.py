"""Captures: which MQ messages become statistics, in which series (every public name is here)."""

from buildbot_stats.capture import builds, steps
from buildbot_stats.capture.base import BUILD_FINISHED, YIELD_DATA, Capture  # noqa: F401
from buildbot_stats.capture.builds import *  # noqa: F403
from buildbot_stats.capture.steps import *  # noqa: F403

__all__ = sorted(["Capture", *builds.__all__, *steps.__all__])
