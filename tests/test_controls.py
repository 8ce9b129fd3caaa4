"""The text rule of protocol/controls.py: which characters a line may not hold."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from protocol.controls import ALLOWED, find_refused
from protocol.framing import BadLine, Line, LineFramer


def refused_by_category(ch: str) -> bool:
    """The rule as the module's docstring states it, from the Unicode database."""
    if ch in ALLOWED:
        return False
    if "\U000e0000" <= ch <= "\U000e007f" or ch in "\u2028\u2029":
        return True
    return unicodedata.category(ch) == "Cc" or (unicodedata.category(ch) == "Cf" and ch <= "\uffff")


@pytest.mark.skipif(
    unicodedata.unidata_version != "14.0.0",
    reason=f"the list is written for Unicode 14.0.0 (Python 3.11), not {unicodedata.unidata_version}",
)
def test_the_written_out_list_is_exactly_the_rule_for_every_code_point():
    mismatched = [
        f"U+{code:04X}"
        for code in range(sys.maxunicode + 1)
        if (find_refused(chr(code)) is not None) != refused_by_category(chr(code))
    ]
    assert not mismatched


@pytest.mark.parametrize(
    ("text", "code", "where"),
    [
        ("MARK1\x1b]52;c;cm0gLXJmIH4vKgo=\x07", "U+001B", 6),  # OSC 52: write the clipboard
        ("forged\r[server] client 1 left", "U+000D", 7),  # paint over the line's own tag
        ("nul\x00", "U+0000", 4),
        ("\x7fdel", "U+007F", 1),
        ("8-bit CSI \x9b2J", "U+009B", 11),
        ("\u202egnp.exe", "U+202E (RIGHT-TO-LEFT OVERRIDE)", 1),
        ("a\u2066isolate\u2069", "U+2066 (LEFT-TO-RIGHT ISOLATE)", 2),
        ("mark\u200f", "U+200F (RIGHT-TO-LEFT MARK)", 5),
        ("\u061c", "U+061C (ARABIC LETTER MARK)", 1),
        ("zero\u200bwidth", "U+200B (ZERO WIDTH SPACE)", 5),
        ("\ufeffbom", "U+FEFF (ZERO WIDTH NO-BREAK SPACE)", 1),
        ("line\u2028break", "U+2028 (LINE SEPARATOR)", 5),
    ],
)
def test_a_refusal_names_the_first_character_and_where_it_is(text, code, where):
    reason = find_refused(text)
    assert reason is not None
    assert f"character {code} at character {where}:" in reason


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii, with\ttabs",
        "snow ☃ and € and ünïcödé",
        "👩\u200d💻 and 👨\u200d👩\u200d👧",  # emoji sequences are joined with ZWJ
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian needs ZWNJ
        "עברית and \u0627\u0644\u0639\u0631\u0628\u064a\u0629",  # right-to-left scripts themselves are fine
        "❤\ufe0f",  # a variation selector is a mark (Mn), not a format character
        "",
    ],
)
def test_ordinary_text_of_every_script_passes(text):
    assert find_refused(text) is None


def test_the_framer_discards_a_line_holding_a_control_with_the_reason_and_goes_on():
    framer = LineFramer()
    framer.feed(b"/send 12345 hi\x1b[2J\n/send 12345 fine\r\n")
    first, second = framer.next_event(), framer.next_event()
    assert isinstance(first, BadLine)
    assert first.reason.startswith("the line holds the control character U+001B at character 15:")
    assert first.reason.endswith("; discarded")
    assert second == Line("/send 12345 fine")  # the trailing \r of a CRLF line is no control


def test_tag_characters_are_refused_but_format_signs_of_historic_scripts_pass():
    assert find_refused("flag \U0001f3f4\U000e0067\U000e0062\U000e007f") is not None  # hidden letters
    assert find_refused("\U00013430") is None  # EGYPTIAN HIEROGLYPH VERTICAL JOINER


def test_a_long_line_is_checked_in_linear_time():
    framer = LineFramer()
    framer.feed(("\t" * 65535 + "\x1b").encode() + b"\n")
    event = framer.next_event()
    assert isinstance(event, BadLine) and "at character 65536:" in event.reason
