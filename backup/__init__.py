"""mail-backup: export, ship, restore, verify, prune, check and schedule account backups."""
