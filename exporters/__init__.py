"""mail-exporter: one /metrics for mail operations and backups."""

from mailsrv import __version__

__all__ = ["__version__"]
