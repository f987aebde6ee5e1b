"""One log line per burst of the same failure, not one per value: the first at once, the repeats
summed up per ``window`` seconds; a window without failure ends the burst (a success does not)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from twisted.python import log

DEFAULT_WINDOW = 60.0


@dataclass
class _Burst:
    first: str
    started: float
    timer: Any = None
    repeats: int = 0
    last: str = ""


class BurstLog:
    """Rate-limits log lines by ``key``, a kind of failure (e.g. a capture and the exception type)."""

    def __init__(
        self, reactor: Any, window: float = DEFAULT_WINDOW, emit: Callable[[str], Any] = log.msg
    ) -> None:
        self.reactor = reactor
        self.window = window
        self._emit = emit
        self._bursts: dict[Hashable, _Burst] = {}

    def failed(self, key: Hashable, message: str) -> None:
        """Log ``message`` if it starts a burst of ``key``, else count it."""
        burst = self._bursts.get(key)
        if burst is None:
            timer = self.reactor.callLater(self.window, self._window_over, key)
            self._bursts[key] = _Burst(message, self.reactor.seconds(), timer)
            self._emit("buildbot_stats: " + message)
        else:
            burst.repeats += 1
            burst.last = message

    def flush(self) -> None:
        """End every burst (at stop): sum up the repeats, cancel the timers."""
        for burst in self._bursts.values():
            if burst.timer.active():
                burst.timer.cancel()
            self._summarise(burst)
        self._bursts.clear()

    def _window_over(self, key: Hashable) -> None:
        burst = self._bursts[key]
        if not burst.repeats:
            del self._bursts[key]  # quiet for a whole window: the next failure is logged at once
            return
        self._summarise(burst)
        burst.repeats, burst.started = 0, self.reactor.seconds()
        burst.timer = self.reactor.callLater(self.window, self._window_over, key)

    def _summarise(self, burst: _Burst) -> None:
        if burst.repeats:
            self._emit(
                f"buildbot_stats: {burst.repeats} more failure(s) like this in "
                f"{self.reactor.seconds() - burst.started:.0f} s: {burst.first} (last: {burst.last})"
            )
