"""One colour per client id, the same everywhere.

The interactive client draws each sender in the colour of its id, and the
inspector (``python -m shm inspect``) draws ids in the same colours, so that
on a projected screen 12345 is orange in every pane.  The colour depends on
the id alone, never on the order in which a terminal saw the ids.
"""

from __future__ import annotations

import re

#: Sender colours.  All of them sit on the xterm 256-colour cube (so a
#: 256-colour terminal shows exactly these), are readable on dark and light
#: backgrounds, and none is the red reserved for errors.
PALETTE: tuple[str, ...] = (
    "#ff8700",  # orange
    "#00af5f",  # green
    "#5f87ff",  # blue
    "#d75fd7",  # orchid
    "#00afaf",  # teal
    "#d7af00",  # gold
    "#ff5f87",  # pink
    "#875fff",  # violet
    "#5faf00",  # lime
    "#00afff",  # sky
    "#d7875f",  # tan
    "#af5faf",  # plum
    "#5fafaf",  # slate
    "#87af5f",  # olive
)

ID_PATTERN = re.compile(r"(?<![\d-])\d{5}(?![\d-])")


def id_colour(client_id: int) -> str:
    """The colour of an id: the same in every terminal, from the id alone."""
    # Knuth's multiplicative hash spreads neighbouring ids over the palette.
    return PALETTE[((client_id * 2654435761) & 0xFFFFFFFF) % len(PALETTE)]


def xterm_index(colour: str) -> int:
    """The xterm 256-colour index of a palette colour (for plain ANSI output)."""
    levels = (0x00, 0x5F, 0x87, 0xAF, 0xD7, 0xFF)
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))

    def nearest_level(value: int) -> int:
        return min(range(6), key=lambda n: abs(levels[n] - value))

    nearest = [nearest_level(v) for v in (r, g, b)]
    return 16 + 36 * nearest[0] + 6 * nearest[1] + nearest[2]
