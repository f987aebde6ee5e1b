"""The HTML report in a real Chromium: the DOM it builds, that nothing is requested, what it paints."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib

import pytest

from buildbot_stats.cli.report_html import (
    BAR_COLOR,
    QUEUE_P50_COLOR,
    QUEUE_P95_COLOR,
    RESULT_COLORS,
    STEP_P50_COLOR,
    STEP_P95_COLOR,
    TESTS_COLOR,
)
from tests.summary_data import (
    DURATION_RESULTS,
    DURATIONS,
    STEP_ROWS_ALL,
    SUCCESS,
    DomCollector,
    make_full_points,
    run_cli,
    write_store,
)


@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "full.sqlite", make_full_points())


def chromium_binary():
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required on CI")
        pytest.skip("chromium not installed")
    return path


def chromium(tmp_path, url, *extra):
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    command = [
        chromium_binary(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        *extra,
        url,
    ]
    done = subprocess.run(command, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode("utf-8")


def page_requests(netlog):
    """URLs of requests a page made (the browser's own background requests are 'not an origin')."""
    text = netlog.read_text(encoding="utf-8", errors="replace")
    try:
        log = json.loads(text)
    except ValueError:  # cut short: close it
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] == start_job and (
            params.get("initiator") == "null" or "file://" in params.get("site_for_cookies", "")
        ):
            urls.append(params.get("url"))
    return urls


def decode_png(data):
    """(width, height, bytes per pixel, rows) of an 8-bit RGB(A) PNG, without Pillow."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows, prev = [], bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], raw[start + 1 : start + 1 + stride]
        if kind == 0:
            cur = bytearray(line)
        elif kind == 2:
            cur = bytearray((a + b) & 255 for a, b in zip(line, prev))
        else:
            cur = bytearray(line)
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                if kind == 1:
                    cur[i] = (cur[i] + left) & 255
                elif kind == 3:
                    cur[i] = (cur[i] + ((left + prev[i]) >> 1)) & 255
                else:
                    up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    cur[i] = (cur[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(bytes(cur))
        prev = cur
    return width, height, bpp, rows


def blobs(png, color):
    """Connected areas (4-neighbour) of pixels of exactly ``color`` ('#rrggbb'): their sizes."""
    width, height, bpp, rows = png
    needle = bytes.fromhex(color[1:])
    pixels = set()
    for y, row in enumerate(rows):
        i = row.find(needle)
        while i >= 0:
            if i % bpp == 0:
                pixels.add((i // bpp, y))
            i = row.find(needle, i + 1)
    sizes = []
    while pixels:
        stack, size = [pixels.pop()], 0
        while stack:
            x, y = stack.pop()
            size += 1
            for n in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if n in pixels:
                    pixels.remove(n)
                    stack.append(n)
        sizes.append(size)
    return sorted(sizes)


def test_html_renders_in_chromium(store, tmp_path, capsys):
    target = tmp_path / "report.html"
    assert run_cli(capsys, "summary", store, "--html", str(target))[0] == 0
    url = target.resolve().as_uri()
    netlog = tmp_path / "net.json"
    dom = chromium(tmp_path, url, "--dump-dom", f"--log-net-log={netlog}")

    # the DOM Chromium built: every chart with its data points
    collector = DomCollector()
    collector.feed(dom)
    elements = collector.elements
    assert not [tag for tag, _ in elements if tag in ("x", "script", "img", "link")]
    charts = [a for tag, a in elements if tag == "svg" and "duration-chart" in a.get("class", "")]
    assert [c["data-builder"] for c in charts] == list(DURATIONS)
    points: dict[str, list[tuple[float, str]]] = {}
    for tag, a in elements:
        if tag == "circle" and a.get("class") == "point":
            points.setdefault(a["data-builder"], []).append((float(a["data-value"]), a["fill"]))
    assert points == {
        b: [(v, RESULT_COLORS[r][1]) for v, r in zip(DURATIONS[b], DURATION_RESULTS[b])] for b in DURATIONS
    }
    bars = {a["data-builder"]: float(a["data-value"]) for tag, a in elements if a.get("class") == "bar"}
    assert bars == pytest.approx(SUCCESS)
    assert sum(1 for tag, a in elements if tag == "svg" and "success-chart" in a.get("class", "")) == 1
    assert "mac: no build durations recorded." in dom
    # the new charts: queue time, the slowest steps, the test pass rate
    queue = {
        (a["data-builder"], a["data-percentile"]): float(a["data-value"])
        for tag, a in elements
        if a.get("class") == "queue-bar"
    }
    assert queue == {("linux", "50"): 5, ("linux", "95"): 9, ("win&<x>", "50"): 30, ("win&<x>", "95"): 60}
    steps = [(a["data-builder"], a["data-step"]) for tag, a in elements if a.get("class") == "step-p95"]
    assert steps == [(r[0], r[1]) for r in STEP_ROWS_ALL[:10]]
    tests = {
        a["data-builder"]: float(a["data-value"]) for tag, a in elements if a.get("class") == "tests-bar"
    }
    assert tests == {"linux": 0.94, "win&<x>": 0.0}
    tables = [tag for tag, _ in elements if tag == "table"]
    assert len(tables) == 4

    # nothing requested by the page (the net log does show the browser's own requests,
    # and a control page shows that a page's request would be seen)
    assert page_requests(netlog) == []
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><img src="http://127.0.0.1:9/canary.png">')
    control_log = tmp_path / "control-net.json"
    chromium(tmp_path, control.resolve().as_uri(), "--dump-dom", f"--log-net-log={control_log}")
    assert page_requests(control_log) == ["http://127.0.0.1:9/canary.png"]


def bar_areas(values, scale, thickness=18, track=420):
    """Pixel areas of bars of these lengths (0 length: no bar)."""
    return sorted(round(v / scale * track) * thickness for v in values if v > 0)


def assert_areas(found, expected):
    assert len(found) == len(expected), (found, expected)
    for got, want in zip(found, expected):
        assert abs(got - want) <= 18 + 0.03 * want, (found, expected)  # a column of antialiasing


def test_html_charts_are_painted(store, tmp_path, capsys):
    target = tmp_path / "report.html"
    assert run_cli(capsys, "summary", store, "--html", str(target))[0] == 0
    shot = tmp_path / "shot.png"
    chromium(tmp_path, target.resolve().as_uri(), f"--screenshot={shot}", "--window-size=1200,3200")
    png = decode_png(shot.read_bytes())
    # every build is a visible dot of its own, in the colour of its result; plus one legend
    # swatch (10 x 10) per result shown
    for code, (name, color) in RESULT_COLORS.items():
        expected = sum(r == code for results in DURATION_RESULTS.values() for r in results)
        found = blobs(png, color)
        if not expected:
            assert found == [], name
            continue
        assert len(found) == expected + 1, (name, found)
        assert 100 in found, (name, found)
        assert min(found) >= 20, (name, found)
    # one bar per builder with results but 0% (mac), as long as its success rate
    bars = blobs(png, BAR_COLOR)
    assert len(bars) == 3
    bar_height = 26 - 8
    expected = sorted(round(rate * 420) * bar_height for rate in SUCCESS.values() if rate)
    assert bars == pytest.approx(expected, rel=0.03)
    # queue time (scale 0..100 s): p50 drawn over p95, so p95 shows from p50 to p95
    assert_areas(blobs(png, QUEUE_P50_COLOR), bar_areas([5, 30], 100))
    assert_areas(blobs(png, QUEUE_P95_COLOR), bar_areas([9 - 5, 60 - 30], 100))
    # the ten slowest steps (scale 0..100 s), the same way
    rows = STEP_ROWS_ALL[:10]
    assert_areas(blobs(png, STEP_P50_COLOR), bar_areas([float(r[3]) for r in rows], 100))
    assert_areas(blobs(png, STEP_P95_COLOR), bar_areas([float(r[4]) - float(r[3]) for r in rows], 100))
    # test pass rate: linux 94 %, win&<x> 0 % (no bar)
    assert_areas(blobs(png, TESTS_COLOR), bar_areas([0.94], 1))
