"""Stores for the summary tests, and the figures computed from them by hand.

``make_points()`` is a store as the captures wrote it before issue 9: build
times and results, data series and property series.  ``make_full_points()``
adds what issue 9 brought: ``queue-time`` in the build-times points, a
``worker`` tag on build results, ``<builder>-step-times`` and
``<builder>-test-results``.  Every expected figure below is worked out by hand
in the comments next to the data, not by the code under test.
"""

from __future__ import annotations

import datetime
import html.parser
import re

from buildbot_stats.point import Point, to_ns
from buildbot_stats.storage_backends.sqlite import SQLiteStorageService

BASE = datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)
RESULT_NAMES = ["success", "warnings", "failure", "skipped", "exception", "retry", "cancelled"]


def build(builder, number, end, duration=None, results=None, end_field=True, queue=None, worker=None):
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
    if queue is not None:  # merged into the same build-times row
        points.append(Point(f"{builder}-build-times", {"queue-time": float(queue)}, tags, t))
    if results is not None:
        fields = {"results": results, "result": RESULT_NAMES[results]}
        result_tags = dict(tags, worker=worker) if worker else tags
        points.append(Point(f"{builder}-build-results", fields, result_tags, t))
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

# the third column: builds whose result is not success (big: 4, 8, 12, 16, 20; linux: a failure
# and a warnings; arm has no result)
BUILDER_ROWS = [
    ["arm", "1", "-", "-", "5.5", "5.5", "5.5", "2024-05-01T08:00:00Z"],
    ["big", "21", "5", "76.2%", "10", "19", "20", "2024-05-02T07:00:00Z"],
    ["linux", "5", "2", "60.0%", "30", "50", "50", "2024-05-01T15:00:00Z"],
    ["mac", "2", "2", "0.0%", "-", "-", "-", "2024-05-01T12:00:00Z"],
    ["win&<x>", "3", "0", "100.0%", "200", "300", "300", "2024-05-01T16:30:00Z"],
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
# the result of each of those builds (None: arm's build has none)
DURATION_RESULTS = {
    "arm": [None],
    "big": [0 if n % 4 else 2 for n in range(1, 21)],
    "linux": [0, 0, 2, 0, 1],
    "win&<x>": [0, 0, 0],
}
SUCCESS = {"big": 16 / 21, "linux": 3 / 5, "mac": 0.0, "win&<x>": 1.0}


# -- issue 9: queue time, steps, tests -------------------------------------------

LINUX_QUEUE = [5, 1, 9, 3, 7]  # sorted 1 3 5 7 9: p50 = rank ceil(2.5)=3 -> 5; p95 = rank ceil(4.75)=5 -> 9
WIN_QUEUE = [60, 0.5, 30]  # sorted 0.5 30 60: p50 = rank 2 -> 30; p95 = rank 3 -> 60

# per builder, step: durations of its finished steps (one per build)
STEPS = {
    # sorted 10 11 12 13 14: p50 rank 3 -> 12, p95 rank 5 -> 14, max 14
    ("linux", "compile"): [12, 10, 14, 11, 13],
    # sorted 20 22 25 30 100: p50 25, p95 100, max 100
    ("linux", "test"): [20, 25, 30, 22, 100],
    # sorted 1 1 1 1 2: p50 1, p95 2, max 2 (a hidden step)
    ("linux", "checkout"): [1, 1, 2, 1, 1],
    # sorted 50 60 70: p50 rank 2 -> 60, p95 rank 3 -> 70
    ("win&<x>", "build<&>"): [50, 70, 60],
    # 1..20: p50 rank 10 -> 10, p95 rank 19 -> 19, max 20
    ("big", "s"): [float((7 * n) % 20 + 1) for n in range(1, 21)],
    # twelve steps of one run each, 0.5 .. 6 s
    **{("many", f"step-{k:02d}"): [0.5 * k] for k in range(1, 13)},
}
LINUX_STEP_RESULTS = {"compile": [0, 0, 2, 0, 0], "test": [0, 0, 2, 0, 1], "checkout": [0] * 5}

# slowest first by p95, then max, then builder and step: linux/checkout (p95 2, max 2) before
# many/step-04 (2, 2) by name; "pending" has no duration at all and comes last
STEP_ROWS_ALL = [
    ["linux", "test", "5", "25", "100", "100"],
    ["win&<x>", "build<&>", "3", "60", "70", "70"],
    ["big", "s", "20", "10", "19", "20"],
    ["linux", "compile", "5", "12", "14", "14"],
    *[
        ["many", f"step-{k:02d}", "1", f"{0.5 * k:g}", f"{0.5 * k:g}", f"{0.5 * k:g}"]
        for k in range(12, 4, -1)
    ],
    ["linux", "checkout", "5", "1", "2", "2"],
    *[
        ["many", f"step-{k:02d}", "1", f"{0.5 * k:g}", f"{0.5 * k:g}", f"{0.5 * k:g}"]
        for k in range(4, 0, -1)
    ],
    ["mac", "pending", "1", "-", "-", "-"],
]

# per builder: (passed, failed, total) of each test result set
TESTS = {
    "linux": [(10, 0, 10), (9, 1, 10), (None, None, 12), (18, 2, 20), (10, 0, 10)],
    "win&<x>": [(0, 5, 5)],
    "mac": [(0, 0, 0)],
}
# linux: total 10+10+12+20+10 = 62, passed 47, failed 3; the rate leaves out the set without
# tests_passed: 47 / (10+10+20+10) = 94.0%; win&<x>: 0/5; mac: total 0, no rate
TEST_ROWS = [
    ["linux", "5", "62", "47", "3", "94.0%"],
    ["mac", "1", "0", "0", "0", "-"],
    ["win&<x>", "1", "5", "0", "5", "0.0%"],
]

FULL_BUILDER_HEADERS = [
    "builder",
    "builds",
    "unsuccessful",
    "success",
    "dur p50 (s)",
    "dur p95 (s)",
    "dur max (s)",
    "queue p50 (s)",
    "queue p95 (s)",
    "last build",
]
FULL_BUILDER_ROWS = [
    [*row[:7], *{"linux": ["5", "9"], "win&<x>": ["30", "60"]}.get(row[0], ["-", "-"]), row[7]]
    for row in BUILDER_ROWS
]


def make_full_points():
    """make_points() with queue times, workers, steps and test results (issue 9)."""
    points = make_points()
    for n, (queue, results) in enumerate(zip(LINUX_QUEUE, [0, 0, 2, 0, 1]), start=1):
        points += build("linux", n, BASE + n * HOUR, queue=queue)
        # the same result again with the worker tag: a row of its own, for the same build
        points += build("linux", n, BASE + n * HOUR, results=results, worker="w1")
    for n, queue in enumerate(WIN_QUEUE, start=1):
        points += build("win&<x>", n, BASE + 2 * n * HOUR + HOUR / 2, queue=queue)
    for (builder, step), durations in STEPS.items():
        for n, duration in enumerate(durations, start=1):
            end = BASE + n * HOUR - datetime.timedelta(minutes=1)
            tags = {
                "builder_name": builder,
                "build_number": str(n),
                "step_name": step,
                "step_number": str(list(STEPS).index((builder, step))),
                "worker": "w1",
            }
            if step == "checkout":
                tags["hidden"] = True
            results = LINUX_STEP_RESULTS.get(step, [0] * len(durations))[n - 1]
            points.append(
                Point(f"{builder}-step-times", {"duration": duration, "result": results}, tags, to_ns(end))
            )
    points.append(
        Point("mac-step-times", {"result": 6}, {"builder_name": "mac", "step_name": "pending"}, to_ns(BASE))
    )
    for builder, sets in TESTS.items():
        for i, (passed, failed, total) in enumerate(sets, start=1):
            fields = {"tests_passed": passed, "tests_failed": failed, "tests_total": total}
            tags = {
                "builder_name": builder,
                "build_number": str(i),
                "step_name": "test",
                "description": f"suite {i}",
                "category": "unit",
                "value_unit": "count",
                "worker": "w1",
            }
            points.append(Point(f"{builder}-test-results", fields, tags, to_ns(BASE + i * HOUR)))
    return points


# linux's 5 results again with a worker tag (new rows, the same builds), the steps, mac's step
# without a duration and the test result sets; queue times merge into existing rows
FULL_TOTAL_POINTS = (
    TOTAL_POINTS + 5 + sum(len(v) for v in STEPS.values()) + 1 + sum(len(v) for v in TESTS.values())
)


def write_store(path, points):
    """Write points with the real backend, in batches as the delivery queue sends them; return the path."""
    backend = SQLiteStorageService(str(path), [])
    for i in range(0, len(points), 17):
        report = backend.thd_postStatsValues(points[i : i + 17])
        assert report.rejected_points == 0
    backend.close()
    return str(path)


def table_section(out, title):
    """(header, rows) of the text table under the line ``title`` (cells split on 2+ spaces)."""
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


# -- the HTML page -----------------------------------------------------------------


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


def run_cli(capsys, *argv):
    """Run ``buildbot-stats`` in process: (exit status, stdout, stderr)."""
    from buildbot_stats import cli

    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
