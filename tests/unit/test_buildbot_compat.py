"""What code and tests written for buildbot.statistics expect, with buildbot_stats in its place.

These follow Buildbot's own statistics tests (Buildbot 3.x), with only the
import paths changed and the 4.3 fakes' set-up: Buildbot's fake backend and fake
InfluxDB client, the names ``registeredStorageServices`` and ``client``.  One
more change: ``port="fake_port"`` became 8086, since a port that is not a
number is now a ``config.error`` (a numeric string such as "8086" still works).
"""

from __future__ import annotations

from unittest import mock

from buildbot import config
from buildbot.test import fakedb
from buildbot.test.fake import fakemaster, fakestats
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.util import logging
from twisted.internet import defer
from twisted.trial import unittest

from buildbot_stats import capture, stats_service, storage_backends
from buildbot_stats.storage_backends.base import StatsStorageBase
from buildbot_stats.storage_backends.influxdb_client import InfluxStorageService


class CompatBase(TestReactorMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        self.master = yield fakemaster.make_master(self, wantMq=True, wantData=True, wantDb=True)
        yield self.master.db.insert_test_data(
            [fakedb.Builder(id=i, name=name) for i, name in ((1, "builder1"), (2, "builder2"))]
        )
        self.stats_service = stats_service.StatsService(
            storage_backends=[fakestats.FakeStatsStorageService()], name="FakeStatsService"
        )
        yield self.stats_service.setServiceParent(self.master)
        yield self.master.startService()
        self.addCleanup(self.master.stopService)

    def checkEqual(self, new_storage_backends):
        registered = [
            s for s in self.stats_service.registeredStorageServices if isinstance(s, StatsStorageBase)
        ]
        for s in new_storage_backends:
            self.assertIn(s, registered)


class ConfigurationCompatTests(CompatBase):
    @defer.inlineCallbacks
    def test_reconfig_with_no_storage_backends(self):
        yield self.stats_service.reconfigService([])
        self.checkEqual([])

    @defer.inlineCallbacks
    def test_reconfig_with_fake_storage_backend(self):
        new = [fakestats.FakeStatsStorageService(name="One"), fakestats.FakeStatsStorageService(name="Two")]
        yield self.stats_service.reconfigService(new)
        self.checkEqual(new)

    @defer.inlineCallbacks
    def test_reconfig_with_consumers(self):
        backend = fakestats.FakeStatsStorageService(name="One")
        backend.captures = [capture.CaptureProperty("test_builder", "test")]
        yield self.stats_service.reconfigService([backend])
        yield self.stats_service.reconfigService([backend])
        self.assertEqual(len(self.master.mq.qrefs), 1)

    @defer.inlineCallbacks
    def test_bad_configuration(self):
        with self.assertRaises(TypeError):
            yield self.stats_service.reconfigService([mock.Mock()])

    def test_report_in_error(self):
        with self.assertRaises(config.ConfigErrors):
            capture.CaptureBuildDuration("builder1", report_in="foobar")

    def test_service_at_documented_path(self):
        self.assertIs(self.master.namedServices["FakeStatsService"], self.stats_service)


class InfluxCompatTests(CompatBase, logging.LoggingMixin):
    @defer.inlineCallbacks
    def test_influxdb_installed(self):
        captures = [capture.CaptureProperty("test_builder", "test")]
        new = [InfluxStorageService("fake_url", 12345, "fake_user", "fake_password", "fake_db", captures)]
        yield self.stats_service.reconfigService(new)
        self.checkEqual(new)

    @defer.inlineCallbacks
    def test_influx_storage_service_fake_install(self):
        self.patch(storage_backends.influxdb_client, "InfluxDBClient", fakestats.FakeInfluxDBClient)
        captures = [capture.CaptureProperty("test_builder", "test")]
        new = [InfluxStorageService("fake_url", 8086, "fake_user", "fake_password", "fake_db", captures)]
        yield self.stats_service.reconfigService(new)
        self.checkEqual(new)

    def test_influx_storage_service_post_value(self):
        self.patch(storage_backends.influxdb_client, "InfluxDBClient", fakestats.FakeInfluxDBClient)
        svc = InfluxStorageService("fake_url", 8086, "fake_user", "fake_password", "fake_db", "fake_stats")
        svc.thd_postStatsValue({"name": "test", "value": "test"}, "test_series_name", {"x": "y"})
        self.assertEqual(
            svc.client.points,
            [
                {
                    "measurement": "test_series_name",
                    "fields": {"name": "test", "value": "test"},
                    "tags": {"x": "y"},
                }
            ],
        )

    def test_influx_service_not_inited(self):
        self.setUpLogging()
        self.patch(storage_backends.influxdb_client, "InfluxDBClient", fakestats.FakeInfluxDBClient)
        svc = InfluxStorageService("fake_url", 8086, "fake_user", "fake_password", "fake_db", "fake_stats")
        svc._inited = False
        svc.thd_postStatsValue("test", "test", "test")
        self.assertLogged("Service.*not initialized")
