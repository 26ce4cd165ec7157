"""``mail-backup verify``: is the local export what its manifest says, and (optionally) what the server holds?

Locally every metadata file is re-hashed against the manifest and every blob against the sha256 and size of
the records that reference it; an unreadable manifest, a missing or changed file is a mismatch (exit 5, naming
the account and the message). ``--against-server --sample P`` also picks P % of the emails at random and
compares their sha256 with the server's — ``Blob/get`` with ``digest:sha-256`` (RFC 9404) where offered, else
by downloading and hashing (nothing is stored) — and compares per-mailbox email counts with the server,
leaving out emails that changed since the export (``Email/changes`` from the manifest's state), so a server
that moved on is not reported as a mismatch.
"""

from __future__ import annotations

import io
import math
import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from backup.errors import EXIT_CONNECT, EXIT_MISMATCH, EXIT_OK, UnknownObject, UsageError
from backup.exportdir import EmailRecord, ExportDir, LayoutError, ManifestError
from backup.exportdir.account import AccountReader, sha256_file
from backup.exportdir.layout import MARKER
from backup.output import Output
from mailsrv.client import (
    AuthError,
    CannotCalculateChanges,
    ConnectError,
    JmapClient,
    MailClientError,
    UnknownAccount,
    UnsupportedCapability,
    open_profile,
)

HASH_WORKERS = 4
MAX_TOUCHED = 20_000  # more changes than this since the export: per-mailbox counts are not compared


@dataclass
class AccountCheck:
    """The verification of one account's export."""

    name: str
    dir: Path
    emails: int = 0
    blobs: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sampled: int = 0
    sample_method: str | None = None
    mailboxes_compared: int = 0
    server_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.server_error is None

    def to_json(self) -> dict[str, Any]:
        return {"account": self.name, "dir": str(self.dir), "ok": self.ok, "emails": self.emails, "blobs": self.blobs,
                "bytes": self.bytes, "problems": self.problems, "notes": self.notes, "sampled": self.sampled,
                "sample_method": self.sample_method, "mailboxes_compared": self.mailboxes_compared,
                "server_error": self.server_error}


@dataclass
class VerifyResult:
    exit_code: int
    accounts: list[AccountCheck]

    def to_json(self) -> dict[str, Any]:
        return {"event": "verify.summary", "exit_code": self.exit_code, "ok": self.exit_code == EXIT_OK,
                "accounts": [a.to_json() for a in self.accounts]}


# -- which accounts -------------------------------------------------------------------------------------
def exported_accounts(export_dir: ExportDir, names: list[str] | None) -> list[tuple[str, Path]]:
    """``(account name, directory)`` of the exported accounts, or of the named ones (unknown ones: exit 3)."""
    root = export_dir.root
    if not root.is_dir() or not (root / MARKER).exists():
        raise UnknownObject(f"no export in {root} (export.dir); run mail-backup export first")
    try:
        export_dir.check_marker()
    except LayoutError as exc:
        raise UsageError(f"export.dir: {exc}") from None
    found: list[tuple[str, Path, list[str]]] = []
    for d in export_dir.account_dirs():
        try:
            m = AccountReader(d).manifest
            found.append((m.account.name, d, [e.lower() for e in m.account.emails]))
        except (ManifestError, LayoutError):
            found.append((d.name, d, []))  # verified below, where the damage is reported
    if not names:
        if not found:
            raise UnknownObject(f"no exported account in {root}; run mail-backup export first")
        return [(n, d) for n, d, _ in found]
    out: list[tuple[str, Path]] = []
    unknown = []
    for want in dict.fromkeys(names):
        match = next(((n, d) for n, d, emails in found if n == want or want.lower() in emails), None)
        if match is None:
            unknown.append(want)
        elif match not in out:
            out.append(match)
    if unknown:
        raise UnknownObject(f"no export of account {', '.join(repr(u) for u in unknown)} in {root}")
    return out


# -- local ------------------------------------------------------------------------------------------------
def _label(r: EmailRecord) -> str:
    mid = f" (Message-ID <{r.message_id[0].strip('<>')}>)" if r.message_id else ""
    return f"message {r.id}{mid}"


def verify_local(check: AccountCheck, reader: AccountReader, on_bytes: Any = None) -> list[EmailRecord]:
    """Re-hash metadata files and blobs; returns the email records (for the server comparison)."""
    check.problems += [f"{p}" for p in reader.check_files()]
    try:
        records = list(reader.emails())
    except (ManifestError, LayoutError, OSError) as exc:
        check.problems.append(f"emails file: {exc}")
        return []
    m = reader.manifest
    check.emails = len(records)
    if m.counts.emails != len(records):
        check.problems.append(f"manifest counts {m.counts.emails} emails, the emails file holds {len(records)}")
    by_sha: dict[str, list[EmailRecord]] = {}
    for r in records:
        by_sha.setdefault(r.sha256, []).append(r)
    expected: dict[str, int] = {sha: rs[0].size for sha, rs in by_sha.items()}
    scripts: dict[str, str] = {}
    try:
        for s in reader.json("sieve") or []:
            if isinstance(s, dict) and isinstance(s.get("sha256"), str):
                scripts[s["sha256"]] = str(s.get("name"))
    except (ManifestError, LayoutError) as exc:
        check.problems.append(f"sieve file: {exc}")
    check.blobs = len(set(expected) | set(scripts))

    def one(sha: str) -> tuple[str, tuple[str, int] | str]:
        try:
            got = sha256_file(reader.blob_path(sha))
        except (OSError, LayoutError) as exc:
            return sha, getattr(exc, "strerror", None) or str(exc)
        if on_bytes is not None:
            on_bytes(got[1])
        return sha, got

    with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
        for sha, got in pool.map(one, sorted(set(expected) | set(scripts))):
            if isinstance(got, str):
                what = f"blob {sha[:12]}… is unreadable ({got})"
            elif got[0] != sha:
                what = f"blob {sha[:12]}… does not match its sha256 (the file changed)"
            elif sha in expected and got[1] != expected[sha]:
                what = f"blob {sha[:12]}… has {got[1]} bytes, the record says {expected[sha]}"
            else:
                check.bytes += got[1]
                continue
            for r in by_sha.get(sha, []):
                check.problems.append(f"{_label(r)}: {what}")
            if sha in scripts:
                check.problems.append(f"Sieve script {scripts[sha]!r}: {what}")
    return records


# -- against the server -------------------------------------------------------------------------------------
class _Discard(io.RawIOBase):
    """A write-only sink: the client hashes a download on the way, nothing is kept."""

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(b)


def verify_server(check: AccountCheck, client: JmapClient, reader: AccountReader, records: list[EmailRecord],
                  percent: float, rng: random.Random) -> None:
    aid = client.account_id
    m = reader.manifest
    if aid != m.account.id:
        check.problems.append(f"the server's account id is {aid!r}, the export's {m.account.id!r}: not the same account")
        return
    _compare_sample(check, client, aid, records, percent, rng)
    _compare_counts(check, client, aid, reader, records)


def _compare_sample(check: AccountCheck, client: JmapClient, aid: str, records: list[EmailRecord], percent: float,
                    rng: random.Random) -> None:
    if not records or percent <= 0:
        return
    k = min(len(records), max(1, math.ceil(len(records) * percent / 100)))
    sample = rng.sample(records, k)
    current, gone, _ = client.get_objects("Email", [r.id for r in sample], ["id", "blobId"], account_id=aid)
    blob_of = {str(o.get("id")): str(o.get("blobId")) for o in current if o.get("blobId")}
    if gone:
        check.notes.append(f"{len(gone)} sampled email(s) were deleted on the server since the export")
    todo = [r for r in sample if r.id in blob_of]
    digests: dict[str, str | None] = {}
    if client.supports_blob_digest(account_id=aid):
        try:
            found = client.blob_digests(sorted({blob_of[r.id] for r in todo}), account_id=aid)
            digests = {bid: d.sha256_hex for bid, d in found.items()}
        except UnsupportedCapability:
            digests = {}
    methods: set[str] = set()
    for r in todo:
        blob_id = blob_of[r.id]
        sha = digests.get(blob_id)
        if sha is None:
            sha = client.download(blob_id, cast(IO[bytes], _Discard()), account_id=aid).sha256
            methods.add("download")
        else:
            methods.add("digest")
        check.sampled += 1
        if sha != r.sha256:
            check.problems.append(f"{_label(r)}: the server's sha256 {sha[:12]}… differs from the export's {r.sha256[:12]}…")
    check.sample_method = "+".join(sorted(methods)) or None


def _compare_counts(check: AccountCheck, client: JmapClient, aid: str, reader: AccountReader, records: list[EmailRecord]) -> None:
    since = reader.manifest.states.get("Email")
    if not since:
        check.notes.append("the export has no Email state: mailbox counts not compared")
        return
    try:
        changes = client.email_changes(since, account_id=aid)
    except CannotCalculateChanges:
        check.notes.append("the server no longer has the changes since the export: mailbox counts not compared")
        return
    touched = set(changes.created) | set(changes.updated) | set(changes.destroyed)
    if len(touched) > MAX_TOUCHED:
        check.notes.append(f"{len(touched)} emails changed since the export: mailbox counts not compared")
        return
    now_in: Counter[str] = Counter()
    if touched - set(changes.destroyed):
        objs, _, _ = client.get_objects("Email", sorted(touched - set(changes.destroyed)), ["id", "mailboxIds"], account_id=aid)
        for o in objs:
            for mid, on in (o.get("mailboxIds") or {}).items():
                if on:
                    now_in[mid] += 1
    exported: Counter[str] = Counter(mid for r in records if r.id not in touched for mid in r.mailbox_ids)
    names = {mb.id: "/".join(mb.path) for mb in reader.mailboxes()}
    for mb in client.mailboxes(account_id=aid):
        if mb.id not in names or mb.total_emails is None:
            continue
        check.mailboxes_compared += 1
        expected = mb.total_emails - now_in[mb.id]
        if expected != exported[mb.id]:
            check.problems.append(f"mailbox {names[mb.id]!r}: the export has {exported[mb.id]} email(s) that did not change "
                                  f"since, the server {expected}")
    if touched:
        check.notes.append(f"{len(touched)} email(s) changed on the server since the export (left out of the counts)")


# -- the command's work -----------------------------------------------------------------------------------
@contextmanager
def _hash_progress(out: Output, total: int) -> Iterator[Any]:
    if not out.interactive or total <= 0:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=out.err, transient=True) as bar:
        task: TaskID = bar.add_task("re-hashing", total=total)
        yield lambda n: bar.advance(task, n)


def run_verify(cfg: Any, accounts: list[str] | None, out: Output, *, against_server: bool = False,
               sample: float = 1.0, seed: int | None = None) -> VerifyResult:
    """Verify the exports of ``accounts`` (``None``: every exported account); see the module docstring."""
    export_dir = ExportDir(cfg.export.dir)
    chosen = exported_accounts(export_dir, accounts)
    rng = random.Random(seed)
    profile = open_profile(cfg) if against_server else None
    checks: list[AccountCheck] = []
    try:
        for name, d in chosen:
            check = AccountCheck(name, d)
            checks.append(check)
            try:
                reader = AccountReader(d)
            except (ManifestError, LayoutError) as exc:
                check.problems.append(f"manifest: {exc}")
                _report(out, check)
                continue
            with _hash_progress(out, reader.manifest.counts.bytes) as advance:
                records = verify_local(check, reader, advance)
            if profile is not None:
                try:
                    with profile.open(profile.account(name)) as client:
                        verify_server(check, client, reader, records, sample, rng)
                except (ConnectError, AuthError) as exc:
                    check.server_error = str(exc)
                except UnknownAccount as exc:
                    check.problems.append(f"server: {exc}")
                except MailClientError as exc:
                    check.server_error = f"server: {exc}"
            _report(out, check)
    finally:
        if profile is not None:
            profile.close()
    if any(c.problems for c in checks):
        code = EXIT_MISMATCH
    elif any(c.server_error for c in checks):
        code = EXIT_CONNECT
    else:
        code = EXIT_OK
    return VerifyResult(code, checks)


def _report(out: Output, c: AccountCheck) -> None:
    out.event("verify.account", **c.to_json())
    for p in c.problems:
        out.warn(f"{c.name}: {p}")
    if c.server_error:
        out.warn(f"{c.name}: could not compare with the server: {c.server_error}")
    for n in c.notes:
        out.info(f"{c.name}: note: {n}")


def summary(result: VerifyResult) -> str:
    lines = []
    for c in result.accounts:
        state = "OK" if c.ok else ("MISMATCH" if c.problems else "UNCHECKED")
        line = f"{c.name}: {state} — {c.emails} emails, {c.blobs} blobs ({c.bytes / 1e6:.1f} MB) re-hashed"
        if c.sampled or c.mailboxes_compared:
            line += f"; server: {c.sampled} sampled ({c.sample_method or '-'}), {c.mailboxes_compared} mailbox counts compared"
        if c.problems:
            line += f"; {len(c.problems)} problem(s)"
        lines.append(line)
    return "\n".join(lines)
