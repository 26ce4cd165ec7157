"""Exit codes of every mailsidecar program and the exceptions that carry them (contract.md)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 1  # usage or config error
EXIT_CONNECT = 2  # cannot connect / authenticate
EXIT_UNKNOWN = 3  # unknown account or snapshot
EXIT_PARTIAL = 4  # some accounts/targets/messages failed; a rerun resumes
EXIT_MISMATCH = 5  # verification mismatch
EXIT_IO = 7  # local I/O error (disk full, permissions)


class BackupError(Exception):
    """A failure with the exit code it maps to; the message is shown to the operator as one line."""

    exit_code = EXIT_PARTIAL

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(BackupError):
    exit_code = EXIT_USAGE


class ConnectFailure(BackupError):
    exit_code = EXIT_CONNECT


class UnknownObject(BackupError):
    exit_code = EXIT_UNKNOWN


class PartialFailure(BackupError):
    exit_code = EXIT_PARTIAL


class VerificationMismatch(BackupError):
    exit_code = EXIT_MISMATCH


class LocalIOError(BackupError):
    exit_code = EXIT_IO
