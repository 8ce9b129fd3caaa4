"""The benchmark's floor (``bench/floor/floor.c``) still builds and speaks shmchat's dialect.

The floor is no part of shmchat: it is the lean C build of the same design
that ``bench/chat.py`` measures shmchat against.  This one test keeps it from
rotting: it builds it with the system C compiler (skipped without one),
drives it through what the benchmark uses, and checks that SIGTERM leaves no
System V object behind.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, TIMEOUT, RawClient, sysv_objects

SOURCE = ROOT / "bench" / "floor" / "floor.c"
#: floor.c's key scheme: 0xF10 << 20 | port << 4 | object index.
FLOOR_MAGIC = 0xF10


def floor_objects(port: int) -> set[tuple[str, int, int]]:
    def ours(key: int) -> bool:
        return (key & 0xFFFFFFFF) >> 20 == FLOOR_MAGIC and (key >> 4) & 0xFFFF == port

    return {o for o in sysv_objects() if ours(o[1])}


@pytest.fixture
def floor_binary(tmp_path: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler: the floor is not built")
    binary = tmp_path / "floor"
    subprocess.run([compiler, "-O2", "-std=gnu11", "-o", str(binary), str(SOURCE)], check=True, timeout=60)
    return binary


def test_floor_speaks_the_benchmark_dialect_and_removes_its_ipc_objects(floor_binary):
    proc = subprocess.Popen([str(floor_binary), "0", "2"], stdout=subprocess.PIPE, text=True)
    clients: list[RawClient] = []
    try:
        assert proc.stdout is not None
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert found, "the floor did not say where it listens"
        port = int(found.group(1))
        assert {kind for kind, _, _ in floor_objects(port)} == {"shm", "sem"}  # what must go later

        a, b = RawClient(port), RawClient(port)
        clients += [a, b]
        a_id, b_id = a.welcome(), b.welcome()
        assert a_id != b_id
        a.expect(rf"^\[server\] client {b_id} joined$")

        refused = RawClient(port)
        clients.append(refused)
        refused.expect(r"^Connection Limit Exceeded !!$")
        assert refused.closed()

        a.send(f"/send {b_id} hello  there")
        b.expect(rf"^\[msg from {a_id}\] hello  there$")
        b.send("/broadcast to everyone")
        a.expect(rf"^\[broadcast from {b_id}\] to everyone$")
        a.send("/send 12345 nobody")
        a.expect(r"^\[error\] client 12345 is offline; message discarded$")

        a.send("/quit")
        a.expect(rf"^\[bye\] goodbye, {a_id}$")
        assert a.closed()
        b.expect(rf"^\[server\] client {a_id} left$")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        assert b.closed()
        assert floor_objects(port) == set(), "the floor left System V objects behind"
    finally:
        for client in clients:
            client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
