"""Lines of styled cells, aligned into tables and cut to the terminal.

The views (``inspector.views``) build a ``Screen`` out of *cells*: pairs of
a style name and a piece of text.  Keeping the text and its style apart is
what lets one screen come out two ways: plain, for ``--color never``, pipes
and the tests, and with ANSI colours for a terminal.  A line is cut at the
terminal's width, never wrapped, so a table row stays one row; and with
``--watch`` the screen is cut to the terminal's height with a last line that
says so, instead of scrolling.

Why not ``rich``: its ``Table`` has no cell that spans columns, which the
pending records under each mailbox row need, and it pads every line with
trailing blanks; see docs/design.md, "The inspector".
"""

from __future__ import annotations

from collections.abc import Collection

from palette import id_colour, xterm_index

#: The SGR parameters of each style name ("id:N" styles are computed).
SGR = {
    "title": "1;7",
    "head": "1;4",
    "label": "1",
    "dim": "2",
    "good": "32",
    "warn": "1;33",
    "bad": "1;31",
    "note": "36",
}

Cell = tuple[str, str]  # (style name or "id:12345", text)


def id_cell(value: int, suffix: str = "") -> Cell:
    """A client or group id, drawn in the colour of that id everywhere."""
    return (f"id:{value}", f"{value}{suffix}")


def ids_cells(values: list[int], sep: str = ", ") -> list[Cell]:
    """A list of ids, each in its colour; a dim dash when there are none."""
    cells: list[Cell] = []
    for index, value in enumerate(values):
        if index:
            cells.append(("", sep))
        cells.append(id_cell(value))
    return cells or [("dim", "-")]


class Screen:
    """Lines of styled cells, rendered with or without colour, cut to a width."""

    def __init__(self, color: bool, width: int) -> None:
        self.color = color
        self.width = width
        self.lines: list[list[Cell]] = []

    def add(self, *cells: Cell | list[Cell]) -> None:
        """One line made of cells and lists of cells, in order."""
        line: list[Cell] = []
        for cell in cells:
            line.extend(cell if isinstance(cell, list) else [cell])
        self.lines.append(line)

    def blank(self) -> None:
        self.lines.append([])

    def table(
        self,
        headers: list[str],
        rows: list[list[list[Cell]]],
        right: Collection[int] = (),
        under: dict[int, list[list[Cell]]] | None = None,
    ) -> None:
        """Rows of cells in aligned columns (``right``: right-aligned column numbers).

        ``under[i]`` are whole lines put beneath row ``i``, outside the
        columns, so they do not widen them (the records waiting in a mailbox).
        """
        under = under or {}
        widths = [len(h) for h in headers]
        for row in rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], sum(len(t) for _, t in cell))
        head: list[Cell] = []
        for i, h in enumerate(headers):
            head.append(("head", h.rjust(widths[i]) if i in right else h.ljust(widths[i])))
            head.append(("", "  "))
        self.lines.append([("", " "), *head[:-1]])
        for index, row in enumerate(rows):
            line: list[Cell] = [("", " ")]
            for i, cell in enumerate(row):
                pad = widths[i] - sum(len(t) for _, t in cell)
                if i in right:
                    line.append(("", " " * pad))
                    line.extend(cell)
                else:
                    line.extend(cell)
                    if i < len(row) - 1:
                        line.append(("", " " * pad))
                if i < len(row) - 1:
                    line.append(("", "  "))
            self.lines.append(line)
            self.lines.extend(under.get(index, []))

    def _code(self, style: str) -> str:
        if style.startswith("id:"):
            return f"1;38;5;{xterm_index(id_colour(int(style[3:])))}"
        return SGR.get(style, "")

    def render(self, height: int | None = None) -> list[str]:
        """The lines as text, each cut to the width; at most ``height`` lines if given."""
        out = []
        lines = self.lines
        if height is not None and len(lines) > height:
            hidden = len(lines) - height + 1
            lines = [*lines[: height - 1], [("warn", f" ... {hidden} more line(s): enlarge the window")]]
        for line in lines:
            text = []
            room = self.width
            for style, chunk in line:
                if room <= 0:
                    break
                chunk = chunk[:room]
                room -= len(chunk)
                code = self._code(style) if self.color else ""
                text.append(f"\x1b[{code}m{chunk}\x1b[0m" if code else chunk)
            out.append("".join(text).rstrip() if not self.color else "".join(text))
        return out
