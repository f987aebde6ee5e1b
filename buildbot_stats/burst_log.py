"""One log line per burst of the same failure, not one per value.

A capture callback that raises for each of the 20,000 values a build posts
must not write 20,000 lines into twistd.log.  :class:`BurstLog` logs the first
failure of a kind at once (it names the series or capture), counts the
repeats, and sums them up in one line ``window`` seconds (of the reactor's
clock) after the first, or when the service stops (:meth:`BurstLog.flush`).
A burst that goes on gets one summary line per window; a kind of failure that
stayed quiet for a whole window is logged at once again.  A success does not
end a burst: a callback failing for every other value would otherwise log
every failure.

The reactor's clock makes it testable with Buildbot's ``TestReactorMixin``
(``self.reactor.advance(...)``); nothing here is specific to captures, so that
delivery code can use it too.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from twisted.python import log

__all__ = ["BurstLog"]

DEFAULT_WINDOW = 60.0


@dataclass
class _Burst:
    first: str
    started: float
    repeats: int = 0
    last: str = ""
    timer: Any = None


class BurstLog:
    """Rate-limits log lines by kind of failure: the first now, the repeats in one summary.

    ``key`` identifies a kind of failure (e.g. a capture and the exception type).
    """

    def __init__(
        self,
        reactor: Any,
        window: float = DEFAULT_WINDOW,
        emit: Callable[[str], Any] = log.msg,
        prefix: str = "buildbot_stats: ",
    ) -> None:
        self.reactor = reactor
        self.window = window
        self._emit = emit
        self._prefix = prefix
        self._bursts: dict[Hashable, _Burst] = {}

    def __bool__(self) -> bool:
        """True while a burst is open."""
        return bool(self._bursts)

    def failed(self, key: Hashable, message: str) -> None:
        """Log ``message`` if it starts a burst of ``key``, else count it."""
        burst = self._bursts.get(key)
        if burst is None:
            self._bursts[key] = burst = _Burst(message, self.reactor.seconds())
            self._emit(self._prefix + message)
            burst.timer = self.reactor.callLater(self.window, self._window_over, key)
        else:
            burst.repeats += 1
            burst.last = message

    def flush(self) -> None:
        """End every burst (at stop): sum up the repeats, cancel the timers."""
        for key in list(self._bursts):
            self._end(key)

    def _window_over(self, key: Hashable) -> None:
        burst = self._bursts.get(key)
        if burst is None:
            return
        if burst.repeats:
            self._summarise(burst)
            burst.repeats, burst.started = 0, self.reactor.seconds()
            burst.timer = self.reactor.callLater(self.window, self._window_over, key)
        else:
            burst.timer = None
            del self._bursts[key]  # quiet for a whole window: the next failure is logged at once

    def _end(self, key: Hashable) -> None:
        burst = self._bursts.pop(key)
        if burst.timer is not None and burst.timer.active():
            burst.timer.cancel()
        if burst.repeats:
            self._summarise(burst)

    def _summarise(self, burst: _Burst) -> None:
        seconds = self.reactor.seconds() - burst.started
        self._emit(
            f"{self._prefix}{burst.repeats} more failure(s) like this in {seconds:.0f} s: "
            f"{burst.first} (last: {burst.last})"
        )
