"""Quotas on disk: the server's spool (issue 16, item 4) and the client's downloads (item 5).

A classmate must not be able to fill the instructor's disk through the spool,
nor another student's through their download folder.  The receiver that
"never reads" is a socket with a tiny receive buffer that is not read (the
``SleepySocket`` of the file tests): each file sent to it is larger than the
socket buffers can swallow, so its copy stays in the spool for as long as
the test wants, and then it reads and must get every file whole.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path

import pytest
from conftest import LineModeClient, RawClient
from procinfo import spool_files, spool_of, wait_until
from test_files import SleepySocket, beyond_socket_buffers, random_bytes, sha, upload_raw

from client.session import ClientSession
from protocol import commands
from server.ledger import reserve, usage
from server.spool import Spool


def refused(client: RawClient, name: str) -> str:
    """The answer to a ``/sendfile`` header that must be a refusal: its reason."""
    answer = client.expect(r"^\[upload ").string
    prefix = f"[upload refused] {name}: "
    assert answer.startswith(prefix), answer
    return answer[len(prefix) :]


def header(target: int, data: bytes, name: str) -> str:
    return f"/sendfile {target} {len(data)} {sha(data)} {name}"


def only_links(spool: Path) -> bool:
    """Nothing in the spool but receivers' links: no partial upload, no reservation."""
    return all(name.startswith("to-") for name in spool_files(spool))


# -- the spool -------------------------------------------------------------------------------


def test_a_receiver_that_never_reads_is_bounded_by_its_share_and_loses_nothing(start_server):
    size = beyond_socket_buffers()
    server = start_server("--spool-quota-per-receiver", str(2 * size + size // 2))
    spool = spool_of(server)
    sender = RawClient(server.port)
    sender.welcome()
    idle = SleepySocket(server.port)  # reads nothing until the end of the test
    files = [random_bytes(size, seed=n) for n in range(3)]
    try:
        transfers = []
        for n, data in enumerate(files[:2]):
            transfers.append(upload_raw(sender, idle.id, data, f"f{n}.bin"))
            sender.expect(rf"^\[ok\] file {transfers[-1]} 'f{n}.bin' uploaded \({size} bytes\); delivering")
        wait_until(lambda: only_links(spool), what="the two uploads linked for the idle receiver")

        # The third is refused in answer to its header: not one byte of it is sent.
        sender.send(header(idle.id, files[2], "f2.bin"))
        reason = refused(sender, "f2.bin")
        assert re.fullmatch(
            rf"{idle.id} already has {2 * size} bytes waiting in the spool "
            rf"\({2 * size + size // 2} at most per receiver\); try again once it has read them",
            reason,
        ), reason
        assert only_links(spool) and len(spool_files(spool)) == 2

        # Another receiver still gets files: sent to it, or to a group with both.
        reader = SleepySocket(server.port)
        other = upload_raw(sender, reader.id, files[2], "f2.bin")
        assert reader.read_file(other, size) == files[2]
        sender.expect(rf"^\[ok\] file {other} 'f2.bin' delivered to {reader.id}$")
        sender.send(f"/makegroup {idle.id} {reader.id}")
        group = sender.expect(r"^\[ok\] group (\d{5})").group(1)
        shared = upload_raw(sender, int(group), files[2], "g.bin")
        no_room = f"{idle.id}: {idle.id} already has {2 * size} bytes"
        sender.seen_or_expect(rf"^\[error\] file {shared} 'g.bin' not delivered to {no_room} waiting")
        sender.expect(rf"^\[ok\] file {shared} 'g.bin' uploaded \({size} bytes\); delivering to {reader.id}$")
        assert reader.read_file(shared, size) == files[2]

        # Nothing already spooled was lost: the idle receiver reads, and gets both.
        for transfer, data in zip(transfers, files, strict=False):
            assert idle.read_file(transfer, size) == data
        for transfer in transfers:
            sender.expect(rf"^\[ok\] file {transfer} '.*' delivered to {idle.id}$")
        # What it has read no longer counts: the same file now goes through.
        again = upload_raw(sender, idle.id, files[2], "again.bin")
        assert idle.read_file(again, size) == files[2]
        reader.close()
    finally:
        idle.close()
        sender.close()
    wait_until(lambda: spool_files(spool) == [], what="an empty spool")


def test_the_whole_spool_is_bounded_and_a_refusal_loses_nothing(start_server):
    size = beyond_socket_buffers()
    quota = str(2 * size + size // 2)
    server = start_server("--spool-quota", quota, "--spool-quota-per-receiver", quota)
    spool = spool_of(server)
    sender = RawClient(server.port)
    sender.welcome()
    idle, reader = SleepySocket(server.port), SleepySocket(server.port)
    files = [random_bytes(size, seed=10 + n) for n in range(3)]
    try:
        transfers = []
        for n, data in enumerate(files[:2]):
            transfers.append(upload_raw(sender, idle.id, data, f"f{n}.bin"))
            sender.expect(rf"^\[ok\] file {transfers[-1]} 'f{n}.bin' uploaded")
        wait_until(lambda: only_links(spool), what="the two uploads linked")

        sender.send(header(reader.id, files[2], "f2.bin"))  # another receiver: the total still holds
        reason = refused(sender, "f2.bin")
        assert reason == (
            f"the server's spool is full ({2 * size} bytes waiting or reserved, {2 * size + size // 2} "
            "at most); try again once receivers have read their files"
        ), reason
        assert only_links(spool) and len(spool_files(spool)) == 2

        for transfer, data in zip(transfers, files, strict=False):
            assert idle.read_file(transfer, size) == data
        for transfer in transfers:
            sender.expect(rf"^\[ok\] file {transfer} '.*' delivered to {idle.id}$")
        later = upload_raw(sender, reader.id, files[2], "f2.bin")
        assert reader.read_file(later, size) == files[2]
    finally:
        for client in (idle, reader, sender):
            client.close()
    wait_until(lambda: spool_files(spool) == [], what="an empty spool")


def test_an_upload_in_progress_holds_its_room_from_its_header_on(start_server):
    """Two uploads that would each fit, but not both: the second is refused before the first
    has sent a byte; the two at the same moment: exactly one goes ahead; a sender that leaves
    gives its room back."""
    size = 1024 * 1024
    server = start_server("--spool-quota-per-receiver", str(size + size // 2))
    spool = spool_of(server)
    first, second, third = RawClient(server.port), RawClient(server.port), RawClient(server.port)
    for client in (first, second, third):
        client.welcome()
    idle = SleepySocket(server.port)
    data = random_bytes(size, seed=20)
    try:
        first.send(header(idle.id, data, "a.bin"))
        first.expect(rf"^\[upload \S+ ready\] {size} a.bin$")  # and no data frame follows
        second.send(header(idle.id, data, "b.bin"))
        assert refused(second, "b.bin").startswith(f"{idle.id} already has {size} bytes waiting")

        first.close()  # leaves mid-upload: its reservation goes with its partial upload
        wait_until(lambda: spool_files(spool) == [], what="the departed upload's reservation removed")

        # Both at once, from two processes' points of view: one wins, one is refused.
        start = threading.Barrier(2)

        def announce(client: RawClient, name: str) -> None:
            start.wait()
            client.send(header(idle.id, data, name))

        threads = [
            threading.Thread(target=announce, args=pair) for pair in ((second, "b.bin"), (third, "c.bin"))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        answers = [second.expect(r"^\[upload ").string, third.expect(r"^\[upload ").string]
        assert sorted(a.startswith("[upload refused]") for a in answers) == [False, True], answers
    finally:
        for client in (second, third):
            client.close()
        idle.close()
    wait_until(lambda: spool_files(spool) == [], what="an empty spool")


def test_the_ledger_counts_a_group_file_once_in_all_and_once_per_receiver(tmp_path):
    spool = Spool(str(tmp_path / "spool"))
    spool.reset()
    try:
        reservation = reserve(spool, "0-1-12345-1", 1000, [(11111, 1, 1), (22222, 2, 1)])
        assert sorted(reservation.paths) == [11111, 22222] and not reservation.refused
        assert usage(spool) == (1000, {(1, 1): 1000, (2, 1): 1000})
        part = spool.upload_path(0, 1, "12345-1")
        Path(part).write_bytes(b"x" * 1000)  # a partial upload is counted by its reservation only
        assert usage(spool)[0] == 1000
        for slot in (1, 2):
            spool.link_for(part, slot, 1, "12345-1")
        os.unlink(part)
        reservation.release()
        assert usage(spool) == (1000, {(1, 1): 1000, (2, 1): 1000})  # one inode, two receivers
        assert spool.leftovers(1, 1) == ["12345-1"]  # receiver 1 left: its share goes
        assert usage(spool) == (1000, {(2, 1): 1000})
    finally:
        spool.remove()
    assert not (tmp_path / "spool").exists()


# -- the client's downloads ------------------------------------------------------------------


def test_a_client_refuses_files_past_its_download_quota_and_the_sender_is_told(server, tmp_path):
    size = 100 * 1024  # small: the whole file fits in the socket long before a "no" could come back
    quota = 2 * size + size // 2
    receiver = LineModeClient(server.port, tmp_path / "rx" / "downloads", "--download-quota", str(quota))
    sender = RawClient(server.port)
    try:
        receiver.welcome()
        sender.welcome()
        files = {f"f{n}.bin": random_bytes(size, seed=30 + n) for n in range(5)}
        files["small.bin"] = random_bytes(size // 2, seed=40)  # still fits after the refusals
        transfers = {name: upload_raw(sender, receiver.id, data, name) for name, data in files.items()}
        for name, transfer in transfers.items():
            if name in ("f0.bin", "f1.bin", "small.bin"):
                sender.seen_or_expect(rf"^\[ok\] file {transfer} '{name}' delivered to {receiver.id}$")
            else:
                line = sender.seen_or_expect(rf"^\[(ok|error)\] file {transfer} '{name}' (not )?delivered")
                assert line == (
                    f"[error] file {transfer} '{name}' not delivered to {receiver.id}: "
                    "refused by the receiver: its download quota is full"
                ), line
                receiver.seen_or_expect(rf"^\[server\] file {transfer} '{name}' from {sender.id} .*refused")
        for name in ("f0.bin", "f1.bin", "small.bin"):
            receiver.seen_or_expect(rf"^\[saved\] file '{name}' from {sender.id}")
        folder = receiver.download_dir
        assert sorted(os.listdir(folder)) == ["f0.bin", "f1.bin", "small.bin"]  # nothing half-written
        for name in os.listdir(folder):
            assert (folder / name).read_bytes() == files[name]
    finally:
        sender.close()
        receiver.close()


def test_the_client_declares_its_quota_first_and_holds_it_even_if_the_server_does_not(tmp_path):
    ours, theirs = socket.socketpair()
    shown: list[str] = []
    try:
        session = ClientSession(ours, str(tmp_path / "downloads"), shown.append, download_quota=1000)
        assert bytes(session.out) == b"/downloadquota 1000\n"
        data = b"x" * 1001
        session.on_line(f"[file 12345-1 from 12345] {len(data)} {sha(data)} big.bin")
        session.on_line(f"[data 12345-1] {len(data)}")
        session.on_data(data)
        assert shown == [
            "[error] file 12345-1 'big.bin' from 12345 not saved: "
            "it would pass your download quota (1000 bytes left)"
        ]
        assert not (tmp_path / "downloads").exists() or os.listdir(tmp_path / "downloads") == []
    finally:
        ours.close()
        theirs.close()


def test_the_download_quota_line_is_parsed_like_a_byte_count():
    assert commands.parse("/downloadquota 1048576") == commands.DownloadQuota(1048576)
    for bad in (
        "/downloadquota",
        "/downloadquota -1",
        "/downloadquota 1e6",
        "/downloadquota ²",
        "/downloadquota " + "9" * 21,
    ):
        with pytest.raises(commands.CommandError):
            commands.parse(bad)
