"""buildbot_stats: statistics for Buildbot masters.

In master.cfg::

    from buildbot_stats import statistics
"""

__version__ = "0.1.0"
