"""Captures: which MQ messages become statistics, and in which series.

Each capture listens to one kind of MQ message (its ``routingKey``) and turns
the messages it is interested in into points through :meth:`Capture._store`.
:mod:`~buildbot_stats.capture.base` holds the base class,
:mod:`~buildbot_stats.capture.builds` the captures of buildbot.statistics,
:mod:`~buildbot_stats.capture.steps` the step, queue-time and test-result
captures; every public name is importable from here (the spec's path).
"""

from buildbot_stats.capture import builds, steps
from buildbot_stats.capture.base import BUILD_FINISHED, YIELD_DATA, Capture  # noqa: F401
from buildbot_stats.capture.builds import *  # noqa: F403
from buildbot_stats.capture.steps import *  # noqa: F403

__all__ = sorted(["Capture", *builds.__all__, *steps.__all__])
