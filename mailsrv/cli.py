"""``mailsrv``: serve the embedded mail server and manage its accounts and domains.

Exit codes (as for every mailsidecar program): 0 success · 1 usage or config error · 3 unknown account ·
7 local I/O error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

import click

from .clickgroup import UsageExit1Group, error_handler, failer
from .config import Config, ConfigError, load_config, read_secret

EXIT_OK, EXIT_USAGE, EXIT_UNKNOWN, EXIT_IO = 0, 1, 3, 7


fail = failer("mailsrv")
handle_errors = error_handler(fail)


class Ctx:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._cfg: Config | None = None

    @property
    def cfg(self) -> Config:
        if self._cfg is None:
            self._cfg = load_config(self.config_path)
        return self._cfg

    def store(self) -> Any:
        from .server.store import Store

        cfg = self.cfg.mailsrv
        store = Store(cfg.data_dir, changes_max_history=cfg.jmap.changes_max_history)
        for domain in cfg.domains:
            store.principals.add_domain(domain)
        return store


pass_ctx = click.make_pass_decorator(Ctx)




@click.group(cls=UsageExit1Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config", "config_path", metavar="FILE", help="Config file [default: $MAILSIDECAR_CONFIG, else /etc/mailsidecar/config.toml]"
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """The embedded mail server of mailsidecar: SMTP, JMAP, Stalwart's management API and metrics."""
    ctx.obj = Ctx(config_path)


@main.command()
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]), show_default=True)
@pass_ctx
@handle_errors
def serve(ctx: Ctx, log_level: str) -> None:
    """Run the server until SIGTERM or SIGINT."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter
    from .server.app import MailServer

    async def run() -> None:
        server = MailServer(ctx.cfg.mailsrv)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(run())


def _password(password_file: str | None, prompt: bool) -> str:
    if password_file:
        secret = read_secret(password_file, "MAILSRV_ACCOUNT_PASSWORD", "--password-file")
        assert secret is not None
        return secret
    env = os.environ.get("MAILSRV_ACCOUNT_PASSWORD")
    if env:
        return env
    if prompt and sys.stdin.isatty():
        return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
    raise ConfigError("no password given: use --password-file FILE or $MAILSRV_ACCOUNT_PASSWORD (never the command line)")


@main.group()
def account() -> None:
    """Create, list, change and delete accounts."""


@account.command("add")
@click.argument("name")
@click.option("--password-file", metavar="FILE", help="File holding the password (or $MAILSRV_ACCOUNT_PASSWORD)")
@click.option("--email", "emails", multiple=True, metavar="ADDRESS", help="Address (repeat for aliases); default NAME@first-domain")
@click.option("--description", default="")
@click.option("--admin", is_flag=True, help="Give the account the admin role (management API, impersonation)")
@pass_ctx
@handle_errors
def account_add(ctx: Ctx, name: str, password_file: str | None, emails: tuple[str, ...], description: str, admin: bool) -> None:
    """Create account NAME."""
    from .server.store.principals import PrincipalError

    password = _password(password_file, prompt=True)
    store = ctx.store()
    try:
        pid = store.principals.create(
            name, password=password, emails=list(emails) or None, description=description, roles=["admin"] if admin else ["user"]
        )
    except PrincipalError as exc:
        fail(str(exc), EXIT_USAGE)
    store.mail.ensure_default_mailboxes(pid)
    p = store.principals.get(pid)
    click.echo(f"created account {name} ({', '.join(p.emails) if p and p.emails else 'no address'})")


@account.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array")
@pass_ctx
@handle_errors
def account_list(ctx: Ctx, as_json: bool) -> None:
    """List accounts."""
    from .server.store.ids import jmap_id

    rows = [
        {"name": p.name, "id": p.id, "accountId": jmap_id(p.id), "emails": p.emails, "roles": p.roles, "usedQuota": p.used_quota}
        for p in ctx.store().principals.search({"individual"})
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['name']:<30} {r['accountId']:<8} {','.join(r['emails']):<40} {r['usedQuota']:>12} bytes")


@account.command("passwd")
@click.argument("name")
@click.option("--password-file", metavar="FILE", help="File holding the new password (or $MAILSRV_ACCOUNT_PASSWORD)")
@pass_ctx
@handle_errors
def account_passwd(ctx: Ctx, name: str, password_file: str | None) -> None:
    """Set the password of account NAME."""
    store = ctx.store()
    p = store.principals.by_name(name)
    if p is None:
        fail(f"unknown account: {name}", EXIT_UNKNOWN)
        return
    store.principals.set_password(p.id, _password(password_file, prompt=True))
    click.echo(f"password changed for {name}")


@account.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation")
@pass_ctx
@handle_errors
def account_delete(ctx: Ctx, name: str, yes: bool) -> None:
    """Delete account NAME and all its mail."""
    store = ctx.store()
    p = store.principals.by_name(name)
    if p is None:
        fail(f"unknown account: {name}", EXIT_UNKNOWN)
        return
    if not yes and not click.confirm(f"Delete {name} and all its mail?", default=False):
        fail("not deleted", EXIT_USAGE)
    store.principals.delete(p.id)
    click.echo(f"deleted account {name}")


@main.group()
def domain() -> None:
    """Hosted domains."""


@domain.command("add")
@click.argument("name")
@click.option("--catch-all", metavar="ACCOUNT", help="Account that receives mail for unknown addresses of the domain")
@pass_ctx
@handle_errors
def domain_add(ctx: Ctx, name: str, catch_all: str | None) -> None:
    """Host mail for domain NAME."""
    from .server.store.principals import PrincipalError

    store = ctx.store()
    target = None
    if catch_all:
        p = store.principals.by_name(catch_all)
        if p is None:
            fail(f"unknown account: {catch_all}", EXIT_UNKNOWN)
            return
        target = p.id
    try:
        added = store.principals.add_domain(name, target)
    except PrincipalError as exc:
        fail(str(exc), EXIT_USAGE)
    click.echo(f"{'added' if added else 'updated'} domain {name.lower()}")


@domain.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array")
@pass_ctx
@handle_errors
def domain_list(ctx: Ctx, as_json: bool) -> None:
    """List hosted domains."""
    names = ctx.store().principals.domains()
    click.echo(json.dumps(names) if as_json else "\n".join(names))


def _register_optional_commands() -> None:
    from .seed import seed_command

    main.add_command(seed_command)


_register_optional_commands()

if __name__ == "__main__":
    main()
