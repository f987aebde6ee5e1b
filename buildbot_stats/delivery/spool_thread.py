"""The reactor's side of the spool: the one thread that runs its blocking calls in order, and opening it.

:func:`open_spool` falls back to memory, with one log line, when the file cannot be used
(statistics never keep a master from starting), unless the path names somebody else's file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, threads
from twisted.python import log, threadpool

from buildbot_stats.delivery.spool import ForeignSpoolFileError, SQLiteSpool

__all__ = ["SpoolThread", "open_spool", "spool_file"]


class SpoolThread:
    """A spool and the one thread that runs its ``thd_*`` methods, in the order they are called."""

    def __init__(self, spool: SQLiteSpool, reactor: Any) -> None:
        self.spool = spool
        self.path, self.durable = spool.path, spool.durable
        self._reactor = reactor
        self._pool: threadpool.ThreadPool | None = threadpool.ThreadPool(
            minthreads=1, maxthreads=1, name="buildbot_stats-spool"
        )
        self._pool.start()
        # not a daemon thread: left running, it would keep the process alive after its reactor
        # stopped (a failed start, a stop that never reached the service, a close() whose call
        # the stopping reactor never answered): so the trigger stays until the reactor stops
        self._closing = False
        reactor.addSystemEventTrigger("during", "shutdown", self._stop_thread)

    @property
    def running(self) -> bool:
        return self._pool is not None

    def call(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``f(spool, *args)`` on the spool's thread: a ``thd_*`` method of its class, say."""
        if self._pool is None:
            return defer.fail(RuntimeError(f"the thread of {self.spool!r} was stopped"))
        return threads.deferToThreadPool(self._reactor, self._pool, f, self.spool, *args)

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
        if pool is not None:
            pool.stop()


def spool_file(spool_path: str | None, basedir: str | None) -> str | None:
    """The spool's file for ``spool_path`` (relative to the master's basedir), or None for memory."""
    if spool_path is None or (basedir is None and not os.path.isabs(spool_path)):
        return None
    return os.path.join(basedir or "", os.path.expanduser(spool_path))


@defer.inlineCallbacks
def open_spool(spool_path: str | None, basedir: str | None, reactor: Any) -> Any:
    """Open the spool for ``spool_path``: a :class:`SpoolThread` (for a memory spool too: off the reactor)."""
    path = spool_file(spool_path, basedir)
    if path is not None:
        spool = SpoolThread(SQLiteSpool(path), reactor)
        try:
            yield spool.call(SQLiteSpool.thd_open)
        except ForeignSpoolFileError:
            yield spool.close()
            raise  # somebody else's file: a configuration error, not a reason to fall back
        except Exception as e:
            yield spool.close()
            log.msg(
                f"buildbot_stats: cannot open the spool {path} ({type(e).__name__}: {e}); "
                "pending points are kept in memory only"
            )
        else:
            if spool.spool.notice:
                log.msg(f"buildbot_stats: {spool.spool.notice}")
            return spool
    elif spool_path is not None:
        log.msg("buildbot_stats: no master basedir; pending points are kept in memory only")
    spool = SpoolThread(SQLiteSpool(None), reactor)
    yield spool.call(SQLiteSpool.thd_open)
    return spool
