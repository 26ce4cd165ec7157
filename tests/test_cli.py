"""``mailsrv account`` and ``mailsrv domain`` against a running server: what operators type, end to end."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import USER_PASSWORD, MailsrvProc


def _status(srv: MailsrvProc, user: str, password: str) -> int:
    return requests.get(f"{srv.url}/jmap/session", auth=(user, password), timeout=10).status_code


def _run(srv: MailsrvProc, *args: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The CLI with a clean environment (no inherited password) and ``stdin`` that is not a TTY."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILSRV_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "mailsrv", "--config", str(srv.config), *args],
                          input=stdin, capture_output=True, text=True, env=full, timeout=60)


def _one_clean_line(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _inbox_total(srv: MailsrvProc, user: str, password: str) -> int:
    aid = srv.session(user, password)["primaryAccounts"]["urn:ietf:params:jmap:mail"]
    r = requests.post(f"{srv.url}/jmap/", auth=(user, password), timeout=10, json={
        "using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
        "methodCalls": [["Mailbox/get", {"accountId": aid}, "0"]]})
    boxes = r.json()["methodResponses"][0][1]["list"]
    return int(next(b["totalEmails"] for b in boxes if b["role"] == "inbox"))


def test_account_add_list_passwd_delete(mailsrv: MailsrvProc, tmp_path: Path) -> None:
    pw_file = tmp_path / "carol.pw"
    pw_file.write_text("first-Secret-1\n")
    r = _run(mailsrv, "account", "add", "carol", "--password-file", str(pw_file),
             "--email", "carol@example.org", "--email", "c.alias@example.org", "--description", "Carol")
    assert r.returncode == 0, r.stderr
    assert "carol@example.org" in r.stdout and "first-Secret-1" not in r.stdout + r.stderr
    assert _status(mailsrv, "carol", "first-Secret-1") == 200  # trailing newline of the file is not part of it
    assert _status(mailsrv, "c.alias@example.org", "first-Secret-1") == 200

    listed = json.loads(_run(mailsrv, "account", "list", "--json").stdout)
    carol = next(a for a in listed if a["name"] == "carol")
    assert carol["emails"] == ["carol@example.org", "c.alias@example.org"]
    assert carol["accountId"] in mailsrv.session("carol", "first-Secret-1")["accounts"]
    assert {a["name"] for a in listed} == {"alice", "bob", "carol"}
    table = _run(mailsrv, "account", "list").stdout
    assert "carol" in table and "c.alias@example.org" in table

    # a new password via the environment; the old one stops working at once on the running server
    r = _run(mailsrv, "account", "passwd", "carol", env={"MAILSRV_ACCOUNT_PASSWORD": "second-Secret-2"})
    assert r.returncode == 0, r.stderr
    assert _status(mailsrv, "carol", "second-Secret-2") == 200
    assert _status(mailsrv, "carol", "first-Secret-1") == 401

    # delete asks first; "no" keeps the account
    r = _run(mailsrv, "account", "delete", "carol", stdin="n\n")
    assert r.returncode == 1 and _status(mailsrv, "carol", "second-Secret-2") == 200
    r = _run(mailsrv, "account", "delete", "carol", "--yes")
    assert r.returncode == 0, r.stderr
    assert _status(mailsrv, "carol", "second-Secret-2") == 401
    assert "carol" not in {a["name"] for a in json.loads(_run(mailsrv, "account", "list", "--json").stdout)}


def test_unknown_and_duplicate_accounts(mailsrv: MailsrvProc) -> None:
    env = {"MAILSRV_ACCOUNT_PASSWORD": "x-Secret-9"}
    for args in (["account", "passwd", "nobody"], ["account", "delete", "nobody", "--yes"],
                 ["domain", "add", "example.net", "--catch-all", "nobody"]):
        r = _run(mailsrv, *args, env=env)
        assert r.returncode == 3, (args, r.stderr)
        _one_clean_line(r, "unknown account", "nobody")
    r = _run(mailsrv, "account", "add", "alice", env=env)
    assert r.returncode == 1
    _one_clean_line(r, "alice")
    assert _status(mailsrv, "alice", USER_PASSWORD) == 200  # untouched


def test_passwords_never_on_the_command_line(mailsrv: MailsrvProc, tmp_path: Path) -> None:
    r = _run(mailsrv, "account", "add", "dave", "--password", "argv-Secret")
    assert r.returncode == 1 and "No such option" in r.stderr and "Traceback" not in r.stderr
    r = _run(mailsrv, "account", "add", "dave")  # neither file nor environment, stdin is no TTY: no prompt
    assert r.returncode == 1
    _one_clean_line(r, "--password-file", "MAILSRV_ACCOUNT_PASSWORD")
    missing = tmp_path / "no-such.pw"
    r = _run(mailsrv, "account", "add", "dave", "--password-file", str(missing))
    assert r.returncode == 1
    _one_clean_line(r, "--password-file", str(missing))
    empty = tmp_path / "empty.pw"
    empty.write_text("\n")
    r = _run(mailsrv, "account", "add", "dave", "--password-file", str(empty))
    assert r.returncode == 1
    _one_clean_line(r, str(empty), "empty")
    assert "dave" not in {a["name"] for a in json.loads(_run(mailsrv, "account", "list", "--json").stdout)}


def test_domain_add_list_and_catch_all(mailsrv: MailsrvProc) -> None:
    assert json.loads(_run(mailsrv, "domain", "list", "--json").stdout) == ["example.org"]
    r = _run(mailsrv, "domain", "add", "Example.NET")
    assert r.returncode == 0 and "added domain example.net" in r.stdout
    assert json.loads(_run(mailsrv, "domain", "list", "--json").stdout) == ["example.net", "example.org"]
    assert _run(mailsrv, "domain", "list").stdout.split() == ["example.net", "example.org"]

    # without a catch-all, unknown addresses of the new domain are refused; with one they reach alice
    with smtplib.SMTP("127.0.0.1", mailsrv.smtp_port, timeout=10) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("ext@example.com", ["whoever@example.net"], b"Subject: before\r\n\r\nhi\r\n")
    r = _run(mailsrv, "domain", "add", "example.net", "--catch-all", "alice")
    assert r.returncode == 0 and "updated domain example.net" in r.stdout
    before = _inbox_total(mailsrv, "alice", USER_PASSWORD)
    with smtplib.SMTP("127.0.0.1", mailsrv.smtp_port, timeout=10) as s:
        s.sendmail("ext@example.com", ["whoever@example.net"], b"Subject: after\r\nMessage-ID: <c1@example.com>\r\n\r\nhi\r\n")
    assert _inbox_total(mailsrv, "alice", USER_PASSWORD) == before + 1

    r = _run(mailsrv, "domain", "add", "not a domain")
    assert r.returncode == 1
    _one_clean_line(r, "not a domain")


@pytest.mark.parametrize("args", [[], ["serve"], ["account"], ["account", "add"], ["account", "list"], ["account", "passwd"],
                                  ["account", "delete"], ["domain"], ["domain", "add"], ["domain", "list"], ["seed"]])
def test_help_on_every_subcommand(args: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "mailsrv", *args, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Usage:" in r.stdout, r.stderr


@pytest.mark.parametrize("program", ["mailsrv.cli", "exporters.cli", "backup.cli"])
@pytest.mark.parametrize("args", [["nosuch"], ["--bogus"], ["--config"]])
def test_usage_mistakes_exit_1_in_every_program(program: str, args: list[str]) -> None:
    """Exit 1 is "usage or config error" in all three programs; click's own 2 would read as "cannot connect"."""
    code = f"import sys; from {program} import main; sys.exit(main())"
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Error:" in r.stderr and "Traceback" not in r.stderr, (r.returncode, r.stderr)


def test_mail_backup_loads_only_the_subcommand_it_runs() -> None:
    """`mail-backup verify` never imports the restore, ship or schedule code (cheap start-up for cron and timers)."""
    code = ("import sys; from click.testing import CliRunner; from backup.cli import main; "
            "r = CliRunner().invoke(main, ['verify', '--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m.startswith('backup.commands.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['backup.commands.verify']", r.stdout
