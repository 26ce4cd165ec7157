"""The one way mailsidecar writes files: temp file in the same directory → fsync → rename → fsync(dir).

A crash (even ``kill -9`` or power loss) at any point leaves either the old file or the new one, never a
torn mix. Every program's state, manifests and exported metadata go through these helpers.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: Path, mode: str = "wb", perm: int = 0o644) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on clean exit it is fsynced and renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp_path = Path(tmp)
    try:
        os.fchmod(fd, perm)
        f: IO[Any] = os.fdopen(fd, mode) if "b" in mode else os.fdopen(fd, mode, encoding="utf-8", newline="\n")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, perm: int = 0o644) -> None:
    with atomic_open(path, "wb", perm) as f:
        f.write(data)


def atomic_write_json(path: Path, obj: Any, perm: int = 0o644) -> None:
    """Write ``obj`` as pretty, key-sorted JSON (stable bytes for identical content)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode(), perm)


def atomic_write_lines(path: Path, lines: Iterable[str], perm: int = 0o644) -> None:
    """Write text lines (each without its newline) atomically."""
    with atomic_open(path, "w", perm) as f:
        for line in lines:
            f.write(line)
            f.write("\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
