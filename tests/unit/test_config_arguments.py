"""A misspelt keyword argument of any capture or backend is a ``config.error`` line.

Python alone would stop master.cfg at the first one with a TypeError (and
``buildbot checkconfig`` would say "error while parsing config file" with a
traceback in the log); every public class of the facade reports it like the
other master.cfg mistakes, naming the class and the closest known argument.
"""

from __future__ import annotations

from typing import Any

import pytest
from buildbot.config.errors import ConfigErrors, capture_config_errors

from buildbot_stats import statistics

# one valid call per public capture and backend class: (class name, args, kwargs)
VALID: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("CaptureBuildDuration", ("b",), {"report_in": "seconds"}),
    ("CaptureBuildDurationAllBuilders", (), {"report_in": "seconds"}),
    ("CaptureBuildStartTime", ("b",), {}),
    ("CaptureBuildStartTimeAllBuilders", (), {}),
    ("CaptureBuildEndTime", ("b",), {}),
    ("CaptureBuildEndTimeAllBuilders", (), {}),
    ("CaptureBuildResults", ("b",), {}),
    ("CaptureBuildResultsAllBuilders", (), {}),
    ("CaptureBuildQueueTime", ("b",), {}),
    ("CaptureBuildQueueTimeAllBuilders", (), {}),
    ("CaptureData", ("d", "b"), {}),
    ("CaptureDataAllBuilders", ("d",), {}),
    ("CaptureProperty", ("b", "p"), {}),
    ("CapturePropertyAllBuilders", ("p",), {}),
    ("CaptureStepDuration", ("b",), {}),
    ("CaptureStepDurationAllBuilders", (), {}),
    ("CaptureTestResults", ("b",), {}),
    ("CaptureTestResultsAllBuilders", (), {}),
    ("InfluxStorageService", ("127.0.0.1", 8086, "u", "p", "db", []), {"timeout": 5}),
    ("InfluxDB2StorageService", ("http://127.0.0.1:8086", "org", "bucket", "token", []), {}),
    ("InfluxDB3StorageService", ("http://127.0.0.1:8181", "db", "token", []), {}),
    ("SQLiteStorageService", ("/tmp/bbstats-never-written.sqlite", []), {}),
    ("PrometheusStorageService", (), {"port": 0, "captures": []}),
]

CLASSES = [name for name, _, _ in VALID]


def errors_of(make: Any) -> list[str]:
    try:
        with capture_config_errors() as errors:
            make()
    except ConfigErrors as e:  # an argument too many or missing stops the file
        return errors.errors + e.errors
    return errors.errors


def test_every_public_capture_and_backend_class_is_covered() -> None:
    public = {
        name
        for name in statistics.__all__
        if isinstance(getattr(statistics, name), type)
        and issubclass(getattr(statistics, name), (statistics.Capture, statistics.StatsStorageBase))
        and not getattr(statistics, name).__abstractmethods__
    }
    assert public == set(CLASSES)


@pytest.mark.parametrize(("name", "args", "kwargs"), VALID, ids=CLASSES)
def test_valid_arguments_give_no_error(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    assert errors_of(lambda: getattr(statistics, name)(*args, **kwargs)) == []


@pytest.mark.parametrize(("name", "args", "kwargs"), VALID, ids=CLASSES)
def test_a_misspelt_keyword_is_one_line_naming_the_closest(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    errors = errors_of(lambda: getattr(statistics, name)(*args, **kwargs, callbak=None, nmae="x"))
    expected = [f"{name}: unknown argument 'callbak'", f"{name}: unknown argument 'nmae'"]
    assert [e.split(" (")[0] for e in errors] == expected, errors


def test_the_closest_known_name_is_suggested() -> None:
    errors = errors_of(
        lambda: statistics.InfluxStorageService("127.0.0.1", 8086, "u", "p", "db", [], timout=3)
    )
    assert errors == ["InfluxStorageService: unknown argument 'timout' (did you mean 'timeout'?)"]
    errors = errors_of(lambda: statistics.StatsService(storage_backends=[], name="s", flsh_timeout=3))
    assert errors == ["StatsService: unknown argument 'flsh_timeout' (did you mean 'flush_timeout'?)"]


def test_the_object_is_still_made_without_the_unknown_keyword() -> None:
    def double(post_data: Any) -> Any:
        return post_data * 2

    with capture_config_errors() as errors:
        cap = statistics.CaptureData("d", "b", callback=double, calback=None)
    assert errors.errors == ["CaptureData: unknown argument 'calback' (did you mean 'callback'?)"]
    assert cap._callback is double


def test_a_missing_or_extra_argument_is_pythons_type_error_naming_the_class() -> None:
    # Buildbot reports it as "error while parsing config file: <this message>"
    with pytest.raises(TypeError, match=r"InfluxStorageService.__init__\(\) missing .* 'port'"):
        statistics.InfluxStorageService("127.0.0.1")
    with pytest.raises(TypeError, match=r"CaptureData.__init__\(\) takes from 3 to 4 positional"):
        statistics.CaptureData("d", "b", "x", "y")


def test_a_users_own_capture_with_its_own_init_gets_pythons_type_error() -> None:
    class MyCapture(statistics.CaptureDataAllBuilders):
        def __init__(self, data_name: str, scale: float = 1.0) -> None:
            super().__init__(data_name)
            self.scale = scale

    with pytest.raises(TypeError, match="unexpected keyword argument 'scael'"):
        MyCapture("d", scael=2.0)
    assert MyCapture("d", scale=2.0).scale == 2.0


def test_a_users_own_capture_that_passes_unknown_keywords_on_gets_the_hint() -> None:
    class MyCapture(statistics.CaptureDataAllBuilders):
        def __init__(self, data_name: str, scale: float = 1.0, **unknown: Any) -> None:
            super().__init__(data_name, **unknown)
            self.scale = scale

    assert errors_of(lambda: MyCapture("d", scael=2.0)) == [
        "MyCapture: unknown argument 'scael' (did you mean 'scale'?)"
    ]
