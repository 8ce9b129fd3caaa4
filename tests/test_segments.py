"""shm.segments: creating, attaching, reclaiming and removing one server's objects, on both APIs."""

from __future__ import annotations

import os

import pytest
from tablekit import online, small_tables, unused_port

from shm import layout
from shm.discovery import list_objects, read_header
from shm.segments import IpcInUse, ServerIpc


@pytest.fixture(params=["sysv", "posix"])
def api(request) -> str:
    return request.param


@pytest.fixture
def ipc(api):
    tables = small_tables(api=api)
    yield tables
    tables.close()


def test_create_makes_three_segments_and_two_semaphores_and_close_removes_them(api):
    port = unused_port()
    tables = ServerIpc.create(port, max_clients=3, api=api)
    objects = list_objects(port)
    assert sorted(e.kind for e in objects) == ["sem", "sem", "shm", "shm", "shm"]
    assert {e.api for e in objects} == {api}
    everything = (*layout.SEGMENTS, *layout.SEMAPHORES)
    if api == "sysv":
        assert {e.key for e in objects} == {layout.ipc_key(port, obj) for obj in everything}
    else:
        assert {e.name for e in objects} == {layout.posix_name(port, obj) for obj in everything}
    tables.close()
    assert list_objects(port) == []


def test_attach_sees_what_the_creator_wrote(ipc):
    a, b = online(ipc, 2)
    other = ServerIpc.attach(ipc.port)
    try:
        assert [c.client_id for c in other.directory.online()] == [a.client_id, b.client_id]
        assert other.messages.capacity == 4
    finally:
        other.close()
    assert len(list_objects(ipc.port)) == 5  # detaching removes nothing


def test_a_live_servers_objects_are_never_reclaimed(ipc, api):
    with pytest.raises(IpcInUse):
        ServerIpc.create(ipc.port, max_clients=4, api=api)


def test_a_dead_servers_objects_are_reclaimed_on_create(api):
    port = unused_port()
    pid = os.fork()
    if pid == 0:
        ServerIpc.create(port, max_clients=2, api=api)
        os._exit(0)  # dies without removing anything, like a SIGKILLed server
    os.waitpid(pid, 0)
    assert len(list_objects(port)) == 5
    tables = ServerIpc.create(port, max_clients=2, api=api)
    try:
        clients = next(e for e in list_objects(port) if e.obj is layout.IpcObject.CLIENTS_SEGMENT)
        header = read_header(clients)
        assert header is not None and header[3] == os.getpid()  # the new server's, not the dead one's
    finally:
        tables.close()
