"""Live state end to end (issue 21): a real master, LocalWorkers, builds held by a step.

Three changes make six requests for two workers: two builds run, four requests wait.
While they wait, ``live_snapshot()`` matches what the data API says at that moment,
and so do the ``buildbot-live`` points the SQLite store receives every second.  After a
SIGKILL and a restart (builds and requests left in the database), the figures are right
again within one interval; after the release, every figure is 0.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import MakeMaster, wait_until
from tests.e2e.live_harness import HeldBuilds

SERVICES = """
from buildbot_stats import statistics
c['services'].append(statistics.StatsService(storage_backends=[
    statistics.SQLiteStorageService('stats.sqlite', captures=[], live_interval=1),
]))
"""


def live_points(store: Path, since: float) -> dict[str, dict[str, Any]] | None:
    """The newest complete set of ``buildbot-live`` points stamped after ``since``: "" -> the
    workers' fields, builder name -> its fields."""
    if not store.exists():
        return None
    with sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True, timeout=10) as db:
        rows = db.execute(
            "SELECT time_ns, tags, fields FROM points WHERE series = 'buildbot-live' AND time_ns > ? "
            "ORDER BY time_ns DESC",
            (int(since * 1e9),),
        ).fetchall()
    by_time: dict[int, dict[str, dict[str, Any]]] = {}
    for t, tags, fields in rows:
        by_time.setdefault(t, {})[json.loads(tags).get("builder_name", "")] = json.loads(fields)
    complete = [points for _, points in sorted(by_time.items(), reverse=True) if len(points) >= 3]
    return complete[0] if complete else None


def store_agrees(store: Path, report: dict[str, Any]) -> dict[str, Any] | None:
    """The first live points after ``report`` that say what its data API said."""
    points = live_points(store, report["time"])
    if points is None:
        return None
    d = report["data_api"]
    expected = {"": {"workers_connected": d["workers_connected"], "workers_busy": d["workers_busy"]}}
    for name in d["requests_pending"]:
        expected[name] = {
            "requests_pending": d["requests_pending"][name],
            "builds_running": d["builds_running"][name],
        }
    got = {k: {f: v[f] for f in expected[k]} for k, v in points.items() if k in expected}
    assert set(points) == set(expected), points
    return points if got == expected else None


def test_live_state_matches_the_data_api_while_builds_wait_and_after_a_restart(
    make_master: MakeMaster, tmp_path
):
    held = HeldBuilds(make_master, tmp_path, SERVICES)
    m = held.master
    store = m.basedir / "stats.sqlite"
    m.start()
    m.sendchange(3)
    report = held.wait_agreed(pending=4, running=2)
    d = report["data_api"]
    assert (d["workers_connected"], d["workers_busy"]) == (2, 2)
    assert d["worker_builds_running"] == {"w1": 1, "w2": 1}
    assert sorted(d["requests_pending"]) == ["hold-a", "hold-b"]
    # the ages grow while they wait
    time.sleep(1.5)
    later = held.wait_agreed(pending=4, running=2, after=time.time())
    for name, (oldest, longest) in later["ages"].items():
        assert oldest >= 1.5 and (longest >= 1.5 or later["data_api"]["builds_running"][name] == 0), later
    points = wait_until("buildbot-live points saying the same", lambda: store_agrees(store, later), 15)
    assert points[""] == {"workers_connected": 2, "workers_busy": 2}

    # SIGKILL: the database keeps two incomplete builds and two claimed requests of this master
    m.kill()
    m.start()
    restarted = time.time()
    # right again at once (the recount at start), not only after the periodic one (60 s)
    report = held.wait_agreed(pending=4, running=2, after=restarted, timeout=10)
    wait_until("buildbot-live points after the restart", lambda: store_agrees(store, report), 5)

    held.release()
    done = held.wait_agreed(pending=0, running=0, after=time.time(), timeout=120)
    assert done["data_api"]["workers_busy"] == 0
    assert all(age == [0.0, 0.0] for age in done["ages"].values()), done["ages"]
    m.wait_for_builds(6 + 2)  # six that succeeded, the two the kill interrupted (retried)
    totals = wait_until(
        "six successes counted",
        lambda: (
            (r := held.report()) and sum(n for _, result, n in r["totals"] if result == "success") == 6 and r
        ),
        30,
    )
    assert {w for w, _, _ in totals["totals"]} <= {"w1", "w2"}
    assert [line for line in m.tracebacks()] == []
