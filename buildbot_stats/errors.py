"""Exceptions: the ones users see in master.cfg, and the ones a backend raises to tell the
delivery queue how a write failed (anything else is retried)."""

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
    """A ``storage_backends`` entry is not a storage backend: a TypeError, as the spec
    says, and a ConfigErrors, so that ``buildbot checkconfig`` prints no traceback."""

    def __init__(self, message: str) -> None:
        super().__init__([message])


class TransientWriteError(Exception):
    """The write failed but may succeed later; the queue waits at least ``retry_after`` seconds."""

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RefusedWriteError(TransientWriteError):
    """Refused for a reason a person must fix (auth, missing database): retried every ``max_retry_delay``."""


#: The name of RefusedWriteError in 0.1, kept for backends written against it.
BackendConfigurationError = RefusedWriteError


class SplitBatchError(Exception):
    """The backend refused the batch as a whole (too large, or one bad point it does not
    name): the queue halves it; a single point is dropped and logged."""


class BatchTooLargeError(SplitBatchError):
    """The backend refused the batch as too large."""


class PartialDeliveryError(Exception):
    """The first ``delivered`` points of the batch were stored, then ``cause`` happened."""

    def __init__(self, delivered: int, cause: BaseException) -> None:
        super().__init__(f"{delivered} points delivered before: {cause!r}")
        self.delivered = delivered
        self.cause = cause
