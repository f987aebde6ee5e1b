"""Wrong arguments to a capture or backend in master.cfg: ``config.error`` lines, not a TypeError.

Python would stop master.cfg at the first misspelt keyword with "error while
parsing config file: ...__init__() got an unexpected keyword argument" and a
traceback in the log.  A capture or backend class instead reports each unknown
keyword (with the closest known name) and each missing or extra argument as
one ``config.error`` line, so ``buildbot checkconfig`` lists every mistake of
the file at once.  Unknown keywords are left out, so the rest of master.cfg is
still checked; an argument that is missing, or one too many, stops loading.
"""

from __future__ import annotations

import abc
import difflib
import inspect
from typing import Any

from buildbot import config

__all__ = ["ChecksArguments", "checked_arguments", "unknown_argument"]


def unknown_argument(name: str, known: list[str]) -> str:
    """The message for an unknown keyword argument, with the closest known one."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown argument {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def checked_arguments(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for ``cls(*args, ...)`` without the keywords its ``__init__`` does not take.

    Each left-out keyword is a ``config.error`` line naming the class and the
    closest known keyword; a missing or extra argument is one that stops loading.
    """
    try:
        signature = inspect.signature(cls.__init__)  # type: ignore[misc]
    except (TypeError, ValueError):
        return kwargs
    params = signature.parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        keywords = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][1:]
        for key in [k for k in kwargs if k not in keywords]:
            config.error(f"{cls.__name__}: {unknown_argument(key, keywords)}")
        kwargs = {k: v for k, v in kwargs.items() if k in keywords}
    try:
        signature.bind(None, *args, **kwargs)
    except TypeError as e:
        config.error(f"{cls.__name__}: {e}", always_raise=True)
    return kwargs


class ChecksArguments(abc.ABCMeta):
    """The metaclass of captures and backends: ``cls(...)`` checks its arguments first (see above)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **checked_arguments(cls, args, kwargs))
