"""``mail-backup maildir``: a readable Maildir++ copy of one account's export; no mail server needed.

Layout (Maildir++, as Dovecot and Courier read it)::

    DEST/cur new tmp                 the mailbox with role ``inbox``
    DEST/.Projects.2026/cur new tmp  every other mailbox: "." + the path of names, joined with "."
    DEST/.Projects.2026/maildirfolder

Folder names: each mailbox name is encoded in IMAP modified UTF-7 (RFC 3501 §5.1.3: non-ASCII as ``&…-``,
``&`` as ``&-``) and then the characters Maildir++ cannot hold are escaped the way Dovecot's listescape plugin
does, as ``\\NN`` hex: ``\\`` → ``\\5c``, ``.`` → ``\\2e``, ``/`` → ``\\2f``, a leading ``~`` → ``\\7e``. So
``Reisen ✈️`` is ``.Reisen &Jwj+Dw-``, ``a.b/c`` is ``.a\\2eb\\2fc``, ``..`` is ``.\\2e\\2e``. A name whose
encoding exceeds 100 bytes is shortened and ends in ``~`` + 8 hex digits of its sha256; a folder whose whole
name would exceed 255 bytes becomes ``.x-<24 hex digits>`` (its place in the hierarchy is lost, not its mail).
Names never become paths by themselves: every folder is one directory entry directly under DEST.

Messages: the raw bytes as exported (line endings unchanged), in ``cur/`` as
``<receivedAt unix time>.<email id>.<host>:2,<flags>`` with mtime = receivedAt. Flags from keywords:
``$draft``→D, ``$flagged``→F, ``$forwarded``→P, ``$answered``→R, ``$seen``→S, ``$deleted``→T; other keywords
become Dovecot's lowercase keyword letters, listed in the folder's ``dovecot-keywords`` (at most 26 per
folder). An email in two mailboxes is written to both.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from backup.errors import LocalIOError, UsageError
from backup.exportdir import EmailRecord, MailboxRecord
from backup.output import Output

from .export_progress import export_progress

FLAG_OF = {"$draft": "D", "$flagged": "F", "$forwarded": "P", "$answered": "R", "$seen": "S", "$deleted": "T"}
MAX_COMPONENT = 100
MAX_NAME = 255
CHUNK = 2000
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEYWORD = re.compile(r"[!-~]{1,200}")


# -- names ------------------------------------------------------------------------------------------------
def mutf7(text: str) -> str:
    """IMAP modified UTF-7 (RFC 3501 §5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be", "surrogatepass")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def _escape(encoded: str) -> str:
    out = encoded.replace("\\", "\\5c").replace(".", "\\2e").replace("/", "\\2f")
    return "\\7e" + out[1:] if out.startswith("~") else out


def folder_component(name: str) -> str:
    """One mailbox name as a Maildir++ name component (see the module docstring)."""
    if not name:
        return "\\00"
    full = _escape(mutf7(name))
    if len(full.encode()) <= MAX_COMPONENT:
        return full
    tag = "~" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    lo, hi = 0, len(name)
    while lo < hi:  # the longest prefix whose encoding, with the tag, fits
        mid = (lo + hi + 1) // 2
        if len(_escape(mutf7(name[:mid] + tag)).encode()) <= MAX_COMPONENT:
            lo = mid
        else:
            hi = mid - 1
    return _escape(mutf7(name[:lo] + tag))


def folder_name(path: list[str]) -> str:
    """The Maildir++ directory name (``.A.B``) of a mailbox path; always one safe directory entry."""
    name = "." + ".".join(folder_component(n) for n in path)
    if len(name.encode()) > MAX_NAME:
        name = ".x-" + hashlib.sha256("\x00".join(path).encode("utf-8", "surrogatepass")).hexdigest()[:24]
    if "/" in name or "\x00" in name or name in (".", ".."):
        raise ValueError(f"unsafe folder name {name!r}")  # cannot happen: escaping removes them
    return name


def message_flags(keywords: dict[str, bool]) -> str:
    return "".join(sorted({FLAG_OF[k.lower()] for k, v in keywords.items() if v and k.lower() in FLAG_OF}))


def _host() -> str:
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


def _unique(email_id: str) -> str:
    return email_id if _SAFE_ID.fullmatch(email_id) else "x" + hashlib.sha256(email_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]


# -- building ---------------------------------------------------------------------------------------------
@dataclass
class Folder:
    """One Maildir of the tree: where it is and which keyword letters it uses."""

    path: Path
    label: str
    keywords: dict[str, str] = field(default_factory=dict)  # keyword (lower-case) → letter
    messages: int = 0
    dropped_keywords: set[str] = field(default_factory=set)

    def letter(self, keyword: str) -> str | None:
        k = keyword.lower()
        if k in self.keywords:
            return self.keywords[k]
        if len(self.keywords) >= 26 or not _KEYWORD.fullmatch(keyword):
            self.dropped_keywords.add(keyword)
            return None
        self.keywords[k] = chr(ord("a") + len(self.keywords))
        return self.keywords[k]


@dataclass
class MaildirResult:
    account: str
    dest: Path
    folders: int = 0
    messages: int = 0
    files: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"event": "maildir.summary", "account": self.account, "dest": str(self.dest), "folders": self.folders,
                "messages": self.messages, "files": self.files, "bytes": self.bytes, "missing": self.missing, "notes": self.notes}


def prepare_dest(dest: Path) -> None:
    """DEST must be an empty directory or not exist (then it is created)."""
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir():
            raise UsageError(f"{dest}: exists and is not a directory")
        if any(dest.iterdir()):
            raise UsageError(f"{dest}: not empty (the Maildir is written into an empty or new directory)")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalIOError(f"{dest}: {exc.strerror or exc}") from None


def _maildir(path: Path, sub: bool) -> None:
    for d in ("cur", "new", "tmp"):
        (path / d).mkdir(parents=True, exist_ok=True)
    if sub:
        (path / "maildirfolder").touch()


class MaildirBuilder:
    """Writes one account's emails into a Maildir++ tree under ``dest``."""

    def __init__(self, dest: Path, mailboxes: list[MailboxRecord]) -> None:
        self.dest = dest
        self.host = _host()
        self.folders: dict[str, Folder] = {}
        inbox = next((m for m in sorted(mailboxes, key=lambda m: m.id) if m.role == "inbox"), None)
        _maildir(dest, sub=False)
        self.root = Folder(dest, "INBOX")
        used: set[str] = set()
        for m in sorted(mailboxes, key=lambda m: (len(m.path), m.id)):
            if inbox is not None and m.id == inbox.id:
                self.folders[m.id] = self.root
                continue
            self.folders[m.id] = self._folder(m.path or [m.name], m.id, used)

    def _folder(self, path: list[str], key: str, used: set[str]) -> Folder:
        name = folder_name(path)
        if name.lower() in used:  # distinct mailboxes must not share a Maildir
            name = (name[: MAX_NAME - 10] + "~" + hashlib.sha256(key.encode()).hexdigest()[:8])
        used.add(name.lower())
        target = self.dest / name
        if target.parent != self.dest:
            raise ValueError(f"folder {name!r} would leave {self.dest}")
        _maildir(target, sub=True)
        return Folder(target, "/".join(path))

    def folder_for(self, mailbox_id: str) -> Folder:
        found = self.folders.get(mailbox_id)
        if found is None:
            found = self._folder([f"(unknown mailbox {mailbox_id})"], mailbox_id, {f.path.name.lower() for f in self.folders.values()})
            self.folders[mailbox_id] = found
        return found

    def add(self, record: EmailRecord, blob: Path) -> int:
        """Write the email into each of its mailboxes; returns the files written."""
        when = datetime.fromisoformat(record.received_at).timestamp()
        boxes = record.mailbox_ids or ["(none)"]
        written = 0
        for mid in dict.fromkeys(boxes):
            folder = self.folder_for(mid)
            flags = message_flags(record.keywords)
            letters = sorted({x for k, v in record.keywords.items() if v and k.lower() not in FLAG_OF
                              if (x := folder.letter(k)) is not None})
            name = f"{int(when)}.{_unique(record.id)}.{self.host}:2,{flags}{''.join(letters)}"
            tmp = folder.path / "tmp" / name.split(":")[0]
            shutil.copyfile(blob, tmp)
            os.utime(tmp, (when, when))
            os.replace(tmp, folder.path / "cur" / name)
            folder.messages += 1
            written += 1
        return written

    def finish(self) -> list[str]:
        """Write each folder's ``dovecot-keywords``; returns notes about keywords that did not fit."""
        notes = []
        seen: set[int] = set()
        for folder in [*self.folders.values(), self.root]:
            if id(folder) in seen:
                continue
            seen.add(id(folder))
            if folder.keywords:
                lines = [f"{ord(letter) - ord('a')} {kw}" for kw, letter in sorted(folder.keywords.items(), key=lambda i: i[1])]
                (folder.path / "dovecot-keywords").write_text("\n".join(lines) + "\n", encoding="utf-8")
            if folder.dropped_keywords:
                notes.append(f"{folder.label}: {len(folder.dropped_keywords)} keyword(s) not representable in Maildir "
                             f"(more than 26, or not IMAP atoms): {', '.join(sorted(folder.dropped_keywords)[:5])}")
        return notes


def write_maildir(source: Any, dest: Path, out: Output) -> MaildirResult:
    """Materialise ``source`` (a :class:`~backup.actions.restore_source.RestoreSource`) into ``dest``."""
    reader = source.reader
    result = MaildirResult(reader.manifest.account.name, dest)
    prepare_dest(dest)
    try:
        builder = MaildirBuilder(dest, reader.mailboxes())
        records = list(reader.emails())
        with export_progress(out, "maildir.progress") as board:
            progress = board.account(f"{result.account} → {dest}")
            progress.start(len(records), sum(r.size for r in records))
            for first in range(0, len(records), CHUNK):
                chunk = records[first : first + CHUNK]
                source.ensure_blobs({r.sha256 for r in chunk})
                for r in chunk:
                    blob = source.blob(r.sha256)
                    if not blob.is_file():
                        result.missing.append(f"message {r.id}: blob {r.sha256[:12]}… is missing from the export")
                    else:
                        result.files += builder.add(r, blob)
                        result.messages += 1
                        result.bytes += r.size
                    progress.advance(1, r.size)
            progress.finish()
        result.notes += builder.finish()
        result.folders = len({id(f) for f in builder.folders.values()} | {id(builder.root)})
    except OSError as exc:
        raise LocalIOError(f"{exc.filename or dest}: {exc.strerror or exc} (the Maildir in {dest} is incomplete)") from None
    return result
