"""shm.locks: a SysV semaphore lock, and what SEM_UNDO does for a process killed holding it."""

from __future__ import annotations

import os
import signal

import pytest
from tablekit import small_tables


@pytest.fixture
def ipc():
    tables = small_tables()
    yield tables
    tables.close()


def test_a_process_killed_while_holding_a_lock_does_not_wedge_the_others(ipc):
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
