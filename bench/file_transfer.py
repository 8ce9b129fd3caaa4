"""File transfer: a 100 MiB /sendfile against a plain loopback copy, interleaved rounds.

``python -m bench.file_transfer`` starts a shmchat server on 127.0.0.1 (its
spool in a temporary folder) and two real clients in line mode, A and B.
Each round:

1. **shmchat**: the clock starts when ``/sendfile <B> <file>`` is written to
   A's stdin and stops when B prints ``[saved] ...``: A hashes the file,
   uploads it in data frames, the server spools and checks it, B's worker
   streams it from the spool, B writes, checks and renames it.  So it is the
   whole client -> server -> client path, from the command to the file in
   place; the saved copy is compared with the original after the clock stops.
   The round also splits that time in three, by when the lines arrive: until
   A's ``[ok] sending`` (A hashed the file, the server said go), until A's
   ``uploaded`` (the server has it all, checked), until B's ``[saved]``.
2. **plain copy**: two fresh Python processes, a receiver listening on
   127.0.0.1 and a sender, already connected; the clock starts when the
   sender is told to go and stops when the receiver reports that it has
   written the last byte.  The sender reads the same file in 256 KiB blocks
   and ``sendall``s them; the receiver ``recv_into``s a 256 KiB buffer and
   writes to a file.  No framing, no checksum: the bytes, moved once.

Both run in the same round, one after the other, and the ratio
(shmchat / plain) is computed inside the round, so the drift of a shared
machine hits both alike; the summary gives the medians.

Memory: after the timed rounds, fresh receivers get a 1 MiB and a 100 MiB
file, each its own worker, and the workers' peak resident set (VmHWM from
``/proc/<pid>/status``) is read: the receiving worker's, and the uploading
worker's for the same files.  Flat memory means the same peak for both sizes.

``--json FILE`` keeps every figure.  ``--profile DIR`` records both workers
of one transfer with py-spy (needs ``py-spy`` on PATH) and prints the top of
their profiles instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MiB = 1024 * 1024
BLOCK = 256 * 1024
TIMEOUT = 120.0


# -- the plain copy: two processes, one TCP connection -------------------------------------------


def plain_receiver(out_path: str) -> None:
    """Child process: listen, print the port, receive everything into a file, report."""
    listener = socket.create_server((HOST, 0))
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    total = 0
    with open(out_path, "wb", buffering=0) as out:
        while n := conn.recv_into(buffer):
            out.write(view[:n])
            total += n
    print(f"done {total}", flush=True)


def plain_sender(port: int, in_path: str) -> None:
    """Child process: connect, wait for "go" on stdin, send the file, close."""
    sock = socket.create_connection((HOST, port))
    print("ready", flush=True)
    sys.stdin.readline()
    with open(in_path, "rb", buffering=0) as source:
        while block := source.read(BLOCK):
            sock.sendall(block)
    sock.close()


def plain_copy(source: Path, out_path: Path) -> float:
    """Seconds to copy ``source`` over loopback TCP between two processes."""
    python = [sys.executable, "-m", "bench.file_transfer"]
    receiver = subprocess.Popen(
        [*python, "--plain-receiver", str(out_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    port = int(receiver.stdout.readline())
    sender = subprocess.Popen(
        [*python, "--plain-sender", str(port), str(source)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sender.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    sender.stdin.write("go\n")
    sender.stdin.flush()
    done = receiver.stdout.readline()
    elapsed = time.perf_counter() - start
    assert done.strip() == f"done {source.stat().st_size}", done
    sender.wait(TIMEOUT)
    receiver.wait(TIMEOUT)
    return elapsed


# -- shmchat: a server and real line-mode clients ------------------------------------------------


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Server:
    def __init__(self, spool: Path, max_file_size: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "--port",
                "0",
                "--spool-dir",
                str(spool),
                "--max-file-size",
                str(max_file_size),
                "--log-level",
                "WARNING",
            ],
            cwd=REPO,
            env=python_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        first = self.proc.stdout.readline()
        match = re.search(r"listening on [\d.]+:(\d+)", first)
        if not match:
            self.proc.kill()
            raise SystemExit(f"the server did not start: {first!r}")
        self.port = int(match.group(1))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(TIMEOUT)


class Client:
    """``python -m client`` in line mode; its output lines arrive on a queue."""

    def __init__(self, port: int, download_dir: Path) -> None:
        self.download_dir = download_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "client", "--port", str(port), "--download-dir", str(download_dir)],
            cwd=REPO,
            env=python_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.id = 0
        self.seen_at = 0.0  # when the line the last expect matched arrived
        threading.Thread(target=self._read, daemon=True).start()
        self.id = int(self.expect(r"^\[welcome\].*unique id is (\d{5})").group(1))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put((time.perf_counter(), line.rstrip("\n")))
        self.lines.put(None)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, pattern: str, timeout: float = TIMEOUT) -> re.Match:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            item = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if item is None:
                raise RuntimeError(f"client {self.id} closed before {pattern!r}")
            self.seen_at, line = item
            if line.startswith("[error]"):
                raise RuntimeError(f"client {self.id}: {line}")
            match = regex.search(line)
            if match:
                return match

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def worker_pid(port: int, client_id: int) -> int:
    from shm.segments import ServerIpc

    ipc = ServerIpc.attach(port)
    try:
        info = ipc.directory.find_client(client_id)
        assert info is not None and info.pid
        return info.pid
    finally:
        ipc.close()


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for pid {pid}")


def send_file(
    sender: Client, receiver: Client, source: Path, phases: dict | None = None
) -> tuple[float, Path]:
    """Seconds from the /sendfile command to the receiver's [saved] line.

    ``phases`` gets the seconds to the sender's ``[ok] sending`` line (the client
    has hashed the file and the server said ready), to its ``uploaded`` line (the
    server has it all, checked) and to the receiver's ``[saved]`` line.
    """
    start = time.perf_counter()
    sender.send(f"/sendfile {receiver.id} {source}")
    saved = receiver.expect(rf"^\[saved\] file .* from {sender.id} saved to (.*) \(\d+ bytes\)$")
    saved_at = receiver.seen_at
    sender.expect(r"^\[ok\] sending ")
    ready_at = sender.seen_at
    sender.expect(r"^\[ok\] file \S+ .* uploaded ")
    uploaded_at = sender.seen_at
    sender.expect(rf"delivered to {receiver.id}$")
    if phases is not None:
        phases.update(
            hash_and_ready_s=ready_at - start,
            upload_s=uploaded_at - ready_at,
            download_s=saved_at - uploaded_at,
        )
    return saved_at - start, Path(saved.group(1))


def same_file(a: Path, b: Path) -> bool:
    digests = []
    for path in (a, b):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(MiB):
                digest.update(block)
        digests.append(digest.hexdigest())
    return digests[0] == digests[1]


def make_file(path: Path, size: int) -> Path:
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(MiB, left))
            out.write(block)
            left -= len(block)
    return path


def machine() -> dict[str, object]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# -- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, object]:
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="shmchat-bench-files-"))
    results: dict[str, object] = {"machine": machine(), "size_bytes": size, "rounds": []}
    server = None
    clients: list[Client] = []
    try:
        source = make_file(work / "payload.bin", size)
        small = make_file(work / "small.bin", MiB)
        server = Server(work / "spool", max(size, 100 * MiB))
        a = Client(server.port, work / "a")
        b = Client(server.port, work / "b")
        clients += [a, b]
        # One untimed transfer first: page cache, imports and socket buffers warm for both sides.
        _, warm = send_file(a, b, small)
        warm.unlink()
        plain_copy(small, work / "plain.out")
        for n in range(1, args.rounds + 1):
            phases: dict[str, float] = {}
            shm_seconds, saved = send_file(a, b, source, phases)
            assert same_file(source, saved), "the received file differs from the original"
            saved.unlink()
            plain_seconds = plain_copy(source, work / "plain.out")
            (work / "plain.out").unlink()
            row = {
                "round": n,
                "shmchat_s": shm_seconds,
                **phases,
                "plain_s": plain_seconds,
                "shmchat_mib_s": size / MiB / shm_seconds,
                "plain_mib_s": size / MiB / plain_seconds,
            }
            row["ratio"] = row["shmchat_mib_s"] / row["plain_mib_s"]
            results["rounds"].append(row)
            print(
                f"round {n}: shmchat {row['shmchat_mib_s']:7.1f} MiB/s   plain copy "
                f"{row['plain_mib_s']:7.1f} MiB/s   ratio {row['ratio']:.2f}   (shmchat: hash and go-ahead "
                f"{1000 * phases['hash_and_ready_s']:.0f} ms, upload {1000 * phases['upload_s']:.0f} ms, "
                f"download {1000 * phases['download_s']:.0f} ms)",
                flush=True,
            )
        # Peak RSS of fresh workers: one receiver (and one sender) per file size.
        memory = {}
        for label, path in (("1 MiB", small), (f"{args.size_mib} MiB", source)):
            tx = Client(server.port, work / f"tx-{label}")
            rx = Client(server.port, work / f"rx-{label}")
            tx_pid, rx_pid = worker_pid(server.port, tx.id), worker_pid(server.port, rx.id)
            before = {"receiver": peak_rss_kib(rx_pid), "sender": peak_rss_kib(tx_pid)}
            _, saved = send_file(tx, rx, path)
            saved.unlink()
            memory[label] = {
                "receiver_before_kib": before["receiver"],
                "receiver_kib": peak_rss_kib(rx_pid),
                "sender_before_kib": before["sender"],
                "sender_kib": peak_rss_kib(tx_pid),
            }
            print(
                f"peak RSS (VmHWM) with a {label} file: receiving worker {memory[label]['receiver_kib']} KiB "
                f"(idle {before['receiver']} KiB), uploading worker {memory[label]['sender_kib']} KiB",
                flush=True,
            )
            tx.close()
            rx.close()
        results["memory"] = memory
    finally:
        for client in clients:
            client.close()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def summarise(results: dict[str, object]) -> str:
    rounds = results["rounds"]
    shm = statistics.median(r["shmchat_mib_s"] for r in rounds)
    plain = statistics.median(r["plain_mib_s"] for r in rounds)
    ratio = statistics.median(r["ratio"] for r in rounds)
    m = results["machine"]
    lines = [
        f"machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, Linux {m['kernel']}",
        f"{len(rounds)} rounds of {results['size_bytes'] // MiB} MiB, medians:",
        f"  shmchat client -> server -> client  {shm:8.1f} MiB/s",
        f"  plain loopback TCP copy              {plain:8.1f} MiB/s",
        f"  ratio shmchat / plain (per round)    {ratio:8.2f}",
        "  shmchat phases: hash and go-ahead {:.0f} ms, upload {:.0f} ms, download {:.0f} ms".format(
            *(
                1000 * statistics.median(r[k] for r in rounds)
                for k in ("hash_and_ready_s", "upload_s", "download_s")
            )
        ),
    ]
    for label, figures in results.get("memory", {}).items():
        lines.append(
            f"  peak RSS with a {label:>8} file: receiving worker {figures['receiver_kib']} KiB, "
            f"uploading worker {figures['sender_kib']} KiB"
        )
    return "\n".join(lines)


def profile(args: argparse.Namespace) -> None:
    """Record both workers of one transfer with py-spy; print where their time goes."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(spy):
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="shmchat-bench-files-"))
    size = args.size_mib * MiB
    try:
        source = make_file(work / "payload.bin", size)
        server = Server(work / "spool", max(size, 100 * MiB))
        a, b = Client(server.port, work / "a"), Client(server.port, work / "b")
        recorders = []
        for who, client in (("upload-worker", a), ("download-worker", b)):
            pid = worker_pid(server.port, client.id)
            recorders.append(
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--format",
                        "raw",
                        "--rate",
                        "500",
                        "--nonblocking",
                        "-o",
                        str(out / f"{who}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)  # let py-spy attach
        for _ in range(3):
            seconds, saved = send_file(a, b, source)
            saved.unlink()
            print(f"transfer: {size / MiB / seconds:.1f} MiB/s")
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)
            recorder.wait(TIMEOUT)
        a.close()
        b.close()
        server.stop()
        for who in ("upload-worker", "download-worker"):
            print(f"\n{who}: leaf functions by share of samples")
            leaves: dict[str, int] = {}
            total = 0
            with open(out / f"{who}.txt") as stacks:
                for line in stacks:
                    stack, _, count = line.rstrip().rpartition(" ")
                    leaf = stack.split(";")[-1]
                    leaves[leaf] = leaves.get(leaf, 0) + int(count)
                    total += int(count)
            for leaf, count in sorted(leaves.items(), key=lambda kv: -kv[1])[:12]:
                print(f"  {100 * count / total:5.1f}%  {leaf}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.file_transfer", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default: %(default)s)")
    parser.add_argument("--size-mib", type=int, default=100, help="file size in MiB (default: %(default)s)")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--profile", metavar="DIR", help="record the workers with py-spy instead")
    parser.add_argument("--plain-receiver", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--plain-sender", nargs=2, metavar=("PORT", "IN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_receiver:
        plain_receiver(args.plain_receiver)
        return 0
    if args.plain_sender:
        plain_sender(int(args.plain_sender[0]), args.plain_sender[1])
        return 0
    if args.profile:
        profile(args)
        return 0
    results = run(args)
    print()
    print(summarise(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
