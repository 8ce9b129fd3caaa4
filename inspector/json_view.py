"""``--json``: one snapshot as JSON, for scripts and for the tests.

The snapshot's dataclasses are written field by field, enums by name, so the
JSON has the same shape as ``shm.snapshot.Snapshot`` and grows with it.
"""

from __future__ import annotations

import dataclasses
import json
from enum import Enum

from shm.snapshot import Snapshot


def _plain(value: object) -> object:
    """Dataclasses, enums and containers turned into what ``json`` can write."""
    if isinstance(value, Enum):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k.name if isinstance(k, Enum) else k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def snapshot_json(snap: Snapshot) -> str:
    """The snapshot as indented JSON with sorted keys (stable for diffs)."""
    return json.dumps(_plain(snap), indent=2, sort_keys=True)
