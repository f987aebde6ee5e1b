"""``buildbot-stats`` on the command line: errors, exit codes, odd inputs.

Every mistake or odd input gives exit status 2 and one line
``buildbot-stats: error: ...`` on stderr, never a traceback; names from the
store never reach the terminal as control sequences.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile

import pytest

from buildbot_stats import cli
from buildbot_stats.point import Point
from tests.summary_data import BUILDER_ROWS, TOTAL_POINTS, make_points, run_cli, table_section, write_store


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
    assert_one_error(*run_cli(capsys, "summary", str(path)), rf"{re.escape(str(path))}: no such file$")


def test_directory(tmp_path, capsys):
    assert_one_error(*run_cli(capsys, "summary", str(tmp_path)), "is a directory, not a buildbot_stats store")


def test_text_file(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("these are not statistics\n" * 50)
    message = r"notes.txt: not a buildbot_stats store \(not an SQLite database\)"
    assert_one_error(*run_cli(capsys, "summary", str(path)), message)


def test_sqlite_without_meta(tmp_path, capsys):
    path = tmp_path / "state.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE builds (id INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    assert_one_error(
        *run_cli(capsys, "summary", str(path)),
        r"state.sqlite: not a buildbot_stats store \(an SQLite database without its meta table\)",
    )


def test_empty_file(tmp_path, capsys):
    path = tmp_path / "empty.sqlite"
    path.write_bytes(b"")
    assert_one_error(*run_cli(capsys, "summary", str(path)), "not a buildbot_stats store")


def test_corrupt_store(store, capsys):
    with open(store, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(4096)
        f.write(b"\xa5" * (size - 4096))  # every page but the first
    assert_one_error(*run_cli(capsys, "summary", store), r"stats.sqlite: cannot read the store \(.*malformed")


def test_truncated_header(store, capsys):
    with open(store, "r+b") as f:
        f.write(b"garbage!" * 4)
    assert_one_error(*run_cli(capsys, "summary", store), "not an SQLite database")


@pytest.mark.parametrize("target", ["/proc/x.html", "dir", "missing/dir/x.html"])
def test_unwritable_html(store, tmp_path, capsys, target):
    if target != "/proc/x.html":
        (tmp_path / "dir").mkdir()
        target = str(tmp_path / target)
    elif not os.path.isdir("/proc"):
        pytest.skip("no /proc")
    message = rf"cannot write {re.escape(target)}: \w"
    assert_one_error(*run_cli(capsys, "summary", store, "--html", target), message)


def test_usage_errors(capsys):
    code, out, err = run_cli(capsys, "summary")
    assert code == 2 and "buildbot-stats: error: the following arguments are required: PATH" in err
    code, out, err = run_cli(capsys)
    assert code == 2 and "summary" in err
    code, out, err = run_cli(capsys, "demo", "--builds", "zero")
    assert code == 2 and "buildbot-stats: error: argument --builds: not a number: 'zero'" in err
    code, out, _ = run_cli(capsys, "--help")
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
    assert_one_error(*run_cli(capsys, "demo"), "^buildbot-stats: error: port 8010 is in use$")


def test_demo_missing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "buildbot_stats.cli.demo", None)  # import raises ModuleNotFoundError
    code, out, err = run_cli(capsys, "demo")
    assert_one_error(code, out, err, "the demo is not available")


# -- odd inputs (issue 13 item 6) ------------------------------------------------


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "stats.sqlite"
    os.mkfifo(fifo)
    # a subprocess with a timeout: opening a FIFO for reading would block until a writer comes
    done = subprocess.run(
        [sys.executable, "-m", "buildbot_stats.cli", "summary", str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_error(done.returncode, done.stdout, done.stderr, r"stats.sqlite: not a regular file")


def test_device_is_refused(capsys):
    assert_one_error(*run_cli(capsys, "summary", os.devnull), r"/dev/null: not a regular file")


def hand_made_store(path, rows):
    """A store with the right meta table but a points table without types or constraints."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.executemany("INSERT INTO meta VALUES (?, ?)", [("format", "buildbot_stats"), ("schema_version", "1")])
    db.execute("CREATE TABLE points (id INTEGER PRIMARY KEY, series, time_ns, tags, fields)")
    db.executemany("INSERT INTO points (series, time_ns, tags, fields) VALUES (?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    return str(path)


GOOD_TAGS = '{"build_number":"1","builder_name":"b"}'
DEEP = "[" * 200_000 + "]" * 200_000


@pytest.mark.parametrize(
    "row, message",
    [
        (
            ("b-build-times", "12:00", GOOD_TAGS, '{"duration":1}'),
            r"the point with id 2 \(series 'b-build-times'\) has a time_ns of type text, not integer$",
        ),
        (("b-build-times", b"\x00\x01", GOOD_TAGS, '{"duration":1}'), r"time_ns of type blob"),
        (("b-build-times", 1.5e30, GOOD_TAGS, '{"duration":1}'), r"time_ns of type real, not integer"),
        (("b-build-times", None, GOOD_TAGS, '{"duration":1}'), r"time_ns of type null"),
        (
            (b"b-build-times", 1, GOOD_TAGS, '{"duration":1}'),
            r"id 2 \(series 'b-build-times'\) has a series of type blob",
        ),
        (
            (None, 1, GOOD_TAGS, '{"duration":1}'),
            r"the point with id 2 \(no series\) has a series of type null",
        ),
        (("b-data", 1, None, '{"x":1}'), r"\(series 'b-data'\) has a tags of type null"),
        (("b-data", 1, "{}", None), r"\(series 'b-data'\) has a fields of type null"),
        (("b-data", 1, "{}", b'{"x":1}'), r"\(series 'b-data'\) has a fields of type blob"),
        (("b-data", 1, "{}", '{"x":' + DEEP + "}"), r"cannot read the store \(malformed JSON\)"),
        (
            ("b-build-times", 1, '{"builder_name":' + DEEP + "}", "{}"),
            r"cannot read the store \(malformed JSON\)",
        ),
        (("b-step-times", 1, "{}", '{"duration":' + DEEP + "}"), r"cannot read the store \(malformed JSON\)"),
        (("b-data", 1, "{}", '{"x":'), r"cannot read the store \(malformed JSON\)"),
    ],
    ids=[
        "text-time",
        "blob-time",
        "huge-real-time",
        "null-time",
        "blob-series",
        "null-series",
        "null-tags",
        "null-fields",
        "blob-fields",
        "deep-fields",
        "deep-tags",
        "deep-step-fields",
        "cut-json",
    ],
)
def test_hand_made_store_is_one_line(tmp_path, capsys, row, message):
    good = ("b-build-times", 10**18, GOOD_TAGS, '{"duration":2.5}')
    path = hand_made_store(tmp_path / "odd.sqlite", [good, row])
    assert_one_error(*run_cli(capsys, "summary", path), message)
    assert_one_error(*run_cli(capsys, "summary", path, "--json"), message)


def test_times_out_of_range_are_shown_as_unknown(tmp_path, capsys):
    # an end-time of 1e300 s and a build at the largest int64 ns: no traceback, figures still shown
    tags = GOOD_TAGS
    path = hand_made_store(
        tmp_path / "odd.sqlite",
        [("b-build-times", 2**63 - 1, tags, '{"duration":2.5,"end-time":1e300}')],
    )
    code, out, err = run_cli(capsys, "summary", path)
    assert (code, err) == (0, "")
    assert table_section(out, "Builders")[1] == [
        ["b", "1", "-", "-", "2.5", "2.5", "2.5", "2262-04-11T23:47:16Z"]
    ]


def test_control_characters_do_not_reach_the_terminal(tmp_path, capsys):
    evil = "ci\x1b]0;pwned\x07\x1b[2J\x00\u202egnp.exe\u2066"
    points = [
        Point(f"{evil}-build-times", {"duration": 3.0}, {"builder_name": evil, "build_number": "1"}, 10**18),
        Point(f"{evil}-data", {f"f\x1b[31m{evil}": 1.5}, {"builder_name": evil}, 10**18),
        Point(f"{evil}-step-times", {"duration": 1.0}, {"builder_name": evil, "step_name": evil}, 10**18),
    ]
    path = write_store(tmp_path / "evil.sqlite", points)
    code, out, err = run_cli(capsys, "summary", path)
    assert (code, err) == (0, "")
    bad = [c for c in out if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0 or c in "\u202e\u2066"]
    assert bad == []
    assert "ci\\x1b]0;pwned\\x07\\x1b[2J\\x00\\u202egnp.exe\\u2066" in out
    # the JSON keeps the names as they are (escaped by JSON itself)
    code, out, _ = run_cli(capsys, "summary", path, "--json")
    assert json.loads(out)["builders"][0]["builder"] == evil
    assert "\x1b" not in out


def test_very_long_names_are_cut(tmp_path, capsys):
    # 210 points of a series with a 100,000-character name: every row used to be padded to it
    name = "n" * 100_000
    points = [Point(f"{name}-data", {f"{name}-field": i}, {}, i + 1) for i in range(200)]
    points += [
        Point(
            f"{name}-build-times",
            {"duration": float(i)},
            {"builder_name": name, "build_number": str(i)},
            i + 1,
        )
        for i in range(10)
    ]
    path = write_store(tmp_path / "long.sqlite", points)
    code, out, err = run_cli(capsys, "summary", path)
    assert (code, err) == (0, "")
    assert len(out) < 2000, len(out)
    assert max(len(line) for line in out.splitlines()[1:]) < 200
    assert "n" * 59 + "\u2026" in out
    assert json.loads(run_cli(capsys, "summary", path, "--json")[1])["builders"][0]["builder"] == name


def _run_as_nobody(argv):
    """``cli.main(argv)`` in a forked child with the uid and gid of nobody: (code, out, err)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.close(out_r)
            os.close(err_r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sys.stdout = io.TextIOWrapper(os.fdopen(out_w, "wb"), encoding="utf-8")
            sys.stderr = io.TextIOWrapper(os.fdopen(err_w, "wb"), encoding="utf-8")
            code = cli.main(argv)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r, "rb") as f_out, os.fdopen(err_r, "rb") as f_err:
        out, err = f_out.read().decode(), f_err.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out, err


@pytest.fixture
def readonly_dir():
    """A directory the user (or nobody, when the tests run as root) can read but not write."""
    top = tempfile.mkdtemp(prefix="bbstats-ro-", dir="/tmp")
    os.chmod(top, 0o755)
    inner = os.path.join(top, "stats")
    os.mkdir(inner)
    os.chmod(inner, 0o755)
    yield inner
    os.chmod(inner, 0o755)
    shutil.rmtree(top)


def _summary_without_write_access(path):
    if os.geteuid() == 0:  # root may write anywhere: run the summary as nobody
        return _run_as_nobody(["summary", path])
    done = subprocess.run(
        [sys.executable, "-m", "buildbot_stats.cli", "summary", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


def test_store_in_a_directory_without_write_access(readonly_dir):
    path = write_store(os.path.join(readonly_dir, "stats.sqlite"), make_points())
    os.chmod(path, 0o644)
    os.chmod(readonly_dir, 0o555)
    code, out, err = _summary_without_write_access(path)
    assert code == 0, err
    assert "readonly" not in err and "Traceback" not in err
    assert err.startswith("buildbot-stats: note: ") and "opened as immutable" in err
    assert out.splitlines()[0] == f"Store: {path} ({TOTAL_POINTS} points)"
    assert table_section(out, "Builders")[1] == BUILDER_ROWS


def test_store_being_written_in_a_directory_without_write_access(readonly_dir):
    # a running master keeps the -wal and -shm files: mode=ro reads them, points not yet
    # checkpointed included, and nothing is written
    from buildbot_stats.storage_backends.sqlite import SQLiteStorageService

    path = os.path.join(readonly_dir, "stats.sqlite")
    writer = SQLiteStorageService(path, [])
    try:
        writer.thd_postStatsValues(make_points())
        for name in os.listdir(readonly_dir):
            os.chmod(os.path.join(readonly_dir, name), 0o644)
        os.chmod(readonly_dir, 0o555)
        assert os.path.exists(path + "-wal") and os.path.exists(path + "-shm")
        code, out, err = _summary_without_write_access(path)
    finally:
        writer.close()
    assert (code, err) == (0, "")
    assert table_section(out, "Builders")[1] == BUILDER_ROWS


def test_spool_table_is_laid_out_like_every_table():
    from buildbot_stats.cli.spool_info import format_table

    backend = {"queue_key": "StatsService/influx\x1b[2J", "points": 12345, "bytes": 1104221}
    times = {"oldest_ns": 1_714_557_600 * 10**9, "newest_ns": 1_714_557_600 * 10**9 + 61 * 10**9}
    info = {"path": "/srv/spool.sqlite", "schema": 4, "unreadable_segments": 2}
    text = format_table(
        {
            **info,
            "backends": [
                {**backend, **times},
                {**backend, "queue_key": "old/b", "points": 3, "oldest_ns": None, "newest_ns": None},
            ],
        }
    )
    assert text.splitlines() == [
        "spool /srv/spool.sqlite (schema 4)",
        "backend                     pending points         oldest (UTC)         newest (UTC)      bytes",
        "--------------------------  --------------  -------------------  -------------------  ---------",
        "StatsService/influx\\x1b[2J          12,345  2024-05-01 10:00:00  2024-05-01 10:01:01  1,104,221",
        "old/b                                    3                    -                    -  1,104,221",
        "2 unreadable segment(s) in table buildbot_stats_unreadable",
    ]
    assert format_table({**info, "backends": [], "unreadable_segments": 0}).splitlines()[1:] == [
        "no pending points"
    ]
