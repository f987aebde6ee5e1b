"""Each backend's spooled points to it: one queue per backend, one write in flight, retries.  A queue
takes a batch in one spool call (the next while one is posted) and releases it once accepted: two
batches per backend in memory whatever the backlog, sent in spool order."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from twisted.internet import defer, threads
from twisted.python import log
from twisted.python.failure import Failure

from buildbot_stats.burst_log import BurstLog
from buildbot_stats.delivery.spool import COLUMNS, QUARANTINE, Batch, SpoolState, SpoolThread, SQLiteSpool
from buildbot_stats.delivery.writer import Route, SpoolResult, SpoolWriter, points_phrase
from buildbot_stats.errors import PartialDeliveryError, RefusedWriteError, SplitBatchError
from buildbot_stats.lineprotocol import split_lines
from buildbot_stats.options import DeliveryPolicy
from buildbot_stats.point import PointProblem
from buildbot_stats.storage_backends.base import (
    IEncodedWrites,
    IPreparedWrites,
    WriteReport,
    post_points,
    provides,
    warn_deprecated_attributes,
)

#: the most points that wait while spool writes follow one another: small posts, often (no GIL-long post)
HOLD_POINTS = 500


@dataclass
class Counters:
    """What happened to the points of one backend since the master started."""

    captured: int = 0  # handed to the queue by a capture
    spooled: int = 0  # written to the durable spool file
    written: int = 0  # accepted by the backend
    retried: int = 0  # points in batches that had to be sent again
    dropped: int = 0  # lost on purpose: rejected by the backend or pushed out of a full spool
    pending: int = 0  # not yet accepted by the backend

    def add(self, other: Counters) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class DeliveryReport:
    """One backend's counters, the spool's last word on its points, and the log lines about them:
    a failure, a full spool and a rejected value are each said once per burst, not per write."""

    def __init__(self, key: str, policy: DeliveryPolicy, reactor: Any) -> None:
        self.key, self.policy = key, policy
        self.counters = Counters()
        self.spool = SpoolState()  # as of the last spool call: pending and untaken points
        self.dropped_in_burst = 0  # by the spool's bounds, since the backend last accepted a write
        self.failure: str | None = None  # the failure last logged, until a write succeeds
        self.problem_log = BurstLog(reactor)

    def update(self, state: SpoolState) -> None:
        """What a spool call did: points spooled, dropped by the bounds, set aside as unreadable."""
        self.spool = state
        self.counters.spooled += state.spooled
        self.counters.dropped += state.dropped + state.quarantined
        if state.dropped and not self.dropped_in_burst:
            bytes_ = self.policy.max_spool_bytes
            bound = f"{self.policy.max_spool_points} points" + (f" or {bytes_} bytes" if bytes_ else "")
            until = "dropping the oldest points until the backend accepts writes again"
            log.msg(f"buildbot_stats: spool of backend {self.key!r} is full ({bound}): {until}")
        self.dropped_in_burst += state.dropped
        if state.quarantined:
            moved = f"their segments were moved to the table {QUARANTINE}"
            self._log(state.quarantined, f"could not be read from the spool; {moved}")

    def _log(self, n: int, what: str) -> None:
        log.msg(f"buildbot_stats: {points_phrase(n)} of backend {self.key!r} {what}")

    def current(self) -> Counters:
        return replace(self.counters, pending=self.spool.pending)

    def spooled(self, result: SpoolResult, key: str) -> SpoolState | None:
        """Count what a spool write did to the points of spool key ``key``; its state, if it wrote any."""
        self.counters.captured += result.captured.get(key, 0)
        self.counters.dropped += result.dropped.get(key, 0)
        if key in result.problems:
            self.problems(result.problems[key])
        state = result.states.get(key)
        if state is not None:
            self.update(state)
        return state

    def found(self, state: SpoolState) -> None:
        """The spool's counts at start: say how many points a previous run left."""
        self.update(state)
        if state.pending:
            found = f"{points_phrase(state.pending)} found in the spool"
            log.msg(f"buildbot_stats: {found} to send to backend {self.key!r}")

    def failed(self, error: Any, what: str, then: str) -> None:
        """Log "``what`` (the error); N points kept``then``", unless that failure was the last one logged."""
        message = f"{type(error).__name__}: {error}"
        if self.failure != message:
            log.msg(f"buildbot_stats: {what} ({message}); {points_phrase(self.spool.pending)} kept{then}")
            self.failure = message

    def dropped(self, sent: int, error: BaseException, series: str | None) -> None:
        """``sent`` points the backend will never take: the one it refused alone, or another kind's."""
        self.counters.dropped += sent
        if series is not None:
            self.problems([PointProblem(series, "*", f"refused by the backend: {error}")])
        else:
            self._log(sent, f"were dropped: {error}")

    def accepted(self, report: WriteReport | None, sent: int) -> None:
        """The backend took ``sent`` points (less those its report says it rejected)."""
        rejected = report.rejected_points if report else 0
        self.counters.written += sent - rejected
        self.counters.dropped += rejected
        if report and report.problems:
            self.problems(report.problems)
        if self.failure is not None:
            again = f"accepts writes again; {points_phrase(self.spool.pending)} still pending"
            log.msg(f"buildbot_stats: backend {self.key!r} {again}; counters {self.current().as_dict()}")
            self.failure = None
        if self.dropped_in_burst:
            self._log(self.dropped_in_burst, "were dropped: spool full")
            self.dropped_in_burst = 0

    def problems(self, problems: list[PointProblem]) -> None:
        """One line per series, field and problem (and burst): the values converted or rejected."""
        for p, n in Counter(problems).items():
            what = "rejected" if p.rejected else "converted"
            times = f" ({n} values)" if n > 1 else ""
            self.problem_log.failed(
                (what, p.series, p.field, p.reason),
                f"backend {self.key!r} {what} field {p.field!r} of series {p.series!r}: {p.reason}{times}",
            )

    def stopped(self, durable: bool) -> None:
        fate = "stay in the spool and are sent after the next start"
        if not durable:
            fate = "are lost: there is no spool file (spool_path=None or unusable)"
        if self.spool.pending:
            self._log(self.spool.pending, fate)
        self.problem_log.flush()


class _NotForThisBackendError(Exception):
    """Encoded points that the backend of their queue cannot take (it was replaced by another kind)."""


def thd_post_batch(backend: Any, batch: Batch, offset: int, limit: int) -> WriteReport | None:
    """Post ``limit`` points of ``batch`` from ``offset``, in a thread: points, or the bytes encoded once,
    to any backend that can post them (a v1 InfluxDB backend's line protocol to the v2 one replacing it)."""
    if batch.encoding == COLUMNS:
        return post_points(backend, batch.payload[offset : offset + limit])
    if not provides(backend, IEncodedWrites, "thd_post_encoded"):
        raise _NotForThisBackendError(f"it cannot take points encoded as {batch.encoding!r}")
    data = batch.payload
    if offset or limit < batch.n:
        data = b"\n".join(split_lines(data, batch.encoding)[offset : offset + limit])
    return backend.thd_post_encoded(data, batch.encoding)  # type: ignore[no-any-return]


class State(enum.Enum):
    """What a :class:`DeliveryQueue` is doing."""

    IDLE = "idle"  # nothing in flight: it writes, or reads, what is pending (if not held back)
    PREPARING = "preparing"  # the backend's prepare(master) runs
    READING = "reading"  # a spool call takes the next batch (and releases the last one)
    WRITING = "writing"  # one write in flight
    WAITING = "waiting"  # for the retry of a failed write, prepare or spool read
    STOPPED = "stopped"  # for good; a write still in flight is counted when it ends


#: the allowed transitions (stop() gives up on a call that outlives flush_timeout)
TRANSITIONS: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.PREPARING, State.READING, State.WRITING, State.STOPPED}),
    State.PREPARING: frozenset({State.IDLE, State.WAITING, State.STOPPED}),
    State.READING: frozenset({State.IDLE, State.WAITING, State.STOPPED}),
    State.WRITING: frozenset({State.IDLE, State.WAITING, State.STOPPED}),
    State.WAITING: frozenset({State.IDLE}),
    State.STOPPED: frozenset(),
}


class DeliveryQueue:
    """Writes one backend's spooled points to it, in order, at least once, retrying with backoff.  Its
    ``prepare(master)`` runs before the first write and after a refused one: secrets fixed are used."""

    def __init__(self, key: str, backend: Any, policy: DeliveryPolicy, queues: QueueSet) -> None:
        self.key, self.spool_key = key, f"{queues.service_name}/{key}"
        self.backend, self.master, self.policy = backend, queues.master, policy
        self.state = State.IDLE
        self.report = DeliveryReport(key, policy, queues.reactor)
        self.counters = self.report.counters
        self._holding = queues.writer.holding  # true while the spool writer holds delivery back
        self._spool, self._reactor = queues.spool, queues.reactor
        self._batch: Batch | None = None  # taken from the spool, not all accepted yet
        self._release: list[int] = []  # segments all accepted: released with the next spool call
        self._next: defer.Deferred | None = None  # the next batch, read while one is posted
        self._prepared: Any = None  # the backend object whose prepare() succeeded
        self._retry_call: Any = None  # the delayed call of the retry (WAITING)
        self._attempt = 0  # failed writes in a row
        self._batch_limit = policy.batch_size  # halved while the backend asks for smaller batches
        self._stopping = False
        self._drained: defer.Deferred | None = None  # stop() waits: fires once nothing is left to do

    def _to(self, state: State) -> None:
        assert state in TRANSITIONS[self.state], f"{self.state} -> {state}"
        self.state = state

    @property
    def pending(self) -> int:
        return self.report.spool.pending

    def use(self, backend: Any, policy: DeliveryPolicy) -> None:
        """A reconfig replaced the backend (same name) or the policy; pending points stay."""
        self.backend = backend
        self.policy = self.report.policy = policy
        self.send()

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Start with the oldest segment in the spool (points found at start-up go first)."""
        _, state = yield self._spool.call(SQLiteSpool.thd_take, self.spool_key, 0, (), True)
        self.report.found(state)
        self.send()

    def send(self) -> None:
        """In IDLE: prepare the backend, or write the next batch, or read it; else nothing."""
        if self.state is not State.IDLE:
            return
        if self._prepared is not self.backend and provides(self.backend, IPreparedWrites):
            self._to(State.PREPARING)  # on failure the points wait, and it is tried again later
            d = defer.maybeDeferred(self.backend.prepare, self.master)
            d.addBoth(self._prepared_or_not, self.backend)
        elif (batch := self._batch) is not None:
            if self._next is None and self.report.spool.untaken > 0 and not self._held():
                self._next = self._read(self.policy.batch_size)  # (before the post: it may end at once)
            self._to(State.WRITING)
            limit = min(self._batch_limit, batch.n - batch.offset)
            d = threads.deferToThread(thd_post_batch, self.backend, batch, batch.offset, limit)
            d.addCallbacks(self._written, self._write_failed, callbackArgs=(limit,), errbackArgs=(limit,))
        elif self._next is not None or self._release or (self.report.spool.untaken > 0 and not self._held()):
            self._to(State.READING)
            asked = 0 if self._next is None and self._held() else self.policy.batch_size
            d = self._next if self._next is not None else self._read(asked)
            self._next = None
            d.addCallbacks(self._batch_read, self._read_failed, callbackArgs=(asked,))
        else:
            self._fire_drained()
            return
        d.addErrback(log.err, "buildbot_stats: internal error in delivery")

    def _held(self) -> bool:
        """Whether the writer holds delivery back (it calls send): no batch due or dropped, not stopping."""
        due = min(self.policy.batch_size, self.policy.max_spool_points, HOLD_POINTS)  # (what the bounds keep)
        dropped = self.report.dropped_in_burst
        return not self._stopping and self._holding() and self.report.spool.untaken < due and not dropped

    def _read(self, max_points: int, rewind: bool = False) -> defer.Deferred:
        """One spool call: release the segments accepted, rewind if asked, take up to ``max_points``."""
        release, self._release = self._release, []
        d = self._spool.call(SQLiteSpool.thd_take, self.spool_key, max_points, release, rewind)

        def done(result: tuple[Batch | None, SpoolState] | Failure) -> Batch | None | Failure:
            if isinstance(result, Failure):
                self._release += release  # released with the next call
                return result
            self.report.update(result[1])
            return result[0]

        return d.addBoth(done)

    def _batch_read(self, batch: Batch | None, asked: int) -> None:
        if self.state is State.STOPPED:
            return
        self._batch = batch  # (None in READING)
        if batch is None and asked:
            self.report.spool.untaken = 0  # nothing to take after all: do not ask again
        self._idle()

    def _read_failed(self, failure: Failure) -> None:
        why = failure.getErrorMessage()
        log.msg(f"buildbot_stats: could not read the spool for backend {self.key!r} ({why}); retrying")
        if self.state is State.READING:
            self._failed(self.policy.max_retry_delay)

    def _prepared_or_not(self, result: Any, backend: Any) -> None:
        if self.state is State.STOPPED:
            return
        if backend is self.backend and isinstance(result, Failure):
            again = f"; tried again every {self.policy.max_retry_delay:.0f}s"
            self.report.failed(result.value, f"backend {self.key!r} is not ready", again)
            return self._failed(self.policy.max_retry_delay)
        if backend is self.backend:
            self._prepared = backend
        self._idle()  # prepared, or replaced meanwhile (then the new one is prepared)

    def _advance(self, count: int) -> None:
        """``count`` more points of the batch left for good (accepted or dropped)."""
        batch = self._batch
        if batch is not None:
            batch.offset += count
            if batch.offset >= batch.n:
                self._batch = None
                self._release += batch.ids
                if self._next is not None or self.state is State.STOPPED:  # release now, not with a take
                    self._read(0).addErrback(lambda _: None)  # (if it fails: with the next call)

    def _written(self, report: WriteReport | None, sent: int) -> None:
        self.report.accepted(report, sent)
        self._advance(sent)
        if self.state is not State.STOPPED:
            self._attempt = 0
            self._batch_limit = self.policy.batch_size
            self._idle()

    def _write_failed(self, failure: Failure, sent: int) -> None:
        batch, error = self._batch, failure.value
        if isinstance(error, PartialDeliveryError):
            self.counters.written += error.delivered
            self._advance(error.delivered)
            sent -= error.delivered
            error = error.cause
        if self.state is State.STOPPED:
            self.counters.retried += sent  # (they stay in the spool)
            return
        if isinstance(error, SplitBatchError) and sent > 1:
            self._batch_limit = max(1, sent // 2)  # then the halves, and so on
        elif isinstance(error, (SplitBatchError, _NotForThisBackendError)):
            # one point refused alone is the bad one; points of another kind of backend
            series = None
            if isinstance(error, SplitBatchError) and batch is not None:
                series = batch.payload[batch.offset].series if batch.encoding == COLUMNS else "?"
            self.report.dropped(sent, error, series)
            self._advance(sent)
        else:
            self._retry_later(error, sent)
            return
        self._idle()

    def _retry_later(self, error: Any, sent: int) -> None:
        batch = self._batch
        self._attempt += 1
        self.counters.retried += sent
        if batch is not None and batch.offset == 0:
            # give it back so that the bounds can drop its points (not one written in part: read whole again)
            self._batch = None
            if self._next is not None:  # taken before the rewind: read again after it
                self._next.addErrback(lambda _: None)
                self._next = None
            self._read(0, rewind=True).addErrback(self._read_failed)
        refused = isinstance(error, RefusedWriteError)
        if refused:
            self._prepared = None  # e.g. render the password again: it may have been fixed
        until_fixed = f" every {self.policy.max_retry_delay:.0f}s until fixed" if refused else ""
        what = f"writing {points_phrase(sent)} to backend {self.key!r} failed"
        self.report.failed(error, what, f" and retried{until_fixed}")
        retry_after = getattr(error, "retry_after", None)  # a TransientWriteError's (Retry-After)
        self._failed(max(self.policy.retry_delay(self._attempt, refused), float(retry_after or 0)))

    def _failed(self, delay: float) -> None:
        """A call failed: retry after ``delay`` seconds, or, when stopping, give up."""
        if self._stopping:
            self._to(State.IDLE)
            self._fire_drained()
        else:
            self._to(State.WAITING)
            self._retry_call = self._reactor.callLater(delay, self._idle)

    def _idle(self, *_: Any) -> None:
        """Back to IDLE (a call ended, or a retry is due), and on to what is next."""
        self._retry_call = None
        self._to(State.IDLE)
        self.send()

    def _fire_drained(self) -> None:
        d, self._drained = self._drained, None
        if d is not None:
            d.callback(None)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Deliver what can be delivered within ``flush_timeout`` seconds; the rest stays spooled."""
        if self._stopping:
            return
        self._stopping = True
        if self._retry_call is not None:
            self._retry_call.cancel()
            self._to(State.IDLE)
        # one last drain, unless the backend was failing: then only give the call in flight its time
        draining = self.pending and self.report.failure is None
        if draining or self.state is not State.IDLE:
            timeout = self.policy.flush_timeout
            drained = self._drained = defer.Deferred()
            self.send()  # (fires it at once if there is nothing to do)
            try:
                yield drained.addTimeout(timeout, self._reactor)
            except defer.TimeoutError:
                if draining:
                    late = f"did not take all points within {timeout}s at shutdown"
                    log.msg(f"buildbot_stats: backend {self.key!r} {late}")
            self._drained = None
        self._to(State.STOPPED)
        self.report.stopped(self._spool.spool.durable)


def backend_name(backend: Any) -> str:
    return getattr(backend, "name", None) or type(backend).__name__


def backend_keys(backends: Sequence[Any]) -> list[str]:
    """A stable key per backend (its name), made unique by a ``#n`` suffix."""
    keys: list[str] = []
    for backend in backends:
        key, n = backend_name(backend), 1
        while key in keys:
            n += 1
            key = f"{backend_name(backend)}#{n}"
        keys.append(key)
    return keys


class QueueSet:
    """The queues of one StatsService by backend key (its name), kept across reconfigs with their points;
    a removed key's points stay spooled until a backend of that name comes back."""

    def __init__(self, service_name: str, spool: SpoolThread, reactor: Any, master: Any = None) -> None:
        self.service_name, self.spool, self.reactor = service_name, spool, reactor
        self.master = master  # handed to backends' prepare(master), e.g. to render secrets
        self.queues: dict[str, DeliveryQueue] = {}
        self.writer = SpoolWriter(spool, self._spooled, self._send, orphan_prefix=f"{service_name}/")
        self._retired = Counters()  # counters of queues removed by a reconfig
        self._orphans_logged: set[str] = set()
        #: values that could not become points (a custom capture's bad time, say): one line per burst
        self._unstored_log = BurstLog(reactor)
        #: id(backend) -> queue key, now and in the previous config (a capture busy in a reconfig stores on)
        self._key_by_backend: dict[int, str] = {}
        self._previous_key_by_backend: dict[int, str] = {}
        #: id(capture) -> (its parent_svcs, their number, their queue keys)
        self._capture_keys: dict[int, tuple[list[Any], int, tuple[str, ...]]] = {}

    @defer.inlineCallbacks
    def configure(self, backends: Sequence[Any], policy: DeliveryPolicy) -> Any:
        """Make the queues match ``backends``, keeping pending points of backends that stay."""
        old, self.queues = self.queues, {}
        routes: dict[str, Route] = {}
        new_queues = []
        for key, backend in zip(backend_keys(backends), backends):
            warn_deprecated_attributes(backend)
            queue = old.pop(key, None)
            if queue is None:
                queue = DeliveryQueue(key, backend, policy, self)
                new_queues.append(queue)
            else:
                queue.use(backend, policy)
            self.queues[key] = queue
            encode = backend.thd_encode if provides(backend, IEncodedWrites) else None
            bounds = (policy.max_spool_points, policy.max_spool_bytes)
            routes[key] = Route(queue.spool_key, encode, policy.batch_size, bounds)
        self.writer.routes = routes  # spool writes from now on
        self._previous_key_by_backend = self._key_by_backend
        self._key_by_backend = {id(queue.backend): key for key, queue in self.queues.items()}
        self._capture_keys = {}
        for queue in old.values():
            yield queue.stop()
            self._retired.add(queue.counters)
        for queue in new_queues:
            try:
                yield queue.start()
            except Exception as e:  # statistics must never keep the master from starting
                log.msg(f"buildbot_stats: cannot read the spool for backend {queue.key!r}: {e}")
        try:
            counts = yield self.spool.call(SQLiteSpool.thd_pending_counts)
        except Exception:
            return
        for key, n in sorted(counts.items()):
            self._log_orphan(key, f"the spool holds {n} point(s) of backend {{}}, which is not configured")

    def route_keys(self, capture: Any) -> tuple[str, ...]:
        """The queue keys of the backends ``capture`` belongs to (what its records name), worked out
        once per capture and config (again if its ``parent_svcs`` changed)."""
        svcs = capture.parent_svcs
        hit = self._capture_keys.get(id(capture))
        if hit is not None and hit[0] is svcs and hit[1] == len(svcs):
            return hit[2]
        current, previous = self._key_by_backend, self._previous_key_by_backend
        # an old backend object: the queue of its key ("Name#2"), else of its name
        keys = tuple(current.get(id(b)) or previous.get(id(b)) or backend_name(b) for b in svcs)
        self._capture_keys[id(capture)] = (svcs, len(svcs), keys)
        return keys

    def _spooled(self, result: SpoolResult) -> None:
        """A spool write is done: say what went wrong, and tell each queue what it did."""
        for message in result.errors:
            log.msg(f"buildbot_stats: {message}")
        for (series, why), n in result.unstored.items():
            for _ in range(n):
                self._unstored_log.failed((series, why), f"a value of series {series} was not stored: {why}")
        for spool_key in set(result.states) | set(result.captured) | set(result.dropped):
            queue = self.queues.get(spool_key.removeprefix(f"{self.service_name}/"))
            if queue is not None:  # (it sends only when no longer held: see _held)
                queue.report.spooled(result, spool_key)
                queue.send()
                continue
            captured = result.captured.get(spool_key, 0)
            self._retired.captured += captured
            self._retired.dropped += result.dropped.get(spool_key, 0)
            if captured:
                way = f"its points that were on their way to the spool ({points_phrase(captured)} so far)"
                self._log_orphan(spool_key, "backend {} is no longer configured: " + way + " are kept there")

    def _log_orphan(self, spool_key: str, what: str) -> None:
        """Say ``what`` (``{}``: the backend key) once, for a spool key of this service's not configured."""
        mine = f"{self.service_name}/"
        key = spool_key[len(mine) :]
        if spool_key.startswith(mine) and key not in self.queues and key not in self._orphans_logged:
            self._orphans_logged.add(key)
            then = "; they are sent if a backend of that name is configured again"
            log.msg(f"buildbot_stats: {what.format(repr(key))}{then}")

    def _send(self) -> None:
        """The spool writer is done for now: every queue sends what it has."""
        for queue in list(self.queues.values()):
            queue.send()

    def totals(self) -> dict[str, int]:
        """Counters summed over all backends, removed ones included."""
        total = replace(self._retired)
        for queue in self.queues.values():
            total.add(queue.report.current())
        return total.as_dict()

    def per_backend(self) -> dict[str, dict[str, int]]:
        return {key: queue.report.current().as_dict() for key, queue in self.queues.items()}

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Spool what was recorded, then stop every queue (each within its ``flush_timeout``)."""
        yield self.writer.waiter()
        self._unstored_log.flush()
        for queue in self.queues.values():
            yield queue.stop()
        self.queues = {}
