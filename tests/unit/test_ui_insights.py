"""The Statistics page's insights panels: from the master's own database, in the background, per user."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest

from buildbot_stats.insights import analyse
from buildbot_stats.insights.database import History
from buildbot_stats.ui.app import FiguresCache, StatsPage, compute_insights, master_database
from buildbot_stats.ui.figures import summarize_windows
from buildbot_stats.ui.page import InsightsView, prepare, render_page
from tests.insights_data import planted_history, write_sqlite
from tests.summary_data import write_store
from tests.unit.test_ui_app import RestApi, get
from tests.unit.test_ui_page import build_points


def _insights() -> object:
    p = planted_history(2, revisions=80)
    return analyse(History(p.builds, p.steps, p.sets, p.rows, len(p.rows), 40))


def _page(view: InsightsView, builder_ids: dict[str, int], tmp_path) -> str:
    store = write_store(tmp_path / "s.sqlite", build_points("linux", 1, 1, 10.0))
    from buildbot_stats.ui.page import window_starts
    from buildbot_stats.ui.store import open_store

    now = time.time_ns()
    with open_store(str(store)) as s:
        figures = prepare(summarize_windows(s, window_starts(now)), now)
    return render_page(figures, builder_ids, computed_ns=now, insights=view)


def test_panels_list_findings_with_links_to_builds_for_visible_builders_only(tmp_path) -> None:
    found = _insights()
    body = _page(InsightsView(found, "last 30 days"), {"linux": 4}, tmp_path)
    assert "Flaky tests (last 30 days)" in body and "Slower builds and steps (last 30 days)" in body
    linux_flaky = [t for t in found.flaky_tests if t.builder == "linux"]
    assert linux_flaky and all(t.test in body for t in linux_flaky)
    assert f'href="#/builders/4/builds/{linux_flaky[0].last_failure_build}"' in body
    shift = next(r for r in found.regressions if r.builder == "linux")
    assert f'href="#/builders/4/builds/{shift.build_number}"' in body
    assert ">windows</a>" not in body  # a builder this user may not see


class Tree(HTMLParser):
    """Every element as (tag, attributes, its parent's index, its text), in document order."""

    VOID = {"input", "br", "img", "meta", "link", "hr"}

    def __init__(self, html: str) -> None:
        super().__init__()
        self.nodes: list[list] = []
        self.stack: list[int] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.nodes.append([tag, {k: v or "" for k, v in attrs}, self.stack[-1] if self.stack else -1, ""])
        if tag not in self.VOID:
            self.stack.append(len(self.nodes) - 1)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack:
            self.nodes[self.stack[-1]][3] += data

    def inside(self, index: int, tag: str) -> dict | None:
        """The attributes of the nearest ``tag`` element around node ``index``."""
        while index >= 0:
            if self.nodes[index][0] == tag:
                return self.nodes[index][1]
            index = self.nodes[index][2]
        return None


def test_builder_filter_hides_other_builders_rows_in_the_panels(tmp_path) -> None:
    body = _page(InsightsView(_insights(), "last 30 days"), {"linux": 4, "windows": 5}, tmp_path)
    tree = Tree(body)
    radios = [i for i, (_, a, _, _) in enumerate(tree.nodes) if a.get("name") == "bbs-builder"]
    panels = [i for i, (_, a, _, _) in enumerate(tree.nodes) if "bbs-insights" in a.get("class", "").split()]
    assert len(panels) == 2 and radios
    # a `#radio:checked ~ .bbs-insights` rule reaches a panel only if it follows the radios in their parent
    assert all(tree.nodes[p][2] == tree.nodes[radios[0]][2] and p > radios[-1] for p in panels)
    slots = {"linux": "0", "windows": "1"}  # the radios' slots: the builders sorted
    rows = {}
    for i, (tag, attrs, _, _) in enumerate(tree.nodes):
        if tag == "tr" and tree.inside(i, "section") in [tree.nodes[p][1] for p in panels]:
            if "bbs-builder" in attrs.get("class", "").split():
                builder = next(n[3] for n in tree.nodes[i + 1 :] if n[0] == "a")
                rows.setdefault(builder, set()).update(attrs["class"].split())
    assert set(rows) == {"linux", "windows"}
    assert all(f"bbs-b-{slots[b]}" in classes for b, classes in rows.items())
    css = "".join(re.findall(r"<style>(.*?)</style>", body, re.S))
    for slot in slots.values():
        rule = f".bbs-stats #bbs-b-{slot}:checked ~ .bbs-insights .bbs-builder:not(.bbs-b-{slot})"
        assert re.search(re.escape(rule) + r"[^{]*\{ display: none; \}", css), rule


def test_every_builder_the_page_names_links_to_its_page(tmp_path) -> None:
    ids = {"linux": 4, "windows": 5}
    tree = Tree(_page(InsightsView(_insights(), "last 30 days"), ids, tmp_path))
    named = {}
    for i, (tag, _, _, text) in enumerate(tree.nodes):
        # the builder filter's labels are controls; a bar chart's label (SVG text) links too
        if text.strip() in ids and tag != "label":
            link = tree.inside(i, "a")
            assert link is not None and link["href"] == f"#/builders/{ids[text.strip()]}", (tag, text)
            named.setdefault(text.strip(), set()).add(tree.inside(i, "figcaption") is not None)
    # both builders in the panels; linux also in the windows' tables and under its trend charts
    assert named == {"linux": {True, False}, "windows": {False}}


def test_panels_say_when_the_history_is_being_read_or_cannot_be(tmp_path) -> None:
    assert "being read: reload in a moment" in _page(
        InsightsView(None, "last 30 days"), {"linux": 1}, tmp_path
    )
    body = _page(InsightsView(None, "last 30 days", "OperationalError: x"), {"linux": 1}, tmp_path)
    assert "cannot be read" in body and "OperationalError" not in body


def test_page_computes_insights_from_the_masters_database_in_the_background(tmp_path) -> None:
    planted = planted_history(5, revisions=80)
    write_sqlite(str(tmp_path / "state.sqlite"), planted, now=int(time.time()))
    master = SimpleNamespace(
        basedir=str(tmp_path),
        db=SimpleNamespace(configured_db_config=SimpleNamespace(db_url="sqlite:///state.sqlite")),
    )
    assert master_database(master) == ("sqlite:///state.sqlite", str(tmp_path))
    store = write_store(tmp_path / "stats.sqlite", build_points("linux", 1, 1, 10.0))
    computed = []

    def compute(database):
        computed.append(database)
        return compute_insights(database)

    page = StatsPage(str(store), lambda: master, insights=FiguresCache(compute=compute))
    api = RestApi([{"builderid": 1, "name": "linux"}], status=200)
    try:
        status, body = get(page, api.port)
        assert (
            status == "200 OK" and "being read: reload in a moment" in body
        )  # never computed in the request
        deadline = time.monotonic() + 30
        while "revisions with both" not in body and time.monotonic() < deadline:
            time.sleep(0.1)
            status, body = get(page, api.port)
    finally:
        api.close()
    assert "revisions with both" in body
    flaky_linux = {n for (b, n) in planted.flaky if b == "linux"}
    assert any(name in body for name in flaky_linux)
    assert computed == [("sqlite:///state.sqlite", str(tmp_path))]  # cached: computed once


def test_a_master_without_a_database_url_shows_no_panels(tmp_path) -> None:
    assert master_database(SimpleNamespace()) is None
    store = write_store(tmp_path / "stats.sqlite", build_points("linux", 1, 1, 10.0))
    api = RestApi([{"builderid": 1, "name": "linux"}], status=200)
    try:
        _, body = get(StatsPage(str(store), lambda: None), api.port)
    finally:
        api.close()
    assert "Flaky tests" not in body


@pytest.mark.parametrize("url", ["sqlite:///missing.sqlite", "sqlite://"])
def test_an_unreadable_database_is_an_error_entry_not_an_exception(tmp_path, url) -> None:
    entry = compute_insights((url, str(tmp_path)))
    assert entry.insights is None and entry.error
    assert not (tmp_path / "missing.sqlite").exists()


def test_a_failed_analysis_is_not_an_unreadable_database(tmp_path, monkeypatch) -> None:
    import buildbot_stats.insights

    write_sqlite(str(tmp_path / "state.sqlite"), planted_history(1, revisions=10), now=int(time.time()))

    def broken(history):
        raise ValueError("no median for empty data")

    monkeypatch.setattr(buildbot_stats.insights, "analyse", broken)
    entry = compute_insights(("sqlite:///state.sqlite", str(tmp_path)))
    assert entry.insights is None and entry.analysis_failed and "no median" in (entry.error or "")
    body = _page(
        InsightsView(None, "last 30 days", entry.error, entry.analysis_failed), {"linux": 1}, tmp_path
    )
    assert "analysis of the history" in body and "cannot be read" not in body


def test_no_cycle_collection_while_insights_are_computed(tmp_path, monkeypatch) -> None:
    # a full collection over millions of rows held the GIL, and so the reactor, for 50-150 ms
    import gc

    import buildbot_stats.insights

    write_sqlite(str(tmp_path / "state.sqlite"), planted_history(1, revisions=10), now=int(time.time()))
    during = []

    def analyse_noting(history):
        during.append(gc.isenabled())
        if len(during) == 2:
            raise ValueError("no median for empty data")
        return analyse(history)

    monkeypatch.setattr(buildbot_stats.insights, "analyse", analyse_noting)
    assert gc.isenabled()
    assert compute_insights(("sqlite:///state.sqlite", str(tmp_path))).insights is not None
    assert compute_insights(("sqlite:///state.sqlite", str(tmp_path))).analysis_failed
    assert during == [False, False] and gc.isenabled()
