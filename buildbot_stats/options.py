"""The delivery options of the StatsService, the one home of their defaults: :class:`ServiceOptions`
is what master.cfg passes, :class:`DeliveryPolicy` the part a queue reads."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields
from typing import Any

from buildbot_stats.arguments import unknown_argument
from buildbot_stats.point import is_int

DEFAULT_SPOOL_PATH = "stats-spool.sqlite"
#: The shortest ``max_retry_delay``: retrying faster only spins a core while a backend is down.
MIN_RETRY_DELAY_CAP = 0.1

#: Tags that ``extra_tags`` may add to the captures of buildbot.statistics.
EXTRA_TAGS = ("worker",)


@dataclass(frozen=True)
class DeliveryPolicy:
    """How a queue batches and retries, and how long it may take to stop."""

    batch_size: int = 5000
    #: per backend; pending points live in the spool, not in memory (about 100 bytes each on disk)
    max_spool_points: int = 5_000_000
    #: per backend, bytes of spooled data (None: no bound but the points)
    max_spool_bytes: int | None = 1_000_000_000
    min_retry_delay: float = 0.5
    max_retry_delay: float = 60.0
    flush_timeout: float = 10.0

    def retry_delay(self, attempt: int, needs_fixing: bool = False) -> float:
        """Capped exponential backoff with jitter; a failure a person must fix waits the cap."""
        if needs_fixing:
            return self.max_retry_delay
        delay = min(self.max_retry_delay, self.min_retry_delay * (2 ** min(attempt - 1, 30)))
        return delay * random.uniform(0.5, 1.0)


_POLICY = DeliveryPolicy()


@dataclass(frozen=True)
class ServiceOptions:
    """The delivery arguments of :class:`StatsService`, with their defaults."""

    spool_path: str | None = DEFAULT_SPOOL_PATH
    batch_size: int = _POLICY.batch_size
    max_spool_points: int = _POLICY.max_spool_points
    max_spool_bytes: int | None = _POLICY.max_spool_bytes
    max_retry_delay: float = _POLICY.max_retry_delay
    flush_timeout: float = _POLICY.flush_timeout
    #: tags added to the property, build-time and data captures (opt-in: more series)
    extra_tags: tuple[str, ...] = ()

    @classmethod
    def problems(cls, options: dict[str, Any]) -> list[str]:
        """What is wrong with ``options``, one message each (for ``config.error``)."""
        known = [f.name for f in fields(cls)]
        found = [unknown_argument(k, [*known, "storage_backends", "name"]) for k in options if k not in known]
        opts = cls(**{k: v for k, v in options.items() if k in known})
        path, size, tags = opts.spool_path, opts.max_spool_bytes, opts.extra_tags
        if path is not None and (not isinstance(path, str) or not path.strip()):
            found.append(f"spool_path must be a file path or None, not {path!r}")
        for name in ("batch_size", "max_spool_points"):
            if not is_int(getattr(opts, name), 1):
                found.append(f"{name} must be an integer >= 1, not {getattr(opts, name)!r}")
        if size is not None and not is_int(size, 1):
            found.append(f"max_spool_bytes must be an integer >= 1 or None, not {size!r}")
        # NaN stops retries with a traceback, inf never retries, 0 spins a core,
        # and a flush_timeout of NaN or inf keeps a stopping master from exiting
        for name, least in (("max_retry_delay", MIN_RETRY_DELAY_CAP), ("flush_timeout", 0)):
            seconds = getattr(opts, name)
            number = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
            if not number or not least <= seconds < math.inf:
                found.append(f"{name} must be a number of seconds >= {least}, not {seconds!r}")
        if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
            found.append(f"extra_tags must be a list of tag names from {list(EXTRA_TAGS)}, not {tags!r}")
        else:
            unknown = [t for t in tags if t not in EXTRA_TAGS]
            found += [f"extra_tags: unknown tag {t!r} (known: {', '.join(EXTRA_TAGS)})" for t in unknown]
        return found

    def policy(self) -> DeliveryPolicy:
        """The queue-side view of these options (retry delays floored, even without checkconfig)."""
        kept = {f.name: getattr(self, f.name) for f in fields(DeliveryPolicy) if hasattr(self, f.name)}
        kept["max_retry_delay"] = max(MIN_RETRY_DELAY_CAP, float(self.max_retry_delay))
        kept["min_retry_delay"] = min(_POLICY.min_retry_delay, kept["max_retry_delay"])
        return DeliveryPolicy(**kept)
