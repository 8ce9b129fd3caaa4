"""The packages import each other in one direction only, and modules stay short.

The layers, lowest first (docs/design.md, "Layering"):

* ``protocol`` (wire knowledge), ``palette`` (a colour per id) and
  ``syscalls`` (fault injection, questions about processes) import no other
  package of the project;
* ``shm`` (the tables in shared memory) imports ``protocol`` and ``syscalls`` at most;
* ``server``, ``client`` and ``inspector`` import ``protocol``, ``shm``,
  ``syscalls`` and ``palette``, and never each other.

A package's ``__main__.py`` is an entry point: it wires packages together
(``python -m shm inspect`` runs the inspector) and may import any of them,
but no module may import an entry point, so the exemption cannot leak into
the layers.  Imports are read with ``ast`` from every module, including
imports made inside functions.

A module over ``MAX_LINES`` lines must be listed, with its reason, under
"Modules over 400 lines" in docs/design.md; the test reads that list, so the
document and the code cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"

#: The project packages each package may import, besides its own modules.
ALLOWED = {
    "protocol": set(),
    "palette": set(),
    "syscalls": set(),
    "shm": {"protocol", "syscalls"},
    "server": {"protocol", "shm", "palette", "syscalls"},
    "client": {"protocol", "shm", "palette", "syscalls"},
    "inspector": {"protocol", "shm", "palette", "syscalls"},
    "lessons": {"protocol", "shm", "syscalls"},
}
#: Project code that no package above may import (benchmarks and tests use the packages).
NOT_IMPORTABLE = {"bench", "tests", "conftest"}
#: The file name of an entry point, which may import any package.
ENTRY_POINT = "__main__.py"
MAX_LINES = 400
LONG_MODULES_HEADING = "### Modules over 400 lines"


def modules() -> list[Path]:
    return sorted(path for package in ALLOWED for path in (ROOT / package).rglob("*.py"))


def name_of(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, as a dotted name, relative imports resolved."""
    package = path.relative_to(ROOT).parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x, from ..y import z
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def project_packages(names: set[str]) -> set[str]:
    tops = {name.split(".")[0] for name in names}
    return tops & (set(ALLOWED) | NOT_IMPORTABLE)


def crossings() -> dict[str, set[str]]:
    """Each module's imports of project packages other than its own."""
    out = {}
    for path in modules():
        own = path.relative_to(ROOT).parts[0]
        out[name_of(path)] = project_packages(imported_modules(path)) - {own}
    return out


def long_module_reasons() -> dict[str, str]:
    """The modules docs/design.md allows to be long, with the reason it gives."""
    text = DESIGN.read_text()
    assert LONG_MODULES_HEADING in text, f"docs/design.md has no {LONG_MODULES_HEADING!r} section"
    section = text.split(LONG_MODULES_HEADING, 1)[1].split("\n#", 1)[0]
    return dict(re.findall(r"^\| `([\w/]+\.py)` \| (.*\S) \|$", section, re.MULTILINE))


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_the_scan_sees_every_package_and_imports_inside_functions() -> None:
    seen = {path.relative_to(ROOT).parts[0] for path in modules()}
    assert seen == set(ALLOWED)
    # shm's entry point reaches the inspector with an import inside cmd_inspect.
    assert "inspector" in crossings()["shm/__main__.py"]


def test_each_package_imports_only_the_layers_below_it() -> None:
    wrong = {
        module: sorted(imported - ALLOWED[module.split("/")[0]])
        for module, imported in crossings().items()
        if not module.endswith("/" + ENTRY_POINT) and imported - ALLOWED[module.split("/")[0]]
    }
    assert wrong == {}


def test_server_client_and_inspector_do_not_import_each_other() -> None:
    apps = {"server", "client", "inspector"}
    wrong = {
        module: sorted(imported & apps)
        for module, imported in crossings().items()
        if not module.endswith("/" + ENTRY_POINT) and imported & apps
    }
    assert wrong == {}


def test_no_module_imports_an_entry_point_or_benchmarks_or_tests() -> None:
    wrong = {}
    for path in modules():
        imported = imported_modules(path)
        bad = {name for name in imported if name.split(".")[-1] == "__main__"}
        bad |= project_packages(imported) & NOT_IMPORTABLE
        if bad:
            wrong[name_of(path)] = sorted(bad)
    assert wrong == {}


def test_no_module_imports_by_a_name_the_scan_cannot_see() -> None:
    """``importlib.import_module("server")`` or ``runpy`` would hide an import from the checks above."""
    wrong = {}
    for path in modules():
        hidden = {"importlib", "runpy"} & {name.split(".")[0] for name in imported_modules(path)}
        if "__import__(" in path.read_text():
            hidden.add("__import__")
        if hidden:
            wrong[name_of(path)] = sorted(hidden)
    assert wrong == {}


def test_no_module_is_over_400_lines_without_a_reason_in_design_md() -> None:
    reasons = long_module_reasons()
    too_long = {
        name_of(path): line_count(path)
        for path in modules()
        if line_count(path) > MAX_LINES and name_of(path) not in reasons
    }
    assert too_long == {}


def test_every_module_listed_as_long_still_is() -> None:
    """A module split below the limit is taken off the list, so the list stays true."""
    stale = {
        module: (line_count(ROOT / module) if (ROOT / module).exists() else "no such file")
        for module in long_module_reasons()
        if not (ROOT / module).exists() or line_count(ROOT / module) <= MAX_LINES
    }
    assert stale == {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_circle_among_the_projects_modules() -> None:
    """Imports inside functions count too: that is how a circle gets patched over."""
    names = {module_name(path): path for path in modules()}
    graph = {
        name: {m for m in imported_modules(path) if m in names and m != name} for name, path in names.items()
    }
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []
