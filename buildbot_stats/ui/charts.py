"""The charts of the HTML report and of the web UI's Statistics page: inline SVG, no script.

The figures (bars, scales, colours) are computed here; ``templates/charts.html.j2``
draws them (Jinja2 macros, autoescaped).  :func:`environment` makes the Jinja2
environment both pages render with, with the filters the macros use.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jinja2

from buildbot_stats.ui.figures import DurationSample, Summary
from buildbot_stats.ui.formatting import format_number, format_rate, format_time, visible

__all__ = [
    "RESULT_COLORS",
    "BarChart",
    "DurationChart",
    "environment",
    "nice_max",
    "result_name",
    "queue_chart",
    "steps_chart",
    "success_chart",
    "tests_chart",
]

LINE_COLOR = "#1f77b4"
BAR_COLOR = "#2ca02c"
QUEUE_P50_COLOR = "#9ecae1"
QUEUE_P95_COLOR = "#3182bd"
STEP_P95_COLOR = "#e6550d"
STEP_P50_COLOR = "#fdae6b"
TESTS_COLOR = "#31a354"
#: dot colours of the duration chart by Buildbot result code; None: no result known
RESULT_COLORS: dict[int | None, tuple[str, str]] = {
    0: ("success", "#1b9e77"),
    1: ("warnings", "#e6ab02"),
    2: ("failure", "#d62728"),
    3: ("skipped", "#a6761d"),
    4: ("exception", "#7570b3"),
    5: ("retry", "#e7298a"),
    6: ("cancelled", "#8c564b"),
    None: ("unknown", "#17becf"),
}
STEPS_CHARTED = 10


def result_name(code: int | None) -> tuple[str, str]:
    """(name, colour) of a Buildbot result code."""
    return RESULT_COLORS.get(code, RESULT_COLORS[None])


def _num(value: float) -> str:
    """A coordinate: at most two decimals."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def nice_max(value: float) -> float:
    """The smallest 1/2/5 x 10^k not below ``value`` (1 for 0)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover


class DurationChart:
    """One builder's build durations over time: the scales the template draws it with."""

    WIDTH, HEIGHT = 560, 220
    LEFT, RIGHT, TOP, BOTTOM = 56, 20, 12, 40
    PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    BASE = TOP + PLOT_H  # the y of the time axis

    def __init__(self, builder: str, samples: list[DurationSample]) -> None:
        self.builder = builder
        self.samples = samples
        self.y_max = nice_max(max(s.duration for s in samples))
        self.t0, self.t1 = samples[0].time_ns, samples[-1].time_ns

    def x(self, t: int) -> float:
        if self.t1 == self.t0:
            return self.LEFT + self.PLOT_W / 2
        return self.LEFT + (t - self.t0) / (self.t1 - self.t0) * self.PLOT_W

    def y(self, v: float) -> float:
        return self.TOP + self.PLOT_H - v / self.y_max * self.PLOT_H

    def grid(self) -> list[float]:
        """The values of the five horizontal grid lines, 0 to the top."""
        return [self.y_max * i / 4 for i in range(5)]


class Bar(NamedTuple):
    cls: str
    value: float
    fraction: float  # of the track, 0..1
    color: str
    data: dict[str, str]  # data-* attributes
    title: str  # the value in the tooltip


class BarRow(NamedTuple):
    name: str
    bars: list[Bar]  # drawn over each other from the left
    text: str  # right of the track; inside it when the row has no bar


class BarChart(NamedTuple):
    cls: str
    label: str
    rows: list[BarRow]
    value_width: int = 200  # room for the text right of the track


def _bar(cls: str, value: float, scale: float, color: str, data: dict[str, str]) -> Bar:
    fraction = 0.0 if scale <= 0 else min(1.0, max(0.0, value / scale))
    return Bar(cls, value, fraction, color, data, format_number(value))


def success_chart(summary: Summary) -> BarChart:
    """The success rate per builder ("no results" for a builder without)."""
    rows = []
    for b in summary.builders:
        rate = b.success_rate
        if rate is None:
            rows.append(BarRow(b.builder, [], "no results"))
            continue
        bar = Bar("bar", rate, rate, BAR_COLOR, {"builder": b.builder}, format_rate(rate))
        rows.append(BarRow(b.builder, [bar], f"{format_rate(rate)} ({b.successes}/{b.results_known})"))
    return BarChart("success-chart", "success rate per builder", rows, value_width=130)


#: a bar of a p50-over-p95 chart: class, colour, data attributes
_BarStyle = tuple[str, str, dict[str, str]]


def _p50_over_p95(
    cls: str, label: str, items: list[tuple[str, float | None, float | None, _BarStyle, _BarStyle]]
) -> BarChart:
    """Per item that has both, p50 (light) drawn over p95 (dark), in seconds, on a common scale."""
    known = []
    for name, p50, p95, p95_style, p50_style in items:
        if p50 is not None and p95 is not None:
            known.append((name, p50, p95, p95_style, p50_style))
    scale = nice_max(max((p95 for _, _, p95, _, _ in known), default=0.0))
    rows = []
    for name, p50, p95, (cls95, color95, data95), (cls50, color50, data50) in known:
        bars = [_bar(cls95, p95, scale, color95, data95), _bar(cls50, p50, scale, color50, data50)]
        rows.append(BarRow(name, bars, f"p50 {format_number(p50)} s, p95 {format_number(p95)} s"))
    return BarChart(cls, label, rows)


def queue_chart(summary: Summary) -> BarChart:
    """Queue time per builder that has queue times."""
    items = [
        (
            b.builder,
            b.queue_p50,
            b.queue_p95,
            ("queue-bar", QUEUE_P95_COLOR, {"builder": b.builder, "percentile": "95"}),
            ("queue-bar", QUEUE_P50_COLOR, {"builder": b.builder, "percentile": "50"}),
        )
        for b in summary.builders
    ]
    return _p50_over_p95("queue-chart", "queue time per builder", items)


def steps_chart(summary: Summary) -> BarChart:
    """The durations of the slowest steps."""
    items = [
        (
            f"{s.builder} / {s.step}",
            s.duration_p50,
            s.duration_p95,
            ("step-p95", STEP_P95_COLOR, {"builder": s.builder, "step": s.step}),
            ("step-p50", STEP_P50_COLOR, {"builder": s.builder, "step": s.step}),
        )
        for s in summary.steps[:STEPS_CHARTED]
    ]
    return _p50_over_p95("steps-chart", "slowest steps", items)


def tests_chart(summary: Summary) -> BarChart:
    """The test pass rate per builder that has one."""
    rows = [
        BarRow(
            t.builder,
            [_bar("tests-bar", t.pass_rate, 1.0, TESTS_COLOR, {"builder": t.builder})],
            f"{format_rate(t.pass_rate)} ({format_number(t.tests_passed)}/{format_number(t.tests_total)})",
        )
        for t in summary.tests
        if t.pass_rate is not None
    ]
    return BarChart("tests-chart", "test pass rate per builder", rows)


def environment(*loaders: jinja2.BaseLoader) -> jinja2.Environment:
    """Jinja2 with autoescape, finding templates through ``loaders`` and then this package's own."""
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([*loaders, jinja2.PackageLoader("buildbot_stats.ui", "templates")]),
        autoescape=True,  # every value, whatever the template's name
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(
        visible=visible,
        num=_num,
        number=format_number,
        rate=format_rate,
        result=result_name,
        minute=lambda ns: format_time(ns, "%Y-%m-%d %H:%M"),
    )
    return env
