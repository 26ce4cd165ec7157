"""``mail-backup restore``: bring an account (or part of it) back from an export directory or a snapshot.

The steps, each in its own module:

1. source (:mod:`.restore_source`): the export directory, or a target's snapshot fetched piecemeal;
2. selection (:mod:`.restore_plan`): mailboxes, dates, Message-IDs → the messages to restore;
3. mailboxes (:mod:`.restore_mailboxes`): matched by role, then path; missing ones created;
4. messages (:mod:`.restore_emails`): detected by content, merged or imported in concurrent batches;
5. identities, Sieve, vacation (:mod:`.restore_objects`): where the server supports them;
6. verification (:mod:`.restore_verify`): every restored message present, whole and in place.

Everything is additive and idempotent: a second run changes nothing, and a run killed at any point is
completed by running it again (what is on the server is always re-detected).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from backup.errors import EXIT_MISMATCH, EXIT_OK, EXIT_PARTIAL, UsageError
from backup.output import Output
from mailsrv.client import JmapClient, open_profile
from mailsrv.config import Config

from .restore_emails import DestIndex, Importer, ImportResult, ItemPlan, Problem, apply_patches, detect, get_emails, patch_for, problem
from .restore_journal import Journal
from .restore_mailboxes import MailboxMap, map_mailboxes
from .restore_objects import RESTORERS, ObjectResult
from .restore_plan import OBJECTS, Plan, Selection, build_plan, format_mailbox_path, parse_mailbox_path
from .restore_progress import restore_progress
from .restore_source import RestoreSource, open_dir_source, open_snapshot_source
from .restore_verify import Verification, verify


@dataclass
class RestoreOptions:
    account: str
    from_dir: str | None = None
    target: str | None = None
    snapshot: str | None = None
    into: str | None = None
    into_mailbox: str | None = None
    selection: Selection = field(default_factory=Selection)
    objects: set[str] = field(default_factory=lambda: set(OBJECTS))
    objects_explicit: bool = False
    dry_run: bool = False
    tmp_dir: str | None = None

    @property
    def dest(self) -> str:
        return self.into or self.account


@dataclass
class MailboxRow:
    """One line of the plan: a mailbox of the backup and what happens to its messages."""

    path: str
    dest: str
    action: str
    to_import: int = 0
    present: int = 0
    to_add: int = 0  # present elsewhere in the account; this mailbox (or keywords) is added

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "dest": self.dest, "action": self.action, "import": self.to_import,
                "present": self.present, "add": self.to_add}


@dataclass
class RestoreReport:
    account: str
    into: str
    source: dict[str, Any]
    dry_run: bool
    selection: dict[str, Any]
    rows: list[MailboxRow] = field(default_factory=list)
    mailboxes: MailboxMap | None = None
    selected: int = 0
    imported: int = 0
    merged: int = 0
    present: int = 0
    to_import: int = 0
    to_merge: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    objects: dict[str, ObjectResult] = field(default_factory=dict)
    objects_explicit: bool = False
    verification: Verification | None = None
    seconds: float = 0.0
    detection: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: mailboxes, detect, write, verify

    @property
    def exit_code(self) -> int:
        if any(p.kind in ("corrupt", "missing-blob") for p in self.problems) or (self.verification and not self.verification.ok):
            return EXIT_MISMATCH
        if self.problems or (self.mailboxes and self.mailboxes.failed):
            return EXIT_PARTIAL
        if self.objects_explicit and any(o.bad for o in self.objects.values()):
            return EXIT_PARTIAL
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        v = self.verification
        return {
            "account": self.account, "into": self.into, "source": self.source, "dry_run": self.dry_run, "selection": self.selection,
            "mailboxes": {
                "plan": [r.to_json() for r in self.rows],
                "created": [t.to_json() for t in self.mailboxes.created] if self.mailboxes else [],
                "substituted": [t.to_json() for t in self.mailboxes.substituted] if self.mailboxes else [],
                "failed": [t.to_json() for t in self.mailboxes.failed] if self.mailboxes else [],
            },
            "emails": {"selected": self.selected, "imported": self.imported, "merged": self.merged, "present": self.present,
                       "to_import": self.to_import, "to_merge": self.to_merge, "failed": len(self.problems), "bytes": self.bytes},
            "problems": [p.to_json() for p in self.problems],
            "objects": {k: o.to_json() for k, o in sorted(self.objects.items())},
            "verification": None if v is None else {
                "ok": v.ok, "checked": v.checked, "downloads": v.downloads,
                "mismatches": [problem_json(i.sha256, d) for i, d in v.mismatches],
                "mailboxes": [c.to_json() for c in v.mailboxes],
            },
            "detection": self.detection,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
        }


def problem_json(sha: str, detail: str) -> dict[str, str]:
    return {"sha256": sha, "detail": detail}


# -- the run ---------------------------------------------------------------------------------------------
def open_source(cfg: Config, opts: RestoreOptions) -> RestoreSource:
    if opts.from_dir and (opts.target or opts.snapshot):
        raise UsageError("--from-dir reads an export directory; it cannot be combined with --target or --snapshot")
    if opts.target or opts.snapshot:
        target = opts.target
        if target is None:
            if len(cfg.targets) != 1:
                names = ", ".join(t.name for t in cfg.targets) or "none configured"
                raise UsageError(f"--snapshot needs --target NAME (configured targets: {names})")
            target = cfg.targets[0].name
        return open_snapshot_source(cfg, target, opts.snapshot or "latest", opts.account, opts.tmp_dir)
    return open_dir_source(opts.from_dir or cfg.export.dir, opts.account)


def run_restore(cfg: Config, opts: RestoreOptions, out: Output) -> RestoreReport:
    started = time.monotonic()
    into_mailbox = parse_mailbox_path(opts.into_mailbox) if opts.into_mailbox else None
    with open_source(cfg, opts) as source:
        report = RestoreReport(source.account, opts.dest, source.description, opts.dry_run, opts.selection.describe(),
                               objects_explicit=opts.objects_explicit)
        plan = build_plan(source.account, source.reader.mailboxes(), source.reader.emails(), opts.selection) if "mail" in opts.objects \
            else Plan([], set(), [])
        report.selected = len(plan.items)
        profile = open_profile(cfg)
        try:
            with profile.open(opts.dest) as client:
                client.session  # noqa: B018 - connect and authenticate before planning anything
                journal = Journal.for_account(cfg.state.dir, cfg.server.url, opts.dest, client.account_id, writable=not opts.dry_run)
                try:
                    if "mail" in opts.objects:
                        restore_mail(client, source, plan, report, journal, out, into_mailbox=into_mailbox, dry_run=opts.dry_run)
                    for kind in ("identities", "sieve", "vacation"):
                        if kind in opts.objects:
                            result = RESTORERS[kind](client, source, dry_run=opts.dry_run)
                            report.objects[kind] = result
                            out.event("restore.object", kind=kind, **result.to_json())
                finally:
                    journal.flush()
        finally:
            profile.close()
    report.seconds = time.monotonic() - started
    return report


def restore_mail(client: JmapClient, source: RestoreSource, plan: Plan, report: RestoreReport, journal: Journal, out: Output, *,
                 into_mailbox: list[str] | None, dry_run: bool) -> None:
    account = source.account
    clock = _Clock(report.timings)
    boxes = map_mailboxes(client, plan.mailboxes, plan.paths, into_mailbox=into_mailbox, dry_run=dry_run)
    report.mailboxes = boxes
    clock.lap("mailboxes")
    for t in boxes.created:
        out.event("restore.mailbox", **t.to_json())
    for t in boxes.substituted:
        out.warn(f"mailbox {format_mailbox_path(t.source_path)!r}: the server refused the name {t.substitute_for!r}; "
                 f"restored as {t.name!r}")
    for t in boxes.failed:
        out.warn(f"mailbox {format_mailbox_path(t.source_path)!r} could not be created: {t.error}")
    limits = client.limits
    workers = max(1, limits.max_concurrent_requests)
    use_digest = client.supports_blob_digest()
    index = detect(client, plan.items, journal, use_digest=use_digest, workers=workers)
    clock.lap("detect")
    report.detection = {"method": "digest" if use_digest else "download", "server_emails": len(index.emails),
                        "digests": index.digests, "downloads": index.downloaded}
    fallback = boxes.base_id if into_mailbox else boxes.inbox_id
    fallback_pending = dry_run and into_mailbox is not None and fallback is None  # the parent is created by the real run
    plans, rows = _plan_items(plan, boxes, index, fallback, fallback_pending, report)
    report.rows = rows
    imports = [p for p in plans if p.action == "import"]
    merges = [p for p in plans if p.action == "merge"]
    report.present = sum(1 for p in plans if p.action == "present")
    report.to_import, report.to_merge = len(imports), len(merges)
    out.event("restore.plan", account=account, into=report.into, mailboxes=[r.to_json() for r in rows], to_import=len(imports),
              to_merge=len(merges), present=report.present)
    if dry_run:
        return
    claimed = {sha: eid for sha, eid in index.by_sha.items()}
    imported: set[str] = set()
    with restore_progress(out, account, len(imports) + len(merges), sum(p.item.size for p in imports)) as progress:
        failed = apply_patches(client, {p.email_id: p.patch for p in merges if p.email_id})
        for p in merges:
            if p.email_id in failed:
                report.problems.append(problem(p.item, "refused", f"adding mailboxes/keywords failed: {failed[p.email_id]}", plan.paths))
            else:
                report.merged += 1
        progress.advance(len(merges))
        source.ensure_blobs(p.item.sha256 for p in imports)
        result = Importer(client, source.blob, source.unfetchable).run(imports, lambda part, n: progress.advance(n, part.bytes))
        imported = set(result.imported)
        report.imported = len(result.imported)
        report.bytes = result.bytes
        claimed.update(result.imported)
        for item, kind, detail in result.problems:
            report.problems.append(problem(item, kind, detail, plan.paths))
        _merge_existing(client, plans, result, claimed, report, plan)
    clock.lap("write")
    for prob in report.problems:
        out.event("restore.problem", account=account, **prob.to_json())
        out.warn(prob.describe(account))
    failed_shas = {p.sha256 for p in report.problems}
    expected = {p.item.sha256: (p.item, p.dest_mailboxes) for p in plans if p.item.sha256 not in failed_shas and p.action != "failed"}
    paths = {}
    for t in boxes.targets.values():
        if t.dest_id:
            paths[t.dest_id] = format_mailbox_path(t.dest_path)
    if fallback and plan.orphans:
        paths.setdefault(fallback, "(inbox)")
    report.verification = verify(client, expected, claimed, imported, paths, journal, use_digest=use_digest, workers=workers)
    clock.lap("verify")
    for item, detail in report.verification.mismatches:
        out.event("restore.mismatch", account=account, sha256=item.sha256, detail=detail)
        out.warn(problem(item, "mismatch", detail, plan.paths).describe(account))


class _Clock:
    def __init__(self, into: dict[str, float]) -> None:
        self.into = into
        self.last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.into[name] = self.into.get(name, 0.0) + now - self.last
        self.last = now


def _plan_items(plan: Plan, boxes: MailboxMap, index: DestIndex, fallback: str | None, fallback_pending: bool,
                report: RestoreReport) -> tuple[list[ItemPlan], list[MailboxRow]]:
    rows: dict[str, MailboxRow] = {}
    for t in boxes.targets.values():
        dest = format_mailbox_path(t.dest_path) + (f" (was {t.substitute_for!r})" if t.substitute_for else "")
        rows[t.source_id] = MailboxRow(format_mailbox_path(t.source_path), dest, t.action)
    orphan_row = MailboxRow("(no mailbox in the backup)", "inbox", "fallback")
    plans: list[ItemPlan] = []
    for item in plan.items:
        sources: list[str | None] = list(item.mailbox_ids) or [None]
        dest_ids = [boxes.dest_id(m) if m else fallback for m in sources]
        failed = [m for m in sources if m and boxes.targets[m].action == "failed"]
        known = [d for d in dest_ids if d]
        # dry run: mailboxes (or the --into-mailbox parent) still to be created
        planned = any(m is not None and boxes.targets[m].action != "failed" and boxes.dest_id(m) is None for m in sources) or \
            (None in sources and fallback_pending)
        if not known and not planned and (failed or fallback is None):
            report.problems.append(problem(item, "unmapped", "none of its mailboxes exists or could be created on the server", plan.paths))
            plans.append(ItemPlan(item, "failed", []))
            continue
        eid = index.by_sha.get(item.sha256)
        if eid is None:
            ip = ItemPlan(item, "import", known)
        else:
            patch = patch_for(index.emails[eid], known, item)
            ip = ItemPlan(item, "merge" if patch or planned else "present", known, eid, patch)
        plans.append(ip)
        for m, dest_id in zip(sources, dest_ids, strict=True):
            row = rows.get(m) if m is not None else orphan_row
            if row is None:
                continue
            if ip.action == "import":
                row.to_import += 1
            elif dest_id and eid and index.emails[eid].mailbox_ids.get(dest_id):
                row.present += 1
            else:
                row.to_add += 1
    ordered = [rows[r.id] for r in sorted(plan.mailboxes, key=lambda r: plan.paths.get(r.id, [r.name])) if r.id in rows]
    if orphan_row.to_import or orphan_row.present or orphan_row.to_add:
        ordered.append(orphan_row)
    return plans, ordered


def _merge_existing(client: JmapClient, plans: list[ItemPlan], result: ImportResult, claimed: dict[str, str], report: RestoreReport,
                    plan: Plan) -> None:
    """Imports the server answered with ``alreadyExists``: add the missing mailboxes/keywords to that email."""
    if not result.existing:
        return
    by_sha = {p.item.sha256: p for p in plans}
    emails = get_emails(client, sorted(set(result.existing.values())))
    patches: dict[str, dict[str, Any]] = {}
    owners: dict[str, ItemPlan] = {}
    for sha, eid in result.existing.items():
        claimed[sha] = eid
        ip = by_sha[sha]
        email = emails.get(eid)
        if email is None:
            detail = f"the server reported it present as {eid}, which it cannot find"
            report.problems.append(problem(ip.item, "refused", detail, plan.paths))
            continue
        patch = patch_for(email, ip.dest_mailboxes, ip.item)
        if patch:
            merged = patches.setdefault(eid, {})
            merged.update(patch)
            owners[eid] = ip
        else:
            report.present += 1
    failed = apply_patches(client, patches)
    for eid, ip in owners.items():
        if eid in failed:
            report.problems.append(problem(ip.item, "refused", f"adding mailboxes/keywords failed: {failed[eid]}", plan.paths))
        else:
            report.merged += 1

