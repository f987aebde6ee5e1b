"""Where ``StatsDashboard`` lived until 0.1.0; it is :mod:`buildbot_stats.ui.dashboard`'s now."""

from buildbot_stats.ui.dashboard import StatsDashboard as StatsDashboard  # (re-exported)
