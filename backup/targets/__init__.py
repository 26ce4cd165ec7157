"""Backup targets: base (the narrow interface) + restic, b2, s3."""
