"""Lesson ``cleanup``: Ctrl-C on the server, and its System V objects leave ``ipcs``.

The parent is the creator of every object and so their destroyer (TLPI's
rule): on SIGINT it says goodbye through every mailbox, reaps its workers,
then calls ``shmctl(IPC_RMID)`` on each segment and ``semctl(IPC_RMID)`` on
each semaphore.  A segment is only destroyed once nobody is attached: until
then ``ipcs`` shows it with key 0 and status ``dest``.  The lesson watches
``/proc/sysvipc`` by IPC id, so that both stages can be seen.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from lessons.kit import LOOK_INTERVAL, PATIENCE, Narrator, connect_all, process_state, server_pid, wait_until
from shm import layout
from shm.discovery import list_objects
from shm.layout import IpcObject

NAMES = {
    IpcObject.CLIENTS_SEGMENT: "client table",
    IpcObject.MESSAGES_SEGMENT: "message table",
    IpcObject.GROUPS_SEGMENT: "group table",
    IpcObject.TRACE_SEGMENT: "trace table",
    IpcObject.DIRECTORY_SEMAPHORE: "lock of client + group tables",
    IpcObject.MESSAGES_SEMAPHORE: "lock of message table",
}
#: Seconds between two looks at /proc/sysvipc while the server stops (a bounded few seconds).
WATCH_INTERVAL = LOOK_INTERVAL / 10


def ipcs_lines(port: int) -> list[str]:
    """What ``ipcs -m`` and ``ipcs -s`` print about this port's keys (from /proc without ipcs)."""
    keys = {f"0x{layout.ipc_key(port, obj):08x}" for obj in IpcObject}
    if shutil.which("ipcs") is None:
        return [f"{e.kind} key 0x{e.key:08x} id {e.id} ({NAMES[e.obj]})" for e in list_objects(port)]
    out = []
    for flag in ("-m", "-s"):
        listing = subprocess.run(["ipcs", flag], capture_output=True, text=True, check=False).stdout
        lines = listing.splitlines()
        mine = [line.rstrip() for line in lines if line.split()[:1] and line.split()[0] in keys]
        if mine:  # the title and column names ipcs prints, then this port's rows
            at = next((i for i, line in enumerate(lines) if line.startswith("key")), 0)
            out += [line.rstrip() for line in lines[max(0, at - 1) : at + 1]] + mine
    return out


def sysvipc_rows() -> dict[tuple[str, int], dict[str, str]]:
    """Every segment and semaphore set on the machine, by (kind, id), as /proc/sysvipc lists it."""
    rows = {}
    for kind, path, ident in (("shm", "/proc/sysvipc/shm", "shmid"), ("sem", "/proc/sysvipc/sem", "semid")):
        with open(path) as table:
            columns = table.readline().split()
            for line in table:
                row = dict(zip(columns, line.split(), strict=False))
                rows[(kind, int(row[ident]))] = row
    return rows


def run(port: int, say: Narrator) -> None:
    say.title("Lesson cleanup: Ctrl-C on the server, and ipcs is clean again")
    pid = server_pid(port)
    say.step(
        "Two clients of the lesson connect, and ipcs lists the server's objects",
        f"Three segments and two semaphores, and a fourth segment for the trace. nattch counts "
        f"the processes attached: the parent (pid {pid}) and each worker, which inherited the "
        "attachments through fork.",
    )
    clients = connect_all(port, "AB")
    try:
        say.show(ipcs_lines(port))
        watched = {(e.kind, e.id): e for e in list_objects(port)}

        say.step(
            f"kill -INT {pid}  (what Ctrl-C in the server's pane does)",
            "Ctrl-C sends SIGINT to the whole foreground process group; the workers ignore it, "
            "the parent's handler only sets a flag, and its loop then shuts down. Each client "
            "gets a goodbye; each worker exits and detaches (nattch goes down); the parent "
            "reaps them and removes the objects. The lesson looks at /proc/sysvipc every "
            f"{WATCH_INTERVAL * 1000:.0f} ms and prints every change:",
        )
        start = time.monotonic()
        os.kill(pid, signal.SIGINT)
        last = {
            key: (row.get("key"), row.get("nattch")) for key, row in sysvipc_rows().items() if key in watched
        }
        changes = []
        deadline = start + PATIENCE
        while last and time.monotonic() < deadline:
            time.sleep(WATCH_INTERVAL)
            rows = sysvipc_rows()
            at = (time.monotonic() - start) * 1000
            for key in list(last):
                entry = watched[key]
                name = f"{entry.kind} {entry.id:>8} {NAMES[entry.obj]:30}"
                row = rows.get(key)
                if row is None:
                    changes.append(f"{at:8.1f} ms  {name} removed")
                    del last[key]
                    continue
                now = (row.get("key"), row.get("nattch"))
                if now != last[key]:
                    if now[0] != last[key][0] and int(now[0] or 0) == 0:
                        changes.append(
                            f"{at:8.1f} ms  {name} marked for removal (key 0, dest), nattch {now[1]}"
                        )
                    elif now[1] != last[key][1]:
                        changes.append(f"{at:8.1f} ms  {name} nattch {last[key][1]} → {now[1]}")
                    last[key] = now
        say.show(changes)
        # Gone, or a zombie (it exited; its own parent has yet to wait for it).
        wait_until("the server exiting", lambda: process_state(pid) in ("-", "Z"))

        say.step(
            "ipcs afterwards",
            "Nothing of this port is left. The removals came within microseconds of each other, "
            "one system call each (shm/segments.py, _destroy), so several of them usually fall "
            "between two looks. In the demo, the server's pane offers to start it again (press "
            "Enter there); the inspector waits for it, and the trace pane stops.",
        )
        after = ipcs_lines(port)
        say.show(after or [f"(ipcs -m and ipcs -s list no key of port {port})"])
    finally:
        for client in clients:
            client.close()
