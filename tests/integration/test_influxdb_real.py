"""The InfluxDB backend against a real influxd: what is stored, read back field by field.

* The StatsService on Buildbot's fake master writes through
  InfluxStorageService into a real influxd; every row is read back with a
  query and compared (fields, tags, timestamps, field types).
* Failures of a real server: an outage (connection refused), 503 answers from a
  proxy, type conflicts (against existing data and inside a batch written to a
  new shard), a missing database.
* A property-based test: random names, tags and values written with
  ``thd_postStatsValues`` come back exactly as the rules documented in
  ``buildbot_stats/lineprotocol.py`` say (an independent model of those rules
  is in :func:`expected_point`).

influxd missing: skipped, or an error with ``CI=true`` (``require_influxd``).
With ``TestReactorMixin`` ``deferToThread`` runs at once, so each write is a
blocking HTTP request made during the call that triggers it; retries only run
when the test advances ``self.reactor``.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import re
import shutil
import tempfile
import unittest
import uuid
from typing import Any

from buildbot.test import fakedb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from buildbot_stats import capture
from buildbot_stats.point import Point, to_ns
from buildbot_stats.storage_backends.influxdb_client import InfluxStorageService
from tests.fakes import COMPLETE, STARTED, YIELD_KEY, LoggedStatsTestCase, put_points
from tests.support.faultproxy import FaultProxy
from tests.support.influxd import (
    InfluxServer,
    fresh_database,
    quote_ident,
    require_influxd,
    shared_server,
)

HOST = "127.0.0.1"
BASE_NS = 1_790_000_000_000_000_000  # 2026-09-21: one shard group for all points of a test
TICK_NS = 1_000
TAGS = {"build_number": "1", "builder_name": "builder1"}


class TickClock:
    """Replaces StatsService.clock: the n-th value posted is stamped BASE_NS + n * TICK_NS."""

    def __init__(self) -> None:
        self.n = 0

    def now_ns(self) -> int:
        self.n += 1
        return BASE_NS + self.n * TICK_NS

    def stamps(self, count: int, first: int = 1) -> list[int]:
        return [BASE_NS + n * TICK_NS for n in range(first, first + count)]


def select(server: InfluxServer, db: str, series: str) -> list[dict[str, Any]]:
    """``SELECT *`` (tags and fields as columns), ordered by time."""
    return server.points(series, db)


class InfluxServiceTestCase(LoggedStatsTestCase):
    """The fake master's StatsService with one InfluxStorageService named ``influx``."""

    @defer.inlineCallbacks
    def setUp(self):
        require_influxd()
        yield super().setUp()
        self.setUpLogging()
        self.clock = TickClock()
        self.stats.clock = self.clock
        yield self.add_build()
        self.build_data = yield self.master.data.get(("builds", 1))

    def private_server(self, **options: Any) -> InfluxServer:
        """A running influxd of this test's own (to stop, or with options), removed at cleanup."""
        basedir = tempfile.mkdtemp(prefix="bbstats-influxd-")
        self.addCleanup(shutil.rmtree, basedir, True)
        server = InfluxServer(basedir, **options).start()
        self.addCleanup(server.close)
        return server

    def fresh_db(self, server: InfluxServer) -> str:
        db = fresh_database(server, prefix="bbstats_it")
        self.addCleanup(server.drop_database, db)
        return db

    @defer.inlineCallbacks
    def use_influx(self, port: int, db: str, *captures: Any, **service_kwargs: Any) -> Any:
        backend = InfluxStorageService(
            HOST, port, "root", "root", db, list(captures), name="influx", timeout=5
        )
        yield self.stats.reconfigService([backend], spool_path=None, **service_kwargs)
        return backend

    def post(self, values: list[Any], data_name: str = "m") -> None:
        """One yieldMetricsValue message per value, as a build step's calls would produce."""
        for value in values:
            self.master.mq.callConsumer(
                YIELD_KEY, {"data_name": data_name, "post_data": value, "build_data": self.build_data}
            )

    def put_batch(self, points: list[Point]) -> None:
        """Hand many points to the backend's queue at once, so that they form one batch."""
        put_points(self.stats, points)

    def data_point(self, n: int, fields: dict[str, Any]) -> Point:
        return Point("builder1-m", fields, dict(TAGS), BASE_NS + n * TICK_NS)


class ServiceToInfluxTests(InfluxServiceTestCase):
    @defer.inlineCallbacks
    def test_builds_properties_and_data_are_stored_exactly(self):
        server = shared_server()
        db = self.fresh_db(server)
        yield self.use_influx(
            server.port,
            db,
            capture.CaptureBuildStartTime("builder1"),
            capture.CaptureBuildEndTime("builder1"),
            capture.CaptureBuildDuration("builder1"),
            capture.CaptureBuildResults("builder1"),
            capture.CaptureProperty("builder1", "version"),
            capture.CaptureProperty("builder1", "^test_", regex=True),
            capture.CaptureData("m", "builder1"),
        )
        # build 1 (from setUp) gets its properties here; build 2 is a second build of builder1
        yield self.master.db.insert_test_data(
            [
                fakedb.BuildProperty(buildid=1, name=name, value=value, source="test")
                for name, value in {"version": "1.2.3", "test_count": 42, "test_ratio": 0.5}.items()
            ]
        )
        yield self.add_build(
            buildid=2,
            number=2,
            properties={"version": "2.0", "test_count": 7, "test_ratio": 1.0, "other": "x"},
        )
        complete2 = COMPLETE + datetime.timedelta(seconds=45.5)

        self.post([{"count": 3, "label": "a b,c=d"}, {"count": 4, "ok": True}])
        self.finish(buildid=1, number=1, started=STARTED, complete=COMPLETE)
        msg = self.finished_msg(buildid=2, number=2, started=COMPLETE, complete=complete2)
        msg["results"] = 2
        self.master.mq.callConsumer(("builders", "1", "builds", "2", "finished"), msg)

        t1, t2 = to_ns(COMPLETE), to_ns(complete2)
        tags1, tags2 = dict(TAGS), {**TAGS, "build_number": "2"}
        self.assertEqual(
            sorted(server.measurements(db)),
            sorted(
                [
                    "builder1-build-times",
                    "builder1-build-results",
                    "builder1-version",
                    "builder1-test_count",
                    "builder1-test_ratio",
                    "builder1-m",
                ]
            ),
        )
        # three captures, one row per build: InfluxDB merges fields of the same series/tags/time
        self.assertEqual(
            select(server, db, "builder1-build-times"),
            [
                {
                    "time": t1,
                    **tags1,
                    "start-time": STARTED.isoformat(),
                    "end-time": COMPLETE.isoformat(),
                    "duration": 90,  # a float; whole numbers come back as JSON integers
                },
                {
                    "time": t2,
                    **tags2,
                    "start-time": COMPLETE.isoformat(),
                    "end-time": complete2.isoformat(),
                    "duration": 45.5,
                },
            ],
        )
        self.assertEqual(
            server.field_keys("builder1-build-times", db),
            {"duration": "float", "end-time": "string", "start-time": "string"},
        )
        self.assertEqual(
            select(server, db, "builder1-build-results"),
            [
                # build results carry the worker's name (tags1/tags2 are buildbot.statistics')
                {"time": t1, **tags1, "worker": "w1", "results": 0, "result": "success"},
                {"time": t2, **tags2, "worker": "w1", "results": 2, "result": "failure"},
            ],
        )
        self.assertEqual(
            server.field_keys("builder1-build-results", db), {"result": "string", "results": "integer"}
        )
        for prop, (v1, v2), kind in (
            ("version", ("1.2.3", "2.0"), "string"),
            ("test_count", (42, 7), "integer"),
            ("test_ratio", (0.5, 1), "float"),
        ):
            self.assertEqual(
                select(server, db, f"builder1-{prop}"),
                [
                    {"time": t1, **tags1, "name": prop, "value": v1},
                    {"time": t2, **tags2, "name": prop, "value": v2},
                ],
            )
            self.assertEqual(server.field_keys(f"builder1-{prop}", db), {"name": "string", "value": kind})
        t_data = self.clock.stamps(2)
        self.assertEqual(
            select(server, db, "builder1-m"),
            [
                {"time": t_data[0], **tags1, "count": 3, "label": "a b,c=d", "ok": None},
                {"time": t_data[1], **tags1, "count": 4, "label": None, "ok": True},
            ],
        )
        self.assertEqual(
            server.field_keys("builder1-m", db), {"count": "integer", "label": "string", "ok": "boolean"}
        )
        # 3 build times + 1 result + 3 properties per build, and 2 data values
        self.assertCounters(captured=16, written=16, dropped=0, pending=0, retried=0)
        self.assertNotLogged("failed|rejected|converted")


class OutageTests(InfluxServiceTestCase):
    """influxd stopped while values are posted: kept, retried, stored exactly once."""

    @defer.inlineCallbacks
    def test_burst_during_outage_is_delivered_exactly_once(self):
        server = self.private_server()
        server.create_database("outage")
        yield self.use_influx(server.port, "outage", capture.CaptureData("m", "builder1"), max_retry_delay=2)
        self.post([{"i": -1}])  # the server is up: stored at once
        self.assertCounters(written=1, pending=0)

        server.stop()
        n = 300
        self.post([{"i": i} for i in range(n)])
        self.assertLogged(r"writing 1 point to backend 'influx' failed \(TransientWriteError: cannot reach")
        for _ in range(3):
            self.reactor.advance(2)  # every retry: connection refused
        self.assertCounters(written=1, pending=n, dropped=0)
        self.assertGreaterEqual(self.stats.counters["retried"], 1 + 3 * n)

        server.start()
        for _ in range(10):
            if not self.stats.counters["pending"]:
                break
            self.reactor.advance(2)
        counters = self.stats.counters
        self.assertEqual((counters["written"], counters["dropped"], counters["pending"]), (n + 1, 0, 0))
        self.assertGreater(counters["retried"], 0)
        self.assertLogged("backend 'influx' accepts writes again")

        rows = select(server, "outage", "builder1-m")
        self.assertEqual(len(rows), n + 1)
        self.assertEqual(sorted(r["i"] for r in rows), list(range(-1, n)))
        self.assertEqual([r["time"] for r in rows], self.clock.stamps(n + 1))
        self.assertEqual(
            [(r["builder_name"], r["build_number"]) for r in rows], [("builder1", "1")] * (n + 1)
        )
        count = server.query_checked('SELECT COUNT("i") FROM "builder1-m"', "outage")
        self.assertEqual(count[0]["series"][0]["values"][0][1], n + 1)

    @defer.inlineCallbacks
    def test_full_spool_drops_the_oldest_and_counts_them(self):
        server = self.private_server()
        server.create_database("full")
        yield self.use_influx(
            server.port, "full", capture.CaptureData("m", "builder1"), max_retry_delay=2, max_spool_points=50
        )
        server.stop()
        self.post([{"i": i} for i in range(120)])
        self.assertCounters(written=0, pending=50, dropped=70)
        self.assertEqual(len(self.log_lines("is full")), 1)  # once per burst, not per point
        server.start()
        for _ in range(10):
            if not self.stats.counters["pending"]:
                break
            self.reactor.advance(2)
        self.assertCounters(written=50, pending=0, dropped=70)
        self.assertLogged("70 points of backend 'influx' were dropped: spool full")
        rows = select(server, "full", "builder1-m")
        self.assertEqual([r["i"] for r in rows], list(range(70, 120)))


class FaultProxyTests(InfluxServiceTestCase):
    @defer.inlineCallbacks
    def test_503_twice_then_the_same_batch_is_stored_once(self):
        server = shared_server()
        db = self.fresh_db(server)
        proxy = FaultProxy(server.url).start()
        self.addCleanup(proxy.stop)
        yield self.use_influx(proxy.port, db, capture.CaptureData("m", "builder1"), max_retry_delay=2)
        proxy.fail_next(2)
        n = 50
        self.put_batch([self.data_point(k, {"k": k, "s": f"v{k}"}) for k in range(n)])
        self.assertLogged(r"writing 50 points to backend 'influx' failed .*request throttled")
        for _ in range(4):
            self.reactor.advance(2)

        writes = [r for r in proxy.requests if r.path.startswith("/write")]
        self.assertEqual([r.status for r in writes], [503, 503, 204])
        self.assertEqual([r.forwarded for r in writes], [False, False, True])
        self.assertEqual(len({r.body for r in writes}), 1, "the same batch is sent again")
        self.assertEqual(len(writes[0].body.splitlines()), n)
        rows = select(server, db, "builder1-m")
        self.assertEqual(
            rows, [{"time": BASE_NS + k * TICK_NS, **TAGS, "k": k, "s": f"v{k}"} for k in range(n)]
        )
        self.assertCounters(written=n, retried=2 * n, dropped=0, pending=0)


class TypeConflictTests(InfluxServiceTestCase):
    @defer.inlineCallbacks
    def test_conflict_with_existing_data_drops_only_that_point(self):
        server = shared_server()
        db = self.fresh_db(server)
        yield self.use_influx(server.port, db, capture.CaptureData("m", "builder1"))
        self.put_batch([self.data_point(0, {"v": 0.5})])  # `v` is a float in this shard now
        n, bad = 20, 7
        batch = [self.data_point(k, {"v": "oops" if k == bad else k + 0.25, "k": k}) for k in range(1, n + 1)]
        self.put_batch(batch)

        rows = select(server, db, "builder1-m")
        expected = [{"time": BASE_NS, **TAGS, "v": 0.5, "k": None}] + [
            {"time": BASE_NS + k * TICK_NS, **TAGS, "v": k + 0.25, "k": k}
            for k in range(1, n + 1)
            if k != bad
        ]
        self.assertEqual(rows, expected)
        self.assertEqual(server.field_keys("builder1-m", db), {"k": "integer", "v": "float"})
        self.assertCounters(written=n, dropped=1, pending=0, retried=0)
        lines = self.log_lines("rejected field")
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(
            lines[0],
            r"backend 'influx' rejected field 'v' of series 'builder1-m': InfluxDB: partial write: "
            r"field type conflict: .*is type string, already exists as type float dropped=1",
        )

    @defer.inlineCallbacks
    def test_conflict_inside_a_batch_to_a_new_shard_is_split_until_only_it_is_dropped(self):
        server = shared_server()
        db = self.fresh_db(server)  # no shard yet: InfluxDB refuses the whole first batch
        proxy = FaultProxy(server.url).start()  # only records the requests
        self.addCleanup(proxy.stop)
        yield self.use_influx(proxy.port, db, capture.CaptureData("m", "builder1"))
        n, bad = 10, 6
        batch = [self.data_point(k, {"v": "oops" if k == bad else k + 0.5}) for k in range(n)]
        batch.append(Point("other", {"x": 1}, {}, BASE_NS))  # lost with the whole batch, then stored
        self.put_batch(batch)

        writes = [r for r in proxy.requests if r.path.startswith("/write")]
        # refused as a whole (bare "field type conflict"), halved; the first half creates the
        # shard, and the second half is then a partial write that drops only the bad point
        self.assertEqual(
            [(r.status, len(r.body.splitlines())) for r in writes], [(400, n + 1), (204, 5), (400, 6)]
        )
        self.assertEqual(
            select(server, db, "builder1-m"),
            [{"time": BASE_NS + k * TICK_NS, **TAGS, "v": k + 0.5} for k in range(n) if k != bad],
        )
        self.assertEqual(select(server, db, "other"), [{"time": BASE_NS, "x": 1}])
        self.assertCounters(written=n, dropped=1, pending=0)
        lines = self.log_lines("rejected field")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("series 'builder1-m'", lines[0])
        self.assertIn("field type conflict", lines[0])

    @defer.inlineCallbacks
    def test_points_whose_strings_hold_newlines_survive_the_split_whole(self):
        # the spooled line protocol is cut into points when a batch is halved: a newline
        # inside a string value must not cut its point in two
        server = shared_server()
        db = self.fresh_db(server)  # no shard yet: InfluxDB refuses the whole first batch
        yield self.use_influx(server.port, db, capture.CaptureData("m", "builder1"))
        n, bad = 9, 4
        logs = {k: f'step {k} said:\n  "ok"\n\tdone \\ {k}' for k in range(n)}
        batch = [self.data_point(k, {"v": "oops" if k == bad else k + 0.5, "log": logs[k]}) for k in range(n)]
        self.put_batch(batch)
        self.assertEqual(
            select(server, db, "builder1-m"),
            [
                {"time": BASE_NS + k * TICK_NS, **TAGS, "v": k + 0.5, "log": logs[k]}
                for k in range(n)
                if k != bad
            ],
        )
        self.assertCounters(captured=n, dropped=1, pending=0)


class DatabaseErrorTests(InfluxServiceTestCase):
    @defer.inlineCallbacks
    def test_missing_database_keeps_points_until_it_is_created(self):
        server = shared_server()
        db = f"bbstats_missing_{uuid.uuid4().hex[:12]}"
        self.addCleanup(server.drop_database, db)
        yield self.use_influx(server.port, db, capture.CaptureData("m", "builder1"), max_retry_delay=2)
        self.post([{"i": i} for i in range(5)])
        self.reactor.advance(2)  # retried after max_retry_delay: still missing
        self.post([{"i": 5}])
        self.reactor.advance(2)
        self.assertCounters(written=0, dropped=0, pending=6)
        lines = self.log_lines("database not found")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"database not found: \"{db}\" (database '{db}')", lines[0])
        self.assertIn("retried every 2s until fixed", lines[0])

        server.create_database(db)
        self.reactor.advance(2)
        self.assertCounters(written=6, dropped=0, pending=0)
        self.assertEqual(
            select(server, db, "builder1-m"),
            [{"time": t, **TAGS, "i": i} for i, t in enumerate(self.clock.stamps(6))],
        )

    @defer.inlineCallbacks
    def test_wrong_password_keeps_points_until_fixed_by_reconfig(self):
        server = self.private_server(auth_enabled=True)
        server.create_admin("admin", "right-pw")
        db = "stats"
        server.create_database(db)
        cap = capture.CaptureData("m", "builder1")
        wrong = InfluxStorageService(HOST, server.port, "admin", "wrong-pw-42", db, [cap], name="influx")
        yield self.stats.reconfigService([wrong], spool_path=None, max_retry_delay=2)
        self.post([{"i": i} for i in range(4)])
        self.reactor.advance(2)
        self.assertCounters(written=0, dropped=0, pending=4)
        lines = self.log_lines("refused user")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("InfluxDB refused user 'admin' on database 'stats' (HTTP 401)", lines[0])
        self.assertNotIn("wrong-pw-42", "\n".join(self.log_lines("")))

        # the admin fixes the password in master.cfg and reconfigures: no restart, no loss
        right = InfluxStorageService(HOST, server.port, "admin", "right-pw", db, [cap], name="influx")
        yield self.stats.reconfigService([right], spool_path=None, max_retry_delay=2)
        self.reactor.advance(2)
        self.assertCounters(written=4, dropped=0, pending=0)
        self.assertEqual(
            select(server, db, "builder1-m"),
            [{"time": t, **TAGS, "i": i} for i, t in enumerate(self.clock.stamps(4))],
        )


# --------------------------------------------------------------------------
# Property-based: the documented value rules against the real server
# --------------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STRING_BYTES = 65535
REJECTED = object()

# Characters that are special somewhere in the line protocol, and some non-ASCII.
SPECIAL = [",", "=", " ", '"', "\\", "\n", "\r", "\t", "#", "'", "é", "ß", "中", "😀", "\u00a0"]
chars = st.one_of(
    st.sampled_from(SPECIAL),
    st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]),
)
names = st.text(chars, max_size=8)
series_names = st.text(chars, min_size=1, max_size=10)  # the empty name: test_edge_values
keys = st.one_of(names, st.sampled_from(["time", "time_", "v", "v "]))
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(chars, max_size=5),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(chars, max_size=3), st.integers(0, 9)), inner, max_size=3),
    ),
    max_leaves=6,
)
field_values = st.one_of(
    st.booleans(),
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MAX, INT64_MIN - 1, INT64_MAX + 1, 2**64, 10**30]),
    st.integers(INT64_MAX + 1, 2**2000),
    st.integers(-(2**2000), INT64_MIN - 1),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 1e16]),
    st.none(),
    st.text(chars, max_size=20),
    st.binary(max_size=8),
    json_values.filter(lambda v: isinstance(v, (dict, list, tuple))),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.datetimes(timezones=st.just(datetime.timezone.utc)),
)
tag_values = st.one_of(st.none(), names, st.integers(-3, 3))
points = st.lists(
    st.tuples(
        series_names,
        st.dictionaries(keys, field_values, min_size=1, max_size=4),
        st.dictionaries(keys, tag_values, max_size=3),
    ),
    min_size=1,
    max_size=3,
)


# An independent model of the rules in buildbot_stats/lineprotocol.py's docstring.


def _plain_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    return value


def _valid_text(text: str) -> str:
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


def expected_name(text: str) -> str:
    """Newlines, carriage returns and tabs become spaces; then an escaping backslash becomes '/'."""
    text = re.sub("[\n\r\t]", " ", _valid_text(text))
    return re.sub(r'\\(?=[,= "]|\Z)', "/", text)


def expected_key(key: Any) -> str:
    key = str(key)
    return "time_" if key == "time" else expected_name(key)


def expected_series(series: str) -> str:
    name = expected_name(series)
    return "_" + name[1:] if name.startswith("#") else name


def expected_value(value: Any) -> Any:
    """``(InfluxDB type, value)``, or REJECTED."""
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return ("integer", value)
        try:
            return ("float", float(value))
        except OverflowError:
            return REJECTED
    if isinstance(value, float):
        return ("float", value) if math.isfinite(value) else REJECTED
    if value is None:
        return REJECTED
    if isinstance(value, (dict, list, tuple)):
        return ("json", _plain_json(value))
    if isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace")
    elif isinstance(value, datetime.datetime):
        text = value.isoformat()
    else:
        text = str(value)
    raw = _valid_text(text).encode("utf-8")[:MAX_STRING_BYTES]
    return ("string", raw.decode("utf-8", errors="ignore"))


def expected_point(series: str, fields: dict, tags: dict) -> tuple[str, dict, dict, set]:
    """``(measurement, {field: (type, value)}, {tag: value}, {rejected field keys})``."""
    stored: dict[str, Any] = {}
    rejected: set[str] = set()
    for key, value in fields.items():
        if not str(key):
            rejected.add("")
            continue
        kept = expected_value(value)
        if kept is REJECTED or expected_key(key) in stored:
            rejected.add(str(key))
            continue
        stored[expected_key(key)] = kept
    stored_tags: dict[str, str] = {}
    for key in sorted(tags, key=str):
        value = tags[key]
        if value is None or not str(value) or not str(key) or expected_key(key) in stored_tags:
            continue
        stored_tags[expected_key(key)] = expected_name(str(value))
    return expected_series(series), stored, stored_tags, rejected


def read_back(server: InfluxServer, db: str, measurement: str) -> tuple[dict, dict, dict]:
    """``(tags, fields with their time, field types)`` of the one row of ``measurement``."""
    results = server.query_checked(f"SELECT *::field FROM {quote_ident(measurement)} GROUP BY *", db)
    series = results[0].get("series", [])
    assert len(series) == 1 and len(series[0]["values"]) == 1, series
    tags = {k: v for k, v in series[0].get("tags", {}).items() if v != ""}
    row = dict(zip(series[0]["columns"], series[0]["values"][0]))
    return tags, row, server.field_keys(measurement, db)


class PropertyTests(unittest.TestCase):
    """Random values through ``thd_postStatsValues`` into influxd, and back."""

    def setUp(self):
        require_influxd()
        self.server = shared_server()
        self.backend = InfluxStorageService(
            HOST, self.server.port, "root", "root", "unused", [], name="influx", timeout=10
        )

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(points=points)
    def test_values_come_back_as_documented(self, points):
        wanted = [expected_point(*p) for p in points]
        measurements = [w[0] for w in wanted if w[0] and w[1]]
        if len(set(measurements)) < len(measurements):
            points = points[:1]  # one point per measurement: no type conflicts between them
            wanted = wanted[:1]
        db = fresh_database(self.server, prefix="bbstats_prop")
        try:
            self.backend.db = db
            batch = [Point(s, f, t, BASE_NS + i) for i, (s, f, t) in enumerate(points)]
            report = self.backend.thd_postStatsValues(batch)

            lost = [w for w in wanted if not (w[0] and w[1])]
            self.assertEqual(report.rejected_points, len(lost), report)
            rejected = {(p.series, p.field) for p in report.problems if p.rejected}
            for (series, _, _), (measurement, _, _, bad_keys) in zip(points, wanted):
                for key in bad_keys if measurement else ():
                    self.assertIn((str(series), key), rejected, report.problems)
            self.assertEqual(
                sorted(self.server.measurements(db)), sorted(w[0] for w in wanted if w[0] and w[1])
            )
            for i, (measurement, fields, tags, _) in enumerate(wanted):
                if not (measurement and fields):
                    continue
                got_tags, row, types = read_back(self.server, db, measurement)
                self.assertEqual(got_tags, tags)
                self.assertEqual(row.pop("time"), BASE_NS + i)
                self.assertEqual(set(row), set(fields))
                self.assertEqual(
                    types, {k: "string" if kind == "json" else kind for k, (kind, _) in fields.items()}
                )
                for key, (kind, value) in fields.items():
                    got = row[key]
                    if kind == "float":
                        self.assertEqual(float(got), value, key)  # 2.0 comes back as 2
                    elif kind == "json":
                        self.assertEqual(json.loads(got), value, key)
                    else:
                        self.assertEqual((type(got), got), (type(value), value), key)
        finally:
            self.server.drop_database(db)

    def test_edge_values(self):
        """Values at the documented limits, one by one."""
        db = fresh_database(self.server, prefix="bbstats_edge")
        self.addCleanup(self.server.drop_database, db)
        self.backend.db = db
        long_text = "é" * 40_000  # 80,000 bytes: cut to 65,535 bytes, at a character boundary
        cases = {
            "exact64k": ("x" * MAX_STRING_BYTES, "x" * MAX_STRING_BYTES),
            "long": (long_text, "é" * (MAX_STRING_BYTES // 2)),
            "max": (INT64_MAX, INT64_MAX),
            "min": (INT64_MIN, INT64_MIN),
            "beyond": (INT64_MAX + 1, float(2**63)),
            "huge": (10**400, REJECTED),
            "nan": (float("nan"), REJECTED),
            "bytes": (b"\xff\xc3\xa9", "\ufffdé"),
            "surrogate": ("a\udcff b", "a\ufffd b"),
            "decimal": (decimal.Decimal("1.50"), "1.50"),
            "nl": ("line1\nline2\r\n", "line1\nline2\r\n"),
        }
        batch = [
            Point(f"edge-{name}", {"v": value, "ok": 1}, {"t": name}, BASE_NS)
            for name, (value, _) in cases.items()
        ]
        batch.append(Point("#comment", {"v": 1}, {"t\n": "a\tb\\"}, BASE_NS))
        batch.append(Point("\t#tab", {"v ": 2, "v\n": 3}, {"t ": "x", "t\r": "y"}, BASE_NS))
        batch.append(Point("", {"v": 1}, {}, BASE_NS))  # no series name: rejected
        report = self.backend.thd_postStatsValues(batch)
        self.assertEqual(report.rejected_points, 1)
        for name, (_, want) in cases.items():
            tags, row, _ = read_back(self.server, db, f"edge-{name}")
            self.assertEqual(tags, {"t": name})
            if want is REJECTED:
                self.assertNotIn("v", row)
                self.assertIn((f"edge-{name}", "v"), {(p.series, p.field) for p in report.problems})
            elif isinstance(want, float):
                self.assertEqual(float(row["v"]), want)
            else:
                self.assertEqual(row["v"], want, name)
        self.assertEqual(
            read_back(self.server, db, "_comment")[:2], ({"t ": "a b/"}, {"time": BASE_NS, "v": 1})
        )
        # names that become the same: the first field, the first tag key in sorted order ("t\r" < "t ")
        self.assertEqual(read_back(self.server, db, " #tab")[:2], ({"t ": "y"}, {"time": BASE_NS, "v ": 2}))
        self.assertEqual(
            sorted(self.server.measurements(db)),
            sorted([" #tab", "_comment"] + [f"edge-{name}" for name in cases]),
        )
