"""The suite on a shared lab machine: other servers come and go beside it (issue 17).

On a lab machine a classmate's server, or a second run of this suite, starts
and stops while the tests run.  The leak check (``ipcs_unchanged`` in
conftest.py) must judge only the objects of the servers each test started,
with no setting to know about.  Here a neighbour server on another port is
started and stopped in a loop, first around the check itself, then beside a
real run of other test files in a pytest subprocess.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from conftest import ROOT, TIMEOUT, ServerProcess, TestObjects, port_objects, python_env
from procinfo import wait_until

#: Real tests to run beside the neighbour (a dozen, about 10 s): servers,
#: clients and groups, and tables made in-process (found by the leak check
#: through their creator pid).
BESIDE = ["tests/test_groups.py", "tests/test_directory.py", "-k", "makegroup or test_directory"]


def start_neighbour(spool: Path) -> tuple[subprocess.Popen, int]:
    """A server this test does not count as its own (its port is not in STARTED_PORTS)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", "0", "--spool-dir", str(spool)],
        cwd=ROOT,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    match = re.search(r"listening on [\d.]+:(\d+)", proc.stdout.readline())
    if not match:
        proc.kill()
        proc.wait()
        raise AssertionError("the neighbour server did not start")
    return proc, int(match.group(1))


def stop_neighbour(proc: subprocess.Popen, port: int) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert port_objects(port) == set(), "the neighbour left objects behind"


class Neighbour:
    """A classmate's server: started and stopped in a loop on another port, in a thread."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.cycles = 0
        self.failures: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Neighbour:
        self._thread.start()
        wait_until(lambda: self.cycles or self.failures, what="the neighbour's first start and stop")
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(3 * TIMEOUT)
        assert not self._thread.is_alive(), "the neighbour loop did not end"
        assert not self.failures, self.failures

    def _loop(self) -> None:
        while not self._done.is_set():
            try:
                proc, port = start_neighbour(self.spool)
                stop_neighbour(proc, port)
            except AssertionError as exc:
                self.failures.append(str(exc))
                return
            self.cycles += 1


def test_a_neighbours_objects_are_never_this_tests_but_its_own_servers_are(tmp_path):
    earlier, earlier_port = start_neighbour(tmp_path / "earlier")  # running before the test looks
    objects = TestObjects()
    later, later_port = start_neighbour(tmp_path / "later")
    assert objects.compare() == (set(), set())  # a neighbour's new objects are not this test's leak
    stop_neighbour(earlier, earlier_port)
    assert objects.compare() == (set(), set())  # nor are the ones it removes this test's loss
    stop_neighbour(later, later_port)
    # The check is not blind: a server of this test killed with SIGKILL leaves its five objects.
    own = ServerProcess(spool=tmp_path / "own")
    own.kill()
    leaked, lost = objects.compare()
    assert {(o.kind, o.key, o.ident) for o in leaked} == port_objects(own.port) and len(leaked) == 5
    assert lost == set()
    subprocess.run(
        [sys.executable, "-m", "shm", "cleanup", "--port", str(own.port)],
        cwd=ROOT,
        env=python_env(),
        capture_output=True,
        check=True,
    )
    assert objects.compare() == (set(), set())


def test_a_crashed_neighbours_objects_reclaimed_by_this_tests_server_are_no_loss(tmp_path):
    crashed, port = start_neighbour(tmp_path / "crashed")
    crashed.kill()  # SIGKILL: its objects stay, stale, as a classmate's crash leaves them
    crashed.wait()
    assert len(port_objects(port)) == 5
    objects = TestObjects()
    ours = ServerProcess("--port", str(port), spool=tmp_path / "ours")  # the port the kernel could hand us
    try:
        wait_until(lambda: "removed stale" in ours.log(), what="the stale objects to be reclaimed")
    finally:
        assert ours.stop() == 0
    assert objects.compare() == (set(), set())


def test_real_tests_pass_while_a_neighbour_server_starts_and_stops_beside_them(tmp_path):
    with Neighbour(tmp_path / "neighbour") as neighbour:
        first = neighbour.cycles
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *BESIDE],
            cwd=ROOT,
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        churned = neighbour.cycles - first
    assert "leaked" not in run.stdout, run.stdout[-4000:]
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert churned >= 5, f"the neighbour started and stopped only {churned} times beside the run"
