"""Small lines that read wrong once, each checked where a person reads it.

The client's own errors name a path once; ``/send`` with nothing after it
says that both the id and the message are missing; docs/protocol.md's
"Connecting" has no paragraph left hanging; the README says where ``nc``
comes from and what the client's exit status means (tests/test_interactive.py
checks the statuses themselves); docs/demo.md opens with the instructor's
one-page handout.
"""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

from protocol.commands import CommandError, parse

README = (ROOT / "README.md").read_text()
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


def test_send_with_nothing_says_both_the_id_and_the_message_are_missing() -> None:
    with pytest.raises(CommandError) as raised:
        parse("/send")
    assert str(raised.value) == "/send: an id and a message are missing; usage: /send <client id> <message>"
    with pytest.raises(CommandError, match=r"^/send: a message is missing; "):
        parse("/send 12345")


def test_sendfile_of_a_missing_file_names_the_path_once(line_client, tmp_path) -> None:
    client = line_client()
    missing = tmp_path / "nonexistent.bin"
    client.send(f"/sendfile 12345 {missing}")
    line = client.expect(r"^\[error\] /sendfile").string
    assert line == f"[error] /sendfile: cannot read {missing}: no such file; nothing was sent"


def section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_protocol_connecting_has_no_paragraph_left_hanging() -> None:
    paragraphs = [p for p in section(PROTOCOL, "Connecting").split("\n\n") if p.strip()]
    # Every paragraph of prose starts a sentence (a code block starts with ```, a list or a parenthesis).
    hanging = [p for p in paragraphs if not re.match(r"[A-Z(`*|-]", p.strip())]
    assert hanging == []
    assert "Connection Limit Exceeded !!" in section(PROTOCOL, "Connecting")


def test_readme_says_which_debian_package_gives_nc() -> None:
    assert "nc 127.0.0.1 5000" in README
    assert "apt-get install netcat-openbsd" in README


def test_readme_gives_the_client_exit_statuses_the_code_returns() -> None:
    client = section(README, "The client")
    said = " ".join(client.split())
    assert "If the server goes away the client says so and exits with status 1." in said
    assert "The exit status is 0 when you leave (`/quit`, Ctrl-D, Ctrl-C), 1 when the server" in said
    assert "(stopped with Ctrl-C, or lost" in said and "2 when the server is full" in said


def test_demo_md_opens_with_a_one_page_handout() -> None:
    """What to start, what to type, what to point at, which lesson shows what: before any capture."""
    from lessons.__main__ import LESSONS

    demo = (ROOT / "docs" / "demo.md").read_text()
    handout, _rule, captures = demo.partition("\n---\n")
    assert captures, "docs/demo.md: the handout ends with a --- rule, the captures follow it"
    assert len(handout.splitlines()) <= 60
    for needed in (
        "160 columns \u00d7 45 lines",
        "./dev demo",
        "./dev demo-stop",
        "| point at |",
        "Ctrl-b z",
    ):
        assert needed in handout, needed
    for name in LESSONS:
        assert f"`./dev lesson {name}`" in handout, name
        assert f"\n### `{name}`: " in captures, name
    assert not re.search(r"\bpython3? -m ", demo)
