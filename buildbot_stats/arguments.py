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

import difflib
import functools
import inspect
from typing import Any

from buildbot import config

__all__ = ["check_init_arguments", "unknown_argument"]


def unknown_argument(name: str, known: list[str]) -> str:
    """The message for an unknown keyword argument, with the closest known one."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown argument {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def check_init_arguments(cls: type) -> None:
    """Make the ``__init__`` defined by ``cls`` itself report wrong arguments through ``config.error``.

    Called from ``__init_subclass__`` of the base classes, so that every
    capture and backend, a user's own included, gets it.
    """
    init = cls.__dict__.get("__init__")
    if init is None or getattr(init, "_reports_wrong_arguments", False):
        return
    try:
        signature = inspect.signature(init)
    except (TypeError, ValueError):
        return
    params = signature.parameters
    takes_any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    keywords = [
        name
        for name, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ][1:]  # not self

    def wrong_arguments(self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        try:
            signature.bind(self, *args, **kwargs)
        except TypeError as e:
            return str(e)
        return None

    @functools.wraps(init)
    def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        problem = wrong_arguments(self, args, kwargs)
        if problem is not None:
            if not takes_any_keyword:
                for key in [k for k in kwargs if k not in keywords]:
                    config.error(f"{type(self).__name__}: {unknown_argument(key, keywords)}")
                    del kwargs[key]  # and check the rest of master.cfg
                problem = wrong_arguments(self, args, kwargs)
            if problem is not None:
                config.error(f"{type(self).__name__}: {problem}", always_raise=True)
        init(self, *args, **kwargs)

    checked_init._reports_wrong_arguments = True  # type: ignore[attr-defined]
    cls.__init__ = checked_init  # type: ignore[misc]
