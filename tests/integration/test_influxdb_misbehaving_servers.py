"""The InfluxDB backends (1.x, 2.x, 3) against what may sit in front of InfluxDB (issue 22).

A proxy or SSO that redirects the write to a login page, a server trickling its answer, an
error page of 200 MB: ``tests/support/misbehaving_http.py`` serves each on a loopback address,
and points go through the real StatsService and delivery queue (``deferToThread`` runs at
once under ``TestReactorMixin``; retries run when the test advances ``self.reactor``).
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer

from buildbot_stats import capture
from buildbot_stats.storage_backends.influxdb_client import InfluxStorageService
from buildbot_stats.storage_backends.influxdb_http import InfluxDB2StorageService, InfluxDB3StorageService
from tests.fakes import YIELD_KEY, LoggedStatsTestCase
from tests.support.misbehaving_http import Answer, MisbehavingServer, SeenRequest
from tests.support.tls import self_signed_certificate

MB = 2**20


def peak_rss_kib(reset: bool = False) -> int:
    """This process's peak resident memory (Linux), after setting the peak to the current one if ``reset``."""
    if reset:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))  # type: ignore[union-attr]


class MisbehavingServerTestCase(LoggedStatsTestCase):
    api = "v1"
    write_path = "/write"

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.setUpLogging()
        self.server = MisbehavingServer()
        self.addCleanup(self.server.close)
        self.write_answer = Answer(204)
        self.server.answer = self.answer
        yield self.add_build()
        self.build_data = yield self.master.data.get(("builds", 1))

    def answer(self, request: SeenRequest) -> Answer:
        if request.method == "GET":  # the login page a redirect leads to
            return Answer(200, {"Content-Type": "text/html"}, b"<html>Log in</html>")
        return self.write_answer

    @defer.inlineCallbacks
    def use_backend(self, **kwargs: Any) -> Any:
        captures = [capture.CaptureData("m", "builder1")]
        kwargs = {"gzip": False, **kwargs}
        if self.api == "v1":
            url, port = self.server.url.rsplit(":", 1)
            backend = InfluxStorageService(url, int(port), "u", "pw", "db", captures, "influx", **kwargs)
        elif self.api == "v2":
            backend = InfluxDB2StorageService(self.server.url, "o", "b", "tok", captures, "influx", **kwargs)
        else:
            backend = InfluxDB3StorageService(self.server.url, "db", "tok", captures, "influx", **kwargs)
        yield self.stats.reconfigService([backend], spool_path=None, max_retry_delay=2)

    def post(self, value: dict[str, Any]) -> None:
        message = {"data_name": "m", "post_data": value, "build_data": self.build_data}
        self.master.mq.callConsumer(YIELD_KEY, message)

    def writes(self) -> list[SeenRequest]:
        return [r for r in self.server.requests if r.method == "POST"]

    @defer.inlineCallbacks
    def test_a_redirect_is_no_write_and_the_points_are_kept(self):
        other = MisbehavingServer("127.0.0.2")  # another host, loopback too
        self.addCleanup(other.close)
        login = f"http://sso:sso-pw@127.0.0.1:{self.server.port}/login?next=%2Fwrite&token=s3cr3t"
        self.write_answer = Answer(302, {"Location": login})
        yield self.use_backend()
        self.post({"i": 1})
        self.assertCounters(written=0, pending=1)
        self.reactor.advance(2)
        self.reactor.advance(2)  # retried twice more, redirected again: still one line
        self.assertEqual([r.method for r in self.server.requests], ["POST"] * 3)  # no login page asked
        (line,) = self.log_lines("redirect")
        self.assertIn(
            f"redirects (HTTP 302) to http://127.0.0.1:{self.server.port}/login: not followed", line
        )
        self.assertIn("1 point kept", line)
        self.assertNotRegex(line, "sso-pw|s3cr3t|next=")

        # a 307 to another host would re-post the points there (without the token)
        self.write_answer = Answer(307, {"Location": other.url + self.write_path})
        self.reactor.advance(2)
        self.assertEqual(other.requests, [])
        self.assertCounters(written=0, pending=1)
        self.assertEqual(len(self.log_lines("redirect")), 2)

        # the server answers the write itself: the point is delivered, once
        self.write_answer = Answer(204)
        self.reactor.advance(2)
        self.assertCounters(written=1, pending=0)
        self.assertEqual(len(self.writes()), 5)
        self.assertTrue(
            self.writes()[-1].body.startswith(b"builder1-m,build_number=1,builder_name=builder1 i=1i")
        )
        self.reactor.advance(10)
        self.assertEqual(len(self.writes()), 5)

    @defer.inlineCallbacks
    def test_a_trickling_server_holds_a_write_until_its_deadline_only(self):
        # a whole 204, one byte every 0.5 s: some 50 s; every read comes well within timeout=1
        self.write_answer = Answer(204, {"X-Padding": "p" * 70}, trickle=0.5)
        yield self.use_backend(timeout=1)
        started = time.monotonic()
        self.post({"i": 1})  # the write runs (and returns) in here
        held = time.monotonic() - started
        print(f"\n{self.api}: a trickling server held the write {held:.2f}s (timeout=1)", file=sys.stderr)
        self.assertLess(held, 4.5)
        self.assertGreaterEqual(held, 3)  # the deadline: three times timeout
        self.assertCounters(written=0, pending=1)
        (line,) = self.log_lines("within")
        self.assertIn(
            f"(TransientWriteError: no answer from http://127.0.0.1:{self.server.port} within 3s", line
        )
        self.write_answer = Answer(204)
        self.reactor.advance(2)  # retried as a transient failure
        self.assertCounters(written=1, pending=0)

    @defer.inlineCallbacks
    def test_a_huge_error_body_is_read_in_part_and_logged_in_a_line(self):
        self.write_answer = Answer(500, {"Content-Type": "text/html"}, streamed=200 * MB)
        yield self.use_backend()
        before = peak_rss_kib(reset=True)
        self.post({"i": 1})
        growth = (peak_rss_kib() - before) / 1024
        print(f"\n{self.api}: peak RSS growth with a 200 MB error body: {growth:.1f} MB", file=sys.stderr)
        self.assertLess(growth, 32)
        self.assertCounters(written=0, pending=1)
        (line,) = self.log_lines("HTTP 500")
        self.assertLess(len(line), 600)
        self.assertIn("answered HTTP 500: EEEE", line)
        request = self.server.requests[-1]
        for _ in range(100):  # the server notices the closed connection at its next write
            if request.finished_at:
                break
            time.sleep(0.05)
        self.assertLess(request.sent, 32 * MB)  # socket buffers; never the 200 MB
        self.write_answer = Answer(204)
        self.reactor.advance(2)
        self.assertCounters(written=1, pending=0)


class InfluxDB2MisbehavingServerTests(MisbehavingServerTestCase):
    api = "v2"
    write_path = "/api/v2/write"

    @defer.inlineCallbacks
    def test_a_trickling_server_over_tls_is_cut_at_the_deadline_too(self):
        tmp = Path(tempfile.mkdtemp(prefix="bbstats-trickle-tls-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        cert, key = self_signed_certificate(tmp)
        self.server.close()
        self.server = MisbehavingServer(tls=(cert, key))
        self.addCleanup(self.server.close)
        self.server.answer = self.answer
        self.write_answer = Answer(204, {"X-Padding": "p" * 70}, trickle=0.5)
        yield self.use_backend(timeout=1, ca_bundle=str(cert))
        started = time.monotonic()
        self.post({"i": 1})
        self.assertLess(time.monotonic() - started, 4.5)
        (line,) = self.log_lines("failed")  # not taken for a certificate problem
        self.assertIn(
            f"(TransientWriteError: no answer from https://127.0.0.1:{self.server.port} within 3s)", line
        )
        self.write_answer = Answer(204)
        self.reactor.advance(2)
        self.assertCounters(written=1, pending=0)


class InfluxDB3MisbehavingServerTests(MisbehavingServerTestCase):
    api = "v3"
    write_path = "/api/v3/write_lp"
