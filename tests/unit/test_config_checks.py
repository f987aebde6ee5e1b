"""Every master.cfg argument is checked: each mistake is one ``config.error`` line.

Each mistake is tried alone inside ``capture_config_errors()`` (as Buildbot
collects errors while loading master.cfg) and must give exactly one error
naming it.  ``tests/e2e/test_master_failures.py`` runs a real ``buildbot
checkconfig`` with them.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from buildbot.config.errors import capture_config_errors

from buildbot_stats import capture
from buildbot_stats.options import ServiceOptions
from buildbot_stats.stats_service import StatsService
from buildbot_stats.testing import RecordingStorage


def config_errors(make: Any) -> list[str]:
    with capture_config_errors() as errors:
        make()
    return errors.errors


def service(*backends: Any, **options: Any) -> Any:
    return lambda: StatsService(storage_backends=list(backends), name="stats", **options)


def one_error(make: Any, expected: str) -> None:
    errors = config_errors(make)
    assert len(errors) == 1, errors
    assert expected in errors[0], errors


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"max_retry_delay": 0}, "max_retry_delay must be a number of seconds >= 0.1, not 0"),
        ({"max_retry_delay": 0.05}, "max_retry_delay must be a number of seconds >= 0.1, not 0.05"),
        ({"max_retry_delay": math.nan}, "max_retry_delay must be a number of seconds >= 0.1, not nan"),
        ({"max_retry_delay": math.inf}, "max_retry_delay must be a number of seconds >= 0.1, not inf"),
        ({"max_retry_delay": "60"}, "max_retry_delay must be a number of seconds >= 0.1, not '60'"),
        ({"flush_timeout": math.nan}, "flush_timeout must be a number of seconds >= 0, not nan"),
        ({"flush_timeout": math.inf}, "flush_timeout must be a number of seconds >= 0, not inf"),
        ({"flush_timeout": -1}, "flush_timeout must be a number of seconds >= 0, not -1"),
        ({"spool_path": ""}, "spool_path must be a file path or None, not ''"),
        ({"spool_path": "  "}, "spool_path must be a file path or None, not '  '"),
        ({"batch_size": True}, "batch_size must be an integer >= 1, not True"),
        ({"batchsize": 10}, "unknown argument 'batchsize'"),
    ],
)
def test_each_bad_option_is_one_error(options: dict[str, Any], expected: str) -> None:
    one_error(service(**options), f"StatsService: {expected}")


@pytest.mark.parametrize("options", [{"max_retry_delay": 0.1}, {"flush_timeout": 0}, {"spool_path": None}])
def test_limits_are_accepted(options: dict[str, Any]) -> None:
    assert config_errors(service(**options)) == []


def test_retry_delays_have_a_floor_even_without_checkconfig() -> None:
    policy = ServiceOptions(max_retry_delay=0).policy()
    assert policy.max_retry_delay == 0.1
    assert min(policy.retry_delay(n) for n in range(1, 5)) >= 0.05


def test_capture_class_instead_of_instance() -> None:
    backend = RecordingStorage(captures=[capture.CaptureBuildDurationAllBuilders])
    one_error(
        service(backend),
        "captures of backend 'RecordingStorage': CaptureBuildDurationAllBuilders is a class; "
        "write CaptureBuildDurationAllBuilders(...)",
    )


def test_capture_that_is_no_capture() -> None:
    one_error(service(RecordingStorage(captures=["duration"])), "must be Capture objects, not str")


def test_same_backend_object_listed_twice() -> None:
    backend = RecordingStorage(name="influx")
    one_error(service(backend, backend), "backend 'influx' is listed twice in storage_backends")


def test_two_backends_with_the_same_name() -> None:
    one_error(
        service(RecordingStorage(name="influx"), RecordingStorage(name="influx")),
        "two storage backends are named 'influx'",
    )


def test_unnamed_backends_of_one_class_are_told_apart_by_position() -> None:
    assert config_errors(service(RecordingStorage(), RecordingStorage())) == []


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda: capture.CaptureBuildEndTime("b", callback="x"),
            "CaptureBuildEndTime: callback must be callable",
        ),
        (lambda: capture.CaptureDataAllBuilders("m", callback=3), "callback must be callable, not 3"),
        (lambda: capture.CaptureProperty("b", "p", callback="x"), "callback must be callable, not 'x'"),
        (lambda: capture.CaptureData(123, "b"), "CaptureData: data_name must be a string, not 123"),
        (lambda: capture.CaptureDataAllBuilders(None), "data_name must be a string, not None"),
        (lambda: capture.CaptureProperty("b", 42), "CaptureProperty: property_name must be a string, not 42"),
        (lambda: capture.CapturePropertyAllBuilders(b"p"), "property_name must be a string, not b'p'"),
        (lambda: capture.CaptureProperty("b", 42, regex=True), "property_name must be a string"),
        (lambda: capture.CaptureBuildDuration("b", report_in="days"), "not 'days'"),
        (lambda: capture.CaptureBuildDuration("b", report_in=["hours"]), "not ['hours']"),
        (lambda: capture.CaptureBuildDurationAllBuilders(report_in=None), "not None"),
        # the step and queue-time captures follow the same rule (a list is unhashable)
        (lambda: capture.CaptureStepDuration("b", report_in=["hours"]), "not ['hours']"),
        (lambda: capture.CaptureStepDurationAllBuilders(report_in=None), "not None"),
        (lambda: capture.CaptureBuildQueueTime("b", report_in={}), "not {}"),
        (lambda: capture.CaptureBuildQueueTimeAllBuilders(report_in="days"), "not 'days'"),
    ],
)
def test_each_bad_capture_argument_is_one_error(make: Any, expected: str) -> None:
    one_error(make, expected)


def test_good_captures_have_no_error() -> None:
    def makes() -> None:
        capture.CaptureBuildDuration("b", report_in="minutes", callback=lambda s, e: 1)
        capture.CaptureData("m", "b", callback=len)
        capture.CaptureProperty("b", "p.*", regex=True)

    assert config_errors(makes) == []


@pytest.mark.parametrize(
    "make",
    [
        lambda: capture.CaptureProperty(None, "x"),
        lambda: capture.CaptureBuildDuration(5),
        lambda: capture.CaptureData("m", ""),
        lambda: capture.CaptureTestResults(None),
        lambda: capture.CaptureStepDuration(None),
    ],
)
def test_a_one_builder_capture_without_a_builder_name_is_one_error(make: Any) -> None:
    one_error(service(RecordingStorage(captures=[make()])), "needs a builder name (a string)")


def test_all_builders_captures_need_no_name() -> None:
    captures = [capture.CapturePropertyAllBuilders("x"), capture.CaptureStepDurationAllBuilders()]
    assert config_errors(service(RecordingStorage(captures=captures))) == []


def test_step_name_must_be_a_string() -> None:
    one_error(lambda: capture.CaptureStepDuration("b", step_name=5), "step_name must be a string or None")
