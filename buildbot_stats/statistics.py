"""Everything a master.cfg needs: ``from buildbot_stats import statistics``.

The names are those of the modules' own ``__all__`` lists, so a capture or a
backend added to its module is here without a second list to keep in step.
"""

from buildbot_stats import capture, errors, stats_service, steps
from buildbot_stats.capture import *  # noqa: F403
from buildbot_stats.errors import *  # noqa: F403
from buildbot_stats.stats_service import *  # noqa: F403
from buildbot_stats.steps import *  # noqa: F403
from buildbot_stats.storage_backends import base, influxdb_client, influxdb_http, prometheus, sqlite
from buildbot_stats.storage_backends.base import *  # noqa: F403
from buildbot_stats.storage_backends.influxdb_client import *  # noqa: F403
from buildbot_stats.storage_backends.influxdb_http import *  # noqa: F403
from buildbot_stats.storage_backends.prometheus import *  # noqa: F403
from buildbot_stats.storage_backends.sqlite import *  # noqa: F403
from buildbot_stats.ui import dashboard
from buildbot_stats.ui.dashboard import *  # noqa: F403

_MODULES = (
    capture,
    errors,
    stats_service,
    steps,
    base,
    influxdb_client,
    influxdb_http,
    prometheus,
    sqlite,
    dashboard,
)

__all__ = sorted({name for module in _MODULES for name in module.__all__})
