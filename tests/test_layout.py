"""shm.layout: the key scheme and the byte offsets, checked on real segments."""

from __future__ import annotations

import struct

import pytest
from tablekit import online, small_tables

from shm import layout


@pytest.fixture
def ipc():
    tables = small_tables()
    yield tables
    tables.close()


def test_keys_encode_the_port_and_others_keys_are_ignored():
    key = layout.ipc_key(5000, layout.IpcObject.GROUPS_SEGMENT)
    assert key == 0x5C413882
    assert layout.split_key(key) == (5000, layout.IpcObject.GROUPS_SEGMENT)
    assert layout.split_key(0x12345678) is None
    assert layout.split_key(0) is None


def test_record_layout_matches_the_declared_offsets(ipc):
    (a,) = online(ipc, 1)
    ipc.directory.set_worker_pid(a.slot, a.generation, 4242)
    at = layout.SEGMENT_HEADER_SIZE
    raw = bytes(ipc.regions[layout.IpcObject.CLIENTS_SEGMENT].view[at : at + layout.CLIENT_RECORD_SIZE])
    state, client_id, pid = struct.unpack_from("<B3xIi", raw)
    assert (state, client_id, pid) == (1, a.client_id, 4242)
    assert struct.unpack_from("<H", raw, 24) == (40000,)  # peer port
    assert raw[32:41] == b"127.0.0.1"  # peer host, NUL padded
