"""Authentication-failure tracking and per-IP bans, shared by SMTP and HTTP."""

from __future__ import annotations

import time
from collections import defaultdict, deque

from .metrics import Metrics
from .store.db import Database


class AuthGuard:
    """Ban an IP for ``duration`` seconds after ``failures`` failed logins within ``window`` seconds.

    Loopback is not exempt: operators test bans from the machine itself. Bans survive restarts (table ``bans``).
    """

    def __init__(self, db: Database, metrics: Metrics, failures: int, window: float, duration: float) -> None:
        self.db = db
        self.metrics = metrics
        self.failures = failures
        self.window = window
        self.duration = duration
        self._recent: dict[str, deque[float]] = defaultdict(deque)

    def is_banned(self, ip: str) -> bool:
        row = self.db.one("SELECT until FROM bans WHERE ip=?", (ip,))
        return bool(row and row[0] > time.time())

    def success(self, ip: str) -> None:
        self.metrics.inc("auth_success")
        self._recent.pop(ip, None)

    def failure(self, ip: str) -> bool:
        """Record a failed login; True if this failure banned the IP."""
        self.metrics.inc("auth_failed")
        now = time.monotonic()
        q = self._recent[ip]
        q.append(now)
        while q and q[0] < now - self.window:
            q.popleft()
        if len(q) >= self.failures:
            q.clear()
            with self.db.tx() as c:
                c.execute(
                    "INSERT INTO bans(ip, until, kind) VALUES(?,?,'authentication') "
                    "ON CONFLICT(ip) DO UPDATE SET until=excluded.until",
                    (ip, time.time() + self.duration),
                )
            self.metrics.inc("security_authentication_ban")
            return True
        return False

    def unban(self, ip: str) -> bool:
        with self.db.tx() as c:
            return c.execute("DELETE FROM bans WHERE ip=?", (ip,)).rowcount > 0
