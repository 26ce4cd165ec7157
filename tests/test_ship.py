"""``mail-backup ship | snapshots | prune | check | run`` end to end: real restic, SeaweedFS S3 (also behind a
fault-injecting proxy), b2sdk's simulator, and for ``run`` a real mailsrv exported by ``run_export``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner

from backup.cli import main
from backup.state import StateDir
from backup.targets.base import Target
from backup.targets.registry import open_target
from mailsrv.config import load_config
from tests.conftest import free_port, start_mailsrv
from tests.test_export import mail_backup, to_toml
from tests.test_target_contract import PASSWORD, Kind, make_export, message, read_tree, sample_accounts

if TYPE_CHECKING:
    from tests.seaweed import Seaweed

pytest_plugins = ("tests.seaweed",)


class Site:
    """An export, a state dir and a config with any mix of targets; the CLI runs in-process (B2 is simulated)."""

    def __init__(self, base: Path, seaweed: Seaweed | None, monkeypatch: pytest.MonkeyPatch) -> None:
        self.base = base
        self.seaweed = seaweed
        self.export, self.dirs = make_export(base / "export", sample_accounts())
        self.pw = base / "restic.pw"
        self.pw.write_text(PASSWORD + "\n")
        self.b2 = Kind("b2", base)
        self.b2.start_b2(monkeypatch)
        self.targets: list[dict[str, Any]] = []
        self.bucket = seaweed.bucket("ship") if seaweed else ""
        (base / "s3.secret").write_text(seaweed.secret_key if seaweed else "x")

    def restic(self, name: str = "local", **kw: Any) -> dict[str, Any]:
        return {"name": name, "type": "restic", "repository": str(self.base / f"repo-{name}"), "password_file": str(self.pw),
                "init": True, "cache_dir": str(self.base / "cache"), **kw}

    def s3(self, name: str = "s3", endpoint: str | None = None, **kw: Any) -> dict[str, Any]:
        assert self.seaweed is not None
        return {"name": name, "type": "s3", "endpoint_url": endpoint or self.seaweed.endpoint, "bucket": self.bucket,
                "prefix": f"mail/{name}", "region": "us-east-1", "access_key_id": self.seaweed.access_key,
                "secret_access_key_file": str(self.base / "s3.secret"), "gc_grace_hours": 0, "retries": 2, "timeout": 5, **kw}

    def b2target(self, name: str = "b2", **kw: Any) -> dict[str, Any]:
        item = self.b2.item(**kw)
        item["name"] = name
        return item

    def write(self, *targets: dict[str, Any]) -> Path:
        self.targets = list(targets)
        sections = {"export": {"dir": str(self.export.root)}, "state": {"dir": str(self.base / "state")}, "targets": self.targets}
        path = self.base / "config.toml"
        path.write_text(to_toml(sections))
        return path

    def cli(self, *args: str) -> Any:
        return CliRunner().invoke(main, ["--config", str(self.base / "config.toml"), *args], catch_exceptions=False)

    def target(self, name: str) -> Target:
        return open_target(load_config(str(self.base / "config.toml")), name)

    @property
    def state(self) -> StateDir:
        return StateDir(self.base / "state")


@pytest.fixture
def site(tmp_path: Path, seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    yield Site(tmp_path, seaweed, monkeypatch)


def summary(r: Any) -> dict[str, Any]:
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert lines, (r.exit_code, r.stdout, r.stderr)
    return dict(json.loads(lines[-1]))


def test_ship_to_every_target_then_list_snapshots(site: Site) -> None:
    site.write(site.restic(), site.s3(), site.b2target())
    r = site.cli("ship", "--json")
    assert r.exit_code == 0, r.stderr
    s = summary(r)
    assert [t["target"] for t in s["targets"]] == ["local", "s3", "b2"]
    for t in s["targets"]:
        assert t["status"] == "success" and t["snapshot_id"] and t["bytes_added"] > 0 and t["snapshots"] == 1
        st = site.state.read("ship", t["target"])
        assert st is not None and st.status == "success" and st.bytes == t["bytes_added"]
        assert (st.model_extra or {})["snapshot_id"] == t["snapshot_id"] and (st.model_extra or {})["snapshots"] == 1
    events = [json.loads(ln)["event"] for ln in r.stdout.splitlines()[:-1] if ln.startswith("{")]
    assert events.count("ship.target") == 3

    r = site.cli("snapshots", "--json")
    assert r.exit_code == 0, r.stderr
    items = json.loads(r.stdout)
    assert sorted(i["target"] for i in items) == ["b2", "local", "s3"]
    for i in items:
        assert datetime.fromisoformat(i["time"]).tzinfo is not None
        assert sorted(i["accounts"]) == sorted(sample_accounts()) and i["id"]
    r = site.cli("snapshots", "--json", "--target", "b2", "--account", "bob@example.org")
    assert [i["target"] for i in json.loads(r.stdout)] == ["b2"]
    r = site.cli("snapshots", "--account", "nobody@example.org")
    assert r.exit_code == 3 and "nobody@example.org" in r.stderr
    r = site.cli("snapshots")
    assert r.exit_code == 0 and "local" in r.stdout and "bob@example.org" in r.stdout


def test_one_target_down_the_others_complete_exit_4(site: Site) -> None:
    site.write(site.restic(), site.s3("offsite"), site.b2target())
    assert site.cli("ship").exit_code == 0
    first = site.state.read("ship", "offsite")
    assert first is not None and first.status == "success"
    dead = f"http://127.0.0.1:{free_port()}"
    site.write(site.restic(), site.s3("offsite", endpoint=dead, retries=1, timeout=2), site.b2target())
    r = site.cli("ship", "--json")
    assert r.exit_code == 4, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert "offsite" in last and "local" not in last and "Traceback" not in r.stderr
    by_target = {t["target"]: t for t in summary(r)["targets"]}
    assert by_target["local"]["status"] == by_target["b2"]["status"] == "success"
    assert by_target["local"]["snapshots"] == by_target["b2"]["snapshots"] == 2
    st = site.state.read("ship", "offsite")
    assert st is not None and st.status == "failed" and st.errors == 1 and "127.0.0.1" in st.detail
    assert st.last_success == first.last_success  # "time since the last good ship" survives the failure
    assert site.state.read("ship", "local").status == "success"  # type: ignore[union-attr]


def test_s3_5xx_and_timeouts_mid_upload_are_retried(site: Site, seaweed: Seaweed) -> None:
    from tests.seaweed import FaultProxy

    counter = {"put": 0}

    def rule(method: str, path: str, n: int) -> str:
        if method == "PUT" and "/data/" in path:
            counter["put"] += 1
            if counter["put"] % 4 == 2:
                return "503"
            if counter["put"] in (3, 11):
                return "stall"
            if counter["put"] == 7:
                return "drop"
        return "pass"

    with FaultProxy(seaweed.s3_port, rule, stall_seconds=6) as proxy:
        site.write(site.s3("flaky", endpoint=proxy.endpoint, timeout=2, retries=5),
                   site.restic("s3restic", repository=f"s3:{proxy.endpoint}/{site.bucket}/restic",
                               env_file=str(seaweed.env_file(site.base / "s3.env"))))
        r = site.cli("ship", "--json")
        assert r.exit_code == 0, (r.stdout, r.stderr)
        kinds = {f[2] for f in proxy.faults}
    assert {"503", "stall", "drop"} <= kinds
    site.write(site.s3("flaky"))  # read back directly, without the proxy
    t = site.target("flaky")
    snap = t.snapshots()[0]
    for name, d in zip(sample_accounts(), site.dirs, strict=True):
        assert read_tree(t.fetch(snap.id, name, site.base / "f" / d.name)) == read_tree(d)
    assert t.check(read_data_percent=100).ok


def test_persistent_s3_failure_is_a_clear_error_and_nothing_is_listed(site: Site, seaweed: Seaweed) -> None:
    from tests.seaweed import FaultProxy

    puts = {"n": 0}

    def rule(method: str, path: str, n: int) -> str:
        if method == "PUT" and "/data/" in path:
            puts["n"] += 1
            return "503" if puts["n"] > 5 else "pass"
        return "pass"

    with FaultProxy(seaweed.s3_port, rule) as proxy:
        site.write(site.s3("broken", endpoint=proxy.endpoint, retries=2, timeout=5))
        r = site.cli("ship")
    assert r.exit_code == 2, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert "broken" in last and "503" in last and "Traceback" not in r.stderr
    site.write(site.s3("broken"))
    assert site.target("broken").snapshots() == []
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=site.bucket, Prefix="mail/broken/").get("Contents", [])]
    assert not [k for k in keys if "/snapshots/" in k or "/inprogress/" in k]
    r = site.cli("ship")  # the rerun completes
    assert r.exit_code == 0, r.stderr
    assert len(site.target("broken").snapshots()) == 1


def test_missing_bucket_and_wrong_password_are_named(site: Site) -> None:
    site.write(site.restic())
    assert site.cli("ship").exit_code == 0  # creates the local repository
    bad = site.base / "wrong.pw"
    bad.write_text("wrong password")
    site.write(site.s3("nobucket", bucket="does-not-exist-1"), site.restic(password_file=str(bad)))
    r = site.cli("ship")
    assert r.exit_code == 2, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert "nobucket" in last and "bucket does not exist" in last
    assert "local" in last and "wrong repository password" in last and "wrong password" not in last.replace("wrong repository", "")


def test_dry_run_contacts_nothing_and_writes_nothing(site: Site) -> None:
    site.write(site.restic(), site.s3())
    r = site.cli("ship", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    s = summary(r)
    assert s["dry_run"] and sorted(s["accounts"]) == sorted(sample_accounts()) and s["bytes"] > 0
    assert not (site.base / "repo-local").exists() and not (site.base / "state").exists()
    assert list(site.target("s3").store.list("mail/s3/")) == []  # type: ignore[attr-defined]


def test_prune_and_check_from_the_cli(site: Site) -> None:
    site.write(site.restic(keep={"last": 1}), site.s3(keep={"last": 1}), site.b2target(keep={"last": 1}))
    assert site.cli("ship").exit_code == 0
    from tests.test_target_contract import write_account

    write_account(site.export, "alice@example.org", [message(i, seed="changed") for i in range(3)])
    assert site.cli("ship").exit_code == 0
    r = site.cli("prune", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    assert all(len(t["removed"]) == 1 for t in summary(r)["targets"])
    assert site.state.read("prune", "local") is None
    assert all(len(site.target(n).snapshots()) == 2 for n in ("local", "s3", "b2"))
    r = site.cli("prune")
    assert r.exit_code == 0, r.stderr
    assert "removed 1 snapshot(s), kept 1" in r.stdout
    for n in ("local", "s3", "b2"):
        assert len(site.target(n).snapshots()) == 1
        st = site.state.read("prune", n)
        assert st is not None and st.status == "success" and (st.model_extra or {})["snapshots"] == 1
    r = site.cli("check", "--read-data-subset", "100")
    assert r.exit_code == 0, r.stderr
    assert site.state.read("check", "s3").status == "success"  # type: ignore[union-attr]
    # damage one object in the native S3 target: exit 5 naming it; the other targets stay fine
    s3 = site.target("s3")
    key = next(o.key for o in s3.store.list("mail/s3/data/"))  # type: ignore[attr-defined]
    assert site.seaweed is not None
    site.seaweed.client().put_object(Bucket=site.bucket, Key=key, Body=b"garbage")
    r = site.cli("check")
    assert r.exit_code == 5, (r.stdout, r.stderr)
    assert "s3" in r.stderr.strip().splitlines()[-1] and key.rsplit("/", 1)[-1] in r.stderr
    assert site.state.read("check", "s3").status == "failed"  # type: ignore[union-attr]
    assert site.state.read("check", "local").status == "success"  # type: ignore[union-attr]


def test_config_mistakes_exit_1_naming_the_key(site: Site) -> None:
    site.write(site.restic(), site.s3(colour="blue"))
    r = site.cli("ship")
    assert r.exit_code == 1 and re.search(r"config\.toml: targets\[1\]\.colour: unknown key", r.stderr), r.stderr
    site.write(site.restic())
    r = site.cli("ship", "--target", "nope")
    assert r.exit_code == 1 and "'nope'" in r.stderr and "local" in r.stderr
    assert not (site.base / "repo-local").exists()


def test_nothing_to_ship_is_explained(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml({"export": {"dir": str(tmp_path / "none")}, "state": {"dir": str(tmp_path / "st")},
                            "targets": [{"name": "local", "type": "restic", "repository": str(tmp_path / "r"),
                                         "password_command": "echo x"}]}))
    r = mail_backup(cfg, "ship")
    assert r.returncode == 1 and "run `mail-backup export` first" in r.stderr and "Traceback" not in r.stderr


# -- the nightly job --------------------------------------------------------------------------------------------
def test_run_exports_ships_and_prunes(tmp_path: Path, seaweed: Seaweed) -> None:
    srv = start_mailsrv(tmp_path / "srv")
    try:
        for name in ("alice", "bob"):
            srv.add_account(name)
        srv.cli("seed", "--account", "alice", "--account", "bob", "--count", "15", "--random-seed", "3")
        bucket = seaweed.bucket("run")
        (tmp_path / "pw").write_text(PASSWORD)
        (tmp_path / "s3.secret").write_text(seaweed.secret_key)
        s3 = {"name": "s3", "type": "s3", "endpoint_url": seaweed.endpoint, "bucket": bucket, "prefix": "nightly", "region": "us-east-1",
              "access_key_id": seaweed.access_key, "secret_access_key_file": str(tmp_path / "s3.secret"), "gc_grace_hours": 0,
              "keep": {"last": 1}, "retries": 1, "timeout": 3}
        sections: dict[str, Any] = {
            "server": {"profile": "embedded", "url": srv.url, "admin_user": "admin", "admin_password_file": str(srv.dir / "admin.pw"),
                       "master_user": "master", "master_password_file": str(srv.dir / "master.pw")},
            "export": {"dir": str(tmp_path / "export")}, "state": {"dir": str(tmp_path / "state")},
            "targets": [{"name": "local", "type": "restic", "repository": str(tmp_path / "repo"), "password_file": str(tmp_path / "pw"),
                         "init": True, "cache_dir": str(tmp_path / "cache"), "keep": {"last": 1}}, s3]}
        cfg = tmp_path / "config.toml"
        cfg.write_text(to_toml(sections))
        r = mail_backup(cfg, "run", "--json")
        assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
        s = json.loads(r.stdout.strip().splitlines()[-1])
        assert s["event"] == "run.summary" and s["exit_code"] == 0
        assert {t["target"]: t["status"] for t in s["ship"]["targets"]} == {"local": "success", "s3": "success"}
        state = StateDir(tmp_path / "state")
        assert {r.subject for r in state.all() if r.job == "export"} == {"alice", "bob"}
        run = state.read("run", "all")
        assert run is not None and run.status == "success"
        snaps = json.loads(mail_backup(cfg, "snapshots", "--json").stdout)
        assert sorted(i["target"] for i in snaps) == ["local", "s3"]
        assert all(sorted(i["accounts"]) == ["alice", "bob"] for i in snaps)
        srv.cli("seed", "--account", "alice", "--count", "3", "--random-seed", "4")
        r = mail_backup(cfg, "run")
        assert r.returncode == 0, r.stderr[-2000:]
        assert [len(json.loads(mail_backup(cfg, "snapshots", "--json", "--target", t).stdout)) for t in ("local", "s3")] == [1, 1]
        assert state.read("prune", "s3").status == "success"  # type: ignore[union-attr]
        # the offsite target is down tonight: the local one still gets its snapshot; exit 4 names the failed one
        sections["targets"][1]["endpoint_url"] = f"http://127.0.0.1:{free_port()}"
        cfg.write_text(to_toml(sections))
        r = mail_backup(cfg, "run")
        assert r.returncode == 4, (r.stdout[-2000:], r.stderr[-2000:])
        last = r.stderr.strip().splitlines()[-1]
        assert "s3" in last and "Traceback" not in r.stderr
        assert state.read("ship", "local").status == "success"  # type: ignore[union-attr]
        assert state.read("ship", "s3").status == "failed"  # type: ignore[union-attr]
        assert state.read("run", "all").status == "partial"  # type: ignore[union-attr]
    finally:
        srv.stop()
