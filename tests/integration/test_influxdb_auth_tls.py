"""InfluxStorageService against a real influxd with authentication and with HTTPS.

* auth-enabled influxd, a token-style password, given plainly and as a
  Buildbot secret (``util.Secret``) that is wrong first and then fixed in the
  secrets provider: the kept points arrive on the next retry, no password in
  any log line;
* influxd serving HTTPS with a self-signed certificate made by the test:
  written with ``ca_bundle``; without it one clear log line and the points
  kept in the spool, delivered after a reconfig that adds ``ca_bundle``;
  ``verify_ssl=False`` works and is warned about once.

influxd missing: skipped, or an error with ``CI=true`` (``require_influxd``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from buildbot.process.properties import Secret
from buildbot.secrets.manager import SecretManager
from buildbot.test.fake.secrets import FakeSecretStorage
from twisted.internet import defer

from buildbot_stats import capture
from buildbot_stats.stats_service import StatsService
from buildbot_stats.storage_backends import influx_common
from buildbot_stats.storage_backends.influxdb_client import InfluxStorageService
from tests.integration.test_influxdb_real import HOST, TAGS, InfluxServiceTestCase, select
from tests.support.tls import self_signed_certificate

# what an admin pastes from a token generator: long, with - _ = + / characters
TOKEN_PASSWORD = "bbs-9fQ2_xK7+vT/4mZ8pL1=wR6yN3cH0dJ5sA=="
WRONG_PASSWORD = "bbs-wrong_Q7+vT/4mZ8pL1=wR6yN3cH0dJ5sA=="


class AuthTests(InfluxServiceTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.server = self.private_server(auth_enabled=True)
        self.server.create_admin("admin", TOKEN_PASSWORD)
        self.server.create_database("stats")

    @defer.inlineCallbacks
    def test_token_style_password_gzip(self):
        cap = capture.CaptureData("m", "builder1")
        backend = InfluxStorageService(
            HOST, self.server.port, "admin", TOKEN_PASSWORD, "stats", [cap], name="influx", gzip=True
        )
        yield self.stats.reconfigService([backend], spool_path=None)
        self.post([{"i": i} for i in range(3)])
        self.assertEqual(
            select(self.server, "stats", "builder1-m"),
            [{"time": t, **TAGS, "i": i} for i, t in enumerate(self.clock.stamps(3))],
        )
        self.assertNotIn(TOKEN_PASSWORD, repr(backend))

    @defer.inlineCallbacks
    def test_secret_password_fixed_in_the_provider_is_used_on_the_next_retry(self):
        provider = FakeSecretStorage(secretdict={"influxdb-password": WRONG_PASSWORD})
        manager = SecretManager()
        manager.services = [provider]
        yield manager.setServiceParent(self.master)
        cap = capture.CaptureData("m", "builder1")
        backend = InfluxStorageService(
            HOST, self.server.port, "admin", Secret("influxdb-password"), "stats", [cap], name="influx"
        )
        yield self.stats.reconfigService([backend], spool_path=None, max_retry_delay=2)
        self.post([{"i": i} for i in range(4)])
        self.reactor.advance(2)
        self.assertCounters(written=0, dropped=0, pending=4)
        (line,) = self.log_lines("refused user")
        self.assertIn("InfluxDB refused user 'admin' on database 'stats' (HTTP 401)", line)

        provider.reconfigService(secretdict={"influxdb-password": TOKEN_PASSWORD})
        self.reactor.advance(2)
        self.assertCounters(written=4, dropped=0, pending=0)
        self.assertEqual(
            select(self.server, "stats", "builder1-m"),
            [{"time": t, **TAGS, "i": i} for i, t in enumerate(self.clock.stamps(4))],
        )
        text = "\n".join(self.log_lines("")) + repr(backend) + repr(self.stats.queues)
        self.assertNotIn(WRONG_PASSWORD, text)
        self.assertNotIn(TOKEN_PASSWORD, text)


class TLSTests(InfluxServiceTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.tmp = Path(tempfile.mkdtemp(prefix="bbstats-influx-tls-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.cert, key = self_signed_certificate(self.tmp / "tls")
        self.server = self.private_server(https=(self.cert, key))
        self.server.create_database("stats")
        self.spool = str(self.tmp / "spool.sqlite")

    def tls_backend(self, **kwargs):
        cap = capture.CaptureData("m", "builder1")
        return InfluxStorageService(
            f"https://{HOST}", self.server.port, "u", "p", "stats", [cap], name="influx", **kwargs
        )

    @defer.inlineCallbacks
    def test_ca_bundle_missing_then_added_by_reconfig(self):
        # a service with a spool file (the one of setUp keeps points in memory)
        yield self.stats.disownServiceParent()
        self.stats = StatsService(
            storage_backends=[self.tls_backend()],
            name="StatsService",
            spool_path=self.spool,
            max_retry_delay=2,
        )
        self.stats.clock = self.clock
        yield self.stats.setServiceParent(self.master)
        self.post([{"i": i} for i in range(3)])
        yield self.stats.wait_spooled()
        self.reactor.advance(2)
        self.assertCounters(written=0, dropped=0, pending=3, spooled=3)
        (line,) = self.log_lines("TLS certificate")
        self.assertIn(
            f"(RefusedWriteError: TLS certificate of https://{HOST}:{self.server.port} not verified "
            "(self-signed certificate); for a private CA give ca_bundle='/path/to/ca.pem'); "
            "1 point kept and retried every 2s until fixed",  # the first point; the others queued behind it
            line,
        )
        self.assertEqual(self.server.databases().count("stats"), 1)
        self.assertEqual(self.server.measurements("stats"), [])

        yield self.stats.reconfigService(
            [self.tls_backend(ca_bundle=str(self.cert))], spool_path=self.spool, max_retry_delay=2
        )
        self.reactor.advance(2)
        self.assertCounters(written=3, dropped=0, pending=0)
        self.assertEqual(
            select(self.server, "stats", "builder1-m"),
            [{"time": t, **TAGS, "i": i} for i, t in enumerate(self.clock.stamps(3))],
        )

    @defer.inlineCallbacks
    def test_ca_bundle_writes_at_once(self):
        yield self.stats.reconfigService([self.tls_backend(ca_bundle=str(self.cert))], spool_path=None)
        self.post([{"i": 1}])
        self.assertEqual(
            select(self.server, "stats", "builder1-m"), [{"time": self.clock.stamps(1)[0], **TAGS, "i": 1}]
        )
        self.assertEqual(self.log_lines("TLS|WARNING"), [])

    @defer.inlineCallbacks
    def test_verify_ssl_false_writes_and_warns_once(self):
        influx_common._WARNED_UNVERIFIED.discard(f"https://{HOST}:{self.server.port}")
        yield self.stats.reconfigService([self.tls_backend(verify_ssl=False)], spool_path=None)
        yield self.stats.reconfigService([self.tls_backend(verify_ssl=False)], spool_path=None)
        self.post([{"i": 1}])
        self.assertEqual(len(select(self.server, "stats", "builder1-m")), 1)
        (line,) = self.log_lines("does not verify")
        self.assertIn(f"does not verify the TLS certificate of https://{HOST}:{self.server.port}", line)
