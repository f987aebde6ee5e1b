"""The checks of a StatsService's master.cfg arguments: each mistake is one ``config.error`` line.

Run by ``StatsService.checkConfig`` (so ``buildbot checkconfig`` shows them)
and again at every (re)configuration.  A relative ``spool_path`` or store path
is resolved against the basedir of the master.cfg being loaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from buildbot import config

from buildbot_stats.capture.base import Capture, _AllBuilders, _OneBuilder
from buildbot_stats.config_paths import loading_basedir, resolve
from buildbot_stats.delivery.queues import backend_name
from buildbot_stats.delivery.spool import foreign_file_problem
from buildbot_stats.delivery.spool_thread import spool_file
from buildbot_stats.errors import StorageBackendTypeError
from buildbot_stats.options import DEFAULT_SPOOL_PATH, ServiceOptions
from buildbot_stats.storage_backends.base import is_storage_backend
from buildbot_stats.storage_backends.sqlite import SQLiteStorageService

__all__ = ["check_service_config"]


def check_service_config(storage_backends: Any, options: dict[str, Any]) -> None:
    """Report every mistake in a StatsService's arguments through ``config.error``, one line each."""
    if not isinstance(storage_backends, (list, tuple)):
        config.error(
            f"StatsService: storage_backends must be a list of storage backends, "
            f"not {type(storage_backends).__name__}"
        )
        return
    names: dict[str, Any] = {}
    for i, backend in enumerate(storage_backends):
        if not is_storage_backend(backend):
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
        names.setdefault(name, backend)
        _check_captures(name, getattr(backend, "captures", None))
    for message in ServiceOptions.problems(options):
        config.error(f"StatsService: {message}")
    spool_path = options.get("spool_path", DEFAULT_SPOOL_PATH)
    _check_spool_path(spool_path)
    _check_store_paths(storage_backends, spool_path)


def _check_captures(name: str, captures: Any) -> None:
    if not isinstance(captures, (list, tuple)):
        config.error(f"StatsService: captures of backend {name!r} must be a list of Capture objects")
        return
    for cap in captures:
        if isinstance(cap, type):
            config.error(
                f"StatsService: captures of backend {name!r}: {cap.__name__} is a class; "
                f"write {cap.__name__}(...) to make a capture"
            )
        elif _one_builder_without_name(cap):
            kind = type(cap).__name__
            config.error(
                f"StatsService: captures of backend {name!r}: {kind} needs a builder name (a string), "
                f"not {cap._builder_name!r}; {kind}AllBuilders captures every builder"
            )
        elif not (isinstance(cap, Capture) or callable(getattr(cap, "consume", None))):
            config.error(
                f"StatsService: captures of backend {name!r} must be Capture objects, "
                f"not {type(cap).__name__}"
            )


def _one_builder_without_name(cap: Any) -> bool:
    """A capture of one builder (not its AllBuilders twin) given no usable builder name."""
    if not isinstance(cap, _OneBuilder) or isinstance(cap, _AllBuilders):
        return False
    name = getattr(cap, "_builder_name", None)
    return not (isinstance(name, str) and name.strip())


def _check_spool_path(spool_path: Any) -> None:
    """An existing file at ``spool_path`` must be a spool of ours (see ``foreign_file_problem``)."""
    if not isinstance(spool_path, str) or not spool_path.strip():
        return  # reported by ServiceOptions.problems
    path = spool_file(spool_path, loading_basedir())
    problem = foreign_file_problem(path) if path is not None else None
    if problem is not None:
        config.error(
            f"StatsService: spool_path {spool_path!r}: {path} is not a buildbot_stats spool: it "
            f"{problem}; it is left untouched (choose another spool_path)"
        )


def _check_store_paths(backends: Sequence[Any], spool_path: Any) -> None:
    """The spool and an SQLite store in one file would each refuse the other's tables."""
    if not isinstance(spool_path, str) or not spool_path.strip():
        return
    basedir = loading_basedir() or os.getcwd()
    spool = spool_file(spool_path, basedir)
    for backend in backends:
        if isinstance(backend, SQLiteStorageService) and backend.path:
            store = resolve(backend.path, basedir)
            if spool is not None and store is not None and os.path.abspath(store) == os.path.abspath(spool):
                config.error(
                    f"StatsService: backend {backend.name!r} writes its store into the spool file "
                    f"{spool_path!r}; give the store (or spool_path) another file"
                )
