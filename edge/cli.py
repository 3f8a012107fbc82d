"""``defect-edge``: the edge unit's command line. The engine and daemon arrive with their issues."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    print("defect-edge: not built yet (the edge engine and daemon are the next issues)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
