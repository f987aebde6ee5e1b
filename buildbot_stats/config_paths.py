"""Where a relative path in master.cfg points while Buildbot loads the config.

A running master's working directory is its basedir, so a relative
``spool_path`` or SQLite store path is relative to it.  ``buildbot
checkconfig DIR`` runs elsewhere: its config loader knows the basedir but does
not pass it to services or backends.  :func:`loading_basedir` finds it, so
that a path naming an existing file that is not ours is a config error there
too, not a surprise at start.
"""

from __future__ import annotations

import os
import sys

__all__ = ["loading_basedir", "resolve"]


def loading_basedir() -> str | None:
    """The basedir of the master.cfg being loaded (``buildbot checkconfig`` or a start), else None.

    Looks for Buildbot's ``loadConfigDict`` on the call stack (checked by the
    end-to-end checkconfig tests, so a Buildbot that renames it is noticed).
    """
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "loadConfigDict" and frame.f_globals.get("__name__") == "buildbot.config.master":
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
