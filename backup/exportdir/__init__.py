"""The on-disk export format: layout, manifest (+ JSON Schema), metadata records."""

from .layout import ExportDir, LayoutError, account_dir_name, blob_relpath, inside, meta_relpath
from .manifest import Manifest, ManifestError, load_manifest, write_manifest
from .records import EmailRecord, MailboxRecord, mailbox_paths

__all__ = [
    "EmailRecord", "ExportDir", "LayoutError", "MailboxRecord", "Manifest", "ManifestError", "account_dir_name", "blob_relpath", "inside",
    "load_manifest", "mailbox_paths", "meta_relpath", "write_manifest",
]
