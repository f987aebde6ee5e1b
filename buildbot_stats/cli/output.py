"""How every ``buildbot-stats`` command shows things to people: names, numbers, times, tables, progress.

One place for each, so that the commands look alike: a name read from a store
or a database never reaches a terminal with its control characters, a table is
always a header, a rule and aligned rows, and progress is one line redrawn on
a terminal or a plain line now and then elsewhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from typing import IO, NamedTuple

from buildbot_stats.ui.formatting import MAX_NS, MIN_NS, format_number, format_rate, format_time, visible

__all__ = [
    "MAX_CELL",
    "MAX_NS",
    "MIN_NS",
    "Progress",
    "Table",
    "format_number",
    "format_rate",
    "format_time",
    "table_lines",
    "visible",
]

#: the longest cell of a text table; longer names are cut with an ellipsis
MAX_CELL = 60


class Table(NamedTuple):
    """Rows of text cells under headers; the columns in ``left`` are text, the others numbers."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    left: Collection[int] = (0,)


def table_lines(table: Table) -> list[str]:
    """The header, a rule of dashes and the rows, in columns two spaces apart.

    Text columns are left-aligned, numbers right-aligned; every cell goes
    through :func:`visible`, cut at :data:`MAX_CELL` characters.
    """
    rows = [[visible(c, MAX_CELL) for c in r] for r in table.rows]
    headers = list(table.headers)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        parts = [c.ljust(w) if i in table.left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Builds done of ``total``, shown on ``stream``.

    On a terminal: one line redrawn in place (a bar, the time elapsed, the rate
    and the time left), with :meth:`say`'s lines above it.  Elsewhere (a pipe,
    a log): a plain line when the count changed, at most one every ``every``
    seconds, and the last count at :meth:`finish`, so that a log stays short.
    """

    BAR = 30

    def __init__(self, total: int, stream: IO[str], label: str = "", every: float = 0.0) -> None:
        self.total = total
        self.stream = stream
        self.label = label
        self.every = every
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.done = 0
        self._printed: int | None = None  # the count of the last plain line
        self._printed_at = -math.inf
        self._drawn = False  # a terminal line is open

    def text(self) -> str:
        """``builds done 3/10, 4.2s elapsed, 0.71 builds/s, ETA 0:10``."""
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = _clock((self.total - self.done) / rate) if rate > 0 else "--:--"
        shown = f"{rate:.1f}" if rate >= 1 else f"{rate:.2f}"  # a slow demo: 0.05, not 0.0
        return f"builds done {self.done}/{self.total}, {elapsed:.1f}s elapsed, {shown} builds/s, ETA {eta}"

    def update(self, done: int) -> None:
        self.done = done
        if self.tty:
            filled = self.BAR * done // self.total if self.total else self.BAR
            label = f"{self.label} " if self.label else ""
            self.stream.write(f"\r{label}[{'#' * filled}{'.' * (self.BAR - filled)}] {self.text()}\x1b[K")
            self._drawn = True
        elif done != self._printed and time.monotonic() - self._printed_at >= self.every:
            self._print()
        self.stream.flush()

    def _print(self) -> None:
        self.stream.write(f"{self.label}: {self.text()}\n" if self.label else f"{self.text()}\n")
        self._printed, self._printed_at = self.done, time.monotonic()

    def say(self, text: str) -> None:
        """A line of its own (above the progress line on a terminal)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        if self._drawn:
            self.update(self.done)
        self.stream.flush()

    def finish(self) -> None:
        """End the line drawn on a terminal; elsewhere print the last count if it was not."""
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False
        elif not self.tty and self.done and self._printed != self.done:
            self._print()
        self.stream.flush()
