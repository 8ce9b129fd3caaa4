"""The byte tables in docs/design.md must match the structs in shm/layout.py."""

from __future__ import annotations

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
