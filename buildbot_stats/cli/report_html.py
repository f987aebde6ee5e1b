"""A self-contained HTML page for a :class:`~buildbot_stats.cli.summary.Summary`.

The page is the Jinja2 template ``templates/report.html.j2``, rendered with
autoescape on; this module gives it the figures (bars, scales, colours) and
the filters it formats them with.  Everything is inline: CSS in a ``<style>``
element, charts as inline SVG, no script, no font, no image, no link.  A
Content-Security-Policy meta element forbids every network load anyway.
Chart elements carry their data so that tests (and people reading the source)
can check them:

* per builder, a duration-over-time chart (``svg.duration-chart``) with one
  ``<circle class="point" data-builder=... data-build=... data-time=... data-value=...
  data-result=...>`` per build, filled with the colour of the build's result
  (:data:`RESULT_COLORS`; ``data-result`` is the result's name or ``unknown``),
  under a legend with one swatch per result shown;
* one success-rate chart (``svg.success-chart``) with one
  ``<rect class="bar" data-builder=... data-value=...>`` per builder that has
  results (``data-value`` is the fraction 0..1);
* with queue times, a chart (``svg.queue-chart``) with two
  ``<rect class="queue-bar" data-builder=... data-percentile="50|95" data-value=...>``
  per builder that has one (seconds);
* with step times, a chart (``svg.steps-chart``) of the ten slowest steps, each
  a ``<rect class="step-p95" ...>`` and a ``<rect class="step-p50" ...>`` with
  ``data-builder``, ``data-step`` and ``data-value`` (seconds);
* with test results, a chart (``svg.tests-chart``) with one
  ``<rect class="tests-bar" data-builder=... data-value=...>`` per builder that
  has a pass rate (the fraction 0..1).

Names are shown through :func:`~buildbot_stats.cli.output.visible` (control
and bidi characters escaped) and HTML-escaped by Jinja2.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jinja2
from markupsafe import Markup

from buildbot_stats.cli.output import format_number, format_rate, format_time, visible
from buildbot_stats.cli.summary import (
    DurationSample,
    Summary,
    builder_table,
    series_table,
    step_table,
    test_table,
)

__all__ = ["CSP", "RESULT_COLORS", "render_html"]

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

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


def _result(code: int | None) -> tuple[str, str]:
    """(name, colour) of a Buildbot result code."""
    return RESULT_COLORS.get(code, RESULT_COLORS[None])


def _num(value: float) -> str:
    """A coordinate: at most two decimals."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _nice_max(value: float) -> float:
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
        self.y_max = _nice_max(max(s.duration for s in samples))
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
    scale = _nice_max(max((p95 for _, _, p95, _, _ in known), default=0.0))
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


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("buildbot_stats.cli", "templates"),
        autoescape=True,  # every value, whatever the template's name
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(
        visible=visible,
        num=_num,
        number=format_number,
        result=_result,
        minute=lambda ns: format_time(ns, "%Y-%m-%d %H:%M"),
    )
    return env


_TEMPLATE = _environment().get_template("report.html.j2")


def render_html(summary: Summary, title: str | None = None) -> str:
    """The whole page, as text (UTF-8 when written)."""
    samples = [s for found in summary.durations.values() for s in found]
    shown = {_result(s.results)[0] for s in samples}
    return _TEMPLATE.render(
        summary=summary,
        title=title or f"buildbot-stats: {summary.path}",
        csp=Markup(CSP),  # ours, and quoted as it is
        line_color=LINE_COLOR,
        legend=[(name, color) for name, color in RESULT_COLORS.values() if name in shown],
        durations=[
            (
                b.builder,
                DurationChart(b.builder, found) if (found := summary.durations.get(b.builder)) else None,
            )
            for b in summary.builders
        ],
        success=success_chart(summary),
        queue=queue_chart(summary),
        steps=steps_chart(summary),
        tests=tests_chart(summary),
        builder_table=builder_table(summary),
        step_table=step_table(summary),
        test_table=test_table(summary),
        series_table=series_table(summary),
    )
