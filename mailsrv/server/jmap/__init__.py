"""mailsrv's JMAP server: importing this package registers every method module."""

from . import (  # noqa: F401 - imported for their @method registrations
    blob,
    core_methods,
    email,
    email_set,
    identity,
    mailbox,
    management,
    quota,
    sieve,
    submission,
    thread,
    vacation,
)
from .core import METHODS, MethodError, RequestError, process

__all__ = ["METHODS", "MethodError", "RequestError", "process"]
