"""The HTML report, offline: self-contained, escaped, every chart with its data (Chromium: tests/e2e)."""

from __future__ import annotations

from buildbot_stats.cli.report_html import RESULT_COLORS, render_html
from buildbot_stats.cli.summary import Summary, summarize_path, summarize_points
from buildbot_stats.point import Point
from tests.summary_data import (
    BASE,
    BUILDER_ROWS,
    DURATION_RESULTS,
    DURATIONS,
    STEP_ROWS_ALL,
    DomCollector,
    build,
    check_static,
    run_cli,
    table_section,
)


def elements(page):
    collector = DomCollector()
    collector.feed(page)
    return collector.elements


def test_html_is_self_contained_and_escaped(store, tmp_path, capsys):
    target = tmp_path / "report.html"
    code, out, err = run_cli(capsys, "summary", store, "--html", str(target))
    assert code == 0
    assert table_section(out, "Builders")[1] == BUILDER_ROWS  # stdout still has the table
    assert "HTML report written to" in err
    page = target.read_text(encoding="utf-8")
    check_static(page)
    assert "win&amp;&lt;x&gt;" in page and "win&<x>" not in page


def test_render_html_without_results_or_durations():
    points = build("only-results", 1, BASE, None, 0) + build("only-times", 1, BASE, 3.0, None)
    summary = summarize_points(points)
    assert isinstance(summary, Summary)
    page = render_html(summary)
    check_static(page)
    assert page.count('class="bar"') == 1 and page.count('class="point"') == 1
    assert "only-results: no build durations recorded." in page
    assert ">no results<" in page


def test_full_page_has_every_new_chart_with_its_data(full_store):
    page = render_html(summarize_path(full_store))
    check_static(page)
    found = elements(page)
    # the build duration dots, coloured by the build's result
    dots: dict[str, list[tuple[float, str, str]]] = {}
    for tag, a in found:
        if tag == "circle" and a.get("class") == "point":
            dots.setdefault(a["data-builder"], []).append(
                (float(a["data-value"]), a["data-result"], a["fill"])
            )
    expected = {
        builder: [(v, *RESULT_COLORS[r]) for v, r in zip(DURATIONS[builder], DURATION_RESULTS[builder])]
        for builder in DURATIONS
    }
    assert dots == expected
    legend = [a["data-result"] for tag, a in found if a.get("class") == "legend-item"]
    assert legend == ["success", "warnings", "failure", "unknown"]
    # queue time: p50 and p95 per builder with queue times (seconds)
    queue = {
        (a["data-builder"], a["data-percentile"]): float(a["data-value"])
        for tag, a in found
        if a.get("class") == "queue-bar"
    }
    assert queue == {("linux", "50"): 5, ("linux", "95"): 9, ("win&<x>", "50"): 30, ("win&<x>", "95"): 60}
    # the ten slowest steps with a duration, slowest first
    p95 = [
        (a["data-builder"], a["data-step"], float(a["data-value"]))
        for t, a in found
        if a.get("class") == "step-p95"
    ]
    assert p95 == [(r[0], r[1], float(r[4])) for r in STEP_ROWS_ALL[:10]]
    p50 = [float(a["data-value"]) for t, a in found if a.get("class") == "step-p50"]
    assert p50 == [float(r[3]) for r in STEP_ROWS_ALL[:10]]
    tests = {a["data-builder"]: float(a["data-value"]) for t, a in found if a.get("class") == "tests-bar"}
    assert tests == {"linux": 0.94, "win&<x>": 0.0}
    assert [t for t, _ in found].count("table") == 4  # builders, steps, tests, data series
    assert "queue p50 (s)" in page and "dur p95 (s)" in page


def test_names_are_escaped_in_the_page():
    evil = "b\x1b]0;x\x07<script>\u202e"
    page = render_html(
        summarize_points([Point(f"{evil}-build-times", {"duration": 1.0}, {"builder_name": evil}, 10**18)])
    )
    check_static(page)
    assert "\x1b" not in page and "\u202e" not in page and "<script>" not in page
    assert "b\\x1b]0;x\\x07&lt;script&gt;\\u202e" in page


def test_very_long_names_are_cut_in_the_page():
    name = "n" * 100_000
    points = [
        Point(
            f"{name}-build-times",
            {"duration": float(i + 1)},
            {"builder_name": name, "build_number": str(i)},
            i + 1,
        )
        for i in range(10)
    ]
    page = render_html(summarize_points(points))
    check_static(page)
    assert len(page) < 40_000, len(page)
    assert "n" * 199 + "\u2026" in page
