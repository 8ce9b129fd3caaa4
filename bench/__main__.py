"""``python -m bench``: the chat benchmark against ngIRCd (``bench.chat``).

Options are those of ``python -m bench.chat``; ``--quick`` makes a short run.
"""

from __future__ import annotations

import sys

from bench.chat import main

if __name__ == "__main__":
    sys.exit(main())
