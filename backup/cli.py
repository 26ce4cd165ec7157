"""``mail-backup``: export, ship, restore, verify, prune, check and schedule account backups.

Each subcommand lives in ``backup/commands/<name>.py`` as a click command; this module wires them into
one group and turns every operator mistake or failure into one clear line and the documented exit code:
0 success · 1 usage or config error · 2 cannot connect / authenticate · 3 unknown account or snapshot ·
4 partial failure · 5 verification mismatch · 7 local I/O error.
"""

from __future__ import annotations

import errno
import importlib
import logging
import sys
from typing import Any

import click

from mailsrv.clickgroup import UsageExit1Group
from mailsrv.config import Config, ConfigError, load_config

from .errors import EXIT_CONNECT, EXIT_IO, EXIT_UNKNOWN, EXIT_USAGE, BackupError

COMMANDS = ["export", "verify", "maildir", "ship", "snapshots", "prune", "check", "run", "restore", "schedule", "drill"]


class Ctx:
    """What every subcommand gets: the config path (loaded lazily) and the output mode."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._cfg: Config | None = None

    @property
    def cfg(self) -> Config:
        if self._cfg is None:
            self._cfg = load_config(self.config_path)
        return self._cfg


pass_ctx = click.make_pass_decorator(Ctx)


class Group(UsageExit1Group):
    """Loads a subcommand's module only when it runs (start-up stays cheap for cron and systemd) and maps
    exceptions to exit codes (never a traceback for a user mistake or an expected failure)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in self.commands:
            self.add_command(importlib.import_module(f"backup.commands.{cmd_name}").command, cmd_name)
        return self.commands[cmd_name]

    def invoke(self, ctx: click.Context) -> Any:
        from mailsrv.client.errors import AuthError, ConnectError, InsecureUrlError, UnknownAccount

        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            _die(str(exc), EXIT_USAGE)
        except BackupError as exc:
            _die(str(exc), exc.exit_code)
        except (ConnectError, AuthError) as exc:
            _die(str(exc), EXIT_CONNECT)
        except InsecureUrlError as exc:
            _die(str(exc), EXIT_USAGE)
        except UnknownAccount as exc:
            _die(str(exc), EXIT_UNKNOWN)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            _die(f"{where}{reason}", EXIT_IO)


def _die(message: str, code: int) -> None:
    click.echo(f"mail-backup: {message}", err=True)
    sys.exit(code)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="FILE",
              help="Config file [default: $MAILSIDECAR_CONFIG, else /etc/mailsidecar/config.toml]")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug)")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """Back up every mail account over JMAP, ship snapshots to restic/B2/S3, and restore them."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)], stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Ctx(config_path)



__all__ = ["EXIT_CONNECT", "EXIT_IO", "EXIT_UNKNOWN", "Ctx", "main", "pass_ctx"]
