"""Where a relative path in master.cfg points while Buildbot loads the config (``buildbot
checkconfig DIR`` runs outside the basedir, which Buildbot does not pass to services)."""

from __future__ import annotations

import os
import sys


def loading_basedir() -> str | None:
    """The basedir of the master.cfg being loaded, from Buildbot's ``loadConfigDict`` on the call stack
    (the end-to-end checkconfig tests notice a Buildbot that renames it)."""
    frame = sys._getframe(1)
    while frame is not None:
        where = (frame.f_globals.get("__name__"), frame.f_code.co_name)
        if where == ("buildbot.config.master", "loadConfigDict"):
            basedir = frame.f_locals.get("basedir")
            return os.path.expanduser(basedir) if isinstance(basedir, str) else None
        frame = frame.f_back  # type: ignore[assignment]
    return None


def resolve(path: str, basedir: str | None) -> str | None:
    """``path`` made absolute against ``basedir``; None when relative and no basedir is known."""
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    return os.path.join(basedir, path) if basedir is not None else None
