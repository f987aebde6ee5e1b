"""``buildbot-stats summary``: the figures of :mod:`buildbot_stats.ui.figures` as text tables and JSON.

The figures themselves (and the rules they follow) are computed in
:mod:`buildbot_stats.ui.figures`, shared with the web UI's Statistics page.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from buildbot_stats.cli.output import Table, format_number, format_rate, table_lines, visible
from buildbot_stats.ui.figures import (
    BUILD_RESULTS_SUFFIX,
    BUILD_TIMES_SUFFIX,
    PROPERTY_FIELDS,
    STEP_TIMES_SUFFIX,
    TEST_RESULTS_SUFFIX,
    BuilderSummary,
    DurationSample,
    FieldSummary,
    SeriesSummary,
    StepSummary,
    StoreError,
    Summary,
    TestSummary,
    nearest_rank,
    summarize,
    summarize_path,
    summarize_points,
)

__all__ = [
    "BUILD_RESULTS_SUFFIX",
    "BUILD_TIMES_SUFFIX",
    "PROPERTY_FIELDS",
    "STEP_TIMES_SUFFIX",
    "TEST_RESULTS_SUFFIX",
    "BuilderSummary",
    "DurationSample",
    "FieldSummary",
    "SeriesSummary",
    "StepSummary",
    "StoreError",
    "Summary",
    "TestSummary",
    "builder_table",
    "format_table",
    "nearest_rank",
    "series_table",
    "step_table",
    "summarize",
    "summarize_path",
    "summarize_points",
    "test_table",
    "to_json",
]

#: the text table shows this many of the slowest steps (the JSON and HTML all)
TABLE_STEPS = 10
BUILDER_HEADERS = [
    "builder",
    "builds",
    "unsuccessful",
    "success",
    "dur p50 (s)",
    "dur p95 (s)",
    "dur max (s)",
    "last build",
]
QUEUE_HEADERS = ["queue p50 (s)", "queue p95 (s)"]


def builder_table(summary: Summary) -> Table:
    """The builders table (also in the HTML report); with queue times, their columns come before
    ``last build``."""
    headers = list(BUILDER_HEADERS)
    if summary.has_queue:
        headers[-1:-1] = QUEUE_HEADERS
    rows = []
    for b in summary.builders:
        row = [
            b.builder,
            str(b.builds),
            str(b.results_known - b.successes) if b.results_known else "-",
            format_rate(b.success_rate),
            format_number(b.duration_p50),
            format_number(b.duration_p95),
            format_number(b.duration_max),
        ]
        if summary.has_queue:
            row += [format_number(b.queue_p50), format_number(b.queue_p95)]
        rows.append([*row, b.last_build or "-"])
    return Table(headers, rows)


def step_table(summary: Summary, limit: int | None = None) -> Table:
    """The steps table, slowest first (by p95, then max), the first ``limit`` rows."""
    steps = summary.steps if limit is None else summary.steps[:limit]
    rows = [
        [
            s.builder,
            s.step,
            str(s.count),
            format_number(s.duration_p50),
            format_number(s.duration_p95),
            format_number(s.duration_max),
        ]
        for s in steps
    ]
    return Table(["builder", "step", "steps", "dur p50 (s)", "dur p95 (s)", "dur max (s)"], rows, (0, 1))


def test_table(summary: Summary) -> Table:
    """The tests table, per builder."""
    rows = [
        [
            t.builder,
            str(t.result_sets),
            format_number(t.tests_total),
            format_number(t.tests_passed),
            format_number(t.tests_failed),
            format_rate(t.pass_rate),
        ]
        for t in summary.tests
    ]
    return Table(["builder", "result sets", "tests", "passed", "failed", "pass rate"], rows)


test_table.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def series_table(summary: Summary) -> Table:
    """The data series table, one row per numeric field (a row with '-' if none)."""
    rows = []
    for s in summary.series:
        if not s.fields:
            rows.append([s.series, str(s.count), "-", "0", "-", "-", "-"])
        for name, f in s.fields.items():
            rows.append(
                [
                    s.series,
                    str(s.count),
                    name,
                    str(f.count),
                    format_number(f.min),
                    format_number(f.mean),
                    format_number(f.max),
                ]
            )
    return Table(["series", "points", "field", "n", "min", "mean", "max"], rows, (0, 2))


def format_table(summary: Summary, steps: int = TABLE_STEPS) -> str:
    """The summary as aligned text tables (the ``steps`` slowest steps; 0 for all)."""
    out = [f"Store: {visible(summary.path)} ({summary.points} points)", "", "Builders"]
    if summary.builders:
        out += table_lines(builder_table(summary))
    else:
        out.append("(no build data)")
    if summary.has_steps:
        shown = len(summary.steps) if steps <= 0 else min(steps, len(summary.steps))
        out += ["", f"Slowest steps (by p95; {shown} of {len(summary.steps)})"]
        if summary.steps:
            out += table_lines(step_table(summary, shown))
        else:
            out.append("(no step data)")
    if summary.has_tests:
        out += ["", "Tests", *table_lines(test_table(summary))]
    out += ["", "Data series"]
    if summary.series:
        out += table_lines(series_table(summary))
    else:
        out.append("(no data series)")
    return "\n".join(out) + "\n"


def to_json(summary: Summary) -> str:
    """The summary as JSON (without the chart samples); rates are fractions 0..1.

    ``steps`` and ``tests`` are there when the store has such series, the
    builders' ``queue_*`` keys when it has queue times.
    """
    builders = []
    for b in summary.builders:
        item = asdict(b)
        if not summary.has_queue:
            for key in ("queue_times", "queue_p50", "queue_p95"):
                del item[key]
        builders.append(item)
    data: dict[str, Any] = {
        "store": summary.path,
        "points": summary.points,
        "builders": builders,
        "series": [asdict(s) for s in summary.series],
    }
    if summary.has_steps:
        data["steps"] = [asdict(s) for s in summary.steps]
    if summary.has_tests:
        data["tests"] = [asdict(t) for t in summary.tests]
    return json.dumps(data, indent=2, allow_nan=False)
