"""The shared TOML config: a mistake is one clear message naming the file, the key path and the problem (exit 1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailsrv.config import Config, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def _mailsrv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MAILSRV_", "MAILSIDECAR_"))} | (env or {})
    return subprocess.run([sys.executable, "-m", "mailsrv", *args], capture_output=True, text=True, env=full, timeout=60)


def _assert_config_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1, line
    for n in needles:
        assert n in line, (n, line)


# (TOML text, key path, words of the problem)
BAD = {
    "unknown key": ('[mailsrv]\nsmtp_lisen = "127.0.0.1:25"\n', "mailsrv.smtp_lisen", "unknown key"),
    "unknown section": ('[mailserver]\nhostname = "x"\n', "mailserver", "unknown key"),
    "wrong type": ('[mailsrv]\nmax_message_size = "big"\n', "mailsrv.max_message_size", "integer"),
    "wrong type in list": ('[mailsrv]\ndomains = "example.org"\n', "mailsrv.domains", "list"),
    "bad listen address": ('[mailsrv]\nsmtp_listen = "localhost"\n', "mailsrv.smtp_listen", "HOST:PORT"),
    "port out of range": ('[exporter]\nlisten = "127.0.0.1:70000"\n', "exporter.listen", "HOST:PORT"),
    "nested limit": ("[mailsrv.jmap]\nmax_objects_in_get = 0\n", "mailsrv.jmap.max_objects_in_get", "greater than or equal to 1"),
    "target without name": ('[[targets]]\ntype = "restic"\n', "targets[0].name", "Field required"),
    "unknown target type": ('[[targets]]\nname = "x"\ntype = "ftp"\n', "targets[0].type", "restic"),
    "bad domain": ('[mailsrv]\ndomains = ["ex ample.org"]\n', "mailsrv.domains", "not a domain name"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_values_name_file_key_and_problem(tmp_path: Path, case: str) -> None:
    text, key, problem = BAD[case]
    config = tmp_path / "config.toml"
    config.write_text(text)
    _assert_config_error(_mailsrv("--config", str(config), "account", "list"), str(config), key, problem)


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[mailsrv]\ndata_dir = "/tmp/x"\nhostname = mail.example.org\n')
    _assert_config_error(_mailsrv("--config", str(config), "domain", "list"), str(config), "invalid TOML", "line 3")


def test_not_utf8(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(b'[mailsrv]\nhostname = "caf\xe9"\n')
    _assert_config_error(_mailsrv("--config", str(config), "domain", "list"), str(config), "UTF-8")


def test_missing_file_explicit_and_from_environment(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    _assert_config_error(_mailsrv("--config", str(missing), "account", "list"), str(missing), "not found")
    _assert_config_error(_mailsrv("account", "list", env={"MAILSIDECAR_CONFIG": str(missing)}), str(missing), "not found")


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    _assert_config_error(_mailsrv("--config", str(tmp_path), "account", "list"), str(tmp_path), "cannot read")


def test_unreadable_secret_file_stops_serve(tmp_path: Path) -> None:
    """A ``*_file`` key naming a missing file, or a directory, stops the server before it listens."""
    for secret in (tmp_path / "missing-admin.pw", tmp_path):
        config = tmp_path / "config.toml"
        config.write_text(f'[mailsrv]\ndata_dir = "{tmp_path / "data"}"\nadmin_password_file = "{secret}"\n'
                          'smtp_listen = "127.0.0.1:1"\nsubmission_listen = "127.0.0.1:1"\nhttp_listen = "127.0.0.1:1"\n')
        _assert_config_error(_mailsrv("--config", str(config), "serve"), "mailsrv.admin_password_file", str(secret))


def test_empty_secret_file_and_missing_secret(tmp_path: Path) -> None:
    empty = tmp_path / "admin.pw"
    empty.write_text("\n")
    config = tmp_path / "config.toml"
    base = f'[mailsrv]\ndata_dir = "{tmp_path / "data"}"\nsmtp_listen = "127.0.0.1:1"\nsubmission_listen = "127.0.0.1:1"\n'
    config.write_text(base + f'admin_password_file = "{empty}"\n')
    _assert_config_error(_mailsrv("--config", str(config), "serve"), "mailsrv.admin_password_file", "empty")
    config.write_text(base)
    _assert_config_error(_mailsrv("--config", str(config), "serve"), "mailsrv.admin_password_file", "MAILSRV_ADMIN_PASSWORD")


def test_several_problems_are_all_reported() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"mailsrv": {"smtp_listen": "x", "bogus": 1}, "export": {"concurrency": 0}}, "/etc/x.toml")
    lines = str(exc.value).splitlines()
    assert sorted(lines) == sorted([
        "/etc/x.toml: mailsrv.smtp_listen: expected HOST:PORT, got 'x'",
        "/etc/x.toml: mailsrv.bogus: unknown key",
        "/etc/x.toml: export.concurrency: Input should be greater than or equal to 1",
    ])


def test_defaults_and_normalisation() -> None:
    cfg = parse_config({"mailsrv": {"domains": [" Example.ORG "], "smtp_listen": "[::1]:2525"}})
    assert cfg.mailsrv.domains == ["example.org"]
    assert cfg.server.profile == "embedded" and cfg.accounts.include == ["*"]
    assert cfg.mailsrv.jmap.max_objects_in_get == 500


def test_example_config_is_valid_and_complete() -> None:
    """docs/examples/config.toml loads, and sets every section of the reference."""
    cfg = load_config(str(ROOT / "docs" / "examples" / "config.toml"))
    assert cfg.mailsrv.smtp_listen and cfg.targets and cfg.targets[0].type == "restic"
    assert set(Config.model_fields) - {"path"} <= set(cfg.model_fields_set)


def _leaves(model: type, section: str) -> list[tuple[str, str]]:
    """(section, key) of every config key, descending into nested tables, [[targets]] and credentials."""
    from mailsrv.config import AccountCredential, TargetConfig

    out: list[tuple[str, str]] = []
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        ann = info.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields") and name != "keep":
            out += _leaves(ann, f"{section}.{name}".lstrip("."))
        elif name == "targets":
            out += _leaves(TargetConfig, "targets")
        elif name != "path":
            out.append((section, name))
            if name == "credentials":
                out += _leaves(AccountCredential, "accounts.credentials.NAME")
    return out


def test_configuration_reference_documents_every_key() -> None:
    """docs/configuration.md names every key the config accepts, in the part about its section."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    marks = [(m.start(), m.group(1)) for m in re.finditer(r"`\[\[?([a-zA-Z_.]+)\]\]?`", doc)]
    chunks: dict[str, str] = {}
    for i, (pos, name) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else len(doc)
        chunks[name] = chunks.get(name, "") + doc[pos:end]
    missing = [f"{sec}.{key}" for sec, key in _leaves(Config, "") if f"`{key}`" not in chunks.get(sec, "")]
    assert not missing, f"keys missing from docs/configuration.md: {missing}"
