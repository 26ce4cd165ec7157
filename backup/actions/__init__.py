"""What mail-backup does: export, ship, restore, verify, prune, check, drill — one module each."""
