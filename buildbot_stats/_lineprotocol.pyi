"""The compiled fast path of :mod:`buildbot_stats.lineprotocol` (``_lineprotocol.c``)."""

from collections.abc import Callable
from typing import Any, Literal, overload

from buildbot_stats.point import Point

@overload
def encode(
    points: list[Point],
    shapes: dict[Any, Any],
    divisor: int,
    line: Callable[[Point, int], str | None],
    as_lines: Literal[False],
) -> tuple[bytes, int]: ...
@overload
def encode(
    points: list[Point],
    shapes: dict[Any, Any],
    divisor: int,
    line: Callable[[Point, int], str | None],
    as_lines: Literal[True],
) -> list[str | None]: ...
