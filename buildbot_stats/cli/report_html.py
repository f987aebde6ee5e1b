"""A self-contained HTML page for a :class:`~buildbot_stats.ui.figures.Summary`.

The page is the Jinja2 template ``templates/report.html.j2``, rendered with
autoescape on; its charts (figures, colours and the macros that draw them)
come from :mod:`buildbot_stats.ui.charts`, shared with the web UI's page.
Everything is inline: CSS in a ``<style>`` element, charts as inline SVG, no
script, no font, no image, no link.  A
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

import jinja2
from markupsafe import Markup

from buildbot_stats.cli.summary import Summary, builder_table, series_table, step_table, test_table
from buildbot_stats.ui.charts import (
    BAR_COLOR,
    LINE_COLOR,
    QUEUE_P50_COLOR,
    QUEUE_P95_COLOR,
    RESULT_COLORS,
    STEP_P50_COLOR,
    STEP_P95_COLOR,
    TESTS_COLOR,
    DurationChart,
    environment,
    queue_chart,
    result_name,
    steps_chart,
    success_chart,
    tests_chart,
)

__all__ = [
    "BAR_COLOR",
    "CSP",
    "QUEUE_P50_COLOR",
    "QUEUE_P95_COLOR",
    "RESULT_COLORS",
    "STEP_P50_COLOR",
    "STEP_P95_COLOR",
    "TESTS_COLOR",
    "render_html",
]

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

_TEMPLATE = environment(jinja2.PackageLoader("buildbot_stats.cli", "templates")).get_template(
    "report.html.j2"
)


def render_html(summary: Summary, title: str | None = None) -> str:
    """The whole page, as text (UTF-8 when written)."""
    samples = [s for found in summary.durations.values() for s in found]
    shown = {result_name(s.results)[0] for s in samples}
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
