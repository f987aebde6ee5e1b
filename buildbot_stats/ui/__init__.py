"""The Statistics page of Buildbot's web UI, and the figures and charts it shares with the CLI.

Imported only when the page is first served (see
:func:`buildbot_stats.web_page.StatsDashboard`) or by ``buildbot-stats``
commands: a master.cfg that imports ``buildbot_stats.statistics`` loads none
of it.  Nothing here imports :mod:`buildbot_stats.cli`.
"""
