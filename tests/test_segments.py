"""shm.segments: creating, attaching, reclaiming and removing one server's System V objects."""

from __future__ import annotations

import os

import pytest
from tablekit import online, small_tables, unused_port

from shm import layout
from shm.discovery import list_objects
from shm.segments import IpcInUse, ServerIpc


@pytest.fixture
def ipc():
    tables = small_tables()
    yield tables
    tables.close()


def test_create_makes_three_segments_and_two_semaphores_and_close_removes_them():
    port = unused_port()
    tables = ServerIpc.create(port, max_clients=3)
    objects = list_objects(port)
    assert sorted(e.kind for e in objects) == ["sem", "sem", "shm", "shm", "shm"]
    assert {e.key for e in objects} == {
        layout.ipc_key(port, obj) for obj in (*layout.SEGMENTS, *layout.SEMAPHORES)
    }
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


def test_a_live_servers_objects_are_never_reclaimed(ipc):
    with pytest.raises(IpcInUse):
        ServerIpc.create(ipc.port, max_clients=4)


def test_a_dead_servers_objects_are_reclaimed_on_create():
    port = unused_port()
    pid = os.fork()
    if pid == 0:
        ServerIpc.create(port, max_clients=2)
        os._exit(0)  # dies without removing anything, like a SIGKILLed server
    os.waitpid(pid, 0)
    assert len(list_objects(port)) == 5
    tables = ServerIpc.create(port, max_clients=2)
    try:
        assert all(e.creator_pid == os.getpid() for e in list_objects(port) if e.kind == "shm")
    finally:
        tables.close()
