"""InfluxDB 2.x and 3.x backends through the real StatsService, against a loopback write endpoint.

No InfluxDB 2 or 3 server is packaged for these machines: the endpoint in
``tests/support/influx_v2v3_endpoint.py`` implements their documented write
behaviour (status codes, ``Retry-After``, partial writes, gzip, token check)
and keeps what it accepted, so every test reads back the exact points.
Points flow from Buildbot MQ messages through the captures, the delivery queue
and a real HTTP request (``deferToThread`` runs at once under
``TestReactorMixin``; retries run when the test advances ``self.reactor``).
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import requests
from buildbot.process.properties import Interpolate, Secret
from buildbot.secrets.manager import SecretManager
from buildbot.test.fake.secrets import FakeSecretStorage
from twisted.internet import defer

from buildbot_stats import capture
from buildbot_stats.point import Point, to_ns
from buildbot_stats.storage_backends.influxdb_http import InfluxDB2StorageService, InfluxDB3StorageService
from tests.fakes import COMPLETE, STARTED, YIELD_KEY, LoggedStatsTestCase
from tests.support.influx_v2v3_endpoint import Endpoint, EndpointServer, StoredPoint, parse_line
from tests.support.tls import self_signed_certificate

BASE_NS = 1_790_000_000_000_000_000
TAGS = {"build_number": "1", "builder_name": "builder1"}


class EndpointTestCase(LoggedStatsTestCase):
    api = "v2"

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.setUpLogging()
        self.n = 0
        self.stats.clock = self  # now_ns below: stamps BASE_NS + n
        self.endpoint = Endpoint(self.api)
        self.server = EndpointServer(self.endpoint)
        self.addCleanup(self.server.close)
        yield self.add_build()
        self.build_data = yield self.master.data.get(("builds", 1))

    def now_ns(self) -> int:
        self.n += 1
        return BASE_NS + self.n

    def make_backend(self, *captures: Any, token: Any = "test-token", **kwargs: Any) -> Any:
        if self.api == "v2":
            return InfluxDB2StorageService(
                self.server.url, "org", "bucket", token, list(captures), name="influx", **kwargs
            )
        return InfluxDB3StorageService(
            self.server.url, "stats", token, list(captures), name="influx", **kwargs
        )

    @defer.inlineCallbacks
    def use_backend(self, *captures: Any, max_retry_delay: float = 2, **kwargs: Any) -> Any:
        backend = self.make_backend(*captures, **kwargs)
        yield self.stats.reconfigService([backend], spool_path=None, max_retry_delay=max_retry_delay)
        return backend

    def post(self, values: list[Any], data_name: str = "m") -> None:
        for value in values:
            self.master.mq.callConsumer(
                YIELD_KEY, {"data_name": data_name, "post_data": value, "build_data": self.build_data}
            )

    def stored(self, table: str = "builder1-m") -> list[tuple[dict, dict, int]]:
        return [(p.tags, p.fields, p.time_ns) for p in self.endpoint.stored(table)]

    def data(self, values: list[dict[str, Any]], first: int = 1) -> list[tuple[dict, dict, int]]:
        return [(TAGS, v, BASE_NS + first + i) for i, v in enumerate(values)]


class InfluxDB2Tests(EndpointTestCase):
    api = "v2"

    @defer.inlineCallbacks
    def test_captures_are_stored_exactly_gzip_and_token(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"), capture.CaptureBuildDuration("builder1"))
        self.post([{"count": 3, "label": "a b,c=d", "ok": True}, {"ratio": 0.5}])
        self.finish(started=STARTED, complete=COMPLETE)
        self.assertEqual(
            self.stored(), self.data([{"count": 3, "label": "a b,c=d", "ok": True}, {"ratio": 0.5}])
        )
        self.assertEqual(self.stored("builder1-build-times"), [(TAGS, {"duration": 90.0}, to_ns(COMPLETE))])
        first = self.endpoint.requests[0]
        self.assertEqual(first.headers["authorization"], "Token test-token")
        self.assertEqual(first.headers["content-encoding"], "gzip")
        self.assertEqual(first.params, {"org": "org", "bucket": "bucket", "precision": "ns"})
        self.assertTrue(
            gzip.decompress(first.body).startswith(b"builder1-m,build_number=1,builder_name=builder1 ")
        )
        self.assertCounters(written=3, dropped=0, pending=0)

    @defer.inlineCallbacks
    def test_precision_and_no_gzip(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"), precision="ms", gzip=False)
        self.post([{"v": 1}])
        request = self.endpoint.requests[0]
        self.assertEqual(request.params["precision"], "ms")
        self.assertNotIn("content-encoding", request.headers)
        self.assertEqual(
            request.body.decode(),
            f"builder1-m,build_number=1,builder_name=builder1 v=1i {(BASE_NS + 1) // 10**6}",
        )

    @defer.inlineCallbacks
    def test_type_conflict_422_drops_only_that_point(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"))
        self.post([{"v": 1}])
        batch = [
            Point("builder1-m", {"v": 2}, TAGS, BASE_NS + 10),
            Point("builder1-m", {"v": "text"}, TAGS, BASE_NS + 11),
            Point("builder1-m", {"v": 4}, TAGS, BASE_NS + 12),
        ]
        self.put_points(batch)
        self.assertEqual(
            self.stored(),
            [(TAGS, {"v": 1}, BASE_NS + 1), (TAGS, {"v": 2}, BASE_NS + 10), (TAGS, {"v": 4}, BASE_NS + 12)],
        )
        self.assertCounters(written=3, dropped=1, pending=0)
        (line,) = self.log_lines("rejected field")
        self.assertIn("field 'v' of series 'builder1-m'", line)
        self.assertIn("field type conflict", line)

    @defer.inlineCallbacks
    def test_a_lone_point_refused_by_a_400_naming_no_line_is_logged_with_its_field(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"))
        conflict = 'field type conflict: input field "v" on measurement "builder1-m" is type float'
        self.endpoint.fail_next(400, {"code": "invalid", "message": conflict})
        self.put_points([Point("builder1-m", {"v": 1.5}, TAGS, BASE_NS)])
        self.assertEqual(self.stored(), [])
        self.assertCounters(written=0, dropped=1, pending=0)
        (line,) = self.log_lines("rejected field")
        self.assertIn("field 'v' of series 'builder1-m': InfluxDB 2: field type conflict", line)

    @defer.inlineCallbacks
    def test_malformed_line_400_drops_that_line_and_resends_the_rest(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"))
        # the server names line 2 as malformed (nothing written): only that point is lost
        self.endpoint.fail_next(400, {"code": "invalid", "message": "unable to parse line 2: bad", "line": 2})
        self.put_points([Point("builder1-m", {"v": i}, TAGS, BASE_NS + i) for i in range(3)])
        self.assertEqual(self.stored(), [(TAGS, {"v": 0}, BASE_NS), (TAGS, {"v": 2}, BASE_NS + 2)])
        self.assertCounters(written=2, dropped=1, pending=0)
        self.assertEqual(len(self.endpoint.requests), 2)
        (line,) = self.log_lines("rejected field")
        self.assertIn("series 'builder1-m'", line)
        self.assertIn("unable to parse line 2", line)

    @defer.inlineCallbacks
    def test_wrong_token_keeps_points_until_fixed(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"), token="wrong-token-42")
        self.post([{"i": i} for i in range(3)])
        self.reactor.advance(2)
        self.assertCounters(written=0, dropped=0, pending=3)
        (line,) = self.log_lines("refused the token")
        self.assertIn("InfluxDB 2 refused the token (HTTP 401)", line)
        self.assertIn("retried every 2s until fixed", line)
        self.assertNotIn("wrong-token-42", "\n".join(self.log_lines("")))
        yield self.use_backend(capture.CaptureData("m", "builder1"))
        self.reactor.advance(2)
        self.assertEqual(self.stored(), self.data([{"i": i} for i in range(3)]))
        self.assertCounters(written=3, dropped=0, pending=0)

    @defer.inlineCallbacks
    def test_unknown_bucket_kept_until_created(self):
        self.endpoint.orgs_buckets = set()
        yield self.use_backend(capture.CaptureData("m", "builder1"))
        self.post([{"i": 1}])
        (line,) = self.log_lines("not found")
        self.assertIn("bucket \"bucket\" not found (org='org' bucket='bucket', HTTP 404)", line)
        self.endpoint.orgs_buckets = {("org", "bucket")}
        self.reactor.advance(2)
        self.assertEqual(self.stored(), self.data([{"i": 1}]))

    @defer.inlineCallbacks
    def test_429_retry_after_is_honoured(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"), max_retry_delay=2)
        self.endpoint.fail_next(429, {"code": "too many requests", "message": "slow down"}, Retry_After="30")
        self.post([{"i": 1}])
        self.assertEqual(len(self.endpoint.requests), 1)
        self.reactor.advance(29)  # the backoff alone would have retried after 2s
        self.assertEqual(len(self.endpoint.requests), 1)
        self.assertEqual(self.stored(), [])
        self.reactor.advance(1)
        self.assertEqual(len(self.endpoint.requests), 2)
        self.assertEqual(self.stored(), self.data([{"i": 1}]))
        (line,) = self.log_lines("HTTP 429")
        self.assertIn("Retry-After 30s", line)

    @defer.inlineCallbacks
    def test_503_with_retry_after_date(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"))
        self.endpoint.fail_next(503, {"message": "busy"}, Retry_After="Wed, 21 Oct 2015 07:28:00 GMT")
        self.post([{"i": 1}])
        self.assertCounters(written=0, pending=1)
        self.reactor.advance(2)  # a date in the past: retry at once (after the backoff)
        self.assertEqual(self.stored(), self.data([{"i": 1}]))

    @defer.inlineCallbacks
    def test_413_splits_the_batch(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"), gzip=False)
        batch = [Point("builder1-m", {"v": i, "pad": "x" * 100}, TAGS, BASE_NS + i) for i in range(8)]
        self.endpoint.max_body_size = 400  # about 2 points
        self.put_points(batch)
        self.assertEqual(self.stored(), [(TAGS, {"v": i, "pad": "x" * 100}, BASE_NS + i) for i in range(8)])
        self.assertCounters(written=8, dropped=0, pending=0)
        self.assertIn(413, [r.status for r in self.endpoint.requests])

    @defer.inlineCallbacks
    def test_token_secret_fixed_in_the_provider_is_used_on_the_next_retry(self):
        provider = FakeSecretStorage(secretdict={"influx-token": "old-token"})
        manager = SecretManager()
        manager.services = [provider]
        yield manager.setServiceParent(self.master)
        yield self.use_backend(capture.CaptureData("m", "builder1"), token=Secret("influx-token"))
        self.post([{"i": 1}, {"i": 2}])
        self.assertCounters(written=0, pending=2)
        self.assertIn("InfluxDB 2 refused the token", self.log_lines("failed")[0])
        # the admin fixes the secret; no reconfig of the StatsService, no restart
        provider.reconfigService(secretdict={"influx-token": "test-token"})
        self.reactor.advance(2)
        self.assertEqual(self.stored(), self.data([{"i": 1}, {"i": 2}]))
        self.assertEqual(self.endpoint.requests[-1].headers["authorization"], "Token test-token")
        text = "\n".join(self.log_lines("")) + repr(self.stats.registeredStorageServices)
        self.assertNotIn("old-token", text)
        self.assertNotIn("test-token", text)

    @defer.inlineCallbacks
    def test_token_secret_a_header_cannot_carry_is_said_once_then_fixed_with_a_newline(self):
        provider = FakeSecretStorage(secretdict={"tok": "bad\r\nX-Injected: yes"})
        manager = SecretManager()
        manager.services = [provider]
        yield manager.setServiceParent(self.master)
        yield self.use_backend(capture.CaptureData("m", "builder1"), token=Secret("tok"))
        self.post([{"i": 1}])
        for _ in range(5):
            self.reactor.advance(2)  # rendered again every max_retry_delay: no faster loop, no new line
        self.assertEqual(self.endpoint.requests, [])
        (line,) = self.log_lines("header cannot carry")
        self.assertIn(
            "backend 'influx' is not ready (RefusedWriteError: InfluxDB2StorageService 'influx': the token "
            "secret is empty or holds characters an HTTP header cannot carry)",
            line,
        )
        self.assertTrue(line.endswith("tried again every 2s"), line)
        self.assertNotIn("Injected", "\n".join(self.log_lines("")))
        # the admin fixes the secret file, which ends in a newline as files do
        provider.reconfigService(secretdict={"tok": "test-token\n"})
        self.reactor.advance(2)
        self.assertEqual(self.stored(), self.data([{"i": 1}]))
        self.assertEqual(self.endpoint.requests[-1].headers["authorization"], "Token test-token")

    @defer.inlineCallbacks
    def test_missing_secret_keeps_points(self):
        manager = SecretManager()
        manager.services = [FakeSecretStorage(secretdict={})]
        yield manager.setServiceParent(self.master)
        yield self.use_backend(capture.CaptureData("m", "builder1"), token=Interpolate("%(secret:tok)s"))
        self.post([{"i": 1}])
        self.assertCounters(written=0, pending=1)
        (line,) = self.log_lines("is not ready")
        self.assertIn("secret key tok is not found", line)
        manager.services[0].reconfigService(secretdict={"tok": "test-token"})
        self.reactor.advance(2)
        self.assertEqual(self.stored(), self.data([{"i": 1}]))

    @defer.inlineCallbacks
    def test_newline_in_a_string_value_is_kept(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"))
        self.post([{"log": "line 1\nline 2", "n": 1}, {"n": 2}])
        self.assertEqual(self.stored(), self.data([{"log": "line 1\nline 2", "n": 1}, {"n": 2}]))


class InfluxDB2TLSTests(EndpointTestCase):
    """The endpoint serving HTTPS with a self-signed certificate made by the test."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        tmp = Path(tempfile.mkdtemp(prefix="bbstats-endpoint-tls-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        self.cert, key = self_signed_certificate(tmp)
        self.server.close()
        self.server = EndpointServer(self.endpoint, tls=(self.cert, key))
        self.addCleanup(self.server.close)
        # as on many machines: requests' own CA bundle named in the environment must not
        # override ca_bundle (it does override a requests Session's ``verify``)
        env = mock.patch.dict(os.environ, {"REQUESTS_CA_BUNDLE": requests.certs.where()})
        env.start()
        self.addCleanup(env.stop)

    @defer.inlineCallbacks
    def test_missing_ca_bundle_keeps_points_until_a_reconfig_adds_it(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"))
        self.post([{"i": 1}])
        (line,) = self.log_lines("TLS certificate")
        port = self.server.url.rsplit(":", 1)[1]
        self.assertIn(
            f"TLS certificate of https://127.0.0.1:{port} not verified (self-signed certificate); "
            "for a private CA give ca_bundle='/path/to/ca.pem'",
            line,
        )
        self.assertCounters(written=0, pending=1)
        yield self.use_backend(capture.CaptureData("m", "builder1"), ca_bundle=str(self.cert))
        self.reactor.advance(2)
        self.assertEqual(self.stored(), self.data([{"i": 1}]))


class InfluxDB3Tests(EndpointTestCase):
    api = "v3"

    @defer.inlineCallbacks
    def test_captures_are_stored_exactly(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"), capture.CaptureBuildDuration("builder1"))
        self.post([{"count": 3, "label": "x"}])
        self.finish(started=STARTED, complete=COMPLETE)
        self.assertEqual(self.stored(), self.data([{"count": 3, "label": "x"}]))
        self.assertEqual(self.stored("builder1-build-times"), [(TAGS, {"duration": 90.0}, to_ns(COMPLETE))])
        request = self.endpoint.requests[0]
        self.assertEqual(request.params, {"db": "stats", "precision": "nanosecond", "accept_partial": "true"})
        self.assertEqual(request.headers["authorization"], "Token test-token")
        self.assertEqual(request.headers["content-encoding"], "gzip")

    @defer.inlineCallbacks
    def test_partial_write_drops_only_the_lines_it_names(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"))
        self.post([{"v": 1.5}])
        batch = [
            Point("builder1-m", {"v": 2.5}, TAGS, BASE_NS + 10),
            Point("builder1-m", {"v": "text"}, TAGS, BASE_NS + 11),
            Point("builder1-m", {"v": 4.5}, TAGS, BASE_NS + 12),
        ]
        self.put_points(batch)
        self.assertEqual(
            self.stored(),
            [
                (TAGS, {"v": 1.5}, BASE_NS + 1),
                (TAGS, {"v": 2.5}, BASE_NS + 10),
                (TAGS, {"v": 4.5}, BASE_NS + 12),
            ],
        )
        self.assertCounters(written=3, dropped=1, pending=0)
        (line,) = self.log_lines("rejected field")
        self.assertIn("field 'v' of series 'builder1-m'", line)
        self.assertEqual(len(self.endpoint.requests), 2)  # no resend: the valid lines were written

    @defer.inlineCallbacks
    def test_whole_batch_refused_drops_the_named_line_and_resends_the_rest(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"))
        # as with accept_partial=false: nothing written, one line named
        self.endpoint.fail_next(
            400,
            {
                "error": "parsing failed for write_lp endpoint",
                "data": {"original_line": "?", "line_number": 2, "error_message": "bad value"},
            },
        )
        self.put_points([Point("builder1-m", {"v": i}, TAGS, BASE_NS + i) for i in range(3)])
        self.assertEqual(self.stored(), [(TAGS, {"v": 0}, BASE_NS), (TAGS, {"v": 2}, BASE_NS + 2)])
        self.assertCounters(written=2, dropped=1, pending=0)
        (line,) = self.log_lines("rejected field")
        self.assertIn("series 'builder1-m': InfluxDB 3: bad value", line)

    @defer.inlineCallbacks
    def test_field_named_like_a_tag_is_renamed(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"))
        self.post([{"builder_name": "other", "v": 1}])
        self.assertEqual(self.stored(), self.data([{"builder_name_field": "other", "v": 1}]))
        (line,) = self.log_lines("converted field")
        self.assertIn("field 'builder_name' of series 'builder1-m': same name as a tag", line)

    @defer.inlineCallbacks
    def test_unknown_database_kept_until_created(self):
        self.endpoint.databases = set()
        yield self.use_backend(capture.CaptureData("m", "builder1"))
        self.post([{"i": 1}])
        self.reactor.advance(2)
        self.assertCounters(written=0, pending=1)
        self.endpoint.databases = {"stats"}
        self.reactor.advance(2)
        self.assertEqual(self.stored(), self.data([{"i": 1}]))

    @defer.inlineCallbacks
    def test_bearer_token_refused_then_503(self):
        yield self.use_backend(capture.CaptureData("m", "builder1"), token="nope")
        self.post([{"i": 1}])
        (line,) = self.log_lines("refused the token")
        self.assertIn("InfluxDB 3 refused the token (HTTP 401)", line)
        self.assertNotIn("nope", line)


def test_endpoint_parser_reads_what_the_encoder_writes():
    from buildbot_stats.lineprotocol import encode_body

    point = Point("a b,c", {"s": 'q "x" \\ y', "f": 1.25, "i": -3, "b": False}, {"t k": "v=1"}, 7)
    body, _, _ = encode_body([point])
    assert parse_line(body.decode(), 1) == StoredPoint(
        "a b,c", {"t k": "v=1"}, {"s": 'q "x" \\ y', "f": 1.25, "i": -3, "b": False}, 7
    )
