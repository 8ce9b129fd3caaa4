"""Making server text safe to show on a terminal.

Chat text comes from other people.  A message holding an escape sequence
could otherwise move the cursor, retitle the window or worse on the
receiver's terminal, so every control character is shown as a visible
escape (``\\x1b``) instead of being sent to the terminal.
"""

from __future__ import annotations

import unicodedata

from protocol.controls import ALLOWED


def printable(text: str) -> str:
    """``text`` with control and format characters shown as escapes (TAB, ZWJ and ZWNJ kept)."""
    out = []
    for ch in text:
        if ch in ALLOWED:  # as the protocol allows them: emoji sequences and some scripts need the joiners
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") or ch in "\u2028\u2029":
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
