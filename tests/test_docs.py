"""docs/design.md kept true: byte tables as in shm/layout.py, a life of a message of real functions."""

from __future__ import annotations

import importlib
import re
import struct
from pathlib import Path

import pytest

from shm import layout

DESIGN = Path(__file__).resolve().parent.parent / "docs" / "design.md"

SIZES = {"B": 1, "H": 2, "I": 4, "i": 4, "Q": 8, "d": 8}


def declared_fields(fmt: str) -> list[tuple[int, int]]:
    """(offset, size) of every non-padding field of a struct format; arrays count as one field."""
    fields, offset = [], 0
    for count, code in re.findall(r"(\d*)([xsBHIiQd])", fmt):
        n = int(count or 1)
        size = n if code in "xs" else n * SIZES[code]
        if code != "x":
            fields.append((offset, size))
        offset += size
    assert offset == struct.calcsize(fmt)
    return fields


def documented_fields(heading: str) -> list[tuple[int, int]]:
    text = DESIGN.read_text()
    section = text.split(f"### {heading}", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (\d+) \|", section, re.MULTILINE)
    return [(int(offset), int(size)) for offset, size in rows]


@pytest.mark.parametrize(
    ("heading", "record"),
    [
        ("Segment header", layout.SEGMENT_HEADER),
        ("Lock holder", layout.LOCK_HOLDER),
        ("Client record", layout.CLIENT_RECORD),
        ("Group record", layout.GROUP_RECORD),
        ("Mailbox header", layout.MAILBOX_HEADER),
        ("Message record", layout.RECORD_HEADER),
        ("Trace ring header", layout.TRACE_RING_HEADER),
        ("Trace record", layout.TRACE_RECORD),
    ],
)
def test_design_byte_table_matches_the_declared_struct(heading, record):
    assert documented_fields(heading) == declared_fields(record.format)
    assert f"`{record.format}`" in DESIGN.read_text()


def life_of_a_message() -> list[tuple[str, str]]:
    """(file, name) of each step of docs/design.md's "The life of a message", in order."""
    section = DESIGN.read_text().split("## The life of a message", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\d+\. `([\w/]+\.py)` `([\w.]+)`", section, re.MULTILINE)


def test_the_life_of_a_message_names_only_functions_that_exist():
    steps = life_of_a_message()
    assert len(steps) >= 20, "the list of steps was not found"
    for path, name in steps:
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        target: object = module
        for part in name.split("."):
            assert hasattr(target, part), f"docs/design.md names {path} {name}, which does not exist"
            target = getattr(target, part)
        assert callable(target), f"{path} {name} is not a function"


def test_the_life_of_a_message_goes_from_recv_to_send():
    names = [name for _path, name in life_of_a_message()]
    assert names.index("Connection.recv_into") < names.index("MessageTable.post")
    assert names.index("MessageTable.post") < names.index("Doorbells.ring")
    assert names.index("Doorbells.ring") < names.index("MessageTable.take")
    assert names[-1] == "Connection.write_some"
