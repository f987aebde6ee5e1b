"""InfluxStorageService without a server: the documented per-point API, error classes, argument checks."""

from __future__ import annotations

import pytest
import requests
from buildbot.config.errors import capture_config_errors
from buildbot.process.properties import Interpolate, Secret
from buildbot.test.fake import fakemaster, fakestats
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.util.logging import LoggingMixin
from twisted.internet import defer
from twisted.python import log
from twisted.trial import unittest

from buildbot_stats.errors import BatchTooLargeError, RefusedWriteError, TransientWriteError
from buildbot_stats.point import Point
from buildbot_stats.storage_backends import influx_common, influxdb_client
from buildbot_stats.storage_backends.influxdb_client import InfluxStorageService
from tests.support.misbehaving_http import Answer, MisbehavingServer
from tests.support.ports import free_port


@pytest.fixture
def fake_client(monkeypatch):
    """The InfluxDB client of Buildbot's own statistics tests, recording what it is given."""
    monkeypatch.setattr(influxdb_client, "InfluxDBClient", fakestats.FakeInfluxDBClient)


@pytest.fixture
def log_lines():
    lines: list[str] = []

    def observe(event):
        lines.append(log.textFromEventDict(event) or "")

    log.addObserver(observe)
    yield lines
    log.removeObserver(observe)


def test_post_value_writes_the_documented_dict(fake_client):
    svc = InfluxStorageService("localhost", 8086, "u", "p", "db", [])
    svc.thd_postStatsValue({"name": "test", "value": "test"}, "series", {"x": "y"})
    svc.thd_postStatsValue({"v": 1}, "series2")
    assert svc.client.points == [
        {"measurement": "series", "fields": {"name": "test", "value": "test"}, "tags": {"x": "y"}},
        {"measurement": "series2", "fields": {"v": 1}},
    ]


def test_not_initialised_logs(fake_client, log_lines):
    svc = InfluxStorageService("localhost", 8086, "u", "p", "db", [])
    svc._inited = False
    svc.thd_postStatsValue("test", "test", "test")
    assert any("Service" in line and "not initialized" in line for line in log_lines), log_lines


def test_repr_and_log_never_show_the_password():
    svc = InfluxStorageService("http://127.0.0.1", 8086, "admin", "s3cret-pw", "db", [], name="i")
    assert "s3cret-pw" not in repr(svc) and "s3cret-pw" not in str(svc)
    assert "admin" in repr(svc)


def test_credentials_in_the_url_stay_out_of_repr_and_errors():
    port = free_port()  # nothing listens there: connection refused
    svc = InfluxStorageService("http://bob:pw123@127.0.0.1", port, "u", "s3cret", "db", [])
    assert "pw123" not in repr(svc)
    with pytest.raises(TransientWriteError) as info:
        svc.thd_postStatsValues([Point("s", {"v": 1}, {}, 1)])
    assert "pw123" not in str(info.value)
    assert f"cannot reach InfluxDB at http://127.0.0.1:{port}: ConnectionError" == str(info.value)


def test_default_name_and_url_with_scheme(monkeypatch):
    monkeypatch.setattr(influxdb_client, "InfluxDBClient", _RecordingClient)
    svc = InfluxStorageService("https://stats.example:9999", 8086, "u", "p", "db", [], name=None)
    assert svc.name == "InfluxStorageService"
    assert svc.client.args[0] == "stats.example"
    assert svc.client.kwargs["ssl"]


class _RecordingClient:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


@pytest.fixture
def classified():
    """A backend writing to a server that answers as told: returns the backend's answer to one point."""
    server = MisbehavingServer()
    url, port = server.url.rsplit(":", 1)
    svc = InfluxStorageService(url, int(port), "bob", "hunter2", "stats", [])

    def answer_with(status, body):
        server.answer = lambda request: Answer(status, {"Content-Type": "application/json"}, body.encode())
        return svc.thd_postStatsValues([Point("s", {"v": 1}, {}, 1)])

    yield answer_with
    server.close()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, '{"error":"internal"}', TransientWriteError),
        (503, '{"error":"request throttled"}', TransientWriteError),
        (200, "", TransientWriteError),  # InfluxDB 1.x answers a write with 204
        (401, '{"error":"authorization failed"}', RefusedWriteError),
        (403, '{"error":"forbidden"}', RefusedWriteError),
        (404, '{"error":"database not found: \\"stats\\""}', RefusedWriteError),
        (413, '{"error":"Request Entity Too Large"}', BatchTooLargeError),
        (302, "", RefusedWriteError),
        (307, "", RefusedWriteError),
    ],
)
def test_classification(classified, status, body, expected):
    with pytest.raises(expected) as info:
        classified(status, body)
    assert "hunter2" not in str(info.value)


def test_partial_write_reports_series_and_field(classified):
    message = (
        '{"error":"partial write: field type conflict: input field \\"value\\" on measurement '
        '\\"b1-prop\\" is type string, already exists as type float dropped=2"}'
    )
    report = classified(400, message)
    assert report.rejected_points == 2
    assert (report.problems[0].series, report.problems[0].field) == ("b1-prop", "value")
    assert "field type conflict" in report.problems[0].reason


# --------------------------------------------------------------------------
# every argument checked: one config.error line each, as `buildbot checkconfig` shows
# --------------------------------------------------------------------------

GOOD_V1 = {
    "url": "127.0.0.1",
    "port": 8086,
    "user": "u",
    "password": "p",
    "db": "stats",
    "captures": [],
}


def config_errors(factory, **kwargs):
    with capture_config_errors() as errors:
        factory(**kwargs)
    return errors.errors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"db": None}, "InfluxStorageService 'InfluxStorageService': db must be a non-empty name, not None"),
        ({"db": ""}, "db must be a non-empty name, not ''"),
        ({"timeout": "10"}, "timeout must be a number of seconds > 0, not '10'"),
        ({"timeout": -1}, "timeout must be a number of seconds > 0, not -1"),
        ({"url": None}, "url must be a host name or an http(s):// URL, not None"),
        ({"port": -1}, "port must be an integer from 1 to 65535, not -1"),
        ({"port": None}, "port must be an integer from 1 to 65535, not None"),
        ({"url": "http://[::1"}, "url 'http://[::1' is not a valid URL (Invalid IPv6 URL)"),
        (
            {"url": "ftp://files.example"},
            "url must start with http:// or https://, not 'ftp://files.example'",
        ),
        ({"verify_ssl": "no"}, "verify_ssl must be True or False, not 'no'"),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "ca_bundle '/nonexistent/ca.pem' is not a readable file"),
        ({"password": 1234}, "password must be a string or a secret (util.Secret('name')), not of type int"),
        ({"time_precision": "h"}, "time_precision must be one of ['ms', 'n', 's', 'u'], not 'h'"),
        ({"retention_policy": ""}, "retention_policy must be a non-empty name or None, not ''"),
        ({"gzip": "yes"}, "gzip must be True or False, not 'yes'"),
    ],
)
def test_each_wrong_argument_is_one_config_error(change, message):
    errors = config_errors(InfluxStorageService, **{**GOOD_V1, **change})
    assert len(errors) == 1, errors
    assert message in errors[0]
    assert errors[0].startswith("InfluxStorageService 'InfluxStorageService': ")


def test_ca_bundle_directory_is_not_a_file(tmp_path):
    errors = config_errors(InfluxStorageService, **GOOD_V1, ca_bundle=str(tmp_path))
    assert errors == [
        f"InfluxStorageService 'InfluxStorageService': ca_bundle {str(tmp_path)!r} is not a readable file"
    ]


def test_url_credentials_stay_out_of_config_errors():
    errors = config_errors(InfluxStorageService, **{**GOOD_V1, "url": "ftp://bob:pw123@h"})
    assert errors and "pw123" not in errors[0]


def test_good_arguments_give_no_error(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert config_errors(InfluxStorageService, **GOOD_V1) == []
    assert (
        config_errors(InfluxStorageService, **{**GOOD_V1, "url": "https://h.example"}, ca_bundle=str(ca))
        == []
    )
    assert config_errors(InfluxStorageService, **{**GOOD_V1, "password": Secret("pw"), "user": None}) == []


def test_ca_bundle_and_verify_reach_the_client(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    svc = InfluxStorageService(**{**GOOD_V1, "url": "https://h.example"}, ca_bundle=str(ca))
    assert svc.client._verify_ssl == str(ca)
    svc = InfluxStorageService(**{**GOOD_V1, "url": "https://h.example"})
    assert svc.client._verify_ssl is True
    svc = InfluxStorageService(**{**GOOD_V1, "url": "https://h.example"}, verify_ssl=False)
    assert svc.client._verify_ssl is False


class SecretPasswordTests(TestReactorMixin, LoggingMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        self.setUpLogging()
        self.master = yield fakemaster.make_master(self, with_secrets={"influx-pw": "s3cret-from-file"})

    @defer.inlineCallbacks
    def test_secret_is_rendered_by_prepare_and_never_shown(self):
        svc = InfluxStorageService(**{**GOOD_V1, "password": Secret("influx-pw")}, name="i")
        self.assertIsNone(svc.client._password)
        yield svc.prepare(self.master)
        self.assertEqual(svc.client._password, "s3cret-from-file")
        self.assertNotIn("s3cret-from-file", repr(svc))
        self.assertIn("Secret(influx-pw)", repr(svc.password))

    @defer.inlineCallbacks
    def test_interpolate_secret(self):
        svc = InfluxStorageService(**{**GOOD_V1, "password": Interpolate("%(secret:influx-pw)s")})
        yield svc.prepare(self.master)
        self.assertEqual(svc.client._password, "s3cret-from-file")

    @defer.inlineCallbacks
    def test_verify_ssl_false_is_warned_once(self):
        influx_common._WARNED_UNVERIFIED.discard("https://h.example:8086")
        svc = InfluxStorageService(**{**GOOD_V1, "url": "https://h.example"}, verify_ssl=False)
        yield svc.prepare(self.master)
        yield svc.prepare(self.master)
        self.assertLogged("WARNING: InfluxStorageService 'InfluxStorageService' does not verify the TLS")
        warnings = [e for e in self._logEvents if "does not verify" in (log.textFromEventDict(e) or "")]
        self.assertEqual(len(warnings), 1)


def test_tls_failure_is_refused_with_one_clear_line(monkeypatch):
    svc = InfluxStorageService(**{**GOOD_V1, "url": "https://127.0.0.1"}, name="i")
    error = requests.exceptions.SSLError(
        "HTTPSConnectionPool(host='127.0.0.1', port=8086): Max retries exceeded (Caused by "
        "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
        "self-signed certificate (_ssl.c:1006)')))"
    )

    def refused(*args, **kwargs):
        raise error

    monkeypatch.setattr(svc._session, "post", refused)
    with pytest.raises(RefusedWriteError) as info:
        svc.thd_postStatsValues([Point("s", {"v": 1}, {}, 1)])
    assert str(info.value) == (
        "TLS certificate of https://127.0.0.1:8086 not verified (self-signed certificate); "
        "for a private CA give ca_bundle='/path/to/ca.pem'"
    )


def test_numeric_string_port_still_works_as_in_buildbot_statistics():
    svc = InfluxStorageService(**{**GOOD_V1, "port": "8086"})
    assert svc.port == 8086
