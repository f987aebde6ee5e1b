"""InfluxStorageService without a server: the documented per-point API, error classes, line protocol."""

from __future__ import annotations

from buildbot.test.fake import fakestats
from buildbot.test.util.logging import LoggingMixin
from twisted.trial import unittest

from buildbot_stats.errors import BatchTooLargeError, RefusedWriteError, TransientWriteError
from buildbot_stats.lineprotocol import encode_points
from buildbot_stats.point import Point
from buildbot_stats.storage_backends import influxdb_client
from buildbot_stats.storage_backends.influxdb_client import InfluxStorageService


class PerPointApiTests(LoggingMixin, unittest.TestCase):
    def setUp(self):
        self.patch(influxdb_client, "InfluxDBClient", fakestats.FakeInfluxDBClient)

    def test_post_value_writes_the_documented_dict(self):
        svc = InfluxStorageService("localhost", 8086, "u", "p", "db", [])
        svc.thd_postStatsValue({"name": "test", "value": "test"}, "series", {"x": "y"})
        svc.thd_postStatsValue({"v": 1}, "series2")
        self.assertEqual(
            svc.client.points,
            [
                {"measurement": "series", "fields": {"name": "test", "value": "test"}, "tags": {"x": "y"}},
                {"measurement": "series2", "fields": {"v": 1}},
            ],
        )

    def test_not_initialised_logs(self):
        self.setUpLogging()
        svc = InfluxStorageService("localhost", 8086, "u", "p", "db", [])
        svc._inited = False
        svc.thd_postStatsValue("test", "test", "test")
        self.assertLogged("Service.*not initialized")
        self.flushLoggedErrors()

    def test_repr_and_log_never_show_the_password(self):
        svc = InfluxStorageService("http://127.0.0.1", 8086, "admin", "s3cret-pw", "db", [], name="i")
        self.assertNotIn("s3cret-pw", repr(svc))
        self.assertNotIn("s3cret-pw", str(svc))
        self.assertIn("admin", repr(svc))

    def test_credentials_in_the_url_stay_out_of_repr_and_errors(self):
        self.patch(influxdb_client, "InfluxDBClient", _RecordingClient)
        svc = InfluxStorageService("http://bob:pw123@127.0.0.1", 8086, "u", "s3cret", "db", [])
        self.assertNotIn("pw123", repr(svc))
        import requests

        svc.client.error = requests.exceptions.ConnectionError("refused")
        with self.assertRaises(TransientWriteError) as cm:
            svc.thd_postStatsValues([Point("s", {"v": 1}, {}, 1)])
        self.assertNotIn("pw123", str(cm.exception))
        self.assertIn("127.0.0.1:8086", str(cm.exception))

    def test_default_name_and_url_with_scheme(self):
        self.patch(influxdb_client, "InfluxDBClient", _RecordingClient)
        svc = InfluxStorageService("https://stats.example:9999", 8086, "u", "p", "db", [], name=None)
        self.assertEqual(svc.name, "InfluxStorageService")
        self.assertEqual(svc.client.args[0], "stats.example")
        self.assertTrue(svc.client.kwargs["ssl"])


class _RecordingClient:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.error = None

    def request(self, *args, **kwargs):
        if self.error:
            raise self.error


class ErrorClassificationTests(unittest.TestCase):
    def setUp(self):
        self.patch(influxdb_client, "InfluxDBClient", _RecordingClient)
        self.svc = InfluxStorageService("127.0.0.1", 8086, "bob", "hunter2", "stats", [])
        self.points = [Point("s", {"v": 1}, {}, 1)]

    def fail_with(self, error):
        self.svc.client.error = error
        return self.svc.thd_postStatsValues(self.points)

    def test_classification(self):
        import requests
        from influxdb.exceptions import InfluxDBClientError, InfluxDBServerError

        for error, expected in (
            (requests.exceptions.ConnectionError("refused"), TransientWriteError),
            (requests.exceptions.ReadTimeout("slow"), TransientWriteError),
            (InfluxDBServerError(b'{"error":"internal"}'), TransientWriteError),
            (InfluxDBClientError('{"error":"request throttled"}', 503), TransientWriteError),
            (InfluxDBClientError('{"error":"authorization failed"}', 401), RefusedWriteError),
            (InfluxDBClientError('{"error":"forbidden"}', 403), RefusedWriteError),
            (
                InfluxDBClientError('{"error":"database not found: \\"stats\\""}', 404),
                RefusedWriteError,
            ),
            (InfluxDBClientError('{"error":"Request Entity Too Large"}', 413), BatchTooLargeError),
        ):
            with self.assertRaises(expected, msg=repr(error)) as cm:
                self.fail_with(error)
            self.assertNotIn("hunter2", str(cm.exception))

    def test_partial_write_reports_series_and_field(self):
        from influxdb.exceptions import InfluxDBClientError

        message = (
            '{"error":"partial write: field type conflict: input field \\"value\\" on measurement '
            '\\"b1-prop\\" is type string, already exists as type float dropped=2"}'
        )
        report = self.fail_with(InfluxDBClientError(message, 400))
        self.assertEqual(report.rejected_points, 2)
        self.assertEqual((report.problems[0].series, report.problems[0].field), ("b1-prop", "value"))
        self.assertIn("field type conflict", report.problems[0].reason)


class LineProtocolTests(unittest.TestCase):
    def encode(self, *points, precision="n"):
        return encode_points(list(points), precision)

    def test_types(self):
        body, problems, skipped = self.encode(
            Point("m", {"b": True, "i": 3, "f": 1.5, "s": 'a "q" \\ z', "n": None}, {"t": "v"}, 42)
        )
        self.assertEqual(body, 'm,t=v b=true,i=3i,f=1.5,s="a \\"q\\" \\\\ z" 42')
        self.assertEqual([(p.field, p.rejected) for p in problems], [("n", True)])
        self.assertEqual(skipped, 0)

    def test_escaping_names(self):
        body, _, _ = self.encode(Point("a b,c", {"f k=": 1}, {"t k,": "v =,"}, 1))
        self.assertEqual(body, "a\\ b\\,c,t\\ k\\,=v\\ \\=\\, f\\ k\\==1i 1")

    def test_conversions_and_rejections(self):
        body, problems, skipped = self.encode(
            Point(
                "m", {"big": 2**70, "nan": float("nan"), "inf": float("inf"), "d": {"b": 1, "a": [1]}}, {}, 1
            ),
            Point("only_bad", {"x": float("nan")}, {}, 2),
        )
        self.assertEqual(body, 'm big=1.1805916207174113e+21,d="{\\"a\\": [1], \\"b\\": 1}" 1')
        self.assertEqual(skipped, 1)
        reasons = {(p.series, p.field, p.rejected) for p in problems}
        self.assertEqual(
            reasons,
            {("m", "big", False), ("m", "nan", True), ("m", "inf", True), ("only_bad", "x", True)},
        )

    def test_time_key_renamed_and_empty_tags_dropped(self):
        body, problems, _ = self.encode(Point("m", {"time": 1}, {"time": "x", "empty": "", "none": None}, 5))
        self.assertEqual(body, "m,time_=x time_=1i 5")
        self.assertEqual({p.field for p in problems}, {"time"})

    def test_long_string_cut(self):
        body, problems, _ = self.encode(Point("m", {"s": "é" * 40000}, {}, 1))
        value = body.split('"')[1]
        self.assertLessEqual(len(value.encode()), 65535)
        self.assertTrue(problems and not problems[0].rejected)

    def test_precision(self):
        body, _, _ = self.encode(Point("m", {"v": 1}, {}, 1_700_000_000_123_456_789), precision="ms")
        self.assertEqual(body, "m v=1i 1700000000123")
