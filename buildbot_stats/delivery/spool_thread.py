"""The reactor's side of the spool: opening it, and one thread that runs its blocking methods in order.

:func:`open_spool` opens the spool for ``spool_path`` (a file in the master's
basedir, or memory only) and falls back to memory, with one log line, when
the file cannot be used: statistics never keep a master from starting --
unless the path names somebody else's file (``ForeignSpoolFileError``, a
configuration error; that file is left untouched).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer, threads
from twisted.python import log, threadpool

from buildbot_stats.delivery.spool import ForeignSpoolFileError, MemorySpool, NewSegment, SQLiteSpool

__all__ = ["SpoolThread", "open_spool", "spool_file"]


class SpoolThread:
    """Runs one spool's ``thd_*`` methods on a thread of its own, in submission order."""

    def __init__(self, spool: Any, reactor: Any, pool: threadpool.ThreadPool | None = None) -> None:
        self._spool = spool
        self._reactor = reactor
        self._pool = pool
        self._closed = self._stopped = False
        # The pool's thread is not a daemon: left running it keeps the process alive after its
        # reactor stopped (a failed start, a stop that never reached the service).
        self._trigger: Any = None
        if pool is not None:
            self._trigger = reactor.addSystemEventTrigger("during", "shutdown", self._stop_thread)

    def __repr__(self) -> str:
        return f"<SpoolThread {self._spool!r}>"

    @property
    def durable(self) -> bool:
        return bool(self._spool.durable)

    @property
    def path(self) -> str | None:
        return self._spool.path

    @property
    def set_aside(self) -> str | None:
        """Where a file was moved at open, if it was."""
        return self._spool.set_aside

    @property
    def degraded(self) -> str | None:
        """Why the spool file cannot be written now (points are kept in memory), if so."""
        return self._spool.degraded

    @property
    def running(self) -> bool:
        """Whether the spool's own thread runs."""
        return self._pool is not None

    def _run(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._pool is not None:
            return threads.deferToThreadPool(self._reactor, self._pool, f, *args)
        if self._stopped:
            return defer.fail(RuntimeError(f"the thread of {self._spool!r} was stopped"))
        return defer.maybeDeferred(f, *args)

    def call(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``f(spool, *args)`` on the spool's thread (encoding and writing in one go)."""
        return self._run(f, self._spool, *args)

    def open(self) -> defer.Deferred:
        return self._run(self._spool.thd_open)

    def write(self, segments: list[NewSegment], bounds: dict[str, tuple[int, int | None]]) -> defer.Deferred:
        return self._run(self._spool.thd_write, segments, bounds)

    def take(self, queue_key: str, max_points: int) -> defer.Deferred:
        return self._run(self._spool.thd_take, queue_key, max_points)

    def reset(self, queue_key: str) -> defer.Deferred:
        return self._run(self._spool.thd_reset, queue_key)

    def release(self, queue_key: str, segment_ids: Iterable[int]) -> defer.Deferred:
        if self._closed:
            return defer.succeed(None)
        return self._run(self._spool.thd_release, queue_key, list(segment_ids))

    def pending_counts(self) -> defer.Deferred:
        return self._run(self._spool.thd_pending_counts)

    def info(self) -> defer.Deferred:
        return self._run(self._spool.thd_info)

    def idle(self) -> defer.Deferred:
        """Fires once everything submitted so far has run."""
        return self._run(lambda: None)

    @defer.inlineCallbacks
    def close(self) -> Any:
        """Close the spool and stop its thread (also when closing fails)."""
        if not self._closed:
            self._closed = True
            try:
                yield self._run(self._spool.thd_close)
            finally:
                if self._trigger:
                    self._reactor.removeSystemEventTrigger(self._trigger)
                self._stop_thread()

    def _stop_thread(self) -> None:
        """Stop the thread (waiting for the job it runs); later calls fail instead of hanging."""
        pool, self._pool, self._trigger = self._pool, None, None
        if pool is not None:
            self._closed = self._stopped = True
            pool.stop()


def spool_file(spool_path: str | None, basedir: str | None) -> str | None:
    """The spool's file for ``spool_path`` (relative to the master's basedir), or None for memory."""
    if spool_path is None or (basedir is None and not os.path.isabs(spool_path)):
        return None
    return os.path.join(basedir or "", os.path.expanduser(spool_path))


@defer.inlineCallbacks
def open_spool(spool_path: str | None, basedir: str | None, reactor: Any) -> Any:
    """Open the spool for ``spool_path``; fires with a :class:`SpoolThread`.

    Even a memory-only spool runs on a thread of its own: it holds the backlog, off the reactor.
    """
    path = spool_file(spool_path, basedir)
    if path is not None:
        spool = SpoolThread(SQLiteSpool(path), reactor, _pool("buildbot_stats-spool"))
        try:
            yield spool.open()
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
            if spool._spool.notice:
                log.msg(f"buildbot_stats: {spool._spool.notice}")
            return spool
    elif spool_path is not None:
        log.msg("buildbot_stats: no master basedir; pending points are kept in memory only")
    spool = SpoolThread(MemorySpool(), reactor, _pool("buildbot_stats-spool-memory"))
    yield spool.open()
    return spool


def _pool(name: str) -> threadpool.ThreadPool:
    pool = threadpool.ThreadPool(minthreads=1, maxthreads=1, name=name)
    pool.start()
    return pool
