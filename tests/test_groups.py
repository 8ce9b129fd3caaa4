"""End-to-end: groups (issue 3), against the real server over real sockets.

Every rule of /makegroup, /makegroupreq, /joingroup, /approve, /deny,
/declinegroup, /sendgroup, /activegroups and /activeallgroups, and what
leaving (every way) does to a group.  Lines are matched exactly where the
wording is part of the protocol (docs/protocol.md).  One test at the end
drives the group table directly, because group ids are random and only there
can the draws be forced onto ids that are taken.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess

import pytest
from conftest import RawClient

from shm.segments import ServerIpc

#: Every test here runs on a System V server and on a POSIX one (conftest.ipc_api).
pytestmark = pytest.mark.both_ipc_apis

ID = r"(\d{5})"
OK = r"^\[ok\] "
ERROR = r"^\[error\] "
#: A server notice other than the plain "client N joined" / "client N left" of the chat.
NEWS = r"^\[server\] (?!client \d{5} (joined|left)$)"


# -- helpers ------------------------------------------------------------------------------


def make_group(admin: RawClient, *members: RawClient) -> int:
    """``/makegroup``; returns the group id from the ``[ok]`` line."""
    admin.send("/makegroup " + " ".join(str(m.id) for m in members))
    gid = int(admin.expect(rf"{OK}group {ID}: admin {admin.id}; members ").group(1))
    for member in members:
        member.expect(rf"^\[server\] client {admin.id} added you to group {gid}: ")
    return gid


def invite(admin: RawClient, *invitees: RawClient) -> int:
    """``/makegroupreq``; returns the group id once every invitee has its invitation."""
    admin.send("/makegroupreq " + " ".join(str(m.id) for m in invitees))
    gid = int(admin.expect(rf"{OK}group {ID} created; invited ").group(1))
    for invitee in invitees:
        invitee.expect(rf"invites you to group {gid} ")
    return gid


def join(client: RawClient, gid: int) -> None:
    """An invitee accepts."""
    client.send(f"/joingroup {gid}")
    client.expect(rf"{OK}you joined group {gid}: ")


def all_groups(client: RawClient) -> list[str]:
    """The lines of ``/activeallgroups`` after its header, or [] when there are none."""
    return _group_lines(client, "/activeallgroups", "on the server")


def my_groups(client: RawClient) -> list[str]:
    return _group_lines(client, "/activegroups", "you belong to")


def _group_lines(client: RawClient, command: str, scope: str) -> list[str]:
    client.send(command)
    header = client.expect(rf"^\[groups\] (no groups|(\d+) group\(s\)) {scope}$")
    if header.group(1) == "no groups":
        return []
    return [client.expect(r"^\[groups\] group ").string for _ in range(int(header.group(2)))]


def group_line(client: RawClient, gid: int) -> str | None:
    """This group's line in ``/activeallgroups`` (None: no such group)."""
    return next((line for line in all_groups(client) if line.startswith(f"[groups] group {gid}:")), None)


def group_id_in(line: str, pattern: str) -> int:
    """The group id that ``pattern``'s first group captures at the start of ``line``."""
    match = re.match(pattern, line)
    assert match, line
    return int(match.group(1))


def unused_ids(*taken: int, count: int = 1) -> list[int]:
    return [i for i in range(10001, 99999, 7919) if i not in taken][:count]


def worker_pid(server, client: RawClient) -> int:
    """The pid of the worker serving ``client`` (matched by the socket's port)."""
    local_port = client.sock.getsockname()[1]
    out = subprocess.run(["ss", "-tnp"], capture_output=True, text=True).stdout
    for pid in server.worker_pids():
        if any(f":{local_port}" in line and f"pid={pid}," in line for line in out.splitlines()):
            return pid
    raise AssertionError(f"no worker found for client {client.id}")


def leave(how: str, client: RawClient, server) -> None:
    """Make ``client`` leave the chat in one of the four ways a client can go."""
    if how in ("/quit", "EXIT"):
        client.send(how)
        client.expect(r"^\[bye\]")
    elif how == "close":
        client.close()
    elif how == "sigkill":
        os.kill(worker_pid(server, client), signal.SIGKILL)
    else:
        raise ValueError(how)


LEAVING = ["/quit", "EXIT", "close", "sigkill"]


@pytest.fixture
def big_server(start_server):
    """A server for 8 clients: an admin and 7 others, more than a group can hold."""
    return start_server("--max-clients", "8")


# -- /makegroup -----------------------------------------------------------------------------


def test_makegroup_joins_the_members_at_once_and_tells_each_one(connect):
    a, b, c, outsider = connect(), connect(), connect(), connect()
    a.send(f"/makegroup {b.id} {c.id}")
    ok = a.expect(OK).string
    gid = group_id_in(ok, rf"\[ok\] group {ID}: ")
    assert ok == f"[ok] group {gid}: admin {a.id}; members {a.id}, {b.id}, {c.id} (created)"
    for member in (b, c):
        line = member.expect(NEWS).string
        roster = f"admin {a.id}; members {a.id}, {b.id}, {c.id}"
        assert line == f"[server] client {a.id} added you to group {gid}: {roster}"
    outsider.quiet(str(gid))
    # They are members already: no answer needed before they hear the group.
    a.send(f"/sendgroup {gid} welcome aboard")
    for member in (b, c):
        member.expect(rf"^\[group {gid} from {a.id}\] welcome aboard$")
    assert my_groups(b) == [f"[groups] group {gid}: admin {a.id}; members {a.id}, {b.id}, {c.id}"]


def test_a_group_of_five_including_the_admin_is_allowed(big_server, connect):
    a, *others = [connect(target=big_server) for _ in range(5)]
    gid = make_group(a, *others)
    members = ", ".join(str(c.id) for c in (a, *others))
    assert group_line(a, gid) == f"[groups] group {gid}: admin {a.id}; members {members}"


def test_makegroup_over_five_members_is_refused_and_no_group_is_made(big_server, connect):
    a, *others = [connect(target=big_server) for _ in range(8)]  # the admin and 7 others
    assert len(others) == 7
    for named in (others[:5], others):
        a.send("/makegroup " + " ".join(str(c.id) for c in named))
        assert a.expect(ERROR).string == (
            "[error] a group holds at most 5 members including you; "
            f"you named {len(named)} others (at most 4)"
        )
    a.send("/makegroupreq " + " ".join(str(c.id) for c in others[:5]))
    assert "at most 5 members including you" in a.expect(ERROR).string
    assert all_groups(a) == []
    for other in others:
        other.quiet(r"added you|invites you", wait=0.2)


def test_makegroup_skips_and_reports_own_unknown_and_duplicate_ids(connect):
    a, b, c = connect(), connect(), connect()
    (nobody,) = unused_ids(a.id, b.id, c.id)
    a.send(f"/makegroup {b.id} {b.id} {a.id} {nobody} {c.id}")
    ok = a.expect(OK).string
    gid = group_id_in(ok, rf"\[ok\] group {ID}: ")
    assert ok.startswith(f"[ok] group {gid}: admin {a.id}; members {a.id}, {b.id}, {c.id} (created)")
    assert f"not added: {a.id} (that is you; you are the admin)" in ok
    assert f"not added: {nobody} (not an online client)" in ok
    assert f"named more than once, added once: {b.id}" in ok
    b.expect(rf"added you to group {gid}: admin {a.id}; members {a.id}, {b.id}, {c.id}$")
    b.quiet(r"added you")  # added once, told once
    assert group_line(a, gid) == f"[groups] group {gid}: admin {a.id}; members {a.id}, {b.id}, {c.id}"


def test_makegroup_with_no_other_online_client_is_refused(connect):
    a, b = connect(), connect()
    (nobody,) = unused_ids(a.id, b.id)
    b.send("/quit")
    a.expect(rf"client {b.id} left")
    for command in (f"/makegroup {a.id}", f"/makegroup {nobody} {b.id}", f"/makegroupreq {b.id} {a.id}"):
        a.send(command)
        assert a.expect(ERROR).string == "[error] no group made: none of the ids is another online client"
    assert all_groups(a) == []


# -- /makegroupreq and /joingroup by an invitee -----------------------------------------------


def test_makegroupreq_makes_an_admin_only_group_and_invites_with_how_to_answer(connect):
    a, b, c, outsider = connect(), connect(), connect(), connect()
    (nobody,) = unused_ids(a.id, b.id, c.id, outsider.id)
    a.send(f"/makegroupreq {b.id} {c.id} {nobody}")
    ok = a.expect(OK).string
    gid = group_id_in(ok, rf"\[ok\] group {ID} created")
    assert (
        ok
        == f"[ok] group {gid} created; invited {b.id}, {c.id}; not invited: {nobody} (not an online client)"
    )
    for invitee in (b, c):
        assert invitee.expect(NEWS).string == (
            f"[server] client {a.id} invites you to group {gid} (its admin is {a.id}); "
            f"to answer, type /joingroup {gid} to join or /declinegroup {gid} to decline"
        )
    outsider.quiet(str(gid))
    assert group_line(a, gid) == f"[groups] group {gid}: admin {a.id}; members {a.id}; invited {b.id}, {c.id}"
    assert my_groups(b) == []  # invited is not a member


def test_an_invitee_joins_at_once_and_the_admin_and_members_are_told(connect):
    a, b, c = connect(), connect(), connect()
    gid = invite(a, b, c)
    b.send(f"/joingroup {gid}")
    assert (
        b.expect(OK).string
        == f"[ok] you joined group {gid}: admin {a.id}; members {a.id}, {b.id}; invited {c.id}"
    )
    assert a.expect(NEWS).string == f"[server] client {b.id} joined group {gid}"
    c.send(f"/joingroup {gid}")
    c.expect(rf"{OK}you joined group {gid}: admin {a.id}; members {a.id}, {b.id}, {c.id}$")
    for member in (a, b):
        member.expect(rf"^\[server\] client {c.id} joined group {gid}$")
    c.send(f"/joingroup {gid}")
    assert c.expect(OK).string == f"[ok] you are already a member of group {gid}"
    assert group_line(a, gid) == f"[groups] group {gid}: admin {a.id}; members {a.id}, {b.id}, {c.id}"


def test_messages_sent_before_joining_are_not_received_and_after_joining_are(connect):
    a, b, c = connect(), connect(), connect()
    gid = invite(a, b, c)
    join(b, gid)
    a.send(f"/sendgroup {gid} before c joined")
    b.expect(rf"^\[group {gid} from {a.id}\] before c joined$")
    join(c, gid)
    a.send(f"/sendgroup {gid} after c joined")
    c.expect(rf"^\[group {gid} from {a.id}\] after c joined$")
    assert not [line for line in c.seen if "before c joined" in line]


def test_declinegroup_drops_the_invitation_and_tells_the_admin(connect):
    a, b, c = connect(), connect(), connect()
    gid = invite(a, b, c)
    b.send(f"/declinegroup {gid}")
    assert b.expect(OK).string == f"[ok] declined the invitation to group {gid}"
    assert a.expect(NEWS).string == f"[server] client {b.id} declined the invitation to group {gid}"
    assert group_line(a, gid) == f"[groups] group {gid}: admin {a.id}; members {a.id}; invited {c.id}"
    b.send(f"/declinegroup {gid}")
    assert b.expect(ERROR).string == f"[error] you have no invitation to group {gid}"
    a.send(f"/sendgroup {gid} still there, c?")  # c has not joined either
    a.expect(rf"you are the only member of group {gid}; not sent")
    # Having declined, b is an outsider: joining now is a request to the admin.
    b.send(f"/joingroup {gid}")
    b.expect(rf"{OK}you are not invited to group {gid}; your request was sent to its admin {a.id}$")
    a.expect(rf"client {b.id} asks to join group {gid}")


# -- /joingroup by an outsider, /approve and /deny ---------------------------------------------


def test_an_uninvited_request_goes_to_the_admin_and_approve_joins_the_requester(connect):
    a, b, c = connect(), connect(), connect()
    gid = make_group(a, b)
    c.send(f"/joingroup {gid}")
    assert (
        c.expect(OK).string
        == f"[ok] you are not invited to group {gid}; your request was sent to its admin {a.id}"
    )
    assert a.expect(NEWS).string == (
        f"[server] client {c.id} asks to join group {gid}; answer /approve {gid} {c.id} or /deny {gid} {c.id}"
    )
    b.quiet(r"asks to join")  # only the admin is asked
    c.send(f"/joingroup {gid}")
    assert c.expect(OK).string == f"[ok] you already asked to join group {gid}; waiting for its admin"
    line = group_line(b, gid)
    assert line is not None and f"asking to join {c.id}" in line
    # Not a member yet: receives nothing, may send nothing.
    a.send(f"/sendgroup {gid} not for c yet")
    b.expect(r"not for c yet")
    c.send(f"/sendgroup {gid} let me in")
    c.expect(rf"{ERROR}you are not a member of group {gid}$")

    b.send(f"/approve {gid} {c.id}")  # a member, but not the admin
    assert b.expect(ERROR).string == f"[error] only the admin of group {gid} ({a.id}) can answer requests"
    a.send(f"/approve {gid} {c.id}")
    assert a.expect(OK).string == f"[ok] approved: {c.id} joined group {gid}"
    assert c.expect(r"^\[server\] the admin").string == (
        f"[server] the admin approved your request: you joined group {gid}: "
        f"admin {a.id}; members {a.id}, {b.id}, {c.id}"
    )
    b.expect(rf"^\[server\] client {c.id} joined group {gid}$")
    b.send(f"/sendgroup {gid} hello c")
    c.expect(rf"^\[group {gid} from {b.id}\] hello c$")
    assert not [line for line in c.seen if "not for c yet" in line]
    a.send(f"/approve {gid} {c.id}")
    assert a.expect(ERROR).string == f"[error] {c.id} has not asked to join group {gid}"


def test_deny_tells_the_requester_who_stays_out(connect):
    a, b, c = connect(), connect(), connect()
    gid = make_group(a, b)
    c.send(f"/joingroup {gid}")
    a.expect(rf"client {c.id} asks to join group {gid}")
    a.send(f"/deny {gid} {c.id}")
    assert a.expect(OK).string == f"[ok] denied {c.id}'s request to join group {gid}"
    assert c.expect(NEWS).string == f"[server] the admin of group {gid} denied your request to join"
    assert group_line(c, gid) == f"[groups] group {gid}: admin {a.id}; members {a.id}, {b.id}"
    a.send(f"/sendgroup {gid} members only")
    b.expect(r"members only")
    c.send(f"/sendgroup {gid} am I in?")
    c.expect(rf"{ERROR}you are not a member of group {gid}$")
    assert not [line for line in c.seen if "members only" in line]
    a.send(f"/deny {gid} {c.id}")
    assert a.expect(ERROR).string == f"[error] {c.id} has not asked to join group {gid}"


def test_a_full_group_refuses_invitees_and_approvals(big_server, connect):
    a, b, c, d, e, f, g = [connect(target=big_server) for _ in range(7)]
    gid = invite(a, b, c, d, e)
    f.send(f"/joingroup {gid}")
    a.expect(rf"client {f.id} asks to join group {gid}")
    a.send(f"/approve {gid} {f.id}")
    a.expect(rf"{OK}approved: {f.id} joined group {gid}")
    for invitee in (b, c, d):
        join(invitee, gid)  # now 5 members: a, f, b, c, d
    e.send(f"/joingroup {gid}")
    assert e.expect(ERROR).string == f"[error] group {gid} is full (5 members)"
    g.send(f"/joingroup {gid}")
    a.expect(rf"client {g.id} asks to join group {gid}")
    a.send(f"/approve {gid} {g.id}")
    assert a.expect(ERROR).string == f"[error] group {gid} is full (5 members)"
    line = group_line(a, gid)
    assert line is not None and f"members {a.id}, {f.id}, {b.id}, {c.id}, {d.id};" in line
    assert str(e.id) not in line.split(";")[1] and str(g.id) not in line.split(";")[1]


# -- /sendgroup -----------------------------------------------------------------------------


def test_sendgroup_reaches_every_other_member_with_group_and_sender(connect):
    a, b, c, outsider = connect(), connect(), connect(), connect()
    gid = make_group(a, b, c)
    b.send(f"/sendgroup {gid}  spaced   out ")
    for other in (a, c):
        assert other.expect(r"^\[group ").string == f"[group {gid} from {b.id}]  spaced   out "
    outsider.quiet(r"spaced")
    b.quiet(r"spaced")


def test_sendgroup_by_a_non_member_is_refused_and_nobody_receives_anything(connect):
    a, b, invitee, outsider = connect(), connect(), connect(), connect()
    gid = make_group(a, b)
    a.send(f"/makegroupreq {invitee.id}")
    invitee.expect(r"invites you")
    for stranger in (outsider, invitee):
        stranger.send(f"/sendgroup {gid} intruder from {stranger.id}")
        assert stranger.expect(ERROR).string == f"[error] you are not a member of group {gid}"
    for client in (a, b, invitee, outsider):
        client.quiet(r"intruder")


# -- listing --------------------------------------------------------------------------------


def test_activegroups_shows_only_mine_and_activeallgroups_shows_every_group(connect):
    a, b, c, d, e = connect(), connect(), connect(), connect(), connect()
    g1 = make_group(a, b)
    g2 = invite(c, d)
    e.send(f"/joingroup {g1}")
    a.expect(rf"client {e.id} asks to join group {g1}")
    line1 = f"[groups] group {g1}: admin {a.id}; members {a.id}, {b.id}; asking to join {e.id}"
    line2 = f"[groups] group {g2}: admin {c.id}; members {c.id}; invited {d.id}"
    assert my_groups(a) == [line1]
    assert my_groups(b) == [line1]
    assert my_groups(c) == [line2]
    assert my_groups(d) == []  # invited only
    for anyone in (a, d, e):
        assert all_groups(anyone) == [line1, line2]


def test_with_no_groups_both_lists_say_so(connect):
    a = connect()
    a.send("/activegroups")
    assert a.expect(r"^\[groups\]").string == "[groups] no groups you belong to"
    a.send("/activeallgroups")
    assert a.expect(r"^\[groups\]").string == "[groups] no groups on the server"


# -- leaving ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", LEAVING)
def test_a_member_that_leaves_is_removed_and_the_others_are_told(how, server, connect):
    a, b, c, d = connect(), connect(), connect(), connect()
    g1 = make_group(a, b, c)
    g2 = make_group(d, c)
    leave(how, c, server)
    for member, gid in ((a, g1), (b, g1), (d, g2)):
        member.expect(rf"^\[server\] client {c.id} left group {gid}$")
    assert group_line(a, g1) == f"[groups] group {g1}: admin {a.id}; members {a.id}, {b.id}"
    assert group_line(a, g2) == f"[groups] group {g2}: admin {d.id}; members {d.id}"
    a.quiet(rf"left group {g2}")  # told about its own group only
    assert not [line for line in a.seen if f"left group {g2}" in line]


@pytest.mark.parametrize("how", LEAVING)
def test_when_the_admin_leaves_the_longest_standing_member_takes_over(how, server, connect):
    a, b, c, d = connect(), connect(), connect(), connect()
    gid = invite(a, b, c)
    join(c, gid)  # c joins before b, so c has stood longer
    join(b, gid)
    leave(how, a, server)
    for member in (b, c):
        member.expect(rf"^\[server\] client {a.id} left group {gid}; client {c.id} is now its admin$")
    assert group_line(b, gid) == f"[groups] group {gid}: admin {c.id}; members {c.id}, {b.id}"
    # The new admin has the admin's powers.
    d.send(f"/joingroup {gid}")
    assert d.expect(OK).string.endswith(f"your request was sent to its admin {c.id}")
    c.expect(rf"client {d.id} asks to join group {gid}")
    c.send(f"/approve {gid} {d.id}")
    d.expect(rf"approved your request: you joined group {gid}: admin {c.id}; members {c.id}, {b.id}, {d.id}$")


@pytest.mark.parametrize("how", ["/quit", "sigkill"])
def test_an_empty_group_is_dissolved(how, server, connect):
    a, b, watcher = connect(), connect(), connect()
    gid = make_group(a, b)
    lonely = invite(a, watcher)  # only the admin is a member
    leave(how, a, server)
    b.expect(rf"client {a.id} left group {gid}; client {b.id} is now its admin")
    watcher.expect(rf"^\[server\] group {lonely} was dissolved: its last member, client {a.id}, left$")
    assert all_groups(watcher) == [f"[groups] group {gid}: admin {b.id}; members {b.id}"]
    watcher.send(f"/joingroup {lonely}")
    assert watcher.expect(ERROR).string == f"[error] group {lonely} does not exist"
    leave(how, b, server)
    watcher.expect(rf"client {b.id} (left|disconnected)")
    assert all_groups(watcher) == []


def test_a_new_admin_is_told_of_the_requests_it_inherits(connect):
    a, b, c = connect(), connect(), connect()
    gid = make_group(a, b)
    c.send(f"/joingroup {gid}")
    a.expect(rf"client {c.id} asks to join group {gid}")
    a.send("/quit")
    b.expect(
        rf"^\[server\] you are now the admin of group {gid}; waiting for your answer: {c.id} "
        rf"\(/approve {gid} <id> or /deny {gid} <id>\)$"
    )
    b.send(f"/approve {gid} {c.id}")
    c.expect(rf"approved your request: you joined group {gid}: admin {b.id}; members {b.id}, {c.id}$")


def test_leaving_clears_pending_invitations_and_requests(connect):
    a, b, c = connect(), connect(), connect()
    gid = invite(a, b)
    c.send(f"/joingroup {gid}")
    a.expect(rf"client {c.id} asks to join group {gid}")
    assert (
        group_line(a, gid)
        == f"[groups] group {gid}: admin {a.id}; members {a.id}; invited {b.id}; asking to join {c.id}"
    )
    for gone in (b, c):
        gone.send("EXIT")
        a.expect(rf"^\[server\] client {gone.id} left$")
    assert group_line(a, gid) == f"[groups] group {gid}: admin {a.id}; members {a.id}"


# -- ids -------------------------------------------------------------------------------------


def test_group_ids_never_equal_an_online_client_id_and_are_told_apart(connect):
    clients = [connect() for _ in range(5)]
    a, b = clients[0], clients[1]
    # Three groups each from two admins: one client may administer at most four.
    gids = [make_group(a, b) for _ in range(3)] + [make_group(b, a) for _ in range(3)]
    ids = {c.id for c in clients}
    assert len(set(gids)) == len(gids)
    assert not ids & set(gids)
    a.send(f"/send {gids[0]} hello group?")
    assert a.expect(ERROR).string == f"[error] {gids[0]} is a group; use /sendgroup {gids[0]} <message>"
    b.quiet(r"hello group\?")
    a.send(f"/sendgroup {b.id} hello client?")
    assert a.expect(ERROR).string == (
        f"[error] group {b.id} does not exist; {b.id} is a client (/send {b.id} <message>)"
    )
    b.quiet(r"hello client\?")


# -- the real client ---------------------------------------------------------------------------


def test_groups_through_the_line_mode_client(line_client):
    a, b, c = line_client("a"), line_client("b"), line_client("c")
    a.send(f"/makegroupreq {b.id}")
    gid = int(a.expect(rf"{OK}group {ID} created; invited {b.id}$").group(1))
    b.expect(rf"invites you to group {gid} \(its admin is {a.id}\)")
    b.send(f"/joingroup {gid}")
    a.expect(rf"client {b.id} joined group {gid}")
    c.send(f"/joingroup {gid}")
    a.expect(rf"client {c.id} asks to join group {gid}")
    a.send(f"/approve {gid} {c.id}")
    c.expect(rf"you joined group {gid}")
    c.send(f"/sendgroup {gid} hi from the client")
    for member in (a, b):
        member.expect(rf"^\[group {gid} from {c.id}\] hi from the client$")


def test_a_new_group_id_skips_every_id_an_online_client_or_a_group_holds():
    """Ids are random, so force the draws: taken ids come up first and are passed over."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tables = ServerIpc.create(port, max_clients=4, max_groups=4)
    try:
        directory = tables.directory
        admin, member = (directory.claim_slot("127.0.0.1", 40000 + n) for n in range(2))
        assert admin is not None and member is not None  # 4 slots, all free
        first = directory.create_group(admin.client_id, [member.client_id], invite_only=False).group

        class Draws(random.Random):
            """A Random whose ``randint`` (all the table uses) returns these values in turn."""

            def __init__(self, values: list[int]) -> None:
                super().__init__()
                self.values = values

            def randint(self, low: int, high: int) -> int:
                return self.values.pop(0)

        fresh = next(
            i for i in range(10000, 10010) if i not in (admin.client_id, member.client_id, first.group_id)
        )
        draws = Draws([admin.client_id, member.client_id, first.group_id, fresh])
        directory._rng = draws
        second = directory.create_group(admin.client_id, [member.client_id], invite_only=True).group
        assert second.group_id == fresh
        assert draws.values == []  # every taken id was drawn and refused
    finally:
        tables.close()
