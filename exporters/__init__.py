"""mail-exporter: one /metrics for mail operations and backups."""
