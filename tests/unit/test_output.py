"""What every ``buildbot-stats`` command shows: safe names, the one table layout, the one progress display."""

from __future__ import annotations

import io
import types

import pytest

from buildbot_stats.cli import output
from buildbot_stats.cli.output import MAX_CELL, Progress, Table, format_time, table_lines, visible


def test_visible():
    assert visible("plain name") == "plain name"
    assert visible("\x1b]0;owned\x07x\x00") == "\\x1b]0;owned\\x07x\\x00"
    assert visible("a\u202eb\u2066c") == "a\\u202eb\\u2066c"
    assert visible("caf\u00e9 \u65e5\u672c") == "caf\u00e9 \u65e5\u672c"
    assert visible("\ud800") == "\\ud800"
    assert visible("x" * 100, 60) == "x" * 59 + "\u2026"


def test_table_aligns_text_left_and_numbers_right():
    table = Table(
        ["builder", "step", "n"], [["linux", "compile", "12"], ["a-long-builder", "t", "3"]], (0, 1)
    )
    assert table_lines(table) == [
        "builder         step      n",
        "--------------  -------  --",
        "linux           compile  12",
        "a-long-builder  t         3",
    ]


def test_table_cells_are_made_visible_and_cut():
    lines = table_lines(Table(["name", "n"], [["evil\x1b[2J", "1"], ["x" * 100, "2"]]))
    assert lines[2] == "evil\\x1b[2J" + " " * (MAX_CELL - 11) + "  1"
    assert lines[3] == "x" * (MAX_CELL - 1) + "\u2026  2"
    assert "\x1b" not in "".join(lines)


def test_format_time_in_and_out_of_range():
    assert format_time(1_714_557_600 * 10**9) == "2024-05-01T10:00:00Z"
    assert format_time(1_714_557_600 * 10**9 + 999_999_999, "%Y-%m-%d %H:%M:%S") == "2024-05-01 10:00:00"
    assert format_time(None) is None
    assert format_time(10**30) is None and format_time(-(10**30)) is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(output, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    return clock


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_in_a_log_is_a_line_per_count(clock):
    out = io.StringIO()
    progress = Progress(4, out)
    progress.say("starting")
    for done, seconds in ((0, 1.0), (0, 0.5), (1, 0.5), (3, 2.0), (4, 1.0)):
        clock.now += seconds
        progress.update(done)
    progress.finish()
    assert out.getvalue().splitlines() == [
        "starting",
        "builds done 0/4, 1.0s elapsed, 0.00 builds/s, ETA --:--",
        "builds done 1/4, 2.0s elapsed, 0.50 builds/s, ETA 0:06",
        "builds done 3/4, 4.0s elapsed, 0.75 builds/s, ETA 0:01",
        "builds done 4/4, 5.0s elapsed, 0.80 builds/s, ETA 0:00",
    ]


def test_progress_in_a_log_at_most_every_so_often_and_the_last(clock):
    out = io.StringIO()
    progress = Progress(3600 * 2, out, "backfill", every=10.0)
    for done in range(1, 101):
        clock.now += 1.0
        progress.update(done)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        f"backfill: builds done {n}/7200" for n in (1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100)
    ]
    assert lines[-1] == "backfill: builds done 100/7200, 100.0s elapsed, 1.0 builds/s, ETA 1:58:20"


def test_progress_on_a_terminal_is_one_line_redrawn(clock):
    out = Terminal()
    progress = Progress(10, out, "backfill")
    clock.now += 2.0
    progress.update(5)
    progress.say("a backend is slow")
    progress.finish()
    bar = "[" + "#" * 15 + "." * 15 + "]"
    line = f"\rbackfill {bar} builds done 5/10, 2.0s elapsed, 2.5 builds/s, ETA 0:02\x1b[K"
    assert out.getvalue() == line + "\r\x1b[K" + "a backend is slow\n" + line + "\n"
    progress.finish()  # once ended, nothing more
    assert out.getvalue().endswith(line + "\n")
