"""The checks of a StatsService's master.cfg arguments, each mistake one ``config.error`` line: run by
``StatsService.checkConfig`` (so ``buildbot checkconfig`` shows them) and at every reconfig."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from buildbot import config

from buildbot_stats.capture.base import Capture, _AllBuilders, _OneBuilder
from buildbot_stats.config_paths import loading_basedir, resolve
from buildbot_stats.delivery.queue import backend_name
from buildbot_stats.delivery.spool import foreign_file_problem, spool_file
from buildbot_stats.errors import StorageBackendTypeError
from buildbot_stats.options import DEFAULT_SPOOL_PATH, ServiceOptions
from buildbot_stats.storage_backends.base import IStatsStorage, StatsStorageBase
from buildbot_stats.storage_backends.sqlite import SQLiteStorageService


def check_service_config(storage_backends: Any, options: dict[str, Any]) -> None:
    """Report every mistake in a StatsService's arguments through ``config.error``, one line each."""
    if not isinstance(storage_backends, (list, tuple)):
        config.error(
            f"StatsService: storage_backends must be a list of storage backends, "
            f"not {type(storage_backends).__name__}"
        )
        return
    names: set[str] = set()
    for i, backend in enumerate(storage_backends):
        if not (IStatsStorage.providedBy(backend) or isinstance(backend, StatsStorageBase)):
            raise StorageBackendTypeError(
                f"StatsService: invalid storage backend {type(backend).__name__!r}: a storage "
                "backend must subclass StatsStorageBase or provide IStatsStorage"
            )
        name = backend_name(backend)
        if any(backend is other for other in storage_backends[:i]):
            config.error(f"StatsService: backend {name!r} is listed twice in storage_backends")
            continue
        # a backend's name keys its spooled points; unnamed backends of one class
        # (named after it) are told apart by their position
        if name in names and name != type(backend).__name__:
            config.error(
                f"StatsService: two storage backends are named {name!r}; give each a name of its own"
            )
        names.add(name)
        _check_captures(name, getattr(backend, "captures", None))
    for message in ServiceOptions.problems(options):
        config.error(f"StatsService: {message}")
    _check_files(storage_backends, options.get("spool_path", DEFAULT_SPOOL_PATH))


def _check_captures(name: str, captures: Any) -> None:
    where = f"StatsService: captures of backend {name!r}"
    if not isinstance(captures, (list, tuple)):
        config.error(f"{where} must be a list of Capture objects")
        return
    for cap in captures:
        kind = type(cap).__name__
        builder = getattr(cap, "builder_name", None)
        named = isinstance(builder, str) and builder.strip()
        if isinstance(cap, type):
            config.error(f"{where}: {cap.__name__} is a class; write {cap.__name__}(...) to make a capture")
        elif isinstance(cap, _OneBuilder) and not isinstance(cap, _AllBuilders) and not named:
            config.error(
                f"{where}: {kind} needs a builder name (a string), not {builder!r}; "
                f"{kind}AllBuilders captures every builder"
            )
        elif not (isinstance(cap, Capture) or callable(getattr(cap, "consume", None))):
            config.error(f"{where} must be Capture objects, not {kind}")


def _check_files(backends: Sequence[Any], spool_path: Any) -> None:
    """An existing spool file must be a spool of ours, and no SQLite store may share its file."""
    if not isinstance(spool_path, str) or not spool_path.strip():
        return  # in memory, or reported by ServiceOptions.problems
    basedir = loading_basedir()
    path = spool_file(spool_path, basedir)
    problem = foreign_file_problem(path) if path is not None else None
    if problem is not None:
        config.error(
            f"StatsService: spool_path {spool_path!r}: {path} is not a buildbot_stats spool: it "
            f"{problem}; it is left untouched (choose another spool_path)"
        )
    here = basedir or os.getcwd()
    spool = os.path.abspath(spool_file(spool_path, here) or "")
    for backend in backends:
        if isinstance(backend, SQLiteStorageService) and backend.path:
            if os.path.abspath(resolve(backend.path, here) or "") == spool:
                config.error(
                    f"StatsService: backend {backend.name!r} writes its store into the spool file "
                    f"{spool_path!r}; give the store (or spool_path) another file"
                )
