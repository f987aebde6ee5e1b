"""A real master whose builds wait: the live-state end-to-end tests' harness (issue 21).

:class:`HeldBuilds` makes a master (``make_master`` of conftest.py) with ``builders``, and
``workers`` LocalWorkers running one build each at most; every build runs a step that waits
until :meth:`HeldBuilds.release` (at most ``HOLD_LIMIT_S``).  So with more requests than
workers, some builds run and the other requests wait, and stay so while a test looks.  The
master.cfg ``services`` are the caller's (a StatsService with the backends under test) plus
:class:`~tests.support.live_probe.LiveProbe`, which writes what the data API says and
``live_snapshot()`` at one moment: :meth:`HeldBuilds.wait_agreed` waits for a given state
and returns that report.  A Prometheus test adds its backend to ``services`` and compares
what Prometheus scraped with ``report["data_api"]`` the same way.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from buildbot_stats.cli.master_process import RealMaster
from tests.e2e.conftest import MakeMaster, wait_until

HOLD_LIMIT_S = 120


class HeldBuilds:
    def __init__(
        self,
        make_master: MakeMaster,
        directory: Path,
        services: str,
        builders=("hold-a", "hold-b"),
        workers=2,
    ) -> None:
        self.release_file = directory / "release"
        self.probe_file = directory / "live-probe.json"
        # a bounded wait for the release file (a LocalWorker runs it in the worker's build directory)
        wait = (
            f"i=0; while [ ! -e {shlex.quote(str(self.release_file))} ] && [ $i -lt {HOLD_LIMIT_S * 10} ]; "
        )
        wait += "do sleep 0.1; i=$((i+1)); done"
        steps = f"[steps.ShellCommand(name='held', command=['sh', '-c', {wait!r}])]"
        probe = f"c['services'].append(LiveProbe({str(self.probe_file)!r}, period=0.25))"
        self.builders = list(builders)
        self.master: RealMaster = make_master(
            {b: steps for b in builders},
            workers={f"w{i}": {"max_builds": 1} for i in range(1, workers + 1)},
            header="from tests.support.live_probe import LiveProbe",
            services=services + "\n" + probe,
        )

    def release(self) -> None:
        self.release_file.touch()

    def report(self) -> dict[str, Any] | None:
        """The probe's latest report, None before the first."""
        try:
            return json.loads(self.probe_file.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def wait_agreed(
        self, pending: int, running: int, after: float = 0.0, timeout: float = 60
    ) -> dict[str, Any]:
        """The first report (written after ``after``) in which the data API shows ``pending``
        requests and ``running`` builds in all and live_snapshot() says the same."""

        def agreed() -> dict[str, Any] | None:
            r = self.report()
            if r is None or r["time"] < after or r["snapshot"] != r["data_api"]:
                return None
            d = r["data_api"]
            return (
                r
                if (sum(d["requests_pending"].values()), sum(d["builds_running"].values()))
                == (
                    pending,
                    running,
                )
                else None
            )

        return wait_until(
            f"{pending} pending, {running} running, the same in live_snapshot()", agreed, timeout
        )  # type: ignore[no-any-return]
