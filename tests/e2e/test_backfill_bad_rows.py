"""``buildbot-stats backfill`` on a real Buildbot database holding a row it cannot read (issue 22, item 7).

The database is made by ``buildbot create-master`` (Buildbot's own schema), the
builds are inserted with sqlite3 as a damaged or hand-edited database holds them:
a build whose ``complete_at`` is 2**63-1 makes Buildbot's ``epoch2datetime``
raise OSError (errno 75).  The backfill skips that build with one line naming its
id, writes the others and checkpoints past it; a rerun writes nothing again.  A
database without the ``builds`` or ``test_result_sets`` table ends with one line
and exit 2.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from buildbot_stats.cli.master_process import RealMaster, make_master_cfg
from buildbot_stats.ui.store import open_store
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

T0 = 1_790_000_000
BAD = 2**63 - 1
SERVICES = (
    "c['services'].append(statistics.StatsService(storage_backends=["
    "statistics.SQLiteStorageService('stats.sqlite', [statistics.CaptureBuildDurationAllBuilders()],"
    " name='sqlite')]))"
)


def master_with_builds(tmp_path: Path, complete_ats: list[int]) -> Path:
    """A master directory (never started) whose database holds one finished build per ``complete_ats``."""
    cfg = make_master_cfg(
        {"b1": "[]"}, pb_port=free_port(), header="from buildbot_stats import statistics", services=SERVICES
    )
    m = RealMaster(tmp_path / "master", cfg)
    m.create()
    conn = sqlite3.connect(m.basedir / "state.sqlite")
    with conn:
        conn.execute("INSERT INTO masters VALUES (1, 'm', 'h', 0, ?)", (T0,))
        conn.execute("INSERT INTO builders (id, name, name_hash) VALUES (1, 'b1', 'h1')")
        conn.execute("INSERT INTO workers (id, name, info) VALUES (1, 'w1', '{}')")
        for i, complete_at in enumerate(complete_ats, 1):
            start = T0 + i * 100
            conn.execute("INSERT INTO buildsets (id, reason, submitted_at) VALUES (?, 'x', ?)", (i, start))
            conn.execute(
                "INSERT INTO buildrequests (id, buildsetid, builderid, submitted_at) VALUES (?, ?, 1, ?)",
                (i, i, start),
            )
            conn.execute(
                "INSERT INTO builds VALUES (?, ?, 1, ?, 1, 1, ?, ?, 0, 'done', 0)",
                (i, i, i, start, complete_at),
            )
    conn.close()
    return m.basedir


def backfill(basedir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buildbot_stats.cli", "backfill", str(basedir)],
        capture_output=True,
        text=True,
        timeout=180,
    )


def stored_builds(basedir: Path) -> list[str]:
    with open_store(basedir / "stats.sqlite") as store:
        return sorted(str(p.tags["build_number"]) for p in store.points("b1-build-times"))


def test_unreadable_build_is_skipped_with_one_line_and_checkpointed_past(tmp_path: Path) -> None:
    basedir = master_with_builds(tmp_path, [T0 + 160, BAD, T0 + 360])
    proc = backfill(basedir)
    assert proc.returncode == 0, proc
    assert "Traceback" not in proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if "build id 2" in line]
    assert len(skipped) == 1, proc.stderr
    assert skipped[0].startswith("buildbot-stats: skipping build id 2: ")
    assert "backfilled 2 builds" in proc.stdout
    assert stored_builds(basedir) == ["1", "3"]
    state = (basedir / "stats-backfill.json").read_text()
    assert [int(n) for n in re.findall(r'"last_buildid": (\d+)', state)] == [3]
    # a rerun continues after the last build: nothing again, not even the bad row
    again = backfill(basedir)
    assert again.returncode == 0, again
    assert "build id 2" not in again.stderr
    assert "backfilled 0 builds" in again.stdout


@pytest.mark.parametrize("table", ["builds", "test_result_sets"])
def test_missing_table_is_one_line_and_exit_2(tmp_path: Path, table: str) -> None:
    basedir = master_with_builds(tmp_path, [T0 + 160])
    conn = sqlite3.connect(basedir / "state.sqlite")
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute(f"DROP TABLE {table}")
    conn.commit()
    conn.close()
    proc = backfill(basedir)
    assert proc.returncode == 2, proc
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("buildbot-stats: error: ")
    assert table in proc.stderr
