"""Exporting one account: lock its directory, plan, download blobs concurrently, write metadata, commit.

Nothing of a run is visible until ``manifest.json`` is replaced (:meth:`AccountWriter.commit`); a failure or a
``kill -9`` before that leaves the previous export complete. Blobs published before a failure stay (content
addressed, journalled in ``.tmp/journal.tsv``) so the rerun downloads only what is still missing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from backup import stopping
from backup.errors import EXIT_CONNECT, EXIT_IO, EXIT_PARTIAL, EXIT_USAGE
from backup.exportdir import EmailRecord, ExportDir, MailboxRecord, Manifest, ManifestError
from backup.exportdir.account import AccountReader, AccountWriter
from backup.exportdir.layout import MANIFEST, LayoutError
from backup.exportdir.manifest import AccountInfo, Counts, ExportError, RunInfo, ServerInfo, ToolInfo
from backup.output import Output
from backup.state import Status
from mailsrv import __version__
from mailsrv.client import AuthError, BlobNotFound, ConnectError, JmapClient, MailClientError, Profile
from mailsrv.client.management import ManagedAccount
from mailsrv.config import Config, ConfigError

from .export_emails import JOURNAL, BlobIndex, EmailMeta, EmailPlan, clean_tmp, plan_emails, read_states
from .export_objects import Objects, export_objects, fetch_mailboxes
from .export_progress import AccountProgress, ExportProgress


class AccountBusy(Exception):
    """Another export of the same account is running (its directory is locked)."""


@dataclass
class AccountOutcome:
    """What happened to one account in a run (the source of its state-dir JobResult)."""

    name: str
    started: float
    status: Status = "failed"
    exit_code: int = EXIT_PARTIAL
    finished: float = 0.0
    mode: str | None = None
    run_id: str | None = None
    messages: int = 0  # emails in the export
    bytes: int = 0  # bytes of the blobs the export references
    fetched_messages: int = 0  # emails whose blob was downloaded in this run
    fetched_bytes: int = 0
    errors: list[ExportError] = field(default_factory=list)
    detail: str = ""
    account_dir: Path | None = None
    fatal: bool = False  # a local I/O error: the whole run stops
    stopped: bool = False  # a stop was requested (SIGTERM): the run ends after this account
    plan: dict[str, Any] | None = None  # dry run: what would be fetched

    @property
    def duration(self) -> float:
        return max(0.0, self.finished - self.started)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def public_url(url: str) -> str:
    """``url`` without credentials, query or fragment (what the manifest may show)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))



@contextmanager
def account_lock(root: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on the account directory for the duration of a run."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AccountBusy("another export of this account is running") from None
        yield
    finally:
        os.close(fd)


@dataclass
class Previous:
    """The previous complete export of the account, if it can be trusted as the base of this run."""

    reader: AccountReader | None = None
    records: dict[str, EmailRecord] | None = None
    note: str = ""

    @property
    def manifest(self) -> Manifest | None:
        return self.reader.manifest if self.reader else None


def load_previous(root: Path, name: str) -> Previous:
    if not (root / MANIFEST).exists():
        return Previous()
    try:
        reader = AccountReader(root)
    except (ManifestError, LayoutError) as exc:
        return Previous(note=f"previous export unreadable ({exc}); exporting in full")
    if reader.manifest.account.name != name:
        raise ManifestError(f"{root} holds the export of account {reader.manifest.account.name!r}, not {name!r}")
    problems = reader.check_files()
    if problems:
        return Previous(reader, None, f"previous export damaged ({problems[0]}); exporting in full")
    try:
        records = {r.id: r for r in reader.emails()}
    except (ManifestError, LayoutError, OSError) as exc:
        return Previous(reader, None, f"previous emails unreadable ({exc}); exporting in full")
    return Previous(reader, records)


class AccountExporter:
    """Exports accounts of one configured server into one export directory."""

    def __init__(self, cfg: Config, profile: Profile, export_dir: ExportDir, out: Output, board: ExportProgress,
                 *, dry_run: bool = False) -> None:
        self.cfg = cfg
        self.profile = profile
        self.export_dir = export_dir
        self.out = out
        self.board = board
        self.dry_run = dry_run

    # -- one account, every failure mapped ------------------------------------------------------------
    def run(self, account: ManagedAccount) -> AccountOutcome:
        outcome = AccountOutcome(account.name, time.time())
        try:
            if self.dry_run:
                self._dry_run(account, outcome)
            else:
                self._export(account, outcome)
        except stopping.Stopped as exc:
            self._fail(outcome, str(exc), EXIT_PARTIAL)
            outcome.stopped = True
        except AccountBusy as exc:
            self._fail(outcome, str(exc), EXIT_PARTIAL)
        except (ConnectError, AuthError) as exc:
            self._fail(outcome, str(exc), EXIT_CONNECT)
        except ConfigError as exc:
            self._fail(outcome, str(exc), EXIT_USAGE)
        except (MailClientError, ManifestError, LayoutError) as exc:
            self._fail(outcome, str(exc), EXIT_PARTIAL)
        except requests.RequestException as exc:
            self._fail(outcome, f"connection to the server failed: {type(exc).__name__}", EXIT_CONNECT)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            self._fail(outcome, f"{where}{reason}", EXIT_IO)
            outcome.fatal = True
        outcome.finished = time.time()
        return outcome

    @staticmethod
    def _fail(outcome: AccountOutcome, detail: str, code: int) -> None:
        outcome.status, outcome.exit_code, outcome.detail = "failed", code, detail

    # -- dry run ------------------------------------------------------------------------------------
    def _dry_run(self, account: ManagedAccount, outcome: AccountOutcome) -> None:
        root = self.export_dir.account(account.name)
        previous = load_previous(root, account.name) if root.is_dir() else Previous()
        with self.profile.open(account) as client:
            aid = client.account_id
            features = client.features(account_id=aid)
            plan, _ = self._plan(client, aid, root, previous)
        outcome.status, outcome.exit_code, outcome.mode = "success", 0, plan.mode
        outcome.messages = len(plan.done) + plan.emails_pending
        outcome.plan = {"mode": plan.mode, "emails": outcome.messages, "blobs_to_fetch": plan.blobs_to_fetch,
                        "bytes_to_fetch": plan.bytes_to_fetch, "emails_gone": plan.destroyed,
                        "unsupported": sorted(k for k, v in features.items() if not v and k != "blob_digest")}
        outcome.detail = previous.note

    def _plan(self, client: JmapClient, aid: str, root: Path, previous: Previous) -> tuple[EmailPlan, BlobIndex]:
        index = BlobIndex(root)
        manifest = previous.manifest
        # the same account: its blobs are known (blob ids are immutable); the same URL too: its states are usable
        usable = manifest is not None and previous.records is not None and manifest.account.id == aid
        if usable and previous.records is not None:
            index.load_records(previous.records.values())
        index.load_journal(root / ".tmp" / JOURNAL)
        since = None
        retry: set[str] = set()
        if usable and manifest is not None:
            if manifest.server.url == public_url(self.cfg.server.url):
                since = manifest.states.get("Email")
            retry = {e.email_id for e in manifest.errors if e.email_id}
        plan = plan_emails(client, aid, index, previous.records if usable else None, since, retry)
        return plan, index

    # -- the real thing -----------------------------------------------------------------------------
    def _export(self, account: ManagedAccount, outcome: AccountOutcome) -> None:
        root = self.export_dir.account(account.name)
        root.mkdir(exist_ok=True)
        outcome.account_dir = root
        with account_lock(root):
            previous = load_previous(root, account.name)
            if previous.note:
                self.out.warn(f"{account.name}: {previous.note}")
            clean_tmp(root / ".tmp")
            writer = AccountWriter(root)
            outcome.run_id = writer.run_id
            try:
                with self.profile.open(account) as client:
                    self._export_with(client, account, root, writer, previous, outcome)
            except BaseException:
                self._discard(writer)
                raise

    def _export_with(self, client: JmapClient, account: ManagedAccount, root: Path, writer: AccountWriter,
                     previous: Previous, outcome: AccountOutcome) -> None:
        started = outcome.started
        aid = client.account_id
        features = client.features(account_id=aid)
        states = read_states(client, aid)
        plan, index = self._plan(client, aid, root, previous)
        outcome.mode = plan.mode
        mailboxes = self._mailboxes(client, aid, previous, plan.mode)
        objects = export_objects(client, aid, features, writer.put_blob)
        self.out.event("export.account.started", account=account.name, mode=plan.mode, blobs_to_fetch=plan.blobs_to_fetch,
                       bytes_to_fetch=plan.bytes_to_fetch, emails=len(plan.done) + plan.emails_pending)

        index.open_journal(root / ".tmp" / JOURNAL)
        progress = self.board.account(account.name)
        progress.start(plan.emails_pending, plan.bytes_to_fetch)
        try:
            records, errors = self._download(client, aid, writer, plan, index, progress, outcome)
        finally:
            index.close_journal()
        progress.finish()

        known_boxes = {m.id for m in mailboxes}
        if any(mid not in known_boxes for r in records.values() for mid in r.mailbox_ids):
            mailboxes, _ = fetch_mailboxes(client, aid)  # a mailbox appeared while the emails were listed

        self._commit(client, account, aid, writer, previous, states, plan, records, mailboxes, objects, errors, started, outcome)

    def _mailboxes(self, client: JmapClient, aid: str, previous: Previous, mode: str) -> list[MailboxRecord]:
        """The mailbox tree: the previous one when Mailbox/changes reports nothing, else fetched anew."""
        manifest = previous.manifest
        if mode == "incremental" and manifest is not None and "Mailbox" in manifest.states and previous.reader is not None:
            try:
                changes = client.mailbox_changes(manifest.states["Mailbox"], account_id=aid)
            except MailClientError:
                changes = None
            if changes is not None and not (changes.created or changes.updated or changes.destroyed):
                try:
                    return previous.reader.mailboxes()
                except (ManifestError, LayoutError, ValueError):
                    pass
        records, _ = fetch_mailboxes(client, aid)
        return records

    def _download(self, client: JmapClient, aid: str, writer: AccountWriter, plan: EmailPlan, index: BlobIndex,
                  progress: AccountProgress, outcome: AccountOutcome) -> tuple[dict[str, EmailRecord], list[ExportError]]:
        """Download every pending blob (concurrently, streamed to disk, hashed on the way)."""
        records = dict(plan.done)
        errors: list[ExportError] = []
        if not plan.pending:
            return records, errors
        workers = max(1, min(self.cfg.export.concurrency, client.limits.max_concurrent_requests, len(plan.pending)))
        stop = threading.Event()
        pending = iter(plan.pending.items())
        inflight: dict[Future[tuple[str, int]], tuple[str, list[EmailMeta]]] = {}

        def fetch(blob_id: str) -> tuple[str, int]:
            if stop.is_set():
                raise _Stopped
            tmp = writer.temp_blob()
            try:
                with open(tmp, "r+b") as fh:  # streamed to disk, hashed on the way, durable before it is published
                    got = client.download(blob_id, fh, account_id=aid, name="message.eml", content_type="message/rfc822")
                    fh.flush()
                    os.fsync(fh.fileno())
                writer.publish_blob(tmp, got.sha256)
            finally:
                tmp.unlink(missing_ok=True)
            return got.sha256, got.size

        def submit(pool: ThreadPoolExecutor) -> None:
            item = next(pending, None)
            if item is not None:
                inflight[pool.submit(fetch, item[0])] = item

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="export-download") as pool:
            try:
                for _ in range(workers * 2):
                    submit(pool)
                while inflight:
                    stopping.check()  # abandons the unfinished run; downloaded blobs stay (journalled) for the rerun
                    done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    for fut in done:
                        blob_id, metas = inflight.pop(fut)
                        try:
                            sha, size = fut.result()
                        except BlobNotFound as exc:
                            errors += [ExportError(kind="blobNotFound", email_id=m.id, blob_id=blob_id, detail=str(exc)) for m in metas]
                        except (ConnectError, AuthError):
                            raise
                        except MailClientError as exc:
                            errors += [ExportError(kind="downloadFailed", email_id=m.id, blob_id=blob_id, detail=str(exc)) for m in metas]
                        else:
                            index.published(blob_id, sha, size)
                            for m in metas:
                                records[m.id] = m.record(sha, size)
                            outcome.fetched_messages += len(metas)
                            outcome.fetched_bytes += size
                            progress.advance(len(metas), size)
                        submit(pool)
            except BaseException:
                stop.set()
                for fut in inflight:
                    fut.cancel()
                raise
        return records, errors

    def _commit(self, client: JmapClient, account: ManagedAccount, aid: str, writer: AccountWriter, previous: Previous,
                states: dict[str, str], plan: EmailPlan, records: dict[str, EmailRecord], mailboxes: list[MailboxRecord],
                objects: Objects, errors: list[ExportError], started: float, outcome: AccountOutcome) -> None:
        writer.write_jsonl("emails", (records[k] for k in sorted(records)))
        writer.write_json("mailboxes", [m.model_dump(mode="json") for m in mailboxes])
        for kind, data in objects.data.items():
            writer.write_json(kind, data)
        sizes: dict[str, int] = {r.sha256: r.size for r in records.values()}
        sizes.update(objects.sieve_blobs)
        manifest = Manifest(
            account=AccountInfo(name=account.name, id=aid, emails=list(account.emails)),
            server=ServerInfo(profile=self.cfg.server.profile, url=public_url(self.cfg.server.url), version=client.server_software,
                              capabilities=sorted(client.capabilities(aid))),
            tool=ToolInfo(version=__version__),
            run=RunInfo(id=writer.run_id, started=rfc3339(started), finished=rfc3339(time.time()), mode=plan.mode,
                        previous=previous.manifest.run.id if previous.manifest else None),
            states=states,
            counts=Counts(emails=len(records), mailboxes=len(mailboxes), blobs=len(sizes), bytes=sum(sizes.values()),
                          identities=objects.counts.get("identities", 0), sieve_scripts=objects.counts.get("sieve_scripts", 0)),
            files=writer.files,
            unsupported=objects.unsupported,
            errors=errors,
        )
        writer.commit(manifest, set(sizes))
        outcome.messages, outcome.bytes, outcome.errors = len(records), sum(sizes.values()), errors
        outcome.status = "partial" if errors else "success"
        outcome.exit_code = EXIT_PARTIAL if errors else 0
        if errors:
            first = errors[0]
            outcome.detail = f"{len(errors)} email(s) not exported, e.g. {first.email_id}: {first.kind}"

    @staticmethod
    def _discard(writer: AccountWriter) -> None:
        """Forget an unfinished run but keep its published blobs and their journal (a rerun resumes)."""
        for entry in writer.files.values():
            (writer.root / entry.path).unlink(missing_ok=True)
        try:
            clean_tmp(writer.tmp)
        except OSError:
            pass


class _Stopped(Exception):
    """A queued download skipped because the run is stopping."""
