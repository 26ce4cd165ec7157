"""Reading and committing one account's export directory.

A run (1) streams blobs into ``blobs/`` (each temp → fsync → rename, content addressed, never rewritten),
(2) writes its metadata files under new names, (3) publishes ``manifest.json`` atomically — the commit
point — and only then (4) removes metadata files and blobs the new manifest no longer references.
A crash before (3) leaves the previous manifest and every file it names intact; a crash during (4)
leaves only garbage that the next run removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailsrv.fsio import atomic_open, fsync_dir

from .layout import BLOBS, META, blob_relpath, inside, meta_relpath
from .manifest import FileEntry, Manifest, ManifestError, load_manifest, write_manifest
from .records import EmailRecord, MailboxRecord

TMP = ".tmp"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class AccountReader:
    """A complete export of one account, as its manifest describes it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.manifest: Manifest = load_manifest(self.root)

    def file(self, kind: str) -> Path | None:
        entry = self.manifest.files.get(kind)
        return inside(self.root, entry.path) if entry else None

    def blob_path(self, sha256: str) -> Path:
        return self.root / blob_relpath(sha256)

    def emails(self) -> Iterator[EmailRecord]:
        path = self.file("emails")
        if path is None:
            return
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield EmailRecord.model_validate_json(line)
                    except ValueError as exc:
                        raise ManifestError(f"{path}:{n}: not an email record: {exc}") from None

    def mailboxes(self) -> list[MailboxRecord]:
        data = self.json("mailboxes")
        return [MailboxRecord.model_validate(m) for m in data or []]

    def json(self, kind: str) -> Any:
        path = self.file(kind)
        if path is None:
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{path}: unreadable: {exc}") from None

    def check_files(self) -> list[str]:
        """Metadata files whose size or sha256 differ from the manifest (problems, as sentences)."""
        problems = []
        for kind, entry in self.manifest.files.items():
            path = inside(self.root, entry.path)
            try:
                digest, size = sha256_file(path)
            except OSError as exc:
                problems.append(f"{kind}: {entry.path}: {exc.strerror}")
                continue
            if (digest, size) != (entry.sha256, entry.size):
                problems.append(f"{kind}: {entry.path}: content differs from the manifest")
        return problems


@dataclass
class MetaFile:
    kind: str
    relpath: str
    entry: FileEntry


class AccountWriter:
    """Builds the next run of one account's export; nothing is visible until :meth:`commit`."""

    def __init__(self, root: Path, run_id: str | None = None) -> None:
        self.root = Path(root)
        self.run_id = run_id or new_run_id()
        self.tmp = self.root / TMP
        self.tmp.mkdir(parents=True, exist_ok=True)
        (self.root / BLOBS).mkdir(exist_ok=True)
        (self.root / META).mkdir(exist_ok=True)
        self._meta: dict[str, MetaFile] = {}

    # -- blobs ---------------------------------------------------------------------------------------
    def has_blob(self, sha256: str) -> bool:
        return (self.root / blob_relpath(sha256)).exists()

    def temp_blob(self) -> Path:
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="blob-")
        os.close(fd)
        return Path(name)

    def publish_blob(self, tmp: Path, sha256: str) -> None:
        """Move a fully written and fsynced temp file to its content address."""
        final = self.root / blob_relpath(sha256)
        if final.exists():
            tmp.unlink(missing_ok=True)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        fsync_dir(final.parent)

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha):
            tmp = self.temp_blob()
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.publish_blob(tmp, sha)
        return sha

    # -- metadata --------------------------------------------------------------------------------------
    def write_jsonl(self, kind: str, records: Iterable[EmailRecord]) -> FileEntry:
        rel = meta_relpath(kind, self.run_id, "jsonl")
        h = hashlib.sha256()
        count = size = 0
        with atomic_open(self.root / rel, "wb") as f:
            for rec in records:
                line = rec.model_dump_json().encode() + b"\n"
                f.write(line)
                h.update(line)
                size += len(line)
                count += 1
        return self._remember(kind, rel, FileEntry(path=rel, sha256=h.hexdigest(), size=size, count=count))

    def write_json(self, kind: str, obj: Any) -> FileEntry:
        rel = meta_relpath(kind, self.run_id, "json")
        data = (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()
        with atomic_open(self.root / rel, "wb") as f:
            f.write(data)
        count = len(obj) if isinstance(obj, list | dict) else 1
        return self._remember(kind, rel, FileEntry(path=rel, sha256=hashlib.sha256(data).hexdigest(), size=len(data), count=count))

    def _remember(self, kind: str, rel: str, entry: FileEntry) -> FileEntry:
        self._meta[kind] = MetaFile(kind, rel, entry)
        return entry

    @property
    def files(self) -> dict[str, FileEntry]:
        return {k: m.entry for k, m in self._meta.items()}

    # -- commit ----------------------------------------------------------------------------------------
    def commit(self, manifest: Manifest, referenced_blobs: set[str]) -> None:
        """Publish ``manifest`` (the commit point), then drop what it no longer references."""
        write_manifest(self.root, manifest)
        self.collect_garbage(manifest, referenced_blobs)

    def collect_garbage(self, manifest: Manifest, referenced_blobs: set[str]) -> None:
        keep = {entry.path for entry in manifest.files.values()}
        for path in (self.root / META).iterdir():
            if f"{META}/{path.name}" not in keep:
                path.unlink(missing_ok=True)
        for blob in _files_under(str(self.root / BLOBS), depth=3):  # blobs/ab/cd/<sha256>
            if blob.name not in referenced_blobs:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(blob.path)
        for path in self.tmp.iterdir():
            path.unlink(missing_ok=True)

    def abandon(self) -> None:
        """Forget an unfinished run: remove its temp files and unpublished metadata (blobs stay for reuse)."""
        for meta in self._meta.values():
            (self.root / meta.relpath).unlink(missing_ok=True)
        for path in self.tmp.iterdir():
            path.unlink(missing_ok=True)


def _files_under(directory: str, depth: int) -> Iterator[os.DirEntry[str]]:
    """The files exactly ``depth`` levels below ``directory`` (without following symlinks)."""
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except FileNotFoundError:
        return
    for entry in entries:
        if depth == 1:
            if entry.is_file(follow_symlinks=False):
                yield entry
        elif entry.is_dir(follow_symlinks=False):
            yield from _files_under(entry.path, depth - 1)
