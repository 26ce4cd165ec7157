"""``mail-exporter`` command line (not yet implemented)."""

from __future__ import annotations

import sys


def main() -> None:
    print("mail-exporter: not yet implemented", file=sys.stderr)
    sys.exit(1)
