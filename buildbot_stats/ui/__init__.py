"""The Statistics page of Buildbot's web UI, and the figures and charts it shares with the CLI.

A master.cfg that imports ``buildbot_stats.statistics`` loads only
:mod:`.dashboard` (``StatsDashboard``, light); the rest is imported when the page
is first served, or by ``buildbot-stats`` commands.  Nothing here imports
:mod:`buildbot_stats.cli`.
"""
