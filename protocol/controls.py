"""The characters a line may not hold: terminal controls and invisible format controls.

Chat text written by one person is shown on other people's terminals, and
``nc`` is an advertised client: it prints what arrives, byte for byte.  A
terminal acts on control characters (ESC starts sequences that clear the
screen, retitle the window or, with OSC 52, write the clipboard; ``\\r``
sends the cursor back so that a message paints over its own ``[msg from
...]`` tag), and the Unicode format characters (U+202E RIGHT-TO-LEFT
OVERRIDE and the other bidi controls, zero-width spaces) reorder or hide
what a reader sees.  So no line in either direction may hold one:

* every C0 control except TAB, DEL, and every C1 control (category Cc);
* every format character (category Cf) of the Basic Multilingual Plane
  except ZERO WIDTH NON-JOINER (U+200C) and ZERO WIDTH JOINER (U+200D),
  which only choose how the letters beside them are drawn: emoji sequences
  (👩‍💻) are joined with ZWJ, and Persian and several Indic scripts need
  ZWNJ to be spelt right;
* the tag characters U+E0000-E007F, invisible letters that can carry hidden
  text (the other 25 format characters beyond the BMP shape signs of
  historic scripts and music notation and are let through: with them the
  character class takes several times as long on every line);
* LINE SEPARATOR and PARAGRAPH SEPARATOR (U+2028, U+2029), which a
  reader that honours them shows as a line break: a forged line, like ``\\r``.

The line is refused, not rewritten: ``protocol.framing`` checks it where it
decodes the line's UTF-8, the one place every line a client sends becomes
text, so every command and every echo of it (a ``/sendfile`` name, an error
that quotes the input) is covered at once, and the sender is told which
character and where.  Nobody types these characters on purpose; showing them
as ``\\x1b`` instead would relay a message its sender did not mean.

The list is written out, not derived from ``unicodedata`` at import (a scan
of every code point costs 70 ms in each client's start);
``tests/test_controls.py`` checks it against the running Python's Unicode
database.  The search is one regular expression over a character class the
``re`` module looks up in a table (all of it in the BMP but one range):
linear, in C, a few nanoseconds a character.
"""

from __future__ import annotations

import re
import unicodedata

#: Characters of the refused categories that text may hold (see above).
ALLOWED = "\t\u200c\u200d"

_REFUSED = re.compile(
    "["
    "\x00-\x08\x0a-\x1f\x7f-\x9f"  # Cc: C0 except TAB, DEL, C1
    # Cf in the BMP (Unicode 14, Python 3.11), without U+200C and U+200D:
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
    "\ufeff\ufff9-\ufffb"
    "\u2028\u2029"  # Zl, Zp
    "\U000e0000-\U000e007f"  # the tag block
    "]"
)


def find_refused(text: str) -> str | None:
    """Why ``text`` cannot be sent as it is, or None when it can.

    The reason names the first refused character and its place (counted in
    characters from 1), for the person who typed it.
    """
    # Every refused character is one that ``str.isprintable`` calls unprintable
    # (categories Cc, Cf, Zl, Zp), so a line it accepts holds none.  That one C
    # pass settles nearly every line; the search below runs only to find the
    # character to name (or to let a TAB or a ZWJ through).
    if text.isprintable():
        return None
    found = _REFUSED.search(text)
    if found is None:
        return None
    ch = found.group()
    kind = {"Cc": "control", "Cf": "format"}.get(unicodedata.category(ch), "separator")
    name = unicodedata.name(ch, "")  # control characters have none
    shown = f"U+{ord(ch):04X} ({name})" if name else f"U+{ord(ch):04X}"
    return (
        f"the line holds the {kind} character {shown} at character {found.start() + 1}: "
        "control and format characters could take over or disguise a reader's terminal"
    )
