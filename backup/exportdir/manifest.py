"""manifest.json: the table of contents of one account's export, written last and atomically.

The pydantic models below are the single source of the format; ``manifest.schema.json`` beside this file
is generated from them (``python -m backup.exportdir.manifest > backup/exportdir/manifest.schema.json``)
and a test keeps the two equal. Readers validate with :func:`load_manifest`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mailsrv.fsio import atomic_write_json

from .layout import FORMAT_VERSION, MANIFEST


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountInfo(_Model):
    name: str = Field(description="Account name as the server lists it")
    id: str = Field(description="JMAP accountId on the server at export time")
    emails: list[str] = Field(default_factory=list, description="Addresses of the account, if known")


class ServerInfo(_Model):
    profile: str = Field(description="embedded | stalwart-0.15 | stalwart-0.16 | generic")
    url: str = Field(description="Base URL the export was read from (no credentials)")
    version: str | None = Field(default=None, description="Server version, when the server reports it")
    capabilities: list[str] = Field(default_factory=list, description="JMAP capabilities of the account")


class ToolInfo(_Model):
    name: Literal["mail-backup"] = "mail-backup"
    version: str


class RunInfo(_Model):
    id: str = Field(description="Run id, YYYYMMDDTHHMMSSZ-xxxxxx; also part of the metadata file names")
    started: str = Field(description="RFC 3339 UTC")
    finished: str = Field(description="RFC 3339 UTC")
    mode: Literal["full", "incremental", "resync"] = Field(
        description="full: first export; incremental: JMAP /changes; resync: full id-set diff after cannotCalculateChanges"
    )
    previous: str | None = Field(default=None, description="Run id this run was based on")


class FileEntry(_Model):
    path: str = Field(description="Path relative to the account directory")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    count: int = Field(ge=0, description="Records in the file (lines of a JSONL file, items of a JSON array)")


class Counts(_Model):
    emails: int = Field(ge=0)
    mailboxes: int = Field(ge=0)
    blobs: int = Field(ge=0, description="Distinct message and script blobs referenced")
    bytes: int = Field(ge=0, description="Total size of the referenced blobs")
    identities: int = Field(default=0, ge=0)
    sieve_scripts: int = Field(default=0, ge=0)


class ExportError(_Model):
    kind: str = Field(description="What failed, e.g. blobNotFound, downloadFailed")
    email_id: str | None = None
    blob_id: str | None = None
    detail: str = ""


class Manifest(_Model):
    format: Literal["mailsidecar-export"] = "mailsidecar-export"
    version: int = Field(default=FORMAT_VERSION, ge=1)
    account: AccountInfo
    server: ServerInfo
    tool: ToolInfo
    run: RunInfo
    states: dict[str, str] = Field(default_factory=dict, description="JMAP state per type at the start of the run")
    counts: Counts
    files: dict[str, FileEntry] = Field(description="Metadata files by kind: emails, mailboxes, identities, sieve, vacation, quota")
    unsupported: dict[str, str] = Field(
        default_factory=dict, description="Object kinds the server does not offer, with the reason; never silently dropped"
    )
    errors: list[ExportError] = Field(default_factory=list, description="Items that could not be exported in this run")


class ManifestError(Exception):
    """A manifest that is missing, unreadable or not in the format."""


def load_manifest(account_dir: Path) -> Manifest:
    path = account_dir / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (no complete export yet)") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable manifest: {exc}") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ManifestError(f"{path}: {where}: {first['msg']}") from None


def write_manifest(account_dir: Path, manifest: Manifest) -> None:
    """Publish the manifest atomically; this is the commit point of an export run."""
    atomic_write_json(account_dir / MANIFEST, manifest.model_dump(mode="json"))


def json_schema() -> dict[str, object]:
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://mailsidecar.invalid/schemas/export-manifest-v1.json"
    schema["title"] = "mailsidecar export manifest"
    return schema


if __name__ == "__main__":
    sys.stdout.write(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
