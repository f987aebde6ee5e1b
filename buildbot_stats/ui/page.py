"""The Statistics page as HTML: the figures of each time window, for the builders a user may see.

Buildbot's UI inserts the page with ``innerHTML``: its scripts would not run
and its ``<style>`` applies to the whole UI.  So charts are inline SVG drawn
here, every CSS rule is scoped under the root class ``bbs-stats``, and the
window and builder controls are radio inputs switched by ``:checked`` rules
(every window is in the page).  The bare ``index.html`` URL gets the same
fragment in a document of its own, its query parameters preselecting a
window and a builder.
"""

from __future__ import annotations

import array
import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

from markupsafe import Markup

from buildbot_stats.capture.live import LiveSnapshot
from buildbot_stats.ui.charts import (
    LINE_COLOR,
    RESULT_COLORS,
    environment,
    nice_max,
    queue_chart,
    steps_chart,
    success_chart,
    tests_chart,
)
from buildbot_stats.ui.figures import BuilderSummary, DurationSample, Summary, nearest_rank
from buildbot_stats.ui.formatting import format_time

__all__ = [
    "INSIGHT_PANELS",
    "WINDOWS",
    "Window",
    "WindowFigures",
    "prepare",
    "render_message",
    "render_page",
    "window_starts",
]


class Window(NamedTuple):
    key: str  # in ids, CSS classes and the ``window`` query parameter
    label: str
    seconds: int | None  # None: all points


WINDOWS = (
    Window("24h", "last 24 h", 24 * 3600),
    Window("7d", "last 7 days", 7 * 24 * 3600),
    Window("30d", "last 30 days", 30 * 24 * 3600),
    Window("all", "all time", None),
)
#: the slowest steps listed per window
STEPS_SHOWN = 10


class InsightsView(NamedTuple):
    """The insights the page shows below the windows: ``insights`` None while they are being read."""

    insights: Any  # buildbot_stats.insights.Insights | None
    span: str  # what they cover, for people: "last 30 days"
    error: str | None = None  # why they could not be read
    analysis_failed: bool = False  # read, but their analysis failed


def _insight_panel(
    name: str,
) -> Callable[[InsightsView, Mapping[str, int], Mapping[str, int], str], Markup | None]:
    def panel(
        view: InsightsView, builder_ids: Mapping[str, int], index: Mapping[str, int], prefix: str
    ) -> Markup | None:
        found = view.insights
        rows = []
        if found is not None:
            rows = [
                r
                for r in (found.flaky_tests if name == "flaky" else found.regressions)
                if r.builder in builder_ids
            ]
        html = _INSIGHTS.render(
            panel=name,
            pending=found is None and view.error is None,
            error=view.error,
            analysis_failed=view.analysis_failed,
            rows=rows[:INSIGHT_ROWS],
            span=view.span,
            ids=builder_ids,
            index=index,
            prefix=prefix,
        )
        return Markup(html)  # noqa: S704 - rendered by the autoescaping environment

    return panel


#: the rows a panel shows at most (the CLI's JSON has them all)
INSIGHT_ROWS = 20
#: the panels below the windows: "Flaky tests" and "Slower builds and steps", each called with the
#: insights, the builder ids the user may see, their slots and the link prefix
INSIGHT_PANELS: list[Callable[[InsightsView, Mapping[str, int], Mapping[str, int], str], Markup | None]] = [
    _insight_panel("flaky"),
    _insight_panel("shifts"),
]


def window_starts(now_ns: int) -> dict[str, int | None]:
    """Each window's start (ns since the epoch; None: all points), by key."""
    return {w.key: None if w.seconds is None else now_ns - w.seconds * 10**9 for w in WINDOWS}


def _duration_text(seconds: float) -> str:
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = round(seconds / length)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{max(1, round(seconds))} s"


class TrendChart:
    """Build duration p50 and p95 per time bucket of a window: the scales the template draws it with."""

    WIDTH, HEIGHT = 400, 150
    LEFT, RIGHT, TOP, BOTTOM = 52, 12, 10, 34
    PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    BASE = TOP + PLOT_H
    BUCKETS = 24

    def __init__(self, samples: list[DurationSample], start_ns: int, end_ns: int) -> None:
        self.t0, self.t1 = start_ns, max(end_ns, start_ns + 1)
        width = (self.t1 - self.t0) / self.BUCKETS
        #: how long a bucket is, for people
        self.bucket = _duration_text(width / 1e9)
        buckets: dict[int, list[float]] = {}
        for s in samples:
            index = min(self.BUCKETS - 1, max(0, int((s.time_ns - self.t0) / width)))
            buckets.setdefault(index, []).append(s.duration)
        #: (bucket middle ns, p50, p95, builds) of each bucket with builds
        self.points: list[tuple[int, float, float, int]] = []
        for index in sorted(buckets):
            values = sorted(buckets[index])
            middle = int(self.t0 + (index + 0.5) * width)
            self.points.append(
                (middle, nearest_rank(values, 50) or 0.0, nearest_rank(values, 95) or 0.0, len(values))
            )
        self.y_max = nice_max(max((p95 for _, _, p95, _ in self.points), default=0.0))

    def x(self, t: int) -> float:
        return self.LEFT + (t - self.t0) / (self.t1 - self.t0) * self.PLOT_W

    def y(self, v: float) -> float:
        return self.TOP + self.PLOT_H - v / self.y_max * self.PLOT_H

    def grid(self) -> list[float]:
        return [self.y_max * i / 2 for i in range(3)]


class BuilderDurations(NamedTuple):
    """What the page shows of one builder's build durations in one window."""

    trend: TrendChart
    last: DurationSample  # the latest build with a duration
    slowest: DurationSample
    values: array.array  # every duration, for the overall percentiles (one object, not one per build)


class WindowFigures(NamedTuple):
    """One window's figures as the page keeps them between requests (few objects: no per-build records)."""

    summary: Summary  # its ``durations`` left out
    durations: dict[str, BuilderDurations]


def prepare(summaries: Mapping[str, Summary], computed_ns: int) -> dict[str, WindowFigures]:
    """The figures of :func:`~buildbot_stats.ui.figures.summarize_windows` (computed at ``computed_ns``)
    reduced to what the page shows, by window key."""
    prepared = {}
    for window in WINDOWS:
        summary = summaries[window.key]
        durations = {}
        for name, samples in summary.durations.items():
            if not samples:
                continue
            start = computed_ns - window.seconds * 10**9 if window.seconds is not None else samples[0].time_ns
            durations[name] = BuilderDurations(
                trend=TrendChart(samples, start, computed_ns),
                last=samples[-1],
                slowest=max(samples, key=lambda s: s.duration),
                values=array.array("d", (s.duration for s in samples)),
            )
        prepared[window.key] = WindowFigures(dataclasses.replace(summary, durations={}), durations)
    return prepared


class BuilderView(NamedTuple):
    slot: int  # its CSS class and radio id: bbs-b-<slot>
    id: int  # Buildbot's builderid
    figures: BuilderSummary
    trend: TrendChart | None
    last: DurationSample | None
    slowest: DurationSample | None


def _visible_only(summary: Summary, builder_ids: Mapping[str, int]) -> Summary:
    """The summary of only the builders in ``builder_ids`` (those the user may see)."""
    return dataclasses.replace(
        summary,
        builders=[b for b in summary.builders if b.builder in builder_ids],
        steps=[s for s in summary.steps if s.builder in builder_ids],
        tests=[t for t in summary.tests if t.builder in builder_ids],
    )


def _overall(summary: Summary, durations: Mapping[str, BuilderDurations]) -> dict[str, Any]:
    builds = sum(b.builds for b in summary.builders)
    known = sum(b.results_known for b in summary.builders)
    successes = sum(b.successes for b in summary.builders)
    values = sorted(
        v for b in summary.builders if b.builder in durations for v in durations[b.builder].values
    )
    return {
        "builds": builds,
        "success_rate": successes / known if known else None,
        "duration_p50": nearest_rank(values, 50),
        "duration_p95": nearest_rank(values, 95),
    }


def _window_view(
    window: Window, figures: WindowFigures, builder_ids: Mapping[str, int], index: Mapping[str, int]
) -> dict[str, Any]:
    summary = _visible_only(figures.summary, builder_ids)
    builders = []
    for b in summary.builders:
        found = figures.durations.get(b.builder)
        builders.append(
            BuilderView(
                slot=index[b.builder],
                id=builder_ids[b.builder],
                figures=b,
                trend=found.trend if found else None,
                last=found.last if found else None,
                slowest=found.slowest if found else None,
            )
        )
    return {
        "window": window,
        "summary": summary,
        "overall": _overall(summary, figures.durations),
        "builders": builders,
        "success": success_chart(summary),
        "queue": queue_chart(summary),
        "steps": steps_chart(summary),
        "slowest_steps": summary.steps[:STEPS_SHOWN],
        "tests": tests_chart(summary),
        "index": index,
        "ids": builder_ids,
    }


_ENV = environment()
_PAGE = _ENV.get_template("page.html.j2")
_MESSAGE = _ENV.get_template("message.html.j2")
_INSIGHTS = _ENV.get_template("insights.html.j2")


def render_page(
    figures: Mapping[str, WindowFigures],
    builder_ids: Mapping[str, int],
    *,
    computed_ns: int,
    window: str | None = None,
    builder: str | None = None,
    standalone: bool = False,
    link_prefix: str = "",
    insights: InsightsView | None = None,
    live: LiveSnapshot | None = None,
) -> str:
    """The page: the figures of :func:`prepare` by window key (computed at ``computed_ns``),
    only the builders of ``builder_ids`` (name -> Buildbot builderid).  ``window`` and
    ``builder`` preselect the controls; ``standalone`` makes a whole HTML document;
    ``link_prefix`` goes before the links into the UI (``#/builders/...``); ``insights``
    adds the :data:`INSIGHT_PANELS` below the windows; ``live`` the live state above them."""
    names = sorted(builder_ids)
    index = {name: i for i, name in enumerate(names)}
    panels = []
    if insights is not None:
        found = (panel(insights, builder_ids, index, link_prefix) for panel in INSIGHT_PANELS)
        panels = [p for p in found if p is not None]
    return _PAGE.render(
        live=None if live is None else _live_view(live, builder_ids, index),
        insight_panels=panels,
        windows=[_window_view(w, figures[w.key], builder_ids, index) for w in WINDOWS],
        checked_window=window if window in {w.key for w in WINDOWS} else WINDOWS[0].key,
        checked_builder=index.get(builder or ""),
        builder_names=[(index[name], name) for name in names],
        computed=format_time(computed_ns, "%Y-%m-%d %H:%M UTC"),
        immutable=any(f.summary.immutable for f in figures.values()),
        standalone=standalone,
        prefix=link_prefix,
        line_color=LINE_COLOR,
        p95_color=RESULT_COLORS[2][1],
    ).lstrip()


def _live_view(
    live: LiveSnapshot, builder_ids: Mapping[str, int], index: Mapping[str, int]
) -> dict[str, Any]:
    """Workers now, and (slot, builderid, name, BuilderLive) of each builder the user may see."""
    rows = [(index[n], builder_ids[n], n, b) for n, b in sorted(live.builders.items()) if n in builder_ids]
    return {"connected": live.workers_connected, "busy": live.workers_busy, "rows": rows}


def render_message(title: str, text: str, *, standalone: bool = False) -> str:
    """A page that says only why there are no statistics (no store, no access, busy...)."""
    return _MESSAGE.render(title=title, text=text, standalone=standalone).lstrip()
