"""docs/marking.md stays true: every module and test it names exists.

A marker checks a requirement by opening the modules in its row and running
the test named there; a renamed test or a moved module would send them
nowhere.  The test functions are found with ``ast`` in the named file, so a
name in a comment or a string does not count.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

MARKING = ROOT / "docs" / "marking.md"
TEXT = MARKING.read_text()
#: `tests/test_x.py::test_name`, as the table writes a proof.
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
#: `package/module.py`, as the table writes where something lives.
MODULE_REF = re.compile(r"`((?:[a-z_]+/)+[a-z_]+\.py)`")


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


def table_rows() -> list[str]:
    """The rows of the tables, without their headings and rules."""
    return [
        line
        for line in TEXT.splitlines()
        if line.startswith("| ") and "proved by" not in line and not set(line) <= set("|- ")
    ]


def test_every_test_the_table_names_exists_in_its_file() -> None:
    refs = TEST_REF.findall(TEXT)
    assert len(refs) >= 30
    missing = [
        f"{file}::{name}"
        for file, name in refs
        if not (ROOT / file).is_file() or name not in defined_tests(ROOT / file)
    ]
    assert missing == []


def test_every_module_the_table_names_exists() -> None:
    modules = set(MODULE_REF.findall(TEXT)) - {file for file, _name in TEST_REF.findall(TEXT)}
    assert len(modules) >= 10
    assert sorted(m for m in modules if not (ROOT / m).is_file()) == []


def test_every_row_names_a_module_and_a_test() -> None:
    rows = table_rows()
    assert [row for row in rows if not TEST_REF.search(row)] == []
    assert [row for row in rows if not MODULE_REF.search(row.split("|")[-3]) and "the same" not in row] == []


def test_each_of_the_13_commands_of_the_spec_has_a_row() -> None:
    numbers = {int(m) for m in re.findall(r"^\| (\d+) \| `/", TEXT, re.M)}
    assert numbers == set(range(1, 14))


def test_the_readme_links_the_table() -> None:
    assert "(docs/marking.md)" in (ROOT / "README.md").read_text()
