"""The HTML report, offline: self-contained, escaped, every chart with its data (Chromium: tests/e2e)."""

from __future__ import annotations

import html.parser

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


class _Texts(html.parser.HTMLParser):
    """The text of every element, by tag (entities decoded, as a browser shows it)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.texts: dict[str, list[str]] = {}

    def handle_starttag(self, tag, attrs):
        self.open.append(tag)

    def handle_endtag(self, tag):
        self.open.pop()

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_data(self, data):
        if self.open:
            self.texts.setdefault(self.open[-1], []).append(data)


def test_hostile_builder_step_and_field_names_are_text_not_markup():
    """Markup, quotes and ``&`` in names come back from the page as the names themselves."""
    evil = "<script>alert(\"x\")</script> & 'q' <b>"
    tags = {"builder_name": evil, "build_number": evil}
    points = [
        Point(f"{evil}-build-times", {"duration": 2.0, "queue-time": 1.0}, tags, 10**18),
        Point(f"{evil}-build-results", {"results": 0}, tags, 10**18),
        Point(f"{evil}-step-times", {"duration": 1.0}, {"builder_name": evil, "step_name": evil}, 10**18),
        Point(f"{evil}-test-results", {"tests_total": 2, "tests_passed": 1}, {"builder_name": evil}, 10**18),
        Point(f"data {evil}", {evil: 1.5}, {}, 10**18),
    ]
    page = render_html(summarize_points(points, path=evil))
    check_static(page)  # among others: no <script anywhere
    assert "<b>" not in page and "& '" not in page
    found = elements(page)
    assert not [tag for tag, _ in found if tag in ("script", "b")]
    # attributes: a quote in a name would end the attribute early
    for attribute in ("data-builder", "data-build", "data-step"):
        values = {a[attribute] for _, a in found if attribute in a}
        assert values == {evil}, attribute
    texts = _Texts()
    texts.feed(page)
    assert texts.texts["title"][0] == f"buildbot-stats: {evil}"
    cells = texts.texts["td"]
    assert cells.count(evil) == 1 + 2 + 1 + 1  # builders; steps (builder, step); tests; the series' field
    assert f"data {evil}" in cells
    assert f"build {evil}: 2 at 2001-09-09 01:46, success" in texts.texts["title"]
