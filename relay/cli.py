"""``defect-relay``: alerts to e-mail beside the central broker. Not built yet; see the relay issue."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    print("defect-relay: not built yet (the relay is a later issue)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
