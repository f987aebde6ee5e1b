"""A self-contained HTML page for a :class:`~buildbot_stats.cli.summary.Summary`.

Everything is inline: CSS in a ``<style>`` element, charts as inline SVG, no
script, no font, no image, no link.  A Content-Security-Policy meta element
forbids every network load anyway.  Chart elements carry their data so that
tests (and people reading the source) can check them:

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

Names are shown through :func:`~buildbot_stats.cli.summary.visible` (control
and bidi characters escaped) and HTML-escaped.
"""

from __future__ import annotations

import html
import math

from buildbot_stats.cli.output import Table, format_number, format_rate, format_time, visible
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
#: the colour of the dots before they were coloured by result (a failed build's)
POINT_COLOR = RESULT_COLORS[2][1]
STEPS_CHARTED = 10

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; }
p.meta { color: #666; margin: 0; }
table { border-collapse: collapse; margin: 4px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; }
td.text, th.text { text-align: left; }
figure { display: inline-block; margin: 0 16px 16px 0; vertical-align: top; }
figcaption { font-weight: 600; margin-bottom: 2px; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
.axis { stroke: #999; stroke-width: 1; }
.grid { stroke: #eee; stroke-width: 1; }
.track { fill: #eee; }
p.empty { color: #666; font-style: italic; }
p.legend { margin: 0 0 8px; }
.legend-item { margin-right: 12px; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _v(text: object, limit: int | None = 200) -> str:
    """A name from the store, with control and bidi characters escaped, cut, and HTML-escaped."""
    return _e(visible(str(text), limit))


def _d(text: object) -> str:
    """A name for a data attribute: escaped like :func:`_v`, cut at 1000 characters only."""
    return _v(text, 1000)


def _result(code: int | None) -> tuple[str, str]:
    return RESULT_COLORS.get(code, RESULT_COLORS[None])


def _num(value: float) -> str:
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


def _short_time(ns: int) -> str:
    return format_time(ns, "%Y-%m-%d %H:%M") or "-"


def _line(cls: str, x1: float, y1: float, x2: float, y2: float) -> str:
    return f'<line class="{cls}" x1="{_num(x1)}" y1="{_num(y1)}" x2="{_num(x2)}" y2="{_num(y2)}"/>'


def _text(x: float, y: float, text: str, anchor: str = "start") -> str:
    return f'<text x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}">{_e(text)}</text>'


def duration_chart(builder: str, samples: list[DurationSample]) -> str:
    """An SVG scatter/line chart of one builder's build durations over time."""
    width, height = 560, 220
    left, right, top, bottom = 56, 20, 12, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    y_max = _nice_max(max(s.duration for s in samples))
    t0, t1 = samples[0].time_ns, samples[-1].time_ns

    def x(t: int) -> float:
        return left + (plot_w / 2 if t1 == t0 else (t - t0) / (t1 - t0) * plot_w)

    def y(v: float) -> float:
        return top + plot_h - v / y_max * plot_h

    parts = [
        f'<svg class="chart duration-chart" data-builder="{_d(builder)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="build duration of {_v(builder)}">'
    ]
    for i in range(5):
        value = y_max * i / 4
        parts.append(_line("grid", left, y(value), width - right, y(value)))
        parts.append(_text(left - 6, y(value) + 4, format_number(value), "end"))
    parts.append(_line("axis", left, top, left, top + plot_h))
    parts.append(_line("axis", left, top + plot_h, width - right, top + plot_h))
    parts.append(_text(left, height - 20, _short_time(t0), "start"))
    parts.append(_text(width - right, height - 20, _short_time(t1), "end"))
    parts.append(_text(left + plot_w / 2, height - 4, "build end (UTC)", "middle"))
    if len(samples) > 1:
        coords = " ".join(f"{_num(x(s.time_ns))},{_num(y(s.duration))}" for s in samples)
        parts.append(
            f'<polyline class="line" points="{coords}" fill="none" stroke="{LINE_COLOR}" stroke-width="1.5"/>'
        )
    for s in samples:
        when = _short_time(s.time_ns)
        name, color = _result(s.results)
        parts.append(
            f'<circle class="point" data-builder="{_d(builder)}" data-build="{_d(s.build_number)}" '
            f'data-time="{s.time_ns}" data-value="{s.duration!r}" data-result="{name}" '
            f'cx="{_num(x(s.time_ns))}" cy="{_num(y(s.duration))}" r="4" fill="{color}">'
            f"<title>build {_v(s.build_number)}: {_e(format_number(s.duration))} at {_e(when)}, "
            f"{name}</title>"
            "</circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _label(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def success_chart(summary: Summary) -> str:
    """An SVG horizontal bar chart of the success rate per builder."""
    label_w, track_w, value_w, row_h = 210, 420, 130, 26
    width, height = label_w + track_w + value_w, row_h * len(summary.builders) + 8
    parts = [
        f'<svg class="chart success-chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="success rate per builder">'
    ]
    for i, b in enumerate(summary.builders):
        y = 4 + i * row_h
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end"><title>{_v(b.builder)}</title>'
            f"{_e(_label(visible(b.builder)))}</text>"
            f'<rect class="track" x="{label_w}" y="{y + 3}" width="{track_w}" height="{row_h - 8}"/>'
        )
        if b.success_rate is None:
            parts.append(f'<text x="{label_w + 6}" y="{y + 16}">no results</text>')
            continue
        parts.append(
            f'<rect class="bar" data-builder="{_d(b.builder)}" data-value="{b.success_rate!r}" x="{label_w}" '
            f'y="{y + 3}" width="{_num(b.success_rate * track_w)}" height="{row_h - 8}" fill="{BAR_COLOR}">'
            f"<title>{_v(b.builder)}: {_e(format_rate(b.success_rate))}</title></rect>"
            f'<text x="{label_w + track_w + 6}" y="{y + 16}">'
            f"{_e(format_rate(b.success_rate))} ({b.successes}/{b.results_known})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _legend(samples: list[DurationSample]) -> str:
    """One swatch per result that the dots show (an HTML paragraph, not part of any chart)."""
    shown = {_result(s.results)[0] for s in samples}
    items = [
        f'<span class="legend-item" data-result="{name}"><svg width="10" height="10" aria-hidden="true">'
        f'<rect class="swatch" width="10" height="10" fill="{color}"/></svg> {name}</span>'
        for name, color in RESULT_COLORS.values()
        if name in shown
    ]
    return f'<p class="legend">Dots by build result: {" ".join(items)}</p>' if items else ""


def _bars(
    cls: str,
    label: str,
    rows: list[tuple[str, list[tuple[str, float, str, dict[str, str]]], str]],
    scale: float,
    thickness: int = 18,
) -> str:
    """A horizontal bar chart: per row a label, bars drawn over each other from the left, a text.

    Each bar is (class, value, colour, data attributes); lengths are ``value / scale`` of the track.
    """
    label_w, track_w, value_w, row_h = 210, 420, 200, thickness + 8
    width, height = label_w + track_w + value_w, row_h * len(rows) + 8
    parts = [
        f'<svg class="chart {cls}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{_e(label)}">'
    ]
    for i, (name, bars, text) in enumerate(rows):
        y = 4 + i * row_h
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end"><title>{_v(name)}</title>'
            f"{_e(_label(visible(name)))}</text>"
            f'<rect class="track" x="{label_w}" y="{y + 3}" width="{track_w}" height="{thickness}"/>'
        )
        for bar_cls, value, color, data in bars:
            attrs = "".join(f' data-{k}="{_d(v)}"' for k, v in data.items())
            length = 0.0 if scale <= 0 else min(1.0, max(0.0, value / scale)) * track_w
            parts.append(
                f'<rect class="{bar_cls}"{attrs} data-value="{value!r}" x="{label_w}" y="{y + 3}" '
                f'width="{_num(length)}" height="{thickness}" fill="{color}"><title>{_v(name)}: '
                f"{_e(format_number(value))}</title></rect>"
            )
        parts.append(f'<text x="{label_w + track_w + 6}" y="{y + 16}">{_e(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def queue_chart(summary: Summary) -> str:
    """Queue time p50 (light) over p95 (dark) per builder that has queue times, in seconds."""
    rows = []
    for b in summary.builders:
        if b.queue_p50 is None or b.queue_p95 is None:
            continue
        data = {"builder": b.builder}
        bars = [
            ("queue-bar", b.queue_p95, QUEUE_P95_COLOR, {**data, "percentile": "95"}),
            ("queue-bar", b.queue_p50, QUEUE_P50_COLOR, {**data, "percentile": "50"}),
        ]
        rows.append(
            (b.builder, bars, f"p50 {format_number(b.queue_p50)} s, p95 {format_number(b.queue_p95)} s")
        )
    scale = _nice_max(max((b[1][0][1] for b in rows), default=0.0))
    return _bars("queue-chart", "queue time per builder", rows, scale)


def steps_chart(summary: Summary) -> str:
    """The slowest steps: p50 (light) over p95 (dark) duration, in seconds."""
    rows = []
    for st in summary.steps[:STEPS_CHARTED]:
        if st.duration_p50 is None or st.duration_p95 is None:
            continue
        data = {"builder": st.builder, "step": st.step}
        bars = [
            ("step-p95", st.duration_p95, STEP_P95_COLOR, data),
            ("step-p50", st.duration_p50, STEP_P50_COLOR, data),
        ]
        text = f"p50 {format_number(st.duration_p50)} s, p95 {format_number(st.duration_p95)} s"
        rows.append((f"{st.builder} / {st.step}", bars, text))
    scale = _nice_max(max((r[1][0][1] for r in rows), default=0.0))
    return _bars("steps-chart", "slowest steps", rows, scale)


def tests_chart(summary: Summary) -> str:
    """The test pass rate per builder that has one."""
    rows = [
        (
            t.builder,
            [("tests-bar", t.pass_rate, TESTS_COLOR, {"builder": t.builder})],
            f"{format_rate(t.pass_rate)} ({format_number(t.tests_passed)}/{format_number(t.tests_total)})",
        )
        for t in summary.tests
        if t.pass_rate is not None
    ]
    return _bars("tests-chart", "test pass rate per builder", rows, 1.0)


def _table(table: Table) -> str:
    def cell(tag: str, i: int, value: str) -> str:
        cls = ' class="text"' if i in table.left else ""
        return f"<{tag}{cls}>{_v(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(table.headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(summary: Summary, title: str | None = None) -> str:
    """The whole page, as text (UTF-8 when written)."""
    title = title or f"buildbot-stats: {summary.path}"
    sections = []
    if summary.builders:
        sections.append(_section("success", "Success rate per builder", success_chart(summary)))
        figures = []
        for b in summary.builders:
            samples = summary.durations.get(b.builder, [])
            if samples:
                chart = duration_chart(b.builder, samples)
                figures.append(f"<figure><figcaption>{_v(b.builder)}</figcaption>{chart}</figure>")
            else:
                figures.append(f'<p class="empty">{_v(b.builder)}: no build durations recorded.</p>')
        legend = _legend([s for samples in summary.durations.values() for s in samples])
        sections.append(_section("durations", "Build duration over time", legend + "".join(figures)))
        if any(b.queue_p50 is not None for b in summary.builders):
            sections.append(_section("queue", "Queue time per builder (s)", queue_chart(summary)))
        table = _table(builder_table(summary))
        sections.append(_section("builders", "Builders", table))
    else:
        sections.append(_section("builders", "Builders", '<p class="empty">No build data.</p>'))
    if summary.has_steps:
        if summary.steps:
            content = steps_chart(summary) + _table(step_table(summary))
        else:
            content = '<p class="empty">No step data.</p>'
        sections.append(_section("steps", "Slowest steps (by p95, s)", content))
    if summary.has_tests:
        content = tests_chart(summary) + _table(test_table(summary))
        sections.append(_section("tests", "Tests", content))
    if summary.series:
        table = _table(series_table(summary))
    else:
        table = '<p class="empty">No data series.</p>'
    sections.append(_section("series", "Data series", table))
    head = (
        '<meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_d(title)}</title><style>{_CSS}</style>"
    )
    intro = (
        "<h1>Build statistics</h1>"
        f'<p class="meta">Store {_d(summary.path)} \u00b7 {summary.points} points</p>'
    )
    body = "\n".join([intro, *sections])
    return f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head>\n<body>{body}\n</body></html>\n'


def _section(ident: str, heading: str, content: str) -> str:
    return f'<section id="{ident}"><h2>{_e(heading)}</h2>{content}</section>'
