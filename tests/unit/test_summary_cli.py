"""``buildbot-stats summary``: figures checked by hand, JSON against the table, the HTML page in Chromium."""

from __future__ import annotations

import datetime
import html.parser
import json
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import zlib

import pytest

from buildbot_stats import cli
from buildbot_stats.cli.report_html import BAR_COLOR, POINT_COLOR, render_html
from buildbot_stats.cli.summary import Summary, nearest_rank, summarize_points
from buildbot_stats.point import Point, to_ns
from buildbot_stats.storage_backends.sqlite import SQLiteStorageService

BASE = datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)
RESULT_NAMES = ["success", "warnings", "failure", "skipped", "exception", "retry", "cancelled"]


def build(builder, number, end, duration=None, results=None, end_field=True):
    """The points the captures write for one build (all stamped with the build's end)."""
    tags = {"builder_name": builder, "build_number": str(number)}
    t = to_ns(end)
    points = []
    if duration is not None:
        start = end - datetime.timedelta(seconds=duration)
        points.append(Point(f"{builder}-build-times", {"start-time": start.isoformat()}, tags, t))
        if end_field:
            points.append(Point(f"{builder}-build-times", {"end-time": end.isoformat()}, tags, t))
        points.append(Point(f"{builder}-build-times", {"duration": float(duration)}, tags, t))
    if results is not None:
        fields = {"results": results, "result": RESULT_NAMES[results]}
        points.append(Point(f"{builder}-build-results", fields, tags, t))
    return points


def data(series, builder, number, end, fields):
    return Point(series, fields, {"builder_name": builder, "build_number": str(number)}, to_ns(end))


def make_points():
    points = []
    # linux: durations 30 10 50 20 40, results S S F S W; ends 11:00 .. 15:00
    for n, (duration, results) in enumerate(zip([30, 10, 50, 20, 40], [0, 0, 2, 0, 1]), start=1):
        end = BASE + n * HOUR
        points += build("linux", n, end, duration, results)
        fields = {"passed": 8 + 2 * n, "failed": [0, 1, 0, 2, 0][n - 1], "note": "text", "ok": True}
        points.append(data("linux-tests", "linux", n, end, fields))
        points.append(data("linux-branch", "linux", n, end, {"name": "branch", "value": "main"}))
    points += build("linux", 3, BASE + 3 * HOUR, None, 2)  # a re-sent result changes nothing
    for n, percent in enumerate([80.5, 81.25, float("nan")], start=1):
        points.append(data("linux-coverage", "linux", n, BASE + n * HOUR, {"percent": percent}))
    # win&<x>: durations 100 300 200, all successful; ends 12:30, 14:30, 16:30
    for n, duration in enumerate([100, 300, 200], start=1):
        points += build("win&<x>", n, BASE + 2 * n * HOUR + HOUR / 2, duration, 0)
    points.append(data("win&<x>-size", "win&<x>", 1, BASE, {"name": "a", "value": 3}))
    points.append(data("win&<x>-size", "win&<x>", 2, BASE, {"name": "b", "value": 5, "extra": 1}))
    # mac: results only (failures), no end-time field: last build from the point time (12:00)
    points += build("mac", 7, BASE + HOUR, None, 2)
    points += build("mac", 8, BASE + 2 * HOUR, None, 2)
    points.append(data("mac-notes", "mac", 8, BASE, {"msg": "hi"}))
    # arm: one build, no result; its end-time field (08:00Z) wins over the point time (10:00Z)
    arm = build("arm", 1, BASE, 5.5, None, end_field=False)
    arm.append(Point("arm-build-times", {"end-time": "2024-05-01T10:00:00+02:00"}, arm[0].tags, to_ns(BASE)))
    points += arm
    # big: 20 builds, durations 1..20 shuffled, every 4th failed; then build 21 with a result only
    for n in range(1, 21):
        points += build("big", n, BASE + n * HOUR, (7 * n) % 20 + 1, 0 if n % 4 else 2)
    points += build("big", 21, BASE + 21 * HOUR, None, 0)
    return points


# rows in the store: build-times points of one build merge into one row
TOTAL_POINTS = (5 + 5) + 5 + 5 + 3 + (3 + 3) + 2 + 2 + 1 + 1 + (20 + 21)

BUILDER_ROWS = [
    ["arm", "1", "0", "-", "5.5", "5.5", "5.5", "2024-05-01T08:00:00Z"],
    ["big", "21", "21", "76.2%", "10", "19", "20", "2024-05-02T07:00:00Z"],
    ["linux", "5", "5", "60.0%", "30", "50", "50", "2024-05-01T15:00:00Z"],
    ["mac", "2", "2", "0.0%", "-", "-", "-", "2024-05-01T12:00:00Z"],
    ["win&<x>", "3", "3", "100.0%", "200", "300", "300", "2024-05-01T16:30:00Z"],
]
SERIES_ROWS = [
    ["linux-coverage", "3", "percent", "2", "80.5", "80.875", "81.25"],
    ["linux-tests", "5", "failed", "5", "0", "0.6", "2"],
    ["linux-tests", "5", "passed", "5", "10", "14", "18"],
    ["mac-notes", "1", "-", "0", "-", "-", "-"],
    ["win&<x>-size", "2", "extra", "1", "1", "1", "1"],
    ["win&<x>-size", "2", "value", "2", "3", "4", "5"],
]
# duration chart points per builder, in time order; success bars
DURATIONS = {
    "arm": [5.5],
    "big": [float((7 * n) % 20 + 1) for n in range(1, 21)],
    "linux": [30.0, 10.0, 50.0, 20.0, 40.0],
    "win&<x>": [100.0, 300.0, 200.0],
}
SUCCESS = {"big": 16 / 21, "linux": 3 / 5, "mac": 0.0, "win&<x>": 1.0}


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "stats.sqlite")
    backend = SQLiteStorageService(path, [])
    points = make_points()
    # in several batches, as the delivery queue sends them
    for i in range(0, len(points), 17):
        report = backend.thd_postStatsValues(points[i : i + 17])
        assert report.rejected_points == 0
    backend.close()
    return path


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def table_section(out, title):
    lines = out.splitlines()
    start = lines.index(title)
    rows = []
    for line in lines[start + 3 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    header = re.split(r"\s{2,}", lines[start + 1].strip())
    assert set(lines[start + 2].replace(" ", "")) == {"-"}
    return header, rows


# -- figures -----------------------------------------------------------------


def test_nearest_rank():
    assert nearest_rank([], 50) is None
    assert nearest_rank([7.0], 95) == 7.0
    assert nearest_rank([1.0, 2.0], 50) == 1.0
    values = [float(v) for v in range(1, 21)]
    assert nearest_rank(values, 50) == 10.0
    assert nearest_rank(values, 95) == 19.0  # not the interpolated 19.05
    assert nearest_rank(values, 100) == 20.0


def test_table_figures_match_hand_computation(store, capsys):
    code, out, err = run(capsys, "summary", store)
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"Store: {store} ({TOTAL_POINTS} points)"
    header, rows = table_section(out, "Builders")
    expected = ["builder", "builds", "results", "success", "dur p50", "dur p95", "dur max", "last build"]
    assert header == expected
    assert rows == BUILDER_ROWS
    header, rows = table_section(out, "Data series")
    assert header == ["series", "points", "field", "n", "min", "mean", "max"]
    assert rows == SERIES_ROWS


def test_table_columns_are_aligned(store, capsys):
    _, out, _ = run(capsys, "summary", store)
    lines = out.splitlines()
    start = lines.index("Builders")
    block = lines[start + 1 : start + 3 + len(BUILDER_ROWS)]
    # right-aligned numeric columns end at the same offsets as their dashes
    ends = [m.end() for m in re.finditer(r"-+", block[1])]
    for line in block[2:]:
        for end in ends[1:]:
            assert line[end - 1] != " ", (line, end)


def test_json_matches_hand_computation_and_table(store, capsys):
    code, out, err = run(capsys, "summary", store, "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["store"] == store
    assert doc["points"] == TOTAL_POINTS
    builders = {b["builder"]: b for b in doc["builders"]}
    assert list(builders) == ["arm", "big", "linux", "mac", "win&<x>"]
    assert builders["linux"] == {
        "builder": "linux",
        "builds": 5,
        "results_known": 5,
        "successes": 3,
        "success_rate": 0.6,
        "durations": 5,
        "duration_p50": 30.0,
        "duration_p95": 50.0,
        "duration_max": 50.0,
        "last_build": "2024-05-01T15:00:00Z",
    }
    assert builders["big"]["success_rate"] == 16 / 21
    assert (builders["big"]["durations"], builders["big"]["builds"]) == (20, 21)
    assert (builders["big"]["duration_p50"], builders["big"]["duration_p95"]) == (10.0, 19.0)
    assert builders["arm"]["success_rate"] is None and builders["arm"]["results_known"] == 0
    assert builders["mac"]["duration_p50"] is None and builders["mac"]["success_rate"] == 0.0
    series = {s["series"]: s for s in doc["series"]}
    assert list(series) == ["linux-coverage", "linux-tests", "mac-notes", "win&<x>-size"]  # no linux-branch
    assert series["linux-coverage"] == {
        "series": "linux-coverage",
        "count": 3,
        "fields": {"percent": {"count": 2, "min": 80.5, "mean": 80.875, "max": 81.25}},
    }
    assert series["linux-tests"]["fields"] == {
        "failed": {"count": 5, "min": 0, "mean": 0.6, "max": 2},
        "passed": {"count": 5, "min": 10, "mean": 14.0, "max": 18},
    }
    assert series["mac-notes"] == {"series": "mac-notes", "count": 1, "fields": {}}

    # the JSON says what the table says
    _, table, _ = run(capsys, "summary", store)
    _, builder_rows = table_section(table, "Builders")
    _, series_rows = table_section(table, "Data series")

    def num(value):
        return "-" if value is None else f"{value:g}"

    for row, b in zip(builder_rows, doc["builders"]):
        rate = "-" if b["success_rate"] is None else f"{b['success_rate'] * 100:.1f}%"
        expected = [b["builder"], str(b["builds"]), str(b["results_known"]), rate]
        expected += [num(b["duration_p50"]), num(b["duration_p95"]), num(b["duration_max"]), b["last_build"]]
        assert row == expected
    json_rows = []
    for s in doc["series"]:
        if not s["fields"]:
            json_rows.append([s["series"], str(s["count"]), "-", "0", "-", "-", "-"])
        for name, f in s["fields"].items():
            values = [num(round(f[k], 3)) for k in ("min", "mean", "max")]
            json_rows.append([s["series"], str(s["count"]), name, str(f["count"]), *values])
    assert series_rows == json_rows


def test_empty_store(tmp_path, capsys):
    path = str(tmp_path / "empty.sqlite")
    backend = SQLiteStorageService(path, [])
    backend.thd_postStatsValues([Point("x-prop", {"name": "x", "value": 1}, {}, 1)])
    backend.close()
    code, out, _ = run(capsys, "summary", path)
    assert code == 0
    assert "(no build data)" in out and "(no data series)" in out
    code, out, _ = run(capsys, "summary", path, "--json")
    assert json.loads(out) == {"store": path, "points": 1, "builders": [], "series": []}
    page = render_html(summarize_points([]))
    assert "No build data." in page and "<svg" not in page


def test_console_script_and_module(store):
    for command in ([sys.executable, "-m", "buildbot_stats.cli"], [shutil.which("buildbot-stats")]):
        if command[0] is None:
            continue
        done = subprocess.run(
            [*command, "summary", store, "--json"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["points"] == TOTAL_POINTS


# -- errors ------------------------------------------------------------------


def assert_one_error(code, out, err, pattern):
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("buildbot-stats: error: ")
    assert re.search(pattern, lines[0]), lines[0]


def test_missing_file(tmp_path, capsys):
    path = tmp_path / "nope.sqlite"
    assert_one_error(*run(capsys, "summary", str(path)), rf"{re.escape(str(path))}: no such file$")


def test_directory(tmp_path, capsys):
    assert_one_error(*run(capsys, "summary", str(tmp_path)), "is a directory, not a buildbot_stats store")


def test_text_file(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("these are not statistics\n" * 50)
    message = r"notes.txt: not a buildbot_stats store \(not an SQLite database\)"
    assert_one_error(*run(capsys, "summary", str(path)), message)


def test_sqlite_without_meta(tmp_path, capsys):
    path = tmp_path / "state.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE builds (id INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    assert_one_error(
        *run(capsys, "summary", str(path)),
        r"state.sqlite: not a buildbot_stats store \(an SQLite database without its meta table\)",
    )


def test_empty_file(tmp_path, capsys):
    path = tmp_path / "empty.sqlite"
    path.write_bytes(b"")
    assert_one_error(*run(capsys, "summary", str(path)), "not a buildbot_stats store")


def test_corrupt_store(store, capsys):
    with open(store, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(4096)
        f.write(b"\xa5" * (size - 4096))  # every page but the first
    assert_one_error(*run(capsys, "summary", store), r"stats.sqlite: cannot read the store \(.*malformed")


def test_truncated_header(store, capsys):
    with open(store, "r+b") as f:
        f.write(b"garbage!" * 4)
    assert_one_error(*run(capsys, "summary", store), "not an SQLite database")


@pytest.mark.parametrize("target", ["/proc/x.html", "dir", "missing/dir/x.html"])
def test_unwritable_html(store, tmp_path, capsys, target):
    if target != "/proc/x.html":
        (tmp_path / "dir").mkdir()
        target = str(tmp_path / target)
    elif not os.path.isdir("/proc"):
        pytest.skip("no /proc")
    message = rf"cannot write {re.escape(target)}: \w"
    assert_one_error(*run(capsys, "summary", store, "--html", target), message)


def test_usage_errors(capsys):
    code, out, err = run(capsys, "summary")
    assert code == 2 and "buildbot-stats: error: the following arguments are required: PATH" in err
    code, out, err = run(capsys)
    assert code == 2 and "summary" in err
    code, out, err = run(capsys, "demo", "--builds", "zero")
    assert code == 2 and "buildbot-stats: error: argument --builds: not a number: 'zero'" in err
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "demo" in out


def test_demo_is_delegated(monkeypatch, capsys):
    import types

    calls = []
    module = types.ModuleType("buildbot_stats.cli.demo")
    module.run_demo = lambda args: calls.append(args) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "buildbot_stats.cli.demo", module)
    assert cli.main(["demo", "--builds", "3", "--dir", "/tmp/d", "--influxdb", "http://h:8086"]) == 0
    [args] = calls
    assert (args.builds, args.dir, args.influxdb) == (3, "/tmp/d", "http://h:8086")
    assert cli.main(["demo"]) == 0
    assert (calls[1].builds, calls[1].dir, calls[1].influxdb) == (10, None, None)


def test_demo_user_error_is_one_line(monkeypatch, capsys):
    import types

    class DemoError(Exception):
        pass

    def run_demo(args):
        raise DemoError("port 8010 is in use")

    module = types.ModuleType("buildbot_stats.cli.demo")
    module.DemoError, module.run_demo = DemoError, run_demo  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "buildbot_stats.cli.demo", module)
    assert_one_error(*run(capsys, "demo"), "^buildbot-stats: error: port 8010 is in use$")


def test_demo_missing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "buildbot_stats.cli.demo", None)  # import raises ModuleNotFoundError
    code, out, err = run(capsys, "demo")
    assert_one_error(code, out, err, "the demo is not available")


# -- the HTML page -----------------------------------------------------------


def test_html_is_self_contained_and_escaped(store, tmp_path, capsys):
    target = tmp_path / "report.html"
    code, out, err = run(capsys, "summary", store, "--html", str(target))
    assert code == 0
    assert table_section(out, "Builders")[1] == BUILDER_ROWS  # stdout still has the table
    assert "HTML report written to" in err
    page = target.read_text(encoding="utf-8")
    check_static(page)
    assert "win&amp;&lt;x&gt;" in page and "win&<x>" not in page


def check_static(page):
    # a strict CSP, before anything that could load
    head = page[: page.index("</head>")]
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', head)
    assert csp, "no CSP meta"
    assert "default-src 'none'" in csp.group(1) and "script-src" not in csp.group(1)
    assert head.index("Content-Security-Policy") < head.index("<style>")
    # nothing that refers to the network, or loads anything at all
    assert not re.search(r"https?://", page, re.I)
    assert not re.search(r"\b(src|href|srcset|action|xlink:href|poster|data)\s*=", page, re.I)
    assert not re.search(r"url\(|@import|<script|<link|<iframe|<object|<embed|<img", page, re.I)


class DomCollector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))


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
    assert run(capsys, "summary", store, "--html", str(target))[0] == 0
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
    points: dict[str, list[float]] = {}
    for tag, a in elements:
        if tag == "circle" and a.get("class") == "point":
            points.setdefault(a["data-builder"], []).append(float(a["data-value"]))
    assert points == DURATIONS
    bars = {a["data-builder"]: float(a["data-value"]) for tag, a in elements if a.get("class") == "bar"}
    assert bars == pytest.approx(SUCCESS)
    assert sum(1 for tag, a in elements if tag == "svg" and "success-chart" in a.get("class", "")) == 1
    assert "mac: no build durations recorded." in dom
    tables = [tag for tag, _ in elements if tag == "table"]
    assert len(tables) == 2

    # nothing requested by the page (the net log does show the browser's own requests,
    # and a control page shows that a page's request would be seen)
    assert page_requests(netlog) == []
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><img src="http://127.0.0.1:9/canary.png">')
    control_log = tmp_path / "control-net.json"
    chromium(tmp_path, control.resolve().as_uri(), "--dump-dom", f"--log-net-log={control_log}")
    assert page_requests(control_log) == ["http://127.0.0.1:9/canary.png"]


def test_html_charts_are_painted(store, tmp_path, capsys):
    target = tmp_path / "report.html"
    assert run(capsys, "summary", store, "--html", str(target))[0] == 0
    shot = tmp_path / "shot.png"
    chromium(tmp_path, target.resolve().as_uri(), f"--screenshot={shot}", "--window-size=1200,2000")
    png = decode_png(shot.read_bytes())
    # every data point is a visible dot of its own
    dots = blobs(png, POINT_COLOR)
    assert len(dots) == sum(len(v) for v in DURATIONS.values())
    assert min(dots) >= 20
    # one bar per builder with results but 0% (mac), as long as its success rate
    bars = blobs(png, BAR_COLOR)
    assert len(bars) == 3
    bar_height = 26 - 8
    expected = sorted(round(rate * 420) * bar_height for rate in SUCCESS.values() if rate)
    assert bars == pytest.approx(expected, rel=0.03)


def test_render_html_without_results_or_durations():
    points = build("only-results", 1, BASE, None, 0) + build("only-times", 1, BASE, 3.0, None)
    summary = summarize_points(points)
    assert isinstance(summary, Summary)
    page = render_html(summary)
    check_static(page)
    assert page.count('class="bar"') == 1 and page.count('class="point"') == 1
    assert "only-results: no build durations recorded." in page
    assert ">no results<" in page
