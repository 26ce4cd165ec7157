"""``mail-exporter``: serve /metrics for the mail server, its queue, backups, certificates and an optional probe.

Exit codes (as for every mailsidecar program): 0 success · 1 usage or config error · 2 cannot connect /
authenticate (``check``) · 7 local I/O error (cannot listen, state dir unreadable).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from typing import Any

import click

from mailsrv.clickgroup import UsageExit1Group, error_handler, failer
from mailsrv.config import Config, load_config

from .dashboards_render import dashboards

EXIT_OK, EXIT_USAGE, EXIT_CONNECT, EXIT_IO = 0, 1, 2, 7
log = logging.getLogger("mail_exporter")


fail = failer("mail-exporter")
handle_errors = error_handler(fail)




def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


@click.group(cls=UsageExit1Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config", "config_path", metavar="FILE", help="Config file [default: $MAILSIDECAR_CONFIG, else /etc/mailsidecar/config.toml]"
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Prometheus exporter for the mail server, its queue, backups, TLS certificates and delivery probe."""
    ctx.obj = config_path


def _config(ctx: click.Context) -> Config:
    return load_config(ctx.obj)


@main.command()
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]), show_default=True)
@click.pass_context
@handle_errors
def serve(ctx: click.Context, log_level: str) -> None:
    """Poll every source in the background and serve /metrics until SIGTERM or SIGINT."""
    _setup_logging(log_level)
    from .app import Exporter

    cfg = _config(ctx)
    exporter = Exporter(cfg)
    try:
        http = exporter.serve()
    except OSError as exc:
        fail(f"cannot listen on {cfg.exporter.listen} (exporter.listen): {exc.strerror or exc}", EXIT_IO)
    exporter.start()
    scheme = "https" if exporter.tls else "http"
    host, port = http.server_address[:2]
    log.info("serving %s://%s:%s/metrics; sources: %s", scheme, host, port,
             ", ".join(p.source.name for p in exporter.polled) or "none")
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(3600):
        pass
    exporter.stop()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per source")
@click.option("--log-level", default="warning", type=click.Choice(["debug", "info", "warning", "error"]), show_default=True)
@click.pass_context
@handle_errors
def check(ctx: click.Context, as_json: bool, log_level: str) -> None:
    """Poll every enabled source once and report; exit 2 if one cannot connect or authenticate, 7 on local I/O errors."""
    _setup_logging(log_level)
    from .app import Exporter

    exporter = Exporter(_config(ctx))
    stuck = exporter.poll_all_once()
    rows: list[dict[str, Any]] = []
    for p in exporter.polled:
        h = p.health
        error, kind = h.last_error, h.last_error_kind
        if p.source.name in stuck:
            error, kind = f"no answer within the {p.source.timeout:g}s timeout", "timeout"
        rows.append({"source": p.source.name, "ok": h.up and not h.degraded and not error, "error": error or None, "kind": kind or None,
                     "problems": h.problems, "duration_seconds": round(h.last_duration, 3)})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            state = "ok  " if r["ok"] else "FAIL"
            click.echo(f"{state} {r['source']:<11} {r['duration_seconds']:>7.2f}s  {r['error'] or ''}".rstrip())
            for problem in r["problems"]:
                click.echo(f"     {'':<11}          {problem}")
    failed = [r for r in rows if not r["ok"]]
    if any(r["kind"] != "local" for r in failed):
        sys.exit(EXIT_CONNECT)
    if failed:
        sys.exit(EXIT_IO)
    sys.exit(EXIT_OK)


main.add_command(dashboards)  # `mail-exporter dashboards render`
