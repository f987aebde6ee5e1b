"""The Statistics page in a real master's web UI, seen in a real Chromium, with real auth and authz.

A master with LocalWorkers, the web UI on a free loopback port (buildbot-www and
buildbot-wsgi-dashboards), a StatsService with the SQLite store and
``statistics.StatsDashboard()``; its authz refuses anonymous users everything.
Chromium (the Debian package) is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: no port, no extra package).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from buildbot_stats.cli.master_process import RealMaster, free_port, make_master_cfg
from buildbot_stats.ui.figures import summarize
from buildbot_stats.ui.store import StoreError, open_store

for _module in ("buildbot_www", "buildbot_wsgi_dashboards"):
    if importlib.util.find_spec(_module) is None:
        if os.environ.get("CI") == "true":  # CI installs .[test], which brings them
            raise RuntimeError(f"{_module} is required on CI (pip install '.[ui]')")
        pytest.skip(f"needs {_module} (pip install '.[ui]')", allow_module_level=True)

BUILDERS = {
    "linux": "[steps.ShellCommand(command=['true'])]",
    "win": "[steps.ShellCommand(command=['false'])]",
}
CHANGES = 3
ADMIN = ("admin", "admin-pw")

SERVICES = """
captures = [
    statistics.CaptureBuildDurationAllBuilders(),
    statistics.CaptureBuildResultsAllBuilders(),
    statistics.CaptureBuildQueueTimeAllBuilders(),
    statistics.CaptureStepDurationAllBuilders(),
]
c['services'].append(
    statistics.StatsService(storage_backends=[statistics.SQLiteStorageService('stats.sqlite', captures)])
)
c['www'] = {
    'port': 'tcp:@PORT@:interface=127.0.0.1',
    'plugins': {'wsgi_dashboards': [statistics.StatsDashboard()]},
    'auth': util.UserPasswordAuth({@USER@: @PASSWORD@}),
    'authz': util.Authz(
        allowRules=[util.AnyEndpointMatcher(role='admins', defaultDeny=True)],
        roleMatchers=[util.RolesFromUsername(roles=['admins'], usernames=[@USER@])],
    ),
}
"""


def chromium_binary() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required on CI")
        pytest.skip("chromium not installed")
    return path


class Chromium:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (fd 3: commands in, fd 4: answers out)."""

    def __init__(self, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds() -> None:  # in the child: the pipe ends at the fds Chromium reads and writes
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [
                chromium_binary(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            preexec_fn=fds,
            close_fds=False,  # else 3 and 4 are closed after preexec_fn (os.pipe's fds are not inherited)
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._id = 0
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)[
            "sessionId"
        ]
        self.page("Page.enable")
        self.page("Network.enable")
        self.page(
            "Emulation.setDeviceMetricsOverride", width=1280, height=1000, deviceScaleFactor=1, mobile=False
        )

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._id:
                    assert "error" not in answer, (method, answer["error"])
                    return answer["result"]
            chunk = os.read(self._from_browser, 1 << 20)
            assert chunk, "chromium closed the pipe"
            self._buffer += chunk
        raise AssertionError(f"no answer to {method}")

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self.send(method, self.session, **params)

    def evaluate(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self._to_browser)
        os.close(self._from_browser)


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=60) as response:
            return response.status, response.read().decode("utf-8"), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace"), dict(e.headers)


def wait_for_store(path: Path, builds: dict[str, int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    found: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            with open_store(path) as store:
                found = {b.builder: b.builds for b in summarize(store, charts=False).builders}
            if found == builds:
                return
        except StoreError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"store has {found}, not {builds}")


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    basedir = tmp_path_factory.mktemp("ui") / "master"
    port = free_port()
    services = (
        SERVICES.replace("@PORT@", str(port))
        .replace("@USER@", repr(ADMIN[0]))
        .replace("@PASSWORD@", repr(ADMIN[1]))
    )
    m = RealMaster(
        basedir,
        make_master_cfg(
            BUILDERS, pb_port=free_port(), header="from buildbot_stats import statistics", services=services
        ),
    )
    m.www_port = port
    try:
        m.create()
        m.start()
        m.sendchange(CHANGES)
        m.wait_for_builds(CHANGES * len(BUILDERS))
        wait_for_store(basedir / "stats.sqlite", {"linux": CHANGES, "win": CHANGES})
        yield m
    finally:
        m.close()
    assert not m.tracebacks(), m.tracebacks()


def login_cookie(port: int) -> str:
    """The session cookie of the admin, from Buildbot's own login (HTTP basic auth on /auth/login)."""
    token = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/auth/login", headers={"Authorization": f"Basic {token}"}
    )
    try:
        response = opener.open(request, timeout=60)
        headers = response.headers
    except urllib.error.HTTPError as e:  # the redirect back to the UI
        headers = e.headers
    cookies = headers.get_all("Set-Cookie") or []
    assert cookies, dict(headers)
    return cookies[-1].split(";", 1)[0]  # the session after the login


def test_anonymous_user_sees_no_statistics_and_the_admin_sees_all(master):
    page = f"http://127.0.0.1:{master.www_port}/plugins/wsgi_dashboards/stats/index.html"
    inside = {"Accept": "application/json, text/plain, */*", "Sec-Fetch-Dest": "empty"}
    # the UI refuses anonymous users: so does the page (200 with a message inside the UI, 403 bare)
    assert fetch(f"http://127.0.0.1:{master.www_port}/api/v2/builders")[0] == 403
    status, body, _ = fetch(page, inside)
    assert status == 200 and 'data-message="refused"' in body and "linux" not in body
    status, body, _ = fetch(page, {"Accept": "text/html"})
    assert status == 403 and "linux" not in body
    # the admin sees every builder
    cookie = login_cookie(master.www_port)
    status, body, headers = fetch(page, {**inside, "Cookie": cookie})
    assert status == 200, body
    assert 'data-builder="linux" data-builds="3"' in body and 'data-builder="win" data-builds="3"' in body
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    # the insights panels read the master's own database in the background: never in the request
    deadline = time.monotonic() + 60
    while "being read: reload in a moment" in body and time.monotonic() < deadline:
        time.sleep(0.5)
        body = fetch(page, {**inside, "Cookie": cookie})[1]
    assert "Flaky tests (last 30 days)" in body and "Slower builds and steps (last 30 days)" in body
    assert "No build or step got lastingly slower or faster." in body  # three builds: no series yet
    assert "cannot be read" not in body


STYLE_SNAPSHOT = """
(() => {
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('.bbs-stats') || el.closest('#bbs-probe')) continue;
    const style = getComputedStyle(el);
    const props = {};
    for (const name of style) props[name] = style.getPropertyValue(name);
    out.push([el.tagName + '.' + el.className, props]);
  }
  return out;
})()
"""


def test_statistics_page_in_chromium(master, tmp_path):
    base = f"http://127.0.0.1:{master.www_port}"
    browser = Chromium(tmp_path / "profile")
    try:
        # log in as Buildbot's UI does (basic auth on /auth/login sets the session cookie)
        token = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
        browser.page("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})
        browser.page("Page.navigate", url=f"{base}/auth/login")
        browser.wait_for("document.readyState === 'complete' && location.pathname !== '/auth/login'")
        browser.page("Network.setExtraHTTPHeaders", headers={})

        browser.page("Page.navigate", url=f"{base}/#/stats")
        browser.wait_for("document.querySelector('.bbs-stats .bbs-window') !== null")
        # the menu entry
        menu = browser.evaluate(
            "[...document.querySelectorAll('a')].filter(a => a.textContent.trim() === 'Statistics')"
            ".map(a => a.getAttribute('href'))"
        )
        assert menu, "no Statistics menu entry"
        # each builder with its build count, in the window shown (the last 24 h)
        shown = browser.evaluate(
            "Object.fromEntries([...document.querySelectorAll('.bbs-window-24h tr[data-builds]')]"
            ".map(tr => [tr.dataset.builder, [Number(tr.dataset.builds), tr.offsetParent !== null]]))"
        )
        assert shown == {"linux": [CHANGES, True], "win": [CHANGES, True]}
        assert browser.evaluate("document.querySelectorAll('.bbs-window-24h svg.trend-chart').length") == 2
        assert browser.evaluate("document.querySelector('.bbs-window-24h svg.success-chart') !== null")
        # the links point at real builds and builders (checked against the REST API)
        links = browser.evaluate(
            "[...document.querySelectorAll('.bbs-window-24h a')].map(a => a.getAttribute('href'))"
        )
        assert links
        cookie = "; ".join(
            f"{c['name']}={c['value']}" for c in browser.page("Network.getCookies", urls=[base])["cookies"]
        )
        for href in set(links):
            api = href.removeprefix("#/")
            status, body, _ = fetch(f"{base}/api/v2/{api}", {"Cookie": cookie})
            assert status == 200, (href, body)
            parts = api.split("/")  # builders/<id> or builders/<id>/builds/<number>
            found = json.loads(body)[parts[-2]]
            assert len(found) == 1, href
            assert found[0]["builderid"] == int(parts[1])
            if len(parts) == 4:
                assert found[0]["number"] == int(parts[3])
        # the window control works without script: choosing "all time" shows that window
        browser.evaluate("document.querySelector('label[for=bbs-w-all]').click()")
        assert browser.evaluate("document.querySelector('.bbs-window-all').offsetParent !== null")
        assert browser.evaluate("document.querySelector('.bbs-window-24h').offsetParent === null")
        # the builder filter too: picking linux hides win's rows and charts, in the windows and the panels
        browser.evaluate("document.querySelector('label[for=bbs-b-0]').click()")  # builders sorted: linux 0
        shown = browser.evaluate(
            "[...document.querySelectorAll('.bbs-window-all .bbs-builder, .bbs-insights .bbs-builder')]"
            ".map(el => [el.classList.contains('bbs-b-0'), el.offsetParent !== null])"
        )
        assert shown and all(linux == visible for linux, visible in shown), shown
        browser.evaluate("document.querySelector('label[for=bbs-b-all]').click()")

        # docs/ui-page.png: the page as users see it
        shot = browser.page("Page.captureScreenshot", format="png")
        target = os.environ.get("BBS_UI_SCREENSHOT")
        if target:
            Path(target).write_bytes(base64.b64decode(shot["data"]))

        # no CSS rule of the page changes Buildbot's own elements: on Buildbot's builders
        # page, every element's computed style without and with the page's HTML inserted
        browser.page("Page.navigate", url=f"{base}/#/builders")
        browser.wait_for("document.querySelectorAll('a[href*=\"builders/\"]').length >= 2")
        time.sleep(1)  # let the page settle (its data arrives over the websocket)
        before = browser.evaluate(STYLE_SNAPSHOT)
        inserted = browser.evaluate(
            "fetch('/plugins/wsgi_dashboards/stats/index.html').then(r => r.text()).then(html => {"
            " const probe = document.createElement('div'); probe.id = 'bbs-probe'; probe.innerHTML = html;"
            " document.body.appendChild(probe); return probe.querySelectorAll('style').length; })"
        )
        assert inserted >= 1
        after = browser.evaluate(STYLE_SNAPSHOT)
        assert len(before) == len(after) > 20
        changed = [
            (tag, name)
            for (tag, props), (_, props_after) in zip(before, after)
            for name in props
            if props[name] != props_after.get(name)
        ]
        assert changed == []
    finally:
        browser.close()
