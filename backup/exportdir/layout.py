"""Where things live in an export directory; the only place that turns names into paths.

```
EXPORT_DIR/
  .mailsidecar-export          marker with the format version (we never write into a foreign directory)
  <account-dir>/               one per account; the real account name is in its manifest
    manifest.json              written last and atomically: the export's table of contents
    blobs/ab/cd/<sha256>       raw bytes (RFC 5322 messages, Sieve scripts), content addressed
    meta/<kind>-<run>.json[l]  metadata of one run: emails (JSONL), mailboxes, identities, sieve, vacation, quota
```
Account names come from the server and may be hostile ("..", "a/b", NUL, 300 characters, names equal
to our own file names): they become a directory name only when they are plainly safe, otherwise a
stable hash-derived name. Mailbox names never become paths.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from mailsrv.fsio import atomic_write_bytes

MARKER = ".mailsidecar-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BLOBS = "blobs"
META = "meta"
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")
_RESERVED = {MANIFEST, BLOBS, META, MARKER}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_RUN_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")


class LayoutError(Exception):
    """The export directory is not usable (not ours, or a path would escape it)."""


def account_dir_name(account: str) -> str:
    """A directory name for ``account``: the name itself when plainly safe, else ``x-<hash>``."""
    if _SAFE.fullmatch(account) and account not in _RESERVED and not account.endswith((".tmp", ".lock")):
        return account
    return "x-" + hashlib.sha256(account.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def blob_relpath(sha256: str) -> str:
    if not _HEX64.fullmatch(sha256):
        raise LayoutError(f"not a sha256 digest: {sha256!r}")
    return f"{BLOBS}/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def meta_relpath(kind: str, run_id: str, ext: str) -> str:
    if kind not in {"emails", "mailboxes", "identities", "sieve", "vacation", "quota"} or not _RUN_ID.fullmatch(run_id):
        raise LayoutError(f"bad metadata file name: {kind}-{run_id}")
    return f"{META}/{kind}-{run_id}.{ext}"


def inside(root: Path, relpath: str) -> Path:
    """Resolve ``relpath`` (from a manifest, i.e. untrusted) under ``root``; refuse anything escaping it."""
    if not relpath or relpath.startswith("/") or "\x00" in relpath or any(p in ("..", "") for p in relpath.split("/")):
        raise LayoutError(f"refusing path {relpath!r} in manifest")
    return root / relpath


class ExportDir:
    """An export directory (created on first use, refused if it holds something else)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / MARKER
        if marker.exists():
            self.check_marker()
            return
        foreign = [p.name for p in self.root.iterdir() if not p.name.startswith(".")]
        if foreign:
            raise LayoutError(f"{self.root} is not empty and is not a mailsidecar export directory (found {foreign[0]!r})")
        atomic_write_bytes(marker, f"{FORMAT_VERSION}\n".encode())

    def check_marker(self) -> None:
        try:
            version = int((self.root / MARKER).read_text().strip())
        except (OSError, ValueError):
            raise LayoutError(f"{self.root} is not a mailsidecar export directory (no readable {MARKER})") from None
        if version > FORMAT_VERSION:
            raise LayoutError(f"{self.root} holds export format {version}; this version reads up to {FORMAT_VERSION}")

    def account(self, name: str) -> Path:
        return self.root / account_dir_name(name)

    def account_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir() and (p / MANIFEST).exists()) if self.root.exists() else []
