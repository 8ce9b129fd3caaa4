"""What both ends agree on before the first byte: the default port, the id range, how an address is written.

Declared here once, because the server, the clients, the table layout and
the tools all need them, and ``protocol`` is the one package every other
package may import (it imports none of them).
"""

from __future__ import annotations

#: The TCP port the server listens on and the clients dial unless told otherwise.
DEFAULT_PORT = 5000

#: Client ids and group ids are drawn from this one range, so they never collide:
#: every id is exactly five digits.
ID_MIN = 10000
ID_MAX = 99999
#: A regular expression for one id as it appears in a line (not part of a longer
#: number, nor of a transfer id such as ``12345-1``).
ID_PATTERN = r"(?<![\d-])\d{5}(?![\d-])"


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:5000``) as URLs write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
