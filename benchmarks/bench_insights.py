#!/usr/bin/env python
"""Insights benchmark: ``buildbot-stats insights`` on 10,000 builds with 200 tests each, in SQLite.

Run from the repository root::

    python -m benchmarks.bench_insights                  # 10,000 builds, 2,000,000 test results
    python -m benchmarks.bench_insights --builds 2000    # a quicker look
    python -m benchmarks.bench_insights --dir /tmp/bench-insights --keep   # build once, reuse

It plants a history (tests/insights_data.py: two builders, a third of the
revisions built more than once, flaky, broken and renamed tests, four steps
with 10 % noise and planted shifts) and writes it into a master directory's
``state.sqlite`` in Buildbot's schema; then runs ``buildbot-stats insights
MASTER_DIR --json --since all`` in a child process and prints its wall time
and maximum resident set size (``os.wait4``), and whether it found the
planted flaky tests and shifts.  The goals (issue 20): at most 10 s and
500 MB.  Exit status 0 when both are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from buildbot_stats.cli.master_process import make_master_cfg
from tests.insights_data import planted_history, write_sqlite

ROOT = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 10.0
GOAL_MB = 500.0
TESTS = 200
#: builds per revision, on average, with a third of the revisions built two or three times
BUILDS_PER_REVISION = 1.45


def plant(basedir: Path, builds: int, seed: int) -> object:
    basedir.mkdir(parents=True, exist_ok=True)
    (basedir / "master.cfg").write_text(make_master_cfg({"linux": "[]", "windows": "[]"}, pb_port=1))
    revisions = round(builds / 2 / BUILDS_PER_REVISION)
    planted = planted_history(seed, revisions=revisions, tests=TESTS, rebuilt=0.3, shifts=3)
    db = basedir / "state.sqlite"
    if not db.exists():
        write_sqlite(str(db), planted)
    return planted


def run_insights(basedir: Path) -> tuple[float, float, dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "buildbot_stats.cli", "insights", str(basedir), "--json", "--since", "all"],
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    if status != 0:
        raise SystemExit(f"insights failed with status {status}")
    return seconds, usage.ru_maxrss / 1024, json.loads(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--builds", type=int, default=10_000, help="builds to plant (default 10,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", help="the master directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the directory")
    parser.add_argument("--runs", type=int, default=3, help="runs of insights; the best is the figure")
    args = parser.parse_args()
    basedir = Path(args.dir or tempfile.mkdtemp(prefix="bench-insights-")) / "master"
    started = time.monotonic()
    planted = plant(basedir, args.builds, args.seed)
    print(
        f"planted {len(planted.builds)} builds, {len(planted.rows)} test results "  # type: ignore[attr-defined]
        f"({os.path.getsize(basedir / 'state.sqlite') / 1e6:.0f} MB) in {time.monotonic() - started:.1f} s"
    )
    runs = [run_insights(basedir) for _ in range(max(1, min(args.runs, 10)))]
    seconds = min(r[0] for r in runs)
    mb = max(r[1] for r in runs)
    data = runs[0][2]
    found = {(t["builder"], t["test"]) for t in data["flaky_tests"]}
    flaky = set(planted.flaky)  # type: ignore[attr-defined]
    shifts_found = sum(
        any(
            r["builder"] == s.builder and r["what"] == s.step and abs(r["build_number"] - (s.index + 1)) <= 3
            for r in data["regressions"]
        )
        for s in planted.shifts  # type: ignore[attr-defined]
    )
    print(f"python {platform.python_version()}, {os.cpu_count()} cores")
    each = ", ".join(f"{r[0]:.2f}" for r in runs)
    print(f"insights: {seconds:.2f} s (best of {len(runs)}: {each}), {mb:.0f} MB RSS")
    print(
        f"window: {data['window']['builds']} builds, {data['window']['test_results']} test results; "
        f"flaky found {len(found & flaky)}/{len(flaky)}, not planted {len(found - flaky)}; "
        f"shifts found {shifts_found}/{len(planted.shifts)}"  # type: ignore[attr-defined]
    )
    if not args.keep and not args.dir:
        import shutil

        shutil.rmtree(basedir.parent)
    ok = seconds <= GOAL_SECONDS and mb <= GOAL_MB
    print(f"goals (<= {GOAL_SECONDS:g} s, <= {GOAL_MB:g} MB): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
