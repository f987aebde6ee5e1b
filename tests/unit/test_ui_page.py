"""The Statistics page of the web UI: the one-line config, the HTML it renders, the figures per window."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest
from buildbot.config.errors import ConfigErrors, capture_config_errors

from buildbot_stats import statistics
from buildbot_stats.point import Point
from buildbot_stats.ui.dashboard import StatsPageApp
from buildbot_stats.ui.figures import summarize, summarize_windows
from buildbot_stats.ui.page import WINDOWS, prepare, render_message, render_page, window_starts
from buildbot_stats.ui.store import open_store
from tests.summary_data import make_full_points, write_store

HOUR_NS = 3600 * 10**9
NOW = time.time_ns()


class Elements(HTMLParser):
    """(tag, attributes, text) of every element, the text up to the next tag."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str], str]] = []
        self.open = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, {k: v or "" for k, v in attrs}, ""))
        self.open = True

    def handle_endtag(self, tag):
        self.open = False

    def handle_data(self, data):
        if self.found and self.open:
            tag, attrs, text = self.found[-1]
            self.found[-1] = (tag, attrs, text + data)

    def all(self, tag, cls=None):
        return [
            (a, t)
            for g, a, t in self.found
            if g == tag and (cls is None or cls in a.get("class", "").split())
        ]


def build_points(builder, number, hours_ago, duration, results=0, queue=None):
    t = NOW - int(hours_ago * HOUR_NS)
    tags = {"builder_name": builder, "build_number": number}
    fields = {"duration": duration}
    if queue is not None:
        fields["queue-time"] = queue
    return [
        Point(f"{builder}-build-times", fields, tags, t),
        Point(f"{builder}-build-results", {"results": results}, tags, t),
    ]


COMPILE = {"builder_name": "linux", "step_name": "compile"}


@pytest.fixture
def recent_store(tmp_path):
    """linux: 3 builds in the last day, 1 three days ago; <script>: 1 build an hour ago; steps, tests."""
    points = [
        *build_points("linux", 1, 72, 100.0, results=2),
        *build_points("linux", 2, 10, 20.0, queue=4.0),
        *build_points("linux", 3, 5, 30.0, queue=2.0),
        *build_points("linux", 4, 1, 40.0, results=2, queue=6.0),
        *build_points("<script>", 7, 1, 5.0),
        Point(
            "linux-step-times",
            {"duration": 12.5},
            {"builder_name": "linux", "step_name": "compile"},
            NOW - HOUR_NS,
        ),
        Point(
            "linux-step-times",
            {"duration": 99.0},
            {"builder_name": "linux", "step_name": "compile"},
            NOW - 72 * HOUR_NS,
        ),
        Point(
            "linux-test-results",
            {"tests_total": 10, "tests_passed": 9, "tests_failed": 1},
            {"builder_name": "linux"},
            NOW - HOUR_NS,
        ),
    ]
    return write_store(tmp_path / "stats.sqlite", points)


def summaries_of(path):
    with open_store(path) as store:
        return summarize_windows(store, window_starts(NOW))


def windows_of(path):
    return prepare(summaries_of(path), NOW)


def section(html, window):
    return html[
        html.index(f'data-window="{window}"') : html.index(
            "</section>", html.index(f'data-window="{window}"')
        )
    ]


# -- the one line of master.cfg ------------------------------------------------


def test_dashboard_dict_has_what_wsgi_dashboards_takes():
    entry = statistics.StatsDashboard()
    assert {k: v for k, v in entry.items() if k != "app"} == {
        "name": "stats",
        "caption": "Statistics",
        "order": 5,
        "icon": "FaChartBar",
    }
    assert isinstance(entry["app"], StatsPageApp) and callable(entry["app"])
    custom = statistics.StatsDashboard(name="ci", caption="CI figures", order=2, store="/secret/path.sqlite")
    assert (custom["name"], custom["caption"], custom["order"]) == ("ci", "CI figures", 2)
    # Buildbot sends c['www'] to browsers: the app shows as its class, never the store path
    assert "/secret" not in repr(custom) and "/secret" not in repr(custom["app"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "name must be"),
        ({"name": "a/b"}, "name must be"),
        ({"caption": ""}, "caption must be"),
        ({"store": ""}, "store must be a path"),
        ({"order": "1"}, "order must be an int"),
    ],
)
def test_dashboard_config_mistakes_are_config_errors(kwargs, message):
    with pytest.raises(ConfigErrors) as caught, capture_config_errors(raise_on_error=True):
        statistics.StatsDashboard(**kwargs)
    assert message in str(caught.value)


def test_importing_statistics_loads_no_page_code():
    # only StatsDashboard's light module of the page's room, never the page, the CLI or the web UI
    code = (
        "import sys\n"
        "from buildbot_stats import statistics\n"
        "statistics.StatsDashboard()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('buildbot_stats.ui', 'buildbot_stats.cli', "
        "'buildbot_www', 'buildbot_wsgi_dashboards', 'jinja2'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['buildbot_stats.ui', 'buildbot_stats.ui.dashboard']"


# -- figures per window ----------------------------------------------------------


def test_windows_count_the_builds_of_their_time(recent_store):
    found = summaries_of(recent_store)
    assert set(found) == {w.key for w in WINDOWS}
    builds = {key: {b.builder: b.builds for b in s.builders} for key, s in found.items()}
    assert builds["24h"] == {"<script>": 1, "linux": 3}
    assert builds["7d"] == builds["30d"] == builds["all"] == {"<script>": 1, "linux": 4}
    linux = {key: next(b for b in s.builders if b.builder == "linux") for key, s in found.items()}
    assert linux["24h"].success_rate == pytest.approx(2 / 3)
    assert (linux["24h"].duration_p50, linux["24h"].duration_p95) == (30.0, 40.0)
    assert (linux["all"].duration_p50, linux["all"].duration_p95) == (30.0, 100.0)
    assert (linux["24h"].queue_p50, linux["24h"].queue_p95) == (4.0, 6.0)
    # steps and tests by their own point times
    assert [(s.step, s.duration_max) for s in found["24h"].steps] == [("compile", 12.5)]
    assert [(s.step, s.duration_max) for s in found["7d"].steps] == [("compile", 99.0)]
    assert [(t.builder, t.tests_total) for t in found["24h"].tests] == [("linux", 10)]


def test_all_window_agrees_with_the_summary(tmp_path):
    path = write_store(tmp_path / "full.sqlite", make_full_points())
    with open_store(path) as store:
        whole = summarize(store)
        windows = summarize_windows(store, {"all": None})
    assert windows["all"].builders == whole.builders
    assert windows["all"].steps == whole.steps
    assert windows["all"].tests == whole.tests


# -- the page ----------------------------------------------------------------------


def test_page_shows_each_builder_with_links_units_and_escaped_names(recent_store):
    html = render_page(windows_of(recent_store), {"linux": 3, "<script>": 8}, computed_ns=NOW)
    assert "<script" not in html and "&lt;script&gt;" in html
    day = Elements(section(html, "24h"))
    rows = {
        a["data-builder"]: int(a["data-builds"])
        for a, _ in day.all("tr", "bbs-builder")
        if "data-builds" in a
    }
    assert rows == {"<script>": 1, "linux": 3}
    links = {a["href"]: text for a, text in day.all("a")}
    assert links["#/builders/3"] == "linux"
    assert links["#/builders/8"] == "<script>"
    assert links["#/builders/3/builds/4"] == "#4"  # the latest build of linux
    assert links["#/builders/8/builds/7"] == "#7"
    assert len(day.all("svg", "trend-chart")) == 2
    assert len(day.all("svg", "success-chart")) == 1
    headers = [t for _, t in day.all("th")]
    assert "duration p95 (s)" in headers and "queue p50 (s)" in headers and "success rate" in headers
    # all four windows are in the page, the first one checked
    checked = [a["id"] for a, _ in Elements(html).all("input") if "checked" in a]
    assert checked == ["bbs-w-24h", "bbs-b-all"]


def test_page_shows_only_the_builders_the_user_may_see(recent_store):
    html = render_page(windows_of(recent_store), {"linux": 3}, computed_ns=NOW)
    assert "script" not in html.replace("<script", "")  # neither the name nor its escaped form
    page = Elements(html)
    assert {a["data-builder"] for a, _ in page.all("tr", "bbs-builder") if "data-builder" in a} == {"linux"}
    nothing = render_page(windows_of(recent_store), {}, computed_ns=NOW)
    assert "linux" not in nothing and nothing.count("No builds in this window.") == 4


def test_every_css_rule_is_scoped_under_the_root_class(recent_store):
    for html in (
        render_page(windows_of(recent_store), {"linux": 3, "<script>": 8}, computed_ns=NOW),
        render_message("no-store", "text"),
    ):
        css = "\n".join(re.findall(r"<style>(.*?)</style>", html, re.S))
        selectors = [s.strip() for rule in re.findall(r"([^{}]+)\{[^}]*\}", css) for s in rule.split(",")]
        assert selectors
        assert all(s == ".bbs-stats" or s.startswith(".bbs-stats ") for s in selectors), selectors
        assert "<script" not in html


def test_a_missing_capture_is_named(tmp_path):
    path = write_store(tmp_path / "bare.sqlite", build_points("linux", 1, 1, 10.0))
    html = render_page(windows_of(path), {"linux": 1}, computed_ns=NOW)
    day = section(html, "24h")
    assert "add CaptureBuildQueueTimeAllBuilders()" in day
    assert "add CaptureStepDurationAllBuilders()" in day
    assert "add CaptureTestResultsAllBuilders()" in day
    assert "CaptureBuildDurationAllBuilders" not in day and "CaptureBuildResultsAllBuilders" not in day


def test_standalone_page_takes_window_and_builder_and_links_into_the_ui(recent_store):
    html = render_page(
        windows_of(recent_store),
        {"linux": 3, "<script>": 8},
        computed_ns=NOW,
        window="7d",
        builder="linux",
        standalone=True,
        link_prefix="../../../",
    )
    assert html.startswith("<!DOCTYPE html>")
    page = Elements(html)
    checked = [a["id"] for a, _ in page.all("input") if "checked" in a]
    assert checked == ["bbs-w-7d", "bbs-b-1"]  # builders sorted: <script> 0, linux 1
    assert "../../../#/builders/3/builds/4" in {a["href"] for a, _ in page.all("a")}


def test_the_live_series_is_not_listed_as_a_data_series(tmp_path):
    """``buildbot-live`` points (issue 21) are the "Now" figures, not values a step posted."""
    points = [
        *build_points("linux", 1, 1, 10.0),
        Point("buildbot-live", {"workers_connected": 2, "workers_busy": 1}, {}, NOW - HOUR_NS),
        Point("buildbot-live", {"requests_pending": 3}, {"builder_name": "linux"}, NOW - HOUR_NS),
        Point("coverage", {"percent": 81.5}, {"builder_name": "linux"}, NOW - HOUR_NS),
    ]
    path = write_store(tmp_path / "live.sqlite", points)
    with open_store(path) as store:
        whole = summarize(store)
    assert [s.series for s in whole.series] == ["coverage"]
    assert [b.builder for b in whole.builders] == ["linux"]


def test_the_old_module_of_stats_dashboard_still_gives_it():
    from buildbot_stats import web_page

    assert web_page.StatsDashboard is statistics.StatsDashboard
