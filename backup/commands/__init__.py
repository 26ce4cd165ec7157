"""One module per mail-backup subcommand, each exposing a click ``command``."""
