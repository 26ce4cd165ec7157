"""JMAP ids in Stalwart's encoding: base32 over ``abcdefghijklmnopqrstuvwxyz792013``, most significant first.

A principal's numeric id from the management API converts to its JMAP accountId with :func:`jmap_id`,
exactly as on Stalwart, so clients that do that conversion work unchanged against mailsrv.
"""

from __future__ import annotations

ALPHABET = "abcdefghijklmnopqrstuvwxyz792013"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


def jmap_id(n: int) -> str:
    """Encode a non-negative integer id."""
    if n < 0:
        raise ValueError("ids are non-negative")
    if n == 0:
        return "a"
    s = ""
    while n:
        s, n = ALPHABET[n & 31] + s, n >> 5
    return s


def parse_id(s: object) -> int | None:
    """Decode an id; ``None`` for anything that is not a valid encoded id (never raises)."""
    if not isinstance(s, str) or not s or len(s) > 13:
        return None
    n = 0
    for c in s:
        v = _INDEX.get(c)
        if v is None:
            return None
        n = (n << 5) | v
    if jmap_id(n) != s:  # reject non-canonical spellings such as leading "a"
        return None
    return n
