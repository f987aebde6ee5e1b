"""The size and shape goals of the package (issue 18), kept by a test so that they stay true.

* Python lines in ``buildbot_stats/`` outside ``cli/`` (and the later ``ui/``
  and ``insights/`` subpackages): at most 5,500;
* the delivery core (``delivery/`` and ``sqlite_wal.py``: from the service's
  queue to a backend's write, spool included, line protocol not): at most 1,600;
* no class longer than 250 lines;
* no import cycle between the package's modules (module-level imports);
* no C source: the package is pure Python.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "buildbot_stats"
#: the tooling and the later read-only rooms, which the runtime never imports
OUTSIDE_THE_CORE = ("cli", "ui", "insights")

MAX_RUNTIME_LINES = 5500
MAX_DELIVERY_LINES = 1600
MAX_CLASS_LINES = 250


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_files() -> list[Path]:
    return [
        p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] not in OUTSIDE_THE_CORE
    ]


def _lines(paths: list[Path]) -> int:
    return sum(len(p.read_text(encoding="utf-8").splitlines()) for p in paths)


#: the two line goals are not met yet (issue 18 stays open): strict, so that meeting one fails
#: the test until its mark is removed; the assertion shows how far off the count is
NOT_MET_YET = pytest.mark.xfail(strict=True, reason="issue 18's line goal is not met yet")


def test_runtime_lines_within_goal() -> None:
    assert _lines(_runtime_files()) <= MAX_RUNTIME_LINES


@NOT_MET_YET
def test_delivery_core_lines_within_goal() -> None:
    core = sorted((PACKAGE / "delivery").glob("*.py")) + [PACKAGE / "sqlite_wal.py"]
    assert _lines([p for p in core if p.exists()]) <= MAX_DELIVERY_LINES


def test_no_class_longer_than_goal() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > MAX_CLASS_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({length} lines)")
    assert long == []


def test_no_c_sources() -> None:
    assert [p.name for p in PACKAGE.rglob("*.c")] == []


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports at module level (not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name in modules:
                found.add(name)
    found.discard(this)
    return found


def test_no_import_cycle() -> None:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(files)) for name, path in files.items()}
    # a module importing its own package's __init__ is the package importing itself: not a cycle
    for name, deps in graph.items():
        deps -= {name.rpartition(".")[0]} if name.rpartition(".")[0] in deps else set()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [name, dep] if dep in stack else [name, dep])
            elif dep not in state:
                visit(dep, stack + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert cycles == []


@pytest.mark.parametrize("bad", ["import buildbot_stats.b\n", "from buildbot_stats import b\n"])
def test_the_cycle_check_finds_a_cycle(tmp_path: Path, bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: two modules importing each other are found."""
    package = tmp_path / "buildbot_stats"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(bad)
    (package / "b.py").write_text("from buildbot_stats import a\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", package)
    with pytest.raises(AssertionError):
        test_no_import_cycle()
