"""Mailbox and Email helpers of :class:`~.jmap.JmapClient` (RFC 8621): paging, batching, changes, import.

Reads are batched at the session's ``maxObjectsInGet`` and pack several calls into one request up to
``maxCallsInRequest``; /changes pages are merged; ``cannotCalculateChanges`` raises
:class:`~.errors.CannotCalculateChanges` so callers fall back to a full listing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .calls import Invocation, ref
from .errors import ProtocolError
from .models import (
    CORE,
    EMAIL_PROPERTIES,
    MAIL,
    MAILBOX_PROPERTIES,
    Changes,
    Email,
    EmailImportResult,
    Mailbox,
    from_json,
)

if TYPE_CHECKING:
    from .jmap import JmapCore as _Base
else:
    _Base = object

MAIL_USING = (CORE, MAIL)
MAX_QUERY_RESTARTS = 3


@dataclass
class EmailImport:
    """One entry of an Email/import (RFC 8621 §4.8): an uploaded message and where it goes."""

    blob_id: str
    mailbox_ids: dict[str, bool]
    keywords: dict[str, bool] = field(default_factory=dict)
    received_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"blobId": self.blob_id, "mailboxIds": self.mailbox_ids, "keywords": self.keywords}
        if self.received_at:
            out["receivedAt"] = self.received_at
        return out


class MailMethods(_Base):
    """Mixin: Mailbox and Email methods."""

    def query_ids(self, type_name: str, *, filter: Mapping[str, Any] | None = None, sort: list[dict[str, Any]] | None = None,
                  account_id: str | None = None, using: Sequence[str] = MAIL_USING, page_size: int | None = None) -> list[str]:
        """All ids of ``<type>/query``, paged with several query calls per request."""
        aid = self.resolve_account(account_id)
        limits = self.limits
        page = page_size or max(1, limits.max_objects_in_get)
        per_request = max(1, limits.max_calls_in_request)
        ids: list[str] = []
        seen: set[str] = set()
        position = 0
        while True:
            calls = [
                Invocation(f"{type_name}/query", _query_args(aid, filter, sort, position + n * page, page), f"q{n}")
                for n in range(per_request)
            ]
            resp = self.request(calls, using)
            done = False
            for call in calls:
                args = resp.args(call.id)
                got = [str(i) for i in args.get("ids") or []]
                ids += [i for i in got if i not in seen]
                seen.update(got)
                pos = int(args.get("position", call.args["position"]))
                done, capped = _page_end(args, pos, len(got), page)
                if done or capped:
                    position, page = pos + len(got), max(1, len(got)) if capped else page
                    break
            if done:
                return ids
            if not capped:
                position += per_request * page

    # -- mailboxes ---------------------------------------------------------------------------------
    def mailboxes(self, *, account_id: str | None = None, properties: list[str] | None = None) -> list[Mailbox]:
        """Every mailbox of the account (Mailbox/query paged, Mailbox/get batched)."""
        ids = self.query_ids("Mailbox", account_id=account_id)
        objs, _, _ = self.get_objects("Mailbox", ids, properties or MAILBOX_PROPERTIES, account_id=account_id)
        return [from_json(Mailbox, o) for o in objs]

    def mailbox_state(self, *, account_id: str | None = None) -> str:
        return self._state("Mailbox", account_id)

    def mailbox_changes(self, since_state: str, *, account_id: str | None = None, max_changes: int | None = None) -> Changes:
        return self.changes("Mailbox", since_state, account_id=account_id, max_changes=max_changes)

    # -- emails ------------------------------------------------------------------------------------
    def get_emails(self, ids: Sequence[str], *, account_id: str | None = None, properties: list[str] | None = None) -> list[Email]:
        objs, _, _ = self.get_objects("Email", ids, properties or EMAIL_PROPERTIES, account_id=account_id)
        return [from_json(Email, o) for o in objs]

    def iter_emails(self, *, account_id: str | None = None, filter: Mapping[str, Any] | None = None,
                    sort: list[dict[str, Any]] | None = None, properties: list[str] | None = None) -> Iterator[Email]:
        """Every email matching ``filter``: pairs of Email/query (a page of maxObjectsInGet) + Email/get
        (back-referenced ids), as many pairs per request as maxCallsInRequest allows.

        Each email present for the whole listing is yielded exactly once; if the query result changes while
        paging (mail arrives or is deleted) the listing starts over and skips what was already yielded.
        """
        aid = self.resolve_account(account_id)
        props = properties or EMAIL_PROPERTIES
        sort = sort or [{"property": "receivedAt", "isAscending": True}]
        limits = self.limits
        page = max(1, limits.max_objects_in_get)
        pairs = max(1, limits.max_calls_in_request // 2)
        seen: set[str] = set()
        restarts = 0
        position, query_state, changed = 0, None, False
        while True:
            calls: list[Invocation] = []
            for n in range(pairs):
                calls.append(Invocation("Email/query", _query_args(aid, filter, sort, position + n * page, page), f"q{n}"))
                calls.append(Invocation("Email/get", {"accountId": aid, "#ids": ref(f"q{n}", "Email/query", "/ids"),
                                                      "properties": props}, f"g{n}"))
            resp = self.request(calls, MAIL_USING)
            done = capped = False
            for n in range(pairs):
                q, g = resp.args(f"q{n}"), resp.args(f"g{n}")
                state = q.get("queryState")
                if query_state is None:
                    query_state = state
                elif state != query_state:
                    changed = True
                for obj in g.get("list") or []:
                    email = from_json(Email, obj)
                    if email.id not in seen:
                        seen.add(email.id)
                        yield email
                got = len(q.get("ids") or [])
                pos = int(q.get("position", position + n * page))
                done, capped = _page_end(q, pos, got, page)
                if done or capped:
                    position, page = pos + got, max(1, got) if capped else page
                    break
            if done:
                if changed and restarts < MAX_QUERY_RESTARTS:
                    restarts += 1
                    position, query_state, changed, page = 0, None, False, max(1, limits.max_objects_in_get)
                    continue
                return
            if not capped:
                position += pairs * page

    def email_state(self, *, account_id: str | None = None) -> str:
        return self._state("Email", account_id)

    def email_changes(self, since_state: str, *, account_id: str | None = None, max_changes: int | None = None) -> Changes:
        return self.changes("Email", since_state, account_id=account_id, max_changes=max_changes)

    def email_import(self, emails: Mapping[str, EmailImport], *, account_id: str | None = None) -> EmailImportResult:
        """Email/import of uploaded blobs, keyed by creation id; chunks of maxObjectsInSet, one call each.

        Per-message failures are in ``not_created`` (``alreadyExists`` carries the existing id), not raised.
        """
        aid = self.resolve_account(account_id)
        limits = self.limits
        items = list(emails.items())
        per_call = max(1, limits.max_objects_in_set)
        per_request = max(1, limits.max_calls_in_request)
        result = EmailImportResult({}, {})
        calls_all = [
            Invocation("Email/import", {"accountId": aid, "emails": {k: v.to_json() for k, v in items[i : i + per_call]}}, f"i{i}")
            for i in range(0, len(items), per_call)
        ]
        for first in range(0, len(calls_all), per_request):
            calls = calls_all[first : first + per_request]
            resp = self.request(calls, MAIL_USING)
            for call in calls:
                part = EmailImportResult.parse(resp.args(call.id))
                result.created.update(part.created)
                result.not_created.update(part.not_created)
                result.new_state = part.new_state or result.new_state
        return result

    # -- state and changes -------------------------------------------------------------------------
    def _state(self, type_name: str, account_id: str | None) -> str:
        aid = self.resolve_account(account_id)
        resp = self.request([Invocation(f"{type_name}/get", {"accountId": aid, "ids": [], "properties": ["id"]}, "s")], MAIL_USING)
        state = resp.args("s").get("state")
        if not isinstance(state, str):
            raise ProtocolError(f"{type_name}/get returned no state")
        return state

    def changes(self, type_name: str, since_state: str, *, account_id: str | None = None, max_changes: int | None = None,
                using: Sequence[str] = MAIL_USING) -> Changes:
        """``<type>/changes`` from ``since_state`` to now, all pages merged (RFC 8620 §5.2)."""
        aid = self.resolve_account(account_id)
        created: dict[str, None] = {}
        updated: dict[str, None] = {}
        destroyed: dict[str, None] = {}
        state = since_state
        while True:
            args: dict[str, Any] = {"accountId": aid, "sinceState": state}
            if max_changes:
                args["maxChanges"] = max_changes
            resp = self.request([Invocation(f"{type_name}/changes", args, "c")], using)
            page = resp.args("c")
            for i in page.get("created") or []:
                created[i] = None
            for i in page.get("updated") or []:
                if i not in created:
                    updated[i] = None
            for i in page.get("destroyed") or []:
                if i in created:  # created and destroyed within the window: never existed for the caller
                    del created[i]
                    continue
                updated.pop(i, None)
                destroyed[i] = None
            new_state = page.get("newState")
            if not isinstance(new_state, str):
                raise ProtocolError(f"{type_name}/changes returned no newState")
            if not page.get("hasMoreChanges") or new_state == state:
                return Changes(since_state, new_state, list(created), list(updated), list(destroyed))
            state = new_state


def _query_args(aid: str, filter: Mapping[str, Any] | None, sort: list[dict[str, Any]] | None, position: int,
                limit: int) -> dict[str, Any]:
    args: dict[str, Any] = {"accountId": aid, "position": position, "limit": limit, "calculateTotal": True}
    if filter:
        args["filter"] = dict(filter)
    if sort:
        args["sort"] = sort
    return args


def _page_end(q: Mapping[str, Any], position: int, got: int, asked: int) -> tuple[bool, bool]:
    """``(done, capped)`` for one query page: the end was reached, or the server returned fewer than asked
    while more remain (it capped ``limit``), so later pages of the same request are misaligned."""
    total = q.get("total")
    if isinstance(total, int):
        if position + got >= total or got == 0:
            return True, False
        return False, got < asked
    return got < asked, False
