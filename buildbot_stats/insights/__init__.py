"""Insights: flaky tests and lasting duration shifts, found in the history Buildbot keeps.

Pure analyses over plain records (:mod:`.records`, :mod:`.flaky`,
:mod:`.changepoints`) and one reader of Buildbot's database
(:mod:`.database`).  Used by ``buildbot-stats insights`` and the Statistics
page; the runtime (``statistics``) never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from buildbot_stats.insights.changepoints import Regression, ShiftRule, find_regressions
from buildbot_stats.insights.database import History
from buildbot_stats.insights.flaky import FlakyTest, find_flaky

__all__ = ["FlakyTest", "Insights", "Regression", "ShiftRule", "analyse"]


@dataclass
class Insights:
    flaky_tests: list[FlakyTest]
    regressions: list[Regression]
    window: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The object ``buildbot-stats insights --json`` prints."""
        return {
            "flaky_tests": [
                {
                    "builder": t.builder,
                    "test": t.test,
                    "path": t.path,
                    "passes": t.passes,
                    "failures": t.failures,
                    "failure_rate": round(t.failure_rate, 4),
                    "revisions_with_both": t.revisions_with_both,
                    "last_failure_build": t.last_failure_build,
                }
                for t in self.flaky_tests
            ],
            "regressions": [
                {
                    "builder": r.builder,
                    "what": r.what,
                    "build_number": r.build_number,
                    "revision": r.revision,
                    "before_seconds": r.before_seconds,
                    "after_seconds": r.after_seconds,
                    "direction": r.direction,
                }
                for r in self.regressions
            ],
            "window": self.window,
        }


def analyse(history: History, rule: ShiftRule = ShiftRule()) -> Insights:
    """The flaky tests and the duration shifts of ``history``."""
    builds = history.builds
    starts = [b.started_at for b in builds]
    ends = [b.complete_at for b in builds if b.complete_at is not None]
    window = {
        "builds": len(builds),
        "builds_without_revision": sum(1 for b in builds if not b.revision),
        "builders": len({b.builder for b in builds}),
        "builder_names": sorted({b.builder for b in builds}),
        "test_results": history.test_results,
        "tests": history.tests,
        "first_started_at": min(starts) if starts else None,
        "last_complete_at": max(ends) if ends else None,
    }
    return Insights(
        flaky_tests=find_flaky(builds, history.sets, history.rows),
        regressions=find_regressions(builds, history.steps, rule),
        window=window,
    )
