"""The reactor's side of the spool: the one thread that runs its blocking calls in order, and its log.

A spool that keeps new points in memory (its file full, or not open) is tried again on the
reactor's clock: a second after the call that found it so, then twice as long each time, up to a minute.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, threads
from twisted.python import log, threadpool

from buildbot_stats.delivery.spool import SQLiteSpool

RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0


class SpoolThread:
    """A spool and the one thread that runs its ``thd_*`` methods, in the order they are called."""

    def __init__(self, spool: SQLiteSpool, reactor: Any) -> None:
        self.spool, self.path = spool, spool.path
        #: what a retry runs: a spool write of nothing (the spool writer sets its own, to hear the result)
        self.retry: Callable[[], Any] = lambda: self.call(SQLiteSpool.thd_write, [], {})
        self._retry_call: Any = None
        self._retry_delay = RETRY_FIRST_S
        self._reactor = reactor
        pool = threadpool.ThreadPool(minthreads=1, maxthreads=1, name="buildbot_stats-spool")
        self._pool: threadpool.ThreadPool | None = pool
        pool.start()
        # not a daemon thread: left running, it would keep the process alive after its reactor
        # stopped (a failed start, say): so the trigger stays until the reactor stops
        self._closing = False
        reactor.addSystemEventTrigger("during", "shutdown", self._stop_thread)

    @property
    def running(self) -> bool:
        return self._pool is not None

    @property
    def durable(self) -> bool:
        return self.spool.durable

    def call(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``f(spool, *args)`` on the spool's thread: a ``thd_*`` method of its class, say."""
        if self._pool is None:
            return defer.fail(RuntimeError(f"the thread of the spool {self.path} was stopped"))
        return threads.deferToThreadPool(self._reactor, self._pool, f, self.spool, *args).addBoth(self._after)

    def _after(self, result: Any) -> Any:
        """Say what the spool found; try it again later while it keeps new points in memory."""
        while self.spool.notices:
            log.msg(f"buildbot_stats: {self.spool.notices.pop(0)}")
        if self.spool.degraded is None:
            self._retry_delay = RETRY_FIRST_S
        elif self._retry_call is None and self._pool is not None and not self._closing:
            self._retry_call = self._reactor.callLater(self._retry_delay, self._retry)
            self._retry_delay = min(2 * self._retry_delay, RETRY_MAX_S)
        return result

    def _retry(self) -> None:
        self._retry_call, self.spool.open_due = None, True
        self.retry()

    def idle(self) -> defer.Deferred:
        """Fires once every call made so far has run."""
        return self.call(lambda spool: None)

    @defer.inlineCallbacks
    def close(self) -> Any:
        """Close the spool, then stop its thread (also when closing fails)."""
        if self._closing or self._pool is None:  # (closed once)
            return
        self._closing = True
        try:
            yield self.call(SQLiteSpool.thd_close)
        finally:
            self._stop_thread()

    def _stop_thread(self) -> None:
        """Stop the thread (waiting for the call it runs); later calls fail instead of hanging."""
        pool, self._pool = self._pool, None
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        if pool is not None:
            pool.stop()


def spool_file(spool_path: str | None, basedir: str | None) -> str | None:
    """The spool's file for ``spool_path`` (relative to the master's basedir), or None for memory."""
    if spool_path is None or (basedir is None and not os.path.isabs(spool_path)):
        return None
    return os.path.join(basedir or "", os.path.expanduser(spool_path))


@defer.inlineCallbacks
def open_spool(spool_path: str | None, basedir: str | None, reactor: Any) -> Any:
    """Open the spool for ``spool_path`` (a file that is not a spool is refused): a :class:`SpoolThread`."""
    path = spool_file(spool_path, basedir)
    if path is None and spool_path is not None:
        log.msg("buildbot_stats: no master basedir; pending points are kept in memory only")
    spool = SpoolThread(SQLiteSpool(path), reactor)
    try:
        yield spool.call(SQLiteSpool.thd_open)
    except BaseException:
        yield spool.close()
        raise
    return spool
