"""``mail-backup drill`` against mailsrv and real restic repositories: a sample restores and matches; a damaged
snapshot (a blob altered before shipping, or a flipped byte in a pack file) is exit 5 naming target, account
and message; the result lands in the state dir and mail-exporter turns it into metrics.

The helpers at the top are shared with test_schedule.py and test_hooks.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backup.exportdir.account import AccountReader
from backup.state import StateDir
from tests.conftest import MailsrvProc, start_mailsrv
from tests.test_export import to_toml

RESTIC_PASSWORD = "drill-repo-pw"
pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (Debian: apt-get install restic)")


# -- helpers shared by the schedule, hooks and drill tests ------------------------------------------------------
@dataclass
class Setup:
    """A mailsrv, a mail-backup config with one local restic target, and where things live."""

    srv: MailsrvProc
    base: Path
    config: Path
    sections: dict[str, Any]

    @property
    def state(self) -> StateDir:
        return StateDir(self.sections["state"]["dir"])

    @property
    def export_dir(self) -> Path:
        return Path(self.sections["export"]["dir"])

    def repo(self, target: str = "local") -> Path:
        return self.base / f"repo-{target}"

    def rewrite(self, **schedule: Any) -> None:
        """Change ``[schedule]`` keys (``hooks`` included) and write the config again."""
        self.sections["schedule"] = {**self.sections.get("schedule", {}), **schedule}
        self.config.write_text(to_toml(self.sections))


def make_setup(base: Path, srv: MailsrvProc, *, targets: tuple[str, ...] = ("local",), schedule: dict[str, Any] | None = None,
               export: dict[str, Any] | None = None) -> Setup:
    base.mkdir(parents=True, exist_ok=True)
    pw = base / "restic.pw"
    pw.write_text(RESTIC_PASSWORD + "\n")
    scratch = base / "drill-scratch"
    scratch.mkdir(exist_ok=True)
    schedule = {"drill_dir": str(scratch), **(schedule or {})}
    sections: dict[str, Any] = {
        "server": {"profile": "embedded", "url": srv.url, "admin_user": "admin", "admin_password_file": str(srv.dir / "admin.pw"),
                   "master_user": "master", "master_password_file": str(srv.dir / "master.pw")},
        "export": {"dir": str(base / "export"), **(export or {})},
        "state": {"dir": str(base / "state")},
        "schedule": schedule,
        "targets": [{"name": t, "type": "restic", "repository": str(base / f"repo-{t}"), "password_file": str(pw), "init": True,
                     "cache_dir": str(base / "restic-cache")} for t in targets],
    }
    config = base / "config.toml"
    config.write_text(to_toml(sections))
    return Setup(srv, base, config, sections)


def mail_backup(config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``mail-backup`` as operators and systemd run it (a separate process, no terminal)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIDECAR_")} | (env or {})
    code = "import sys; from backup.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, "--config", str(config), *args], capture_output=True, text=True,
                          env=full, timeout=timeout)


def one_line(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert r.returncode == code, (r.returncode, r.stdout[-3000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, (n, last)
    return last


def last_json(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert lines, (r.returncode, r.stdout, r.stderr)
    return dict(json.loads(lines[-1]))


def restic_env(setup: Setup, target: str = "local") -> dict[str, str]:
    return {**os.environ, "RESTIC_REPOSITORY": str(setup.repo(target)), "RESTIC_PASSWORD_FILE": str(setup.base / "restic.pw"),
            "RESTIC_CACHE_DIR": str(setup.base / "restic-cache")}


# -- the drill ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """alice, bob and carol with seeded mail, exported and shipped to two restic repositories."""
    base = tmp_path_factory.mktemp("drill")
    srv = start_mailsrv(base / "srv")
    try:
        for name in ("alice", "bob", "carol"):
            srv.add_account(name)
        srv.cli("seed", "--account", "alice", "--account", "bob", "--account", "carol", "--count", "25", "--random-seed", "7")
        setup = make_setup(base / "backup", srv, targets=("local", "second"))
        r = mail_backup(setup.config, "run")
        assert r.returncode == 0, r.stderr
        yield setup
    finally:
        srv.stop()


def test_drill_restores_a_sample_and_records_the_result(shipped: Setup) -> None:
    r = mail_backup(shipped.config, "drill", "--accounts", "2", "--messages", "5", "--json")
    assert r.returncode == 0, r.stderr
    summary = last_json(r)
    assert summary["event"] == "drill.summary" and summary["exit_code"] == 0
    by_target = {t["target"]: t for t in summary["targets"]}
    assert set(by_target) == {"local", "second"}
    for t in by_target.values():
        assert t["status"] == "success" and not t["mismatches"], t
        assert len(t["accounts"]) == 2 and set(t["accounts"]) <= {"alice", "bob", "carol"}
        assert t["messages"] == 10  # 5 per account
        assert t["files"] >= 2 * 2  # at least emails + mailboxes per account, each compared with the manifest
    result = shipped.state.read("drill", "local")
    assert result is not None and result.status == "success" and result.messages == 10 and result.errors == 0
    extra = result.model_extra or {}
    assert extra["snapshot"] == by_target["local"]["snapshot"] and extra["accounts"] == by_target["local"]["accounts"]
    assert list(Path(shipped.sections["schedule"]["drill_dir"]).iterdir()) == []  # the scratch copy is gone


def test_drill_scratch_dir_must_be_writable(shipped: Setup, tmp_path: Path) -> None:
    sections = {**shipped.sections, "schedule": {"drill_dir": "/dev/null/scratch"}, "state": {"dir": str(tmp_path / "state")}}
    config = tmp_path / "config.toml"
    config.write_text(to_toml(sections))
    r = mail_backup(config, "drill", "--target", "local", "--messages", "0")
    one_line(r, 7, "target local", "schedule.drill_dir: cannot create a scratch directory")


def test_drill_names_target_account_and_message_of_an_altered_blob(shipped: Setup, tmp_path: Path) -> None:
    """A blob changed in the export after its manifest was written is shipped as is: the drill catches it (exit 5)."""
    setup = make_setup(tmp_path / "altered", shipped.srv)
    r = mail_backup(setup.config, "export", "--account", "bob")
    assert r.returncode == 0, r.stderr
    reader = AccountReader(setup.export_dir / "bob")
    victim = next(iter(reader.emails()))
    blob = reader.blob_path(victim.sha256)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    r = mail_backup(setup.config, "ship")
    assert r.returncode == 0, r.stderr
    r = mail_backup(setup.config, "drill", "--account", "bob", "--messages", "1000")
    last = one_line(r, 5, "target local", "'bob'", f"message {victim.id}", "sha256")
    assert "mismatch" in r.stdout and victim.id in r.stdout
    result = setup.state.read("drill", "local")
    assert result is not None and result.status == "failed" and result.errors == 1, result
    mism = (result.model_extra or {})["mismatches"]
    assert mism == [{"target": "local", "account": "bob", "item": mism[0]["item"], "problem": mism[0]["problem"]}]
    assert victim.id in mism[0]["item"] and "sha256" in mism[0]["problem"]
    assert last.startswith("mail-backup:")


def test_drill_detects_a_flipped_byte_in_a_pack_file(shipped: Setup, tmp_path: Path) -> None:
    """Bit rot in the repository itself: the damaged message cannot be restored, and the drill says which one."""
    srv = shipped.srv
    srv.add_account("dave")
    big = b"From: a@example.net\r\nTo: dave@example.org\r\nSubject: large\r\nMessage-ID: <large-1@example.net>\r\n\r\n" + \
        os.urandom(600_000).hex().encode()
    _import(srv, "dave", big)
    setup = make_setup(tmp_path / "rot", srv)
    r = mail_backup(setup.config, "export", "--account", "dave")
    assert r.returncode == 0, r.stderr
    r = mail_backup(setup.config, "ship")
    assert r.returncode == 0, r.stderr
    packs = sorted((setup.repo() / "data").glob("*/*"), key=lambda p: p.stat().st_size)
    pack = packs[-1]  # the large message's pack: everything else is tiny
    assert pack.stat().st_size > 300_000
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.chmod(0o600)
    pack.write_bytes(bytes(data))
    r = mail_backup(setup.config, "drill", "--account", "dave", "--messages", "1000", "--json")
    one_line(r, 5, "target local", "'dave'", "<large-1@example.net>", "cannot be restored")
    summary = last_json(r)
    (t,) = summary["targets"]
    assert t["status"] == "failed" and len(t["mismatches"]) == 1 and "large-1@example.net" in t["mismatches"][0]["item"]


def test_drill_without_targets_or_snapshots(shipped: Setup, tmp_path: Path) -> None:
    setup = make_setup(tmp_path / "none", shipped.srv, targets=())
    r = mail_backup(setup.config, "drill")
    one_line(r, 1, "no [[targets]] configured", str(setup.config))
    empty = make_setup(tmp_path / "empty", shipped.srv)
    subprocess.run(["restic", "init"], env=restic_env(empty), check=True, capture_output=True)
    r = mail_backup(empty.config, "drill")
    one_line(r, 3, "target local", "no snapshot")
    res = empty.state.read("drill", "local")
    assert res is not None and res.status == "failed" and "no snapshot" in res.detail
    r = mail_backup(shipped.config, "drill", "--target", "nope")
    one_line(r, 1, "nope")
    r = mail_backup(shipped.config, "drill", "--target", "local", "--account", "zed")
    one_line(r, 3, "zed")


def test_mail_exporter_exposes_a_failed_drill(shipped: Setup, tmp_path: Path) -> None:
    from exporters.collectors.backups import BackupsSource

    setup = make_setup(tmp_path / "exp", shipped.srv)
    state = setup.state
    subprocess.run(["restic", "init"], env=restic_env(setup), check=True, capture_output=True)
    r = mail_backup(setup.config, "drill")  # no snapshot yet: failed
    assert r.returncode == 3, r.stderr
    poll = BackupsSource(state.root, interval=30, timeout=10).poll()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in poll.families for s in fam.samples}
    key = ("mail_backup_last_status", (("job", "drill"), ("status", "failed"), ("subject", "local")))
    assert samples[key] == 1.0


def _import(srv: MailsrvProc, user: str, raw: bytes) -> None:
    import requests

    session = srv.session(user)
    aid = session["primaryAccounts"]["urn:ietf:params:jmap:mail"]
    up = requests.post(f"{srv.url}/jmap/upload/{aid}/", data=raw, auth=(user, srv.accounts[user]), timeout=30,
                       headers={"Content-Type": "message/rfc822"})
    up.raise_for_status()
    resp = srv.jmap(user, [["Mailbox/get", {"accountId": aid}, "m"]])
    inbox = next(m["id"] for m in resp[0][1]["list"] if m["role"] == "inbox")
    resp = srv.jmap(user, [["Email/import", {"accountId": aid, "emails": {"e": {"blobId": up.json()["blobId"], "mailboxIds": {inbox: True},
                                                                                 "keywords": {}}}}, "i"]])
    assert "e" in resp[0][1].get("created", {}), resp
