"""A misspelt keyword of a capture or backend in master.cfg: a ``config.error`` line naming the closest.
Public classes hand their ``**unknown`` to :func:`reject_unknown`, so that ``buildbot checkconfig``
lists every misspelt keyword instead of stopping at the first with a traceback."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from buildbot import config


def unknown_argument(name: str, known: list[str]) -> str:
    """The message for an unknown keyword argument, with the closest known one."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown argument {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def reject_unknown(obj: object, unknown: dict[str, Any]) -> None:
    """One ``config.error`` per keyword in ``unknown``, naming the closest argument of ``obj``'s class."""
    if not unknown:
        return
    params = inspect.signature(type(obj).__init__).parameters.values()  # type: ignore[misc]
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][1:]
    for name in unknown:
        config.error(f"{type(obj).__name__}: {unknown_argument(name, known)}")
