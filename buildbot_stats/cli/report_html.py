"""A self-contained HTML page for a :class:`~buildbot_stats.cli.summary.Summary`.

Everything is inline: CSS in a ``<style>`` element, charts as inline SVG, no
script, no font, no image, no link.  A Content-Security-Policy meta element
forbids every network load anyway.  Chart elements carry their data so that
tests (and people reading the source) can check them:

* per builder, a duration-over-time chart (``svg.duration-chart``) with one
  ``<circle class="point" data-builder=... data-build=... data-time=... data-value=...>``
  per build;
* one success-rate chart (``svg.success-chart``) with one
  ``<rect class="bar" data-builder=... data-value=...>`` per builder that has
  results (``data-value`` is the fraction 0..1).
"""

from __future__ import annotations

import datetime
import html
import math

from buildbot_stats.cli.summary import (
    BUILDER_HEADERS,
    SERIES_HEADERS,
    DurationSample,
    Summary,
    builder_rows,
    format_number,
    format_rate,
    series_rows,
)

__all__ = ["CSP", "render_html"]

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

POINT_COLOR = "#d62728"
LINE_COLOR = "#1f77b4"
BAR_COLOR = "#2ca02c"

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
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


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
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        seconds=ns // 1_000_000_000
    )
    return moment.strftime("%Y-%m-%d %H:%M")


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
        f'<svg class="chart duration-chart" data-builder="{_e(builder)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="build duration of {_e(builder)}">'
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
        parts.append(
            f'<circle class="point" data-builder="{_e(builder)}" data-build="{_e(s.build_number)}" '
            f'data-time="{s.time_ns}" data-value="{s.duration!r}" cx="{_num(x(s.time_ns))}" '
            f'cy="{_num(y(s.duration))}" r="4" fill="{POINT_COLOR}">'
            f"<title>build {_e(s.build_number)}: {_e(format_number(s.duration))} at {_e(when)}</title>"
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
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end"><title>{_e(b.builder)}</title>'
            f"{_e(_label(b.builder))}</text>"
            f'<rect class="track" x="{label_w}" y="{y + 3}" width="{track_w}" height="{row_h - 8}"/>'
        )
        if b.success_rate is None:
            parts.append(f'<text x="{label_w + 6}" y="{y + 16}">no results</text>')
            continue
        parts.append(
            f'<rect class="bar" data-builder="{_e(b.builder)}" data-value="{b.success_rate!r}" x="{label_w}" '
            f'y="{y + 3}" width="{_num(b.success_rate * track_w)}" height="{row_h - 8}" fill="{BAR_COLOR}">'
            f"<title>{_e(b.builder)}: {_e(format_rate(b.success_rate))}</title></rect>"
            f'<text x="{label_w + track_w + 6}" y="{y + 16}">'
            f"{_e(format_rate(b.success_rate))} ({b.successes}/{b.results_known})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: list[str], rows: list[list[str]], text_columns: set[int]) -> str:
    def cell(tag: str, i: int, value: str) -> str:
        cls = ' class="text"' if i in text_columns else ""
        return f"<{tag}{cls}>{_e(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
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
                figures.append(f"<figure><figcaption>{_e(b.builder)}</figcaption>{chart}</figure>")
            else:
                figures.append(f'<p class="empty">{_e(b.builder)}: no build durations recorded.</p>')
        sections.append(_section("durations", "Build duration over time", "".join(figures)))
        sections.append(_section("builders", "Builders", _table(BUILDER_HEADERS, builder_rows(summary), {0})))
    else:
        sections.append(_section("builders", "Builders", '<p class="empty">No build data.</p>'))
    if summary.series:
        table = _table(SERIES_HEADERS, series_rows(summary), {0, 2})
    else:
        table = '<p class="empty">No data series.</p>'
    sections.append(_section("series", "Data series", table))
    head = (
        '<meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style>"
    )
    intro = (
        "<h1>Build statistics</h1>"
        f'<p class="meta">Store {_e(summary.path)} \u00b7 {summary.points} points</p>'
    )
    body = "\n".join([intro, *sections])
    return f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head>\n<body>{body}\n</body></html>\n'


def _section(ident: str, heading: str, content: str) -> str:
    return f'<section id="{ident}"><h2>{_e(heading)}</h2>{content}</section>'
