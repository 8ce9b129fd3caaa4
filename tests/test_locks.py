"""shm.locks on both APIs: SEM_UNDO (System V), the recorded holder (POSIX), the parent's bounded wait.

Each test that does not depend on undo runs on a System V lock and on a POSIX
one (the ``ipc`` fixture's param); the undo tests say which API they are about.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from tablekit import small_tables

from shm.layout import IpcObject


@pytest.fixture(params=["sysv", "posix"])
def ipc(request):
    tables = small_tables(api=request.param)
    yield tables
    tables.close()


@pytest.fixture
def sysv_ipc():
    tables = small_tables(api="sysv")
    yield tables
    tables.close()


@pytest.fixture
def posix_ipc():
    tables = small_tables(api="posix")
    yield tables
    tables.close()


def test_a_process_killed_while_holding_a_lock_does_not_wedge_the_others(sysv_ipc):
    ipc = sysv_ipc
    lock = ipc.directory.lock
    ready_r, ready_w = os.pipe()
    never_r, never_w = os.pipe()  # nothing is written: the child holds the lock until it is killed
    pid = os.fork()
    if pid == 0:
        lock.reserve()
        os.write(ready_w, b"held")
        os.close(never_w)
        os.read(never_r, 1)  # returns only if this test dies (EOF): then the child ends too
        os._exit(0)
    os.close(never_r)
    assert os.read(ready_r, 4) == b"held"
    assert lock.value == 0 and not lock.try_reserve()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    for fd in (ready_r, ready_w, never_w):
        os.close(fd)
    assert lock.value == 1  # the kernel undid the dead process's reserve
    with lock.held():
        assert lock.value == 0
    assert lock.value == 1


def _holder_in_child(lock, stop: bool):
    """Fork a child that takes ``lock`` (and then stops itself with SIGSTOP if ``stop``).

    Returns the child's pid once the lock is held (and the child stopped).
    """
    ready_r, ready_w = os.pipe()
    never_r, never_w = os.pipe()  # nothing is written: the child holds the lock until it is killed
    pid = os.fork()
    if pid == 0:
        lock.reserve()
        os.write(ready_w, b"held")
        if stop:
            os.kill(os.getpid(), signal.SIGSTOP)
        os.close(never_w)
        os.read(never_r, 1)  # returns only if this test dies (EOF): then the child ends too
        os._exit(0)
    assert os.read(ready_r, 4) == b"held"
    if stop:
        os.waitpid(pid, os.WUNTRACED)  # returns once the child is stopped
    for fd in (ready_r, ready_w, never_r):
        os.close(fd)
    return pid, never_w


def test_the_bounded_wait_gives_up_after_its_time_and_takes_the_lock_once_free(ipc):
    lock = ipc.directory.lock
    pid, fd = _holder_in_child(lock, stop=False)
    try:
        started = time.monotonic()
        assert lock.reserve_within(0.2) is False
        assert 0.15 <= time.monotonic() - started < 2.0
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    ipc.locks[IpcObject.DIRECTORY_SEMAPHORE].reclaim_from(pid)  # POSIX: the parent's V; System V: undo did it
    assert lock.reserve_within(0.2) is True
    lock.release()


def test_a_stopped_holder_is_named_to_on_stuck_from_the_semaphores_last_pid(ipc):
    lock = ipc.directory.lock
    pid, fd = _holder_in_child(lock, stop=True)
    named = []

    def kill_holder(holder: int) -> None:  # what the parent does (server/parent.py, _break_stall)
        named.append(holder)
        os.kill(holder, signal.SIGKILL)
        os.waitid(os.P_PID, holder, os.WEXITED | os.WNOWAIT)  # dead; SEM_UNDO gave the lock back...
        ipc.locks[IpcObject.DIRECTORY_SEMAPHORE].reclaim_from(holder)  # ...or, on POSIX, this does

    lock.patience, lock.on_stuck = 0.2, kill_holder
    try:
        lock.reserve()  # returns only because on_stuck killed the stopped holder
        lock.release()
    finally:
        lock.patience, lock.on_stuck = None, None
        if not named:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    assert named == [pid]


def test_a_posix_holder_records_its_pid_and_a_killed_one_keeps_the_lock_until_the_parent_posts_v(posix_ipc):
    lock = posix_ipc.locks[IpcObject.DIRECTORY_SEMAPHORE]
    pid, fd = _holder_in_child(posix_ipc.directory.lock, stop=False)
    assert (lock.value, lock.holder()) == (0, pid)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(fd)
    assert (lock.value, lock.holder()) == (0, pid)  # no undo: still held, by a dead process
    assert lock.reclaim_from(os.getpid()) is False  # only the recorded holder's lock is given back
    assert lock.reclaim_from(pid) is True
    assert (lock.value, lock.holder()) == (1, 0)
    assert lock.reclaim_from(pid) is False  # and only once
