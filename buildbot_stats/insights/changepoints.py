"""Lasting shifts of build and step durations: a robust two-window change-point test.

At every build of a series the median of the ``window`` durations before it
is compared with the median of the ``window`` durations from it on.  A build
starts a shift when

* the medians differ by at least ``min_ratio`` of the one before and at least
  ``min_seconds`` (a shift too small to matter is no finding), and
* the two windows are separated: at least ``separation`` of the pairs (one
  duration before, one after) are ordered the way the medians are (the
  Mann-Whitney statistic as a fraction, ties counting half), each window
  without its largest and smallest duration.

A single slow build moves neither a median nor the separation of a window of
twelve, so it is noise, not a shift; a shift must last a window (the last
builds of a series, with fewer after them, need at least ``min_window``), and
the medians of windows twice as long must differ as much (a short window's
median wanders by several per cent under 10 % noise; a long one's much less).
Around a real shift the test holds at several neighbouring builds: among
them, the split of the builds around them (a window beyond each end) whose two
parts lie closest to their own medians (least absolute deviation: a slow
build costs the same on either side, so it does not pull the split) is where
the shift starts.  Medians and ranks ignore how noise is distributed, so the
thresholds mean the same on fast and slow series; docs/insights.rst has the
figures on planted histories.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from buildbot_stats.insights.records import NOT_A_RUN, Build, Step

__all__ = ["Regression", "Shift", "ShiftRule", "find_regressions", "find_shifts"]


@dataclass(frozen=True)
class ShiftRule:
    """How large and how clear a shift must be to be reported."""

    min_ratio: float = 0.2
    min_seconds: float = 5.0
    window: int = 12
    min_window: int = 8
    separation: float = 0.85


@dataclass(frozen=True)
class Shift:
    index: int  # the first value after the change
    before: float  # median of the window before
    after: float  # median of the window from ``index`` on


def _separation(before: Sequence[float], after: Sequence[float]) -> float:
    """The fraction of (before, after) pairs where after is larger, ties counting half."""
    above = 0.0
    for a in after:
        for b in before:
            if a > b:
                above += 1.0
            elif a == b:
                above += 0.5
    return above / (len(before) * len(after))


def _trimmed(values: Sequence[float]) -> list[float]:
    """The values without their largest and smallest (a single slow build weighs nothing)."""
    ordered = sorted(values)
    return ordered[1:-1] if len(ordered) > 2 else ordered


def find_shifts(values: Sequence[float], rule: ShiftRule = ShiftRule()) -> list[Shift]:
    """Where ``values`` (in build order) shift lastingly, in order."""
    n, w = len(values), rule.window
    passing: list[int] = []
    for i in range(rule.min_window, n - rule.min_window + 1):
        before = values[max(0, i - w) : i]
        after = values[i : i + w]
        mb, ma = statistics.median(before), statistics.median(after)
        if abs(ma - mb) < max(rule.min_seconds, rule.min_ratio * mb):
            continue
        above = _separation(_trimmed(before), _trimmed(after))
        if (above if ma > mb else 1.0 - above) >= rule.separation:
            passing.append(i)
    # neighbouring builds that pass are one shift: the split that fits the builds around them best
    clusters: list[list[int]] = []
    for i in passing:
        if clusters and i - clusters[-1][-1] < w:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    shifts = []
    for cluster in clusters:
        lo, hi = max(0, cluster[0] - w), min(n, cluster[-1] + w)
        i = min(cluster, key=lambda j: (_deviation(values[lo:j]) + _deviation(values[j:hi]), j))
        mb = statistics.median(values[max(0, i - w) : i])
        ma = statistics.median(values[i : i + w])
        if _lasts(values, i, ma > mb, rule):
            shifts.append(Shift(i, mb, ma))
    return shifts


def _deviation(values: Sequence[float]) -> float:
    """The sum of the values' distances to their median (least absolute deviation)."""
    if not values:
        return 0.0
    m = statistics.median(values)
    return sum(abs(x - m) for x in values)


def _lasts(values: Sequence[float], i: int, slower: bool, rule: ShiftRule) -> bool:
    """Whether the shift at ``i`` holds over windows twice as long (noise in a short one does not)."""
    before = values[max(0, i - 2 * rule.window) : i]
    after = values[i : i + 2 * rule.window]
    mb, ma = statistics.median(before), statistics.median(after)
    return (ma > mb) == slower and abs(ma - mb) >= max(rule.min_seconds, rule.min_ratio * mb)


@dataclass(frozen=True)
class Regression:
    builder: str
    builderid: int
    #: ``"build"`` for the whole build, else the step's name
    what: str
    #: the first build after the change
    build_number: int
    revision: str | None
    before_seconds: float
    after_seconds: float

    @property
    def direction(self) -> str:
        return "slower" if self.after_seconds > self.before_seconds else "faster"

    @property
    def change_seconds(self) -> float:
        return abs(self.after_seconds - self.before_seconds)


def _series(
    builds: Iterable[Build], steps: Iterable[Step]
) -> dict[tuple[str, bool, str], list[tuple[Build, int]]]:
    """(builder, is a step, ``"build"`` or the step's name) -> (build, duration in seconds), in build order.

    (A step may be named ``build`` too: its series is not the build's.)
    """
    series: dict[tuple[str, bool, str], list[tuple[Build, int]]] = {}
    build_of: dict[int, Build] = {}
    for b in builds:
        build_of[b.buildid] = b
        if b.complete_at is not None and b.results not in NOT_A_RUN:
            series.setdefault((b.builder, False, "build"), []).append((b, b.complete_at - b.started_at))
    for s in steps:
        build = build_of.get(s.buildid)
        if build is None or s.started_at is None or s.complete_at is None or s.results in NOT_A_RUN:
            continue
        series.setdefault((build.builder, True, s.name), []).append((build, s.complete_at - s.started_at))
    for runs in series.values():
        runs.sort(key=lambda r: r[0].number)
    return series


def find_regressions(
    builds: Iterable[Build], steps: Iterable[Step], rule: ShiftRule = ShiftRule()
) -> list[Regression]:
    """Lasting shifts of each builder's build durations and of each of its steps', largest first."""
    found = []
    for (builder, _, what), runs in _series(builds, steps).items():
        for shift in find_shifts([d for _, d in runs], rule):
            build = runs[shift.index][0]
            found.append(
                Regression(
                    builder=builder,
                    builderid=build.builderid,
                    what=what,
                    build_number=build.number,
                    revision=build.revision,
                    before_seconds=shift.before,
                    after_seconds=shift.after,
                )
            )
    found.sort(key=lambda r: (-r.change_seconds, r.builder, r.what, r.build_number))
    return found
