"""The Statistics page's WSGI app: access through the REST API, the store it reads, errors, load limits.

Buildbot's REST API is stood in for by a small HTTP server on loopback that
answers ``/api/v2/builders`` the way Buildbot does (the builders, or 403 when
authz refuses); tests/e2e/test_ui_chromium.py runs the page in a real master.
"""

from __future__ import annotations

import http.server
import json
import re
import sqlite3
import threading
import time
from types import SimpleNamespace

import pytest
from twisted.python import log

from buildbot_stats.stats_service import StatsService
from buildbot_stats.storage_backends.sqlite import SQLiteStorageService
from buildbot_stats.ui import app as app_module
from buildbot_stats.ui.app import FiguresCache, StatsPage, compute_figures, master_store
from tests.summary_data import write_store
from tests.unit.test_ui_page import build_points


class RestApi:
    """``/api/v2/builders`` on 127.0.0.1: ``builders`` for a request with ``cookie``, else ``status``."""

    def __init__(self, builders, cookie="session=admin", status=403):
        self.builders, self.cookie, self.status = builders, cookie, status
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Cookie")))
                allowed = outer.status == 200 or self.headers.get("Cookie") == outer.cookie
                body = json.dumps({"builders": outer.builders, "meta": {}}).encode() if allowed else b"{}"
                self.send_response(200 if allowed else outer.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api():
    server = RestApi([{"builderid": 3, "name": "linux"}, {"builderid": 8, "name": "<script>"}])
    yield server
    server.close()


@pytest.fixture
def store(tmp_path):
    return write_store(
        tmp_path / "stats.sqlite",
        build_points("linux", 1, 1, 10.0) + build_points("secret-builder", 2, 1, 5.0),
    )


@pytest.fixture
def log_lines():
    lines = []

    def observer(event):
        lines.extend(str(m) for m in event.get("message", ()))

    log.addObserver(observer)
    yield lines
    log.removeObserver(observer)


HEADERS: dict[str, str] = {}  # of the last answer of get()


def get(page, port, cookie=None, inside=True, query=""):
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/index.html",
        "QUERY_STRING": query,
        "SERVER_PORT": str(port),
        # what Chromium sends for the UI's XHR, and for a page opened in a tab
        "HTTP_SEC_FETCH_DEST": "empty" if inside else "document",
    }
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    answer = {}

    def start_response(status, headers):
        answer["status"], answer["headers"] = status, dict(headers)

    body = b"".join(page(environ, start_response)).decode("utf-8")
    HEADERS.clear()
    HEADERS.update(answer["headers"])
    return answer["status"], body


def test_user_sees_only_the_builders_the_api_returns(api, store):
    page = StatsPage(store, lambda: None)
    status, body = get(page, api.port, cookie="session=admin")
    assert status == "200 OK"
    assert 'href="#/builders/3/builds/1"' in body
    assert "secret-builder" not in body  # in the store, but not returned by the API
    assert api.requests[-1] == ("/api/v2/builders?field=builderid&field=name", "session=admin")


def test_refused_user_gets_a_message_inside_the_ui_and_403_on_the_bare_url(api, store):
    page = StatsPage(store, lambda: None)
    status, body = get(page, api.port)
    assert status == "200 OK"  # the UI would spin forever on an error status
    assert 'data-message="refused"' in body and "linux" not in body
    status, body = get(page, api.port, inside=False)
    assert status == "403 Forbidden"
    assert body.startswith("<!DOCTYPE html>") and "linux" not in body


def test_bare_url_is_a_document_with_links_into_the_ui(api, store):
    status, body = get(
        StatsPage(store, lambda: None), api.port, cookie="session=admin", inside=False, query="window=7d"
    )
    assert status == "200 OK" and body.startswith("<!DOCTYPE html>")
    assert 'href="../../../#/builders/3/builds/1"' in body
    assert 'id="bbs-w-7d" checked' in body
    assert HEADERS["Content-Type"] == "text/html; charset=utf-8"
    assert HEADERS["Content-Security-Policy"].startswith("default-src 'none';")


def test_unreachable_api_is_a_message_and_one_log_line(store, log_lines):
    server = RestApi([])
    port = server.port
    server.close()  # nothing listens there now
    page = StatsPage(store, lambda: None)
    for _ in range(2):
        status, body = get(page, port)
        assert status == "200 OK" and 'data-message="access-unknown"' in body
    assert len([line for line in log_lines if "Statistics page" in line]) == 1


def test_master_without_a_sqlite_store_gets_a_message(api):
    master = SimpleNamespace(basedir="/nonexistent", service_manager=SimpleNamespace(namedServices={}))
    status, body = get(StatsPage(None, lambda: master), api.port, cookie="session=admin")
    assert status == "200 OK"
    assert 'data-message="no-store"' in body and "SQLiteStorageService" in body


def test_the_store_of_the_masters_stats_service_is_found(tmp_path):
    backends = [SQLiteStorageService("stats/stats.sqlite", [])]
    service = StatsService(storage_backends=backends)
    service.registeredStorageServices = backends  # as reconfigService sets them in a running master
    master = SimpleNamespace(
        basedir=str(tmp_path), service_manager=SimpleNamespace(namedServices={"s": service})
    )
    assert master_store(master) == str(tmp_path / "stats/stats.sqlite")
    # an explicit store= wins, relative to the basedir too
    assert StatsPage("other.sqlite", lambda: master).store_path() == str(tmp_path / "other.sqlite")


@pytest.mark.parametrize("content", [None, b"not a database at all" * 100])
def test_missing_or_corrupt_store_is_a_message_and_one_log_line(api, tmp_path, log_lines, content):
    path = tmp_path / "stats.sqlite"
    if content is not None:
        path.write_bytes(content)
    page = StatsPage(str(path), lambda: None)
    for _ in range(3):
        status, body = get(page, api.port, cookie="session=admin")
        assert status == "200 OK" and 'data-message="store-error"' in body
        assert "The statistics store cannot be read" in body
        assert "Traceback" not in body and str(tmp_path) not in body  # the path stays on the server
    lines = [line for line in log_lines if "Statistics page" in line]
    assert len(lines) == 1 and str(path) in lines[0]


def test_a_locked_store_is_a_message_within_about_a_second(api, store, log_lines):
    writer = sqlite3.connect(str(store), isolation_level=None)
    writer.execute("PRAGMA journal_mode=DELETE")
    writer.execute("BEGIN EXCLUSIVE")  # a writer holding the lock readers need
    try:
        start = time.monotonic()
        status, body = get(StatsPage(str(store), lambda: None), api.port, cookie="session=admin")
        took = time.monotonic() - start
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert status == "200 OK" and 'data-message="store-error"' in body and str(store) not in body
    assert app_module.STORE_BUSY_TIMEOUT <= took < app_module.STORE_BUSY_TIMEOUT + 2  # not 10 s
    lines = [line for line in log_lines if "Statistics page" in line]
    assert len(lines) == 1 and str(store) in lines[0] and "locked" in lines[0]


def test_at_most_two_renders_at_once(api, store, monkeypatch):
    monkeypatch.setattr(app_module, "RENDER_WAIT", 0.05)
    page = StatsPage(store, lambda: None)
    taken = [app_module._RENDERS.acquire(timeout=1) for _ in range(app_module.MAX_RENDERS)]
    try:
        assert all(taken)
        status, body = get(page, api.port, cookie="session=admin", inside=False)
        assert status == "503 Service Unavailable" and 'data-message="busy"' in body
    finally:
        for _ in taken:
            app_module._RENDERS.release()
    status, body = get(page, api.port, cookie="session=admin")
    assert status == "200 OK" and "linux" in body


def test_figures_are_cached_then_refreshed_in_the_background(store):
    calls = []

    def compute(path):
        calls.append(path)
        return compute_figures(path)._replace(took=0.0)

    cache = FiguresCache(fresh=0.2, compute=compute)
    first = cache.get(store)
    assert cache.get(store) is first and len(calls) == 1
    time.sleep(0.3)
    assert cache.get(store) is first  # stale: answered at once, computed again meanwhile
    deadline = time.monotonic() + 10
    while cache.get(store) is first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(calls) == 2 and cache.get(store) is not first


def test_figures_that_took_long_are_kept_longer(store):
    calls = []

    def compute(path):
        calls.append(path)
        return compute_figures(path)._replace(took=0.1)  # kept for 10 x 0.1 s

    cache = FiguresCache(fresh=0.2, compute=compute)
    first = cache.get(store)
    time.sleep(0.4)
    assert cache.get(store) is first and len(calls) == 1  # 0.4 s: older than fresh, younger than 1 s
    time.sleep(0.8)
    assert cache.get(store) is first  # stale now: answered at once, computed again meanwhile
    deadline = time.monotonic() + 10
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(calls) == 2


def test_live_state_is_shown_when_the_service_keeps_it_and_the_page_is_unchanged_without(
    api, store, log_lines
):
    from buildbot_stats.capture.live import BuilderLive, LiveSnapshot

    service = StatsService(storage_backends=[])
    master = SimpleNamespace(
        basedir="/nonexistent", service_manager=SimpleNamespace(namedServices={"s": service})
    )
    current = {"master": None}
    page = StatsPage(str(store), lambda: current["master"])
    _, without_service = get(page, api.port, cookie="session=admin")
    assert "bbs-live" not in without_service.split("</style>", 1)[1]

    current["master"] = master
    service.live_snapshot = lambda: None  # live state off: no backend asked for it
    _, live_off = get(page, api.port, cookie="session=admin")
    assert live_off == without_service

    snapshot = LiveSnapshot(
        workers_connected=4,
        workers_busy=3,
        builders={
            "linux": BuilderLive(requests_pending=5, oldest_pending_seconds=312.5, builds_running=2,
                                 longest_running_seconds=1800.25),
            "<script>": BuilderLive(),
            "secret-builder": BuilderLive(requests_pending=9),
        },
        worker_builds_running={"w1": 2, "w2": 1},
    )  # fmt: skip
    service.live_snapshot = lambda: snapshot
    _, live_on = get(page, api.port, cookie="session=admin")
    section = re.search(r'<section class="bbs-live">.*?</section>\n', live_on, re.S)
    assert section is not None
    html = section.group(0)
    assert '<span data-live="connected">4</span> connected, <span data-live="busy">3</span> busy' in html
    assert '<span data-live="utilisation">75' in html
    rows = re.findall(r'<tr class="bbs-builder bbs-b-(\d+)" data-builder="([^"]*)">(.*?)</tr>', html)
    cells = {name: re.findall(r"<td>([^<]*)</td>", rest) for _, name, rest in rows}
    # only the builders the REST API lets this user see; every figure as the snapshot says
    assert cells == {"&lt;script&gt;": ["0", "0", "0", "0"], "linux": ["5", "312.5", "2", "1800.25"]}
    assert 'href="#/builders/3">linux</a>' in html
    assert "secret-builder" not in live_on
    # the live section is the only difference
    assert live_on.replace(html, "") == without_service

    # a service whose live state cannot be read: the figures still, and one log line
    def broken():
        raise RuntimeError("boom")

    service.live_snapshot = broken
    _, failed = get(page, api.port, cookie="session=admin")
    get(page, api.port, cookie="session=admin")
    assert failed == without_service
    assert [line for line in log_lines if "live state" in line] == [
        "buildbot_stats: Statistics page: cannot read the live state: RuntimeError: boom"
    ]
