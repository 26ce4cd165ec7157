"""``python -m exporters`` = ``mail-exporter``."""

from .cli import main

main()
