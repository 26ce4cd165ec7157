"""Content-addressed blob files: ``blobs/ab/cd/<sha256>``, written temp → fsync → rename → fsync(dir)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

CHUNK = 1 << 16


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Immutable blobs keyed by the hex sha256 of their bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError("not a sha256 hex digest")
        return self.root / digest[:2] / digest[2:4] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).exists()

    def put(self, data: bytes) -> str:
        """Store ``data`` durably and return its sha256 hex digest."""
        digest = hashlib.sha256(data).hexdigest()
        if self.exists(digest):
            return digest
        fd, tmp = tempfile.mkstemp(dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._publish(Path(tmp), digest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def put_file(self, src: Path) -> tuple[str, int]:
        """Move an already fsynced temp file (under :attr:`tmp`) into place; return (digest, size)."""
        h = hashlib.sha256()
        size = 0
        with open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
        digest = h.hexdigest()
        if self.exists(digest):
            src.unlink(missing_ok=True)
        else:
            self._publish(src, digest)
        return digest, size

    async def put_stream(self, chunks: AsyncIterator[bytes], limit: int) -> tuple[str, int] | None:
        """Stream chunks to a temp file; ``None`` (and nothing kept) if more than ``limit`` bytes arrive."""
        fd, tmp = tempfile.mkstemp(dir=self.tmp)
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        Path(tmp).unlink(missing_ok=True)
                        return None
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            digest = h.hexdigest()
            if self.exists(digest):
                Path(tmp).unlink(missing_ok=True)
            else:
                self._publish(Path(tmp), digest)
            return digest, size
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _publish(self, tmp: Path, digest: str) -> None:
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def iter_read(self, digest: str, chunk: int = CHUNK) -> Iterator[bytes]:
        with open(self.path(digest), "rb") as f:
            while data := f.read(chunk):
                yield data

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size
