"""InfluxDB 2/3 backends without a server: argument checks, secrets, repr, line numbers."""

from __future__ import annotations

import email.utils
import time

import pytest
from buildbot.config.errors import capture_config_errors
from buildbot.process.properties import Secret
from buildbot.test.fake import fakemaster
from buildbot.test.reactor import TestReactorMixin
from twisted.internet import defer
from twisted.trial import unittest

from buildbot_stats import statistics
from buildbot_stats.errors import RefusedWriteError
from buildbot_stats.point import Point
from buildbot_stats.storage_backends.influx_common import retry_after_seconds, shown
from buildbot_stats.storage_backends.influxdb_client import InfluxStorageService
from buildbot_stats.storage_backends.influxdb_http import (
    InfluxDB2StorageService,
    InfluxDB3StorageService,
    _line_of,
)

V2 = {"url": "http://127.0.0.1:8086", "org": "o", "bucket": "b", "token": "t0k", "captures": []}
V3 = {"url": "http://127.0.0.1:8181", "database": "stats", "token": "t0k", "captures": []}
V1 = {"url": "127.0.0.1", "port": 8086, "user": "u", "password": "pw", "db": "stats", "captures": []}


def errors_of(cls, **kwargs):
    with capture_config_errors() as errors:
        cls(**kwargs)
    return errors.errors


COMMON = [
    ({"url": None}, "url must be an http:// or https:// URL, not None"),
    ({"url": "http://[::1"}, "url 'http://[::1' is not a valid URL (Invalid IPv6 URL)"),
    ({"url": "ftp://h"}, "url must start with http:// or https://, not 'ftp://h'"),
    ({"url": "http://h:99999"}, "url 'http://h:99999' is not a valid URL"),
    ({"timeout": "10"}, "timeout must be a number of seconds > 0, not '10'"),
    ({"timeout": -1}, "timeout must be a number of seconds > 0, not -1"),
    ({"verify_ssl": "no"}, "verify_ssl must be True or False, not 'no'"),
    ({"ca_bundle": "/nonexistent/ca.pem"}, "ca_bundle '/nonexistent/ca.pem' is not a readable file"),
    ({"token": None}, "token must be a string or a secret (util.Secret('name')), not of type NoneType"),
    ({"token": ""}, "token must be a string or a secret (util.Secret('name')), not an empty string"),
    ({"precision": "n"}, "precision must be one of ['ms', 'ns', 's', 'us'], not 'n'"),
    ({"gzip": 1}, "gzip must be True or False, not 1"),
]


@pytest.mark.parametrize(
    ("change", "message"),
    COMMON
    + [
        ({"org": ""}, "org must be a non-empty name, not ''"),
        ({"bucket": None}, "bucket must be a non-empty name, not None"),
    ],
)
def test_v2_each_wrong_argument_is_one_config_error(change, message):
    errors = errors_of(InfluxDB2StorageService, **{**V2, **change})
    assert len(errors) == 1, errors
    assert errors[0].startswith("InfluxDB2StorageService 'InfluxDB2StorageService': ")
    assert message in errors[0]


@pytest.mark.parametrize(
    ("change", "message"), COMMON + [({"database": ""}, "database must be a non-empty name, not ''")]
)
def test_v3_each_wrong_argument_is_one_config_error(change, message):
    errors = errors_of(InfluxDB3StorageService, **{**V3, **change})
    assert len(errors) == 1, errors
    assert message in errors[0]


def test_good_arguments_and_the_facade():
    assert errors_of(InfluxDB2StorageService, **V2) == []
    assert errors_of(InfluxDB3StorageService, **{**V3, "token": Secret("tok")}) == []
    assert statistics.InfluxDB2StorageService is InfluxDB2StorageService
    assert statistics.InfluxDB3StorageService is InfluxDB3StorageService


def test_repr_never_shows_the_token_nor_url_credentials():
    svc = InfluxDB2StorageService(**{**V2, "url": "https://bob:pw9@influx.example/prefix"}, name="v2")
    assert repr(svc) == "<InfluxDB2StorageService 'v2' https://influx.example:443 org='o' bucket='b'>"
    assert "t0k" not in repr(svc)
    assert svc._write_url == "https://bob:pw9@influx.example/prefix/api/v2/write"


@pytest.mark.parametrize("cls", [InfluxDB2StorageService, InfluxDB3StorageService, InfluxStorageService])
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8086/?token=s3cr3t",
        "http://h:99999/x?p=s3cr3t&u=bob",
        "http://h:8181#token=s3cr3t",
        "bob:s3cr3t@influx.example",  # the 1.x backend's host form (a URL for the others)
        "influx.example/?p=s3cr3t",
    ],
)
def test_the_query_of_a_url_is_never_shown(cls, url):
    kwargs = (
        {**V1, "url": url}
        if cls is InfluxStorageService
        else {**(V2 if cls is InfluxDB2StorageService else V3), "url": url}
    )
    errors = errors_of(cls, **kwargs)
    assert len(errors) == 1, errors
    assert "s3cr3t" not in errors[0] and "?" not in errors[0] and "bob" not in errors[0]
    if "8086" in url:  # a query in a good URL: where the token was meant to go
        assert errors[0].endswith(
            "url 'http://127.0.0.1:8086/' must have no query or fragment (give secrets as arguments)"
        )


def test_a_token_from_a_file_ending_in_a_newline_is_stripped():
    svc = InfluxDB2StorageService(**{**V2, "token": "  t0k-1234\n"})
    assert svc._token == "t0k-1234"
    assert errors_of(InfluxDB2StorageService, **{**V2, "token": "t0k\n"}) == []


@pytest.mark.parametrize("token", ["t0k\nX-Other: 1", "t\x00k", "tök€n", "\n  \t"])
@pytest.mark.parametrize("cls", [InfluxDB2StorageService, InfluxDB3StorageService])
def test_a_token_a_header_cannot_carry_is_a_config_error_naming_neither(cls, token):
    errors = errors_of(cls, **{**(V2 if cls is InfluxDB2StorageService else V3), "token": token})
    assert len(errors) == 1, errors
    owner = f"{cls.__name__} '{cls.__name__}'"
    assert errors == [f"{owner}: token is empty or holds characters an HTTP header cannot carry"]


def test_shown_urls_carry_no_credentials_and_no_query():
    assert shown("https://bob:pw@h.example:8086/p?token=t&u=x#f") == "https://h.example:8086/p"
    assert shown("http://sso:p?w@h/login?next=/") == "http://h/login"


def test_unrendered_secret_is_refused_not_sent():
    svc = InfluxDB3StorageService(**{**V3, "token": Secret("tok")})
    with pytest.raises(RefusedWriteError, match="not rendered yet"):
        svc.thd_postStatsValues([Point("m", {"v": 1}, {}, 1)])


class PrepareTests(TestReactorMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_prepare_renders_the_token(self):
        self.setup_test_reactor()
        master = yield fakemaster.make_master(self, with_secrets={"tok": "from-provider"})
        svc = InfluxDB2StorageService(**{**V2, "token": Secret("tok")})
        yield svc.prepare(master)
        self.assertEqual(svc._token, "from-provider")

    @defer.inlineCallbacks
    def test_a_rendered_token_is_stripped_or_refused_without_being_shown(self):
        self.setup_test_reactor()
        secrets = {"file": "from-file\n", "bad": "to\r\nken"}
        master = yield fakemaster.make_master(self, with_secrets=secrets)
        svc = InfluxDB3StorageService(**{**V3, "token": Secret("file")})
        yield svc.prepare(master)
        self.assertEqual(svc._token, "from-file")
        svc = InfluxDB3StorageService(**{**V3, "token": Secret("bad")})
        with self.assertRaises(RefusedWriteError) as info:
            yield svc.prepare(master)
        self.assertEqual(
            str(info.exception),
            "InfluxDB3StorageService 'InfluxDB3StorageService': the token secret is empty or holds "
            "characters an HTTP header cannot carry",
        )
        with self.assertRaises(RefusedWriteError):  # never sent
            svc.thd_postStatsValues([Point("m", {"v": 1}, {}, 1)])


def test_server_line_numbers_map_to_lines_with_newlines_in_strings():
    lines = ['m s="a\nb" 1', "m v=1i 2", "m v=2i 3"]
    assert _line_of(1, None, lines) == 0
    assert _line_of(2, None, lines) == 0
    assert _line_of(3, None, lines) == 1
    assert _line_of(4, None, lines) == 2
    assert _line_of(5, None, lines) is None
    assert _line_of(9, "m v=2i 3", lines) == 2  # the original line wins when it is unique


def test_retry_after():
    assert retry_after_seconds("30") == 30
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    assert 25 < retry_after_seconds(email.utils.formatdate(time.time() + 30, usegmt=True)) <= 30
    assert retry_after_seconds("999999") == 6 * 3600  # bounded: a wrong header must not stall delivery
