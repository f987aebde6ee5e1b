"""Exceptions: the ones users see in master.cfg, and the ones backends raise.

Backends tell the delivery queue what kind of failure happened by raising one of
the ``*WriteError`` classes below; anything else a backend raises is treated as
transient and retried.
"""

from __future__ import annotations

from buildbot.config.errors import ConfigErrors
from buildbot.errors import CaptureCallbackError

__all__ = [
    "BackendConfigurationError",
    "RefusedWriteError",
    "BatchTooLargeError",
    "CaptureCallbackError",
    "PartialDeliveryError",
    "SplitBatchError",
    "StorageBackendTypeError",
    "TransientWriteError",
]


class StorageBackendTypeError(ConfigErrors, TypeError):
    """A ``storage_backends`` entry is not a storage backend.

    A :class:`TypeError` as the spec documents, and a
    :class:`~buildbot.config.errors.ConfigErrors` so that ``buildbot
    checkconfig`` prints the message instead of a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__([message])

    def __str__(self) -> str:
        return "; ".join(self.errors)


class TransientWriteError(Exception):
    """The write failed but may succeed later (server down, timeout, 5xx, 503).

    ``retry_after`` (seconds) is the least time the server asked to wait (an
    HTTP ``Retry-After``); the delivery queue waits at least that long.
    """

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RefusedWriteError(TransientWriteError):
    """The backend refused the write for a reason a person must fix (auth, missing database).

    Nothing is dropped: the points are retried every ``max_retry_delay``, so
    once the password is fixed or the database created they are delivered
    without a master restart.
    """


#: The name this error had in 0.1 (it is a write failure, not a master.cfg mistake);
#: kept so that backends written against 0.1 keep working.
BackendConfigurationError = RefusedWriteError


class SplitBatchError(Exception):
    """The backend refused the batch as a whole; the queue halves it and retries.

    Raised for a batch too large, or for one bad point that the backend does not
    name (InfluxDB 1.x rejects a whole batch written into a new shard for one
    field type conflict).  A single point refused this way is dropped and logged.
    """


class BatchTooLargeError(SplitBatchError):
    """The backend refused the batch as too large."""


class PartialDeliveryError(Exception):
    """The first ``delivered`` points of the batch were stored, then ``cause`` happened."""

    def __init__(self, delivered: int, cause: BaseException) -> None:
        super().__init__(f"{delivered} points delivered before: {cause!r}")
        self.delivered = delivered
        self.cause = cause
