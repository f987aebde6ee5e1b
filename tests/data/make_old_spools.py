"""Write the spool fixtures ``spool-schema-{2,3,4}.sqlite`` with the code that wrote those schemas.

Run from the repository root (a git checkout with its history)::

    python tests/data/make_old_spools.py

For each schema it extracts ``buildbot_stats/`` as it was at the last commit
that wrote that schema (``git archive``), imports *that* package in a child
Python and lets its own ``SQLiteSpool`` write the points below, so the
fixtures hold exactly what an older master leaves behind: pickled columns
(``columns-1``), and for schema 4 a line-protocol segment as well.
tests/unit/test_spool_migration.py opens them with today's spool and expects
these points back.  Nothing here is imported by the package or the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

#: schema -> last commit whose buildbot_stats/spool.py wrote it (git log -- buildbot_stats/spool.py)
COMMITS = {
    2: "e1d1b8b1695eba13ed0a3213e6d1fa9179da3c72",
    3: "9ee57d318eaebf88597e2ae644407114fa0d456c",
    4: "9bcc03eb38c6fd9184aab96046d07b8249296f31",
}

# Run in the child, against the old package; the points are the ones the tests expect.
WRITER = r"""
import sys
from buildbot_stats import spool
from buildbot_stats.point import Point

schema, path = int(sys.argv[1]), sys.argv[2]
awkward = {"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "big": 2**70,
           "neg": -(2**65), "b": b"\xff", "d": {"k": (1, 2)}, "s": "\u00e9\nx", "n": None, "t": True}
points = [Point("builder1-m", {"i": i, "f": i / 4}, {"t": "x"}, 10**18 + i) for i in range(5)]
points.append(Point("builder1-m", dict(awkward, i=5), {"t": "y", "u": "\u00fc"}, 10**18 + 5))
store = spool.SQLiteSpool(path)
store.thd_open()
if schema in (2, 3):  # the queue key was "<service name>/<backend name>" already
    store.thd_append("StatsService/influx", [(1, [1, 2, 3], points[:3]), (4, [4, 5, 6], points[3:])])
else:
    first, _ = spool.encode_segment("StatsService/influx", points[:3], None)
    second, _ = spool.encode_segment("StatsService/influx", points[3:], None)
    lines = spool.NewSegment("StatsService/lp", 2, 10**18, 10**18 + 1, "influx-lp/ns",
                             b"m i=0i 1000000000000000000\nm i=1i 1000000000000000001")
    store.thd_write([first, second, lines], {})
store.thd_close()
"""


def make(schema: int, commit: str) -> None:
    work = tempfile.mkdtemp(prefix=f"old-spool-{schema}-")
    try:
        archive = os.path.join(work, "src.tar")
        with open(archive, "wb") as f:
            subprocess.run(["git", "archive", commit, "buildbot_stats"], cwd=ROOT, stdout=f, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        path = os.path.join(work, "spool.sqlite")
        env = dict(os.environ, PYTHONPATH=work, BUILDBOT_STATS_PURE_PYTHON="1")
        subprocess.run([sys.executable, "-c", WRITER, str(schema), path], cwd=work, env=env, check=True)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(path + suffix):
                raise SystemExit(f"{path}{suffix} left behind: the old spool was not closed")
        shutil.copyfile(path, os.path.join(HERE, f"spool-schema-{schema}.sqlite"))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    for schema, commit in COMMITS.items():
        make(schema, commit)
        print(f"tests/data/spool-schema-{schema}.sqlite written by {commit[:10]}")
