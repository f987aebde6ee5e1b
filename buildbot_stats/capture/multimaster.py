"""Which master of a cluster captures a message: the one that ran the build (docs/multimaster.rst); under
the WAMP MQ every master receives every master's messages, and a message naming no master is local."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from buildbot_stats.point import as_datetime

#: keys of Buildbot's data messages that hold times (datetimes on the simple MQ)
TIME_KEYS = ("started_at", "complete_at", "submitted_at", "claimed_at", "last_active")


class MasterFilter:
    """Says whether a message belongs to another master of the cluster."""

    def __init__(self, master: Any, lookups: Any) -> None:
        self.master = master
        self.lookups = lookups

    @staticmethod
    def needed(master: Any) -> bool:
        """True when the master's MQ is shared by a cluster (not the simple, local MQ)."""
        mq = getattr(getattr(master, "config", None), "mq", None) or {}
        return mq.get("type", "simple") != "simple"

    def foreign(self, msg: Any) -> bool | defer.Deferred:
        """True (or a Deferred firing True) if another master captures ``msg``: no query for build, build
        request and ``stats-yield-data`` messages; steps and test result sets: one cached lookup per build."""
        own = getattr(self.master, "masterid", None)
        if own is None or not isinstance(msg, dict):
            return False
        if "masterid" in msg:
            return _owned_elsewhere(msg, own)
        if isinstance(msg.get("build_data"), dict):  # stats-yield-data
            return _owned_elsewhere(msg["build_data"], own)
        if msg.get("claimed_by_masterid") is not None:
            return bool(msg["claimed_by_masterid"] != own)
        buildid = msg.get("buildid")
        if buildid is None or self.lookups is None:
            return False
        build = self.lookups.builds.known(buildid)
        if build is not None:
            return _owned_elsewhere(build, own)
        # one query per build, however many of its messages arrive meanwhile (lookups coalesce);
        # a failed lookup lets the capture see the message and report its own error
        d = self.lookups.builds.get(buildid)
        return d.addCallbacks(lambda build: _owned_elsewhere(build, own), lambda _: False)


def _owned_elsewhere(build: Any, own: Any) -> bool:
    owner = build.get("masterid") if isinstance(build, dict) else None
    return owner is not None and owner != own


def with_datetimes(msg: Any) -> Any:
    """``msg`` with epoch-number times (WAMP) as UTC datetimes, as the simple MQ gives them:
    ``msg`` itself when there is nothing to convert (always, on the simple MQ), else a copy."""
    if not isinstance(msg, dict):
        return msg
    numbers = {k: as_datetime(v) for k in TIME_KEYS if type(v := msg.get(k)) is int or type(v) is float}
    return {**msg, **numbers} if numbers else msg
