"""Lasting shifts of build and step durations: a robust two-window change-point test.

1. *Where*: at every build of a series, the ``window`` durations before it
   and the ``window`` durations from it on are compared.  They look like a
   shift when their medians differ by at least half the size that matters
   and the windows are separated: at least ``separation`` of the pairs (one
   duration before, one after; each window without its largest and smallest
   duration) are ordered the way the medians are (the Mann-Whitney statistic
   as a fraction, ties counting half).  Around a real shift this holds at
   several neighbouring builds: among them, the split of the builds around
   them whose two parts lie closest to their own medians (least absolute
   deviation: a slow build costs the same on either side, so it does not pull
   the split) is where the shift starts.
2. *How large*: each split is measured by the medians of the builds from the
   split before it to the split after it (at most six windows each way).  It
   is reported when they differ by at least ``min_ratio`` of the one before
   and at least ``min_seconds``; otherwise the weakest split is dropped and
   its neighbours measured again.

A single slow build moves neither a median nor the separation of a window of
twelve, so it is noise, not a shift; a shift must last (the last builds of a
series, with fewer after them, need at least ``min_window``).  Medians over
dozens of builds wander by about 2 % under 10 % noise, a window of twelve's by
several: so a short window finds where, and long stretches say how much.
Medians and ranks ignore how noise is distributed, so the thresholds mean the
same on fast and slow series; docs/insights.rst has the figures on planted
histories.
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
    clusters = _clusters(values, rule)
    splits: list[int] = []
    for k in range(len(clusters)):  # each after the one before: no two equal, no part between them empty
        splits.append(_best_split(values, clusters, k, rule, splits[-1] if splits else 0))
    # each split judged on the builds up to its neighbours; the weakest failing one goes (a spurious
    # split a few builds after a real one makes the real one too short to last: the spurious one goes)
    while splits:
        shifts = [_shift(values, splits, k, rule) for k in range(len(splits))]
        failing = [
            (abs(s.after - s.before) / max(s.before, 1e-9), k)
            for k, s in enumerate(shifts)
            if not (_large(s, rule) and _lasting(splits, k, len(values), rule))
        ]
        if not failing:
            return shifts
        del splits[min(failing)[1]]
    return []


def _clusters(values: Sequence[float], rule: ShiftRule) -> list[list[int]]:
    """Runs of neighbouring builds where the two windows around them are separated."""
    n, w = len(values), rule.window
    clusters: list[list[int]] = []
    for i in range(rule.min_window, n - rule.min_window + 1):
        before = values[max(0, i - w) : i]
        after = values[i : i + w]
        mb, ma = statistics.median(before), statistics.median(after)
        # a short window's median wanders: half the size is enough to look closer
        if abs(ma - mb) < max(rule.min_seconds, rule.min_ratio * mb) / 2:
            continue
        above = _separation(_trimmed(before), _trimmed(after))
        if (above if ma > mb else 1.0 - above) < rule.separation:
            continue
        if clusters and i - clusters[-1][-1] <= w // 2:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    return clusters


def _best_split(
    values: Sequence[float], clusters: list[list[int]], k: int, rule: ShiftRule, previous: int
) -> int:
    """The split near ``clusters[k]`` whose two parts (of the builds around it) lie closest to their medians.

    The builds around it: two windows either side, not beyond the neighbouring clusters.  The
    split may be half a window before or after the cluster: under noise the windows may pass the
    separation test only a few builds after the shift.  It comes after ``previous`` (the split
    before, or 0): both may reach between their clusters.  There is always room, as the split
    before lies before ``cluster[0]``.
    """
    n, w, cluster = len(values), rule.window, clusters[k]
    lo = max(0, cluster[0] - 2 * w, clusters[k - 1][-1] if k else 0, previous)
    hi = min(n, cluster[-1] + 2 * w, clusters[k + 1][0] if k + 1 < len(clusters) else n)
    first = max(rule.min_window, lo + 1, cluster[0] - w // 2)
    last = min(n - rule.min_window, hi - 1, cluster[-1] + w // 2)
    return min(range(first, last + 1), key=lambda j: (_deviation(values[lo:j]) + _deviation(values[j:hi]), j))


def _shift(values: Sequence[float], splits: list[int], k: int, rule: ShiftRule) -> Shift:
    """The shift at ``splits[k]``: medians of the builds up to the neighbouring splits (or six windows)."""
    i = splits[k]
    reach = 6 * rule.window
    start = max(splits[k - 1] if k else 0, i - reach)
    end = min(splits[k + 1] if k + 1 < len(splits) else len(values), i + reach)
    return Shift(i, statistics.median(values[start:i]), statistics.median(values[i:end]))


def _lasting(splits: list[int], k: int, n: int, rule: ShiftRule) -> bool:
    """Whether the builds after ``splits[k]``, up to the next split, are a shift and not a burst."""
    return (splits[k + 1] if k + 1 < len(splits) else n) - splits[k] >= rule.min_window


def _large(shift: Shift, rule: ShiftRule) -> bool:
    return abs(shift.after - shift.before) >= max(rule.min_seconds, rule.min_ratio * shift.before)


def _deviation(values: Sequence[float]) -> float:
    """The sum of the values' distances to their median (least absolute deviation)."""
    if not values:
        return 0.0
    m = statistics.median(values)
    return sum(abs(x - m) for x in values)


@dataclass(frozen=True)
class Regression:
    builder: str
    builderid: int
    #: ``"build"`` for the whole build, else the step's name
    what: str
    #: whether ``what`` is a step (a step may be named ``build`` too)
    step: bool
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
    for (builder, is_step, what), runs in _series(builds, steps).items():
        for shift in find_shifts([d for _, d in runs], rule):
            build = runs[shift.index][0]
            found.append(
                Regression(
                    builder=builder,
                    builderid=build.builderid,
                    what=what,
                    step=is_step,
                    build_number=build.number,
                    revision=build.revision,
                    before_seconds=shift.before,
                    after_seconds=shift.after,
                )
            )
    found.sort(key=lambda r: (-r.change_seconds, r.builder, r.what, r.build_number))
    return found
