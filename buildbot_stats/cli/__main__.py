"""``python -m buildbot_stats.cli``: the ``buildbot-stats`` command."""

import sys

from buildbot_stats.cli import main

sys.exit(main(sys.argv[1:]))
