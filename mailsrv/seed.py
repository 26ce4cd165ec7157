"""``mailsrv seed``: fill accounts with realistic, reproducible mail for demos, tests and benchmarks.

The generated mailboxes look like a few years of real use: threads (Message-ID / In-Reply-To / References),
several scripts and transfer encodings, multipart/alternative with HTML, attachments (a few of 1-2 MB),
forwarded messages, nested folders, keywords, and the odd message without a Message-ID or with a duplicate
one. The same ``--random-seed`` and account name always give the same messages (byte for byte).

Mail is written through the store in-process (blobs, then metadata in batched transactions), so it works
whether or not ``mailsrv serve`` is running on the same data directory.
"""

# The sample texts are deliberately written in many scripts:
# ruff: noqa: RUF001
from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import random
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from .config import ConfigError

if TYPE_CHECKING:
    from .server.store import Store

EXIT_USAGE, EXIT_UNKNOWN, EXIT_IO = 1, 3, 7
BATCH = 250  # messages per metadata transaction: short enough not to stall a running server
START = dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp()
END = dt.datetime(2026, 10, 31, tzinfo=dt.UTC).timestamp()  # fixed, so output does not depend on today

# -- corpora -----------------------------------------------------------------------------------------
# (language, subject, body sentence); bodies repeat and vary their sentences up to the wanted size.
TEXTS: list[tuple[str, str, str]] = [
    ("en", "Quarterly report draft", "Please find my notes on the quarterly numbers below; the backlog shrank again."),
    ("en", "Lunch on Thursday?", "Are you free for lunch on Thursday? The new place near the station is supposed to be good."),
    ("en", "Invoice 2041 overdue", "Our records show that invoice 2041 is still open. Could you check with accounting?"),
    ("en", "Server maintenance window", "The mail server will be restarted on Sunday at 03:00 UTC for kernel updates."),
    ("de", "Grüße aus München – Besprechung verschoben",
     "Die Besprechung wird auf Dienstag verschoben. Änderungen am Entwurf folgen später."),
    ("fr", "Compte-rendu de la réunion à Lyon",
     "Voilà le compte-rendu : la décision est reportée à la semaine prochaine. À bientôt, Élodie."),
    ("pl", "Zażółć gęślą jaźń – plan wdrożenia", "W załączeniu przesyłam poprawiony harmonogram wdrożenia. Pozdrawiam serdecznie."),
    ("ru", "Отчёт за квартал", "Привет! Отчёт за квартал готов, посмотри, пожалуйста, раздел о бюджете."),
    ("el", "Συνέδριο στην Αθήνα", "Καλημέρα, το συνέδριο θα γίνει στην Αθήνα τον Μάιο. Παρακαλώ επιβεβαιώστε."),
    ("ja", "来週の会議について", "お疲れ様です。来週の会議の資料を共有します。ご確認のほどよろしくお願いいたします。"),
    ("zh", "第一季度项目报告", "你好，附件是第一季度的项目报告，请查收并提出修改意见。谢谢！"),
    ("ko", "다음 주 회의 일정", "안녕하세요, 다음 주 회의 일정을 공유드립니다. 참석 여부를 알려주세요."),
    ("ar", "التقرير الشهري", "مرحبا، مرفق التقرير الشهري. يرجى المراجعة قبل يوم الخميس."),
    ("he", "הדוח החודשי", "שלום, הנה הדוח החודשי. אשמח להערות עד סוף השבוע."),
    ("hi", "मासिक रिपोर्ट", "नमस्ते, कृपया संलग्न रिपोर्ट देखें और अपनी टिप्पणियाँ भेजें।"),
    ("emoji", "🎉 Launch day! 🚀", "We shipped it 🚢 Thanks everyone for the hard work 🙏 Cake in the kitchen 🍰"),
]
PEOPLE: list[tuple[str, str]] = [
    ("John Smith", "john.smith@example.com"),
    ("Jürgen Weiß", "j.weiss@example.de"),
    ("Zoë Brontë", "zoe@example.co.uk"),
    ("Élodie Lefèvre", "elodie.lefevre@example.fr"),
    ("山田 太郎", "taro.yamada@example.jp"),
    ("王伟", "wang.wei@example.cn"),
    ("Иван Петров", "ivan.petrov@example.ru"),
    ("김민준", "minjun.kim@example.kr"),
    ("José Núñez", "jose.nunez@example.es"),
    ("Ελένη Παπαδοπούλου", "eleni@example.gr"),
    ("Priya Sharma", "priya.sharma@example.in"),
    ("Notifications", "noreply@status.example.net"),
]
LIST_ID = "mailsidecar development <dev.lists.example.org>"
ZONES = ["+0000", "+0100", "+0200", "-0500", "-0800", "+0530", "+0900"]

# Folder tree: (path, JMAP role for a folder the seed creates, weight of new mail landing there).
# Stalwart's default folders are found by role; the rest are created on first use.
FOLDERS: list[tuple[tuple[str, ...], str | None, int]] = [
    (("Inbox",), "inbox", 44),
    (("Sent Items",), "sent", 15),
    (("Drafts",), "drafts", 1),
    (("Junk Mail",), "junk", 3),
    (("Deleted Items",), "trash", 3),
    (("Archive",), "archive", 10),
    (("Projects",), None, 2),
    (("Projects", "2026"), None, 2),
    (("Projects", "2026", "Q1"), None, 3),
    (("Projects", "2026", "Q2"), None, 2),
    (("Lists", "mailsidecar-dev"), None, 10),
    (("Reisen ✈️",), None, 2),
    (("家族",), None, 2),
]
DEFAULT_ROLES = {"inbox", "sent", "drafts", "junk", "trash"}
KINDS = {"plain": 45, "alternative": 24, "attachment": 15, "newsletter": 8, "forward": 6}
LARGE_EVERY = 500  # about one message in this many carries a 1-2 MB attachment
# The first messages of every seeded account show each feature once, so small seeds cover everything:
# (feature, folder, extra keyword).
SHOWCASE: list[tuple[str, tuple[str, ...], str | None]] = [
    ("plain-en", ("Inbox",), "$flagged"),
    ("plain-de", ("Projects", "2026", "Q1"), "project-x"),
    ("plain-ja", ("Inbox",), "$answered"),
    ("plain-emoji", ("Reisen ✈️",), None),
    ("alternative", ("Archive",), "$forwarded"),
    ("attachment", ("Projects", "2026"), None),
    ("large", ("Inbox",), None),
    ("forward", ("Projects",), None),
    ("newsletter", ("Lists", "mailsidecar-dev"), None),
    ("no-message-id", ("Inbox",), None),
    ("reply", ("Inbox",), None),
    ("duplicate-id", ("Archive",), None),
    ("reply", ("Sent Items",), None),
    ("plain-zh", ("家族",), None),
    ("plain-ru", ("Drafts",), None),
]


@dataclass
class SeedMessage:
    """One generated message and where it goes."""

    raw: bytes
    folder: tuple[str, ...]
    keywords: dict[str, bool]
    received_at: float
    message_id: str | None


@dataclass
class _Thread:
    subject: str
    ids: list[str]
    peer: tuple[str, str]


# -- encoders ----------------------------------------------------------------------------------------
def _q_word(text: str) -> str:
    out = []
    for b in text.encode("utf-8"):
        c = chr(b)
        out.append("_" if c == " " else c if (c.isascii() and c.isalnum()) or c in "!*+-/" else f"={b:02X}")
    return "".join(out)


def encode_header(text: str, mode: str = "B") -> str:
    """RFC 2047: ASCII stays as is; other text becomes UTF-8 encoded-words (B or Q), folded below 76 chars."""
    if text.isascii():
        return text
    words, chunk = [], ""
    for ch in text:  # split on characters so no encoded-word ends inside a UTF-8 sequence
        if len((chunk + ch).encode("utf-8")) > 30:
            words.append(chunk)
            chunk = ""
        chunk += ch
    if chunk:
        words.append(chunk)
    enc = (lambda w: base64.b64encode(w.encode("utf-8")).decode()) if mode == "B" else _q_word
    return "\r\n ".join(f"=?UTF-8?{mode}?{enc(w)}?=" for w in words)


def _address(name: str, addr: str, mode: str) -> str:
    if name.isascii():
        return f'"{name}" <{addr}>' if any(c in name for c in ",.;:") else f"{name} <{addr}>"
    return f"{encode_header(name, mode)} <{addr}>"


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _b64(data: bytes) -> bytes:
    """Base64 in 76-character CRLF lines."""
    enc = base64.b64encode(data)
    return b"\r\n".join(enc[i : i + 76] for i in range(0, len(enc), 76)) + b"\r\n"


def _qp(text: str) -> bytes:
    return _crlf(binascii.b2a_qp(text.encode("utf-8"), istext=True))


def _text_part(text: str, cte: str, subtype: str = "plain") -> bytes:
    """A complete text/* entity (headers + body) in the given transfer encoding."""
    if cte == "7bit" and not text.isascii():
        cte = "quoted-printable"
    if cte == "quoted-printable":
        body = _qp(text)
    elif cte == "base64":
        body = _b64(text.encode("utf-8"))
    else:
        body = text.encode("utf-8")
    head = f"Content-Type: text/{subtype}; charset={'us-ascii' if cte == '7bit' else 'utf-8'}\r\nContent-Transfer-Encoding: {cte}\r\n"
    return head.encode() + b"\r\n" + _crlf(body)


def _attachment(name: str, ctype: str, data: bytes, rng: random.Random) -> bytes:
    """A base64 attachment; non-ASCII names use RFC 2231 (and RFC 2047 in ``name=``, as many clients do)."""
    if name.isascii():
        params = f'; name="{name}"', f'; filename="{name}"'
    else:
        params = (f'; name="{encode_header(name, "B")}"',
                  f"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}")
    disposition = "inline" if ctype.startswith("image/") and rng.random() < 0.3 else "attachment"
    head = (f"Content-Type: {ctype}{params[0]}\r\nContent-Disposition: {disposition}{params[1]}\r\n"
            "Content-Transfer-Encoding: base64\r\n")
    return head.encode() + b"\r\n" + _b64(data)


def _multipart(subtype: str, parts: list[bytes], boundary: str, extra: str = "") -> bytes:
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"{extra}\r\n\r\n'.encode()
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p.rstrip(b"\r\n") + b"\r\n" for p in parts)
    return head + body + b"--" + boundary.encode() + b"--\r\n"


# -- the generator -----------------------------------------------------------------------------------
class MailGenerator:
    """Messages for one account; deterministic for (``seed``, ``address``)."""

    def __init__(self, address: str, seed: int, count: int) -> None:
        self.address = address
        self.domain = address.rpartition("@")[2] or "example.org"
        self.owner = address.partition("@")[0].replace(".", " ").title()
        self.rng = random.Random(f"mailsidecar-seed:{seed}:{address.lower()}")
        span = END - START
        self.times = sorted(START + span * self.rng.random() ** 0.7 for _ in range(count))
        self.threads: list[_Thread] = []
        self.ids: list[str] = []
        self.count = count
        self.n = 0

    def __iter__(self) -> Iterator[SeedMessage]:
        for n in range(self.count):
            self.n = n
            yield self.message()

    # -- choices
    def _pick(self, weights: dict[str, int]) -> str:
        return self.rng.choices(list(weights), list(weights.values()))[0]

    def _text(self, lang: str | None = None) -> tuple[str, str, str]:
        if lang:
            return next(t for t in TEXTS if t[0] == lang)
        en = [t for t in TEXTS if t[0] == "en"]
        return self.rng.choice(en) if self.rng.random() < 0.55 else self.rng.choice(TEXTS)

    def _body(self, sentence: str, lo: int = 900, hi: int = 6000) -> str:
        """Paragraphs of varied sentences: at least ``lo`` bytes so messages start around 1 KB."""
        target = self.rng.randint(lo, hi)
        lines, size = [f"Hello {self.owner},", ""], 0
        while size < target:
            para = " ".join(self.rng.choice([sentence, *(t[2] for t in TEXTS if t[0] == "en")]) for _ in range(self.rng.randint(2, 5)))
            lines += [para, ""]
            size += len(para.encode("utf-8"))
        lines += ["Best regards,", "-- ", "sent from a mailsidecar demo"]
        return "\n".join(lines) + "\n"

    def _html(self, text: str, subject: str) -> str:
        paras = "".join(f"<p>{p}</p>\n" for p in text.split("\n\n") if p.strip())
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{subject}</title></head>\n"
                f"<body style=\"font-family: sans-serif\">\n<h1>{subject}</h1>\n{paras}</body></html>\n")

    def _cte(self, lang: str) -> str:
        if lang == "en":
            return "7bit"
        return self.rng.choice(["quoted-printable", "quoted-printable", "8bit"] if lang in ("de", "fr", "pl") else
                               ["base64", "base64", "quoted-printable", "8bit"])

    def _boundary(self) -> str:
        return f"=_seed_{self.rng.getrandbits(64):016x}"

    def _msgid(self, domain: str) -> str:
        return f"{self.rng.getrandbits(64):016x}.{self.n}@{domain}"

    def _blob(self, kind: str) -> tuple[str, str, bytes]:
        rng = self.rng
        if kind == "large":
            size = rng.randint(750_000, 1_500_000)  # 1-2 MB once base64-encoded
            name, ctype, magic = rng.choice([
                ("Präsentation 2026.pdf", "application/pdf", b"%PDF-1.7\n"),
                ("site-backup.zip", "application/zip", b"PK\x03\x04"),
                ("holiday-video.mp4", "video/mp4", b"\x00\x00\x00\x18ftypmp42"),
            ])
            return name, ctype, magic + rng.randbytes(size)
        name, ctype, magic = rng.choice([
            ("report-Q1.pdf", "application/pdf", b"%PDF-1.4\n"),
            ("photo.jpg", "image/jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"),
            ("diagram.png", "image/png", b"\x89PNG\r\n\x1a\n"),
            ("報告書.pdf", "application/pdf", b"%PDF-1.5\n"),
            ("Übersicht.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", b"PK\x03\x04"),
            ("logs.tar.gz", "application/gzip", b"\x1f\x8b\x08\x00"),
        ])
        return name, ctype, magic + rng.randbytes(int(2_000 + 148_000 * rng.random() ** 3))  # mostly small, up to 150 KB

    def _keywords(self, folder: tuple[str, ...], received: float, outgoing: bool) -> dict[str, bool]:
        rng = self.rng
        if folder == ("Drafts",):
            return {"$draft": True}
        kw: dict[str, bool] = {}
        old = received < END - 30 * 86400
        if outgoing or rng.random() < (0.92 if old else 0.4):
            kw["$seen"] = True
        for name, p in (("$flagged", 0.04), ("$answered", 0.08), ("$forwarded", 0.02), ("project-x", 0.04)):
            if rng.random() < p:
                kw[name] = True
        if folder == ("Junk Mail",):
            kw["$junk"] = True
        return kw

    # -- one message
    def message(self) -> SeedMessage:
        rng = self.rng
        show, show_folder, show_keyword = SHOWCASE[self.n] if self.n < len(SHOWCASE) else ("", None, None)
        if show.startswith("plain-"):
            kind = "plain"
        else:
            kind = show if show in ("alternative", "attachment", "large", "forward", "newsletter") else self._pick(KINDS)
        if not show and rng.randrange(LARGE_EVERY) == 0:
            kind = "large"
        reply_to = None
        if show == "reply" or (not show and self.threads and rng.random() < 0.35):
            reply_to = self.threads[-1] if show else rng.choice(self.threads[-40:])
        lang = show.removeprefix("plain-") if show.startswith("plain-") else None
        lang_, subject, sentence = self._text(lang)
        if reply_to is not None:
            subject = "Re: " + reply_to.subject.removeprefix("Re: ")
            peer = reply_to.peer
        else:
            peer = rng.choice(PEOPLE)
        outgoing = reply_to is not None and rng.random() < 0.3
        folder = self._folder(outgoing, kind)
        if show_folder:
            folder = show_folder
        draft = folder == ("Drafts",)
        outgoing = outgoing or draft or folder == ("Sent Items",)
        if folder == ("Lists", "mailsidecar-dev"):
            subject = "[mailsidecar-dev] " + subject.removeprefix("[mailsidecar-dev] ")
        received = self.times[self.n]
        mode = rng.choice("BQ")
        me = _address(self.owner, self.address, mode)
        them = _address(*peer, mode)
        sender, rcpt = (me, them) if outgoing else (them, me)

        msgid: str | None = self._msgid(self.domain if outgoing else peer[1].rpartition("@")[2])
        if show == "no-message-id" or (not show and rng.random() < 0.015):
            msgid = None
        elif (show == "duplicate-id" or (not show and rng.random() < 0.005)) and self.ids:
            msgid = rng.choice(self.ids)
        sent = received - rng.randint(3, 900)
        zone = rng.choice(ZONES)
        offset = (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 3600 + int(zone[3:]) * 60)
        date = dt.datetime.fromtimestamp(sent, dt.timezone(dt.timedelta(seconds=offset)))
        stamp = date.strftime("%a, %d %b %Y %H:%M:%S %z")
        mx = "mx." + peer[1].rpartition("@")[2]
        headers = [] if outgoing else [
            f"Received: from {mx} ({mx} [192.0.2.{rng.randint(1, 254)}])\r\n\tby {self.domain} with ESMTPS; {stamp}"]
        headers += [
            f"Date: {stamp}",
            f"From: {sender}",
            f"To: {rcpt}",
            f"Subject: {encode_header(('Fwd: ' if kind == 'forward' and reply_to is None else '') + subject, mode)}",
        ]
        if msgid:
            headers.append(f"Message-ID: <{msgid}>")
        if reply_to is not None:
            headers.append(f"In-Reply-To: <{reply_to.ids[-1]}>")
            headers.append("References: " + "\r\n ".join(f"<{i}>" for i in reply_to.ids[-10:]))
        if folder == ("Lists", "mailsidecar-dev"):
            headers += [f"List-Id: {LIST_ID}", "List-Unsubscribe: <mailto:dev-unsubscribe@lists.example.org>", "Precedence: list"]
        mailer = rng.choice(["Thunderbird 128.3", "Apple Mail (2.3776)", "Roundcube 1.6", "aerc 0.18"])
        headers += ["MIME-Version: 1.0", f"X-Mailer: {mailer}"]
        body = self._entity(kind, lang_, subject, sentence)
        raw = "\r\n".join(headers).encode("utf-8") + b"\r\n" + body

        if msgid:
            self.ids.append(msgid)
            if reply_to is not None:
                reply_to.ids.append(msgid)
            elif show != "duplicate-id" and not draft:
                self.threads.append(_Thread(subject, [msgid], peer))
        keywords = self._keywords(folder, received, outgoing)
        if show_keyword:
            keywords[show_keyword] = True
        return SeedMessage(raw, folder, keywords, received, msgid)

    def _folder(self, outgoing: bool, kind: str) -> tuple[str, ...]:
        if outgoing:
            return ("Sent Items",)
        folders = [f for f in FOLDERS if f[0] != ("Sent Items",)]
        if kind == "newsletter":
            return ("Lists", "mailsidecar-dev") if self.rng.random() < 0.5 else ("Inbox",)
        return self.rng.choices([f[0] for f in folders], [f[2] for f in folders])[0]

    def _entity(self, kind: str, lang: str, subject: str, sentence: str) -> bytes:
        """Content-Type and friends plus the body (the part after the message's own headers)."""
        rng = self.rng
        text = self._body(sentence)
        cte = self._cte(lang)
        if kind == "plain":
            return _text_part(text, cte)
        alternative = _multipart("alternative", [_text_part(text, cte), _text_part(self._html(text, subject), "quoted-printable", "html")],
                                 self._boundary())
        if kind == "alternative":
            return alternative
        if kind == "newsletter":
            cid = f"logo.{rng.getrandbits(32):08x}@lists.example.org"
            html = self._html(text, subject).replace("<body", f'<body><img src="cid:{cid}" alt="logo"', 1)
            logo = (f"Content-Type: image/png\r\nContent-ID: <{cid}>\r\nContent-Disposition: inline; filename=\"logo.png\"\r\n"
                    "Content-Transfer-Encoding: base64\r\n\r\n").encode() + _b64(b"\x89PNG\r\n\x1a\n" + rng.randbytes(3000))
            related = _multipart("related", [_text_part(html, "quoted-printable", "html"), logo], self._boundary(), '; type="text/html"')
            return _multipart("alternative", [_text_part(text, cte), related], self._boundary())
        if kind == "forward":
            inner_lang, inner_subject, inner_sentence = lang, subject, sentence
            inner_from = rng.choice(PEOPLE)
            inner = (f"From: {_address(*inner_from, 'B')}\r\nTo: {self.address}\r\nSubject: {encode_header(inner_subject, 'Q')}\r\n"
                     f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime(self.times[self.n] - 86400))}\r\n"
                     f"Message-ID: <{self._msgid(inner_from[1].rpartition('@')[2])}>\r\nMIME-Version: 1.0\r\n").encode()
            inner += _text_part(self._body(inner_sentence, 300, 2000), self._cte(inner_lang))
            fwd = b"Content-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n" + inner
            return _multipart("mixed", [_text_part("Forwarding this, see below.\n\n" + text[:400], cte), fwd], self._boundary())
        attachments = [self._blob("large")] if kind == "large" else [self._blob("small") for _ in range(rng.choice([1, 1, 1, 2, 2, 3]))]
        first = alternative if rng.random() < 0.5 else _text_part(text, cte)
        return _multipart("mixed", [first, *(_attachment(n, t, d, rng) for n, t, d in attachments)], self._boundary())


# -- writing into the store --------------------------------------------------------------------------
@dataclass
class SeedResult:
    account: str
    account_id: str
    messages: int = 0
    threads: int = 0
    bytes: int = 0
    seconds: float = 0.0
    folders: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"account": self.account, "accountId": self.account_id, "messages": self.messages, "threads": self.threads,
                "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "messagesPerSecond": round(self.messages / self.seconds, 1) if self.seconds else None,
                "mailboxes": self.folders}


def ensure_folders(store: Store, account_id: int) -> dict[tuple[str, ...], int]:
    """Mailbox ids of every seed folder, creating the missing ones (default folders are found by role)."""
    store.mail.ensure_default_mailboxes(account_id)
    boxes = store.mail.mailboxes(account_id)
    by_role = {b.role: b.id for b in boxes if b.role}
    out: dict[tuple[str, ...], int] = {}
    for path, role, _ in FOLDERS:
        if role in DEFAULT_ROLES and role in by_role:
            out[path] = by_role[role]
            continue
        parent: int | None = None
        for depth, name in enumerate(path):
            found = next((b for b in boxes if b.name == name and b.parent_id == parent), None)
            if found is None:
                want_role = role if depth == len(path) - 1 and role not in by_role else None
                new_id = store.mail.create_mailbox(account_id, name, parent, want_role)
                boxes = store.mail.mailboxes(account_id)
                if want_role:
                    by_role[want_role] = new_id
                parent = new_id
            else:
                parent = found.id
        assert parent is not None
        out[path] = parent
    return out


def seed_account(
    store: Store, account: str, count: int, random_seed: int, progress: Callable[[int], None] | None = None
) -> SeedResult:
    """Add ``count`` generated messages to ``account`` (which must exist); returns what was written."""
    from .server.mime import summarize
    from .server.store.ids import jmap_id

    p = store.principals.by_name(account)
    if p is None:
        raise KeyError(account)
    address = p.emails[0] if p.emails else f"{p.name}@{(store.principals.domains() or ['example.org'])[0]}"
    result = SeedResult(p.name, jmap_id(p.id))
    started = time.monotonic()
    folders = ensure_folders(store, p.id)
    threads: set[int] = set()
    batch: list[tuple[Future[str], dict[str, Any], SeedMessage]] = []

    def flush() -> None:
        digests = [f.result() for f, _, _ in batch]  # every blob is durable before its metadata commits
        with store.mail.write(p.id) as t:
            for digest, (_, summary, m) in zip(digests, batch, strict=True):
                _, thread_id = t.ingest(digest, len(m.raw), summary, [folders[m.folder]], m.keywords, m.received_at)
                threads.add(thread_id)
        if progress:
            progress(len(batch))
        batch.clear()

    # Blob writes wait on fsync; a few threads overlap them with generating and parsing the next messages.
    with ThreadPoolExecutor(max_workers=4) as pool:
        for m in MailGenerator(address, random_seed, count):
            batch.append((pool.submit(store.blobs.put, m.raw), summarize(m.raw), m))
            result.messages += 1
            result.bytes += len(m.raw)
            key = "/".join(m.folder)
            result.folders[key] = result.folders.get(key, 0) + 1
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
    result.threads = len(threads)
    result.seconds = time.monotonic() - started
    return result


# -- the command -------------------------------------------------------------------------------------
def _fail(message: str, code: int) -> None:
    click.echo(f"mailsrv: {message}", err=True)
    sys.exit(code)


@click.command("seed")
@click.option("--account", "accounts", multiple=True, required=True, metavar="NAME", help="Account to fill (repeatable)")
@click.option("--count", type=click.IntRange(min=1), required=True, metavar="N", help="Messages per account")
@click.option("--random-seed", type=int, default=1, show_default=True, metavar="S", help="Same seed, same messages")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary")
@click.pass_obj
def seed_command(ctx: Any, accounts: tuple[str, ...], count: int, random_seed: int, as_json: bool) -> None:
    """Fill accounts with realistic mail: threads, attachments, many scripts, nested folders, keywords.

    Works with or without a running server on the same data directory.
    """
    try:
        store = ctx.store()
        names = list(dict.fromkeys(accounts))
        unknown = [n for n in names if store.principals.by_name(n) is None]
        if unknown:
            _fail(f"unknown account: {', '.join(unknown)} (create it with: mailsrv account add NAME)", EXIT_UNKNOWN)
        results = _run(store, names, count, random_seed, show_progress=sys.stderr.isatty())
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        _fail(f"{exc.filename or 'data directory'}: {exc.strerror or exc}", EXIT_IO)
    except sqlite3.Error as exc:
        _fail(f"cannot write the store: {exc}", EXIT_IO)
    total = sum(r.seconds for r in results)
    if as_json:
        click.echo(json.dumps({"randomSeed": random_seed, "seconds": round(total, 3), "accounts": [r.as_json() for r in results]}, indent=2,
                              ensure_ascii=False))
        return
    for r in results:
        click.echo(f"seeded {r.account}: {r.messages} messages, {r.threads} threads, {r.bytes / 1e6:.1f} MB "
                   f"in {r.seconds:.1f} s ({r.messages / max(r.seconds, 1e-9):.0f} msgs/s)")


def _run(store: Store, names: list[str], count: int, random_seed: int, *, show_progress: bool) -> list[SeedResult]:
    if not show_progress:
        return [seed_account(store, n, count, random_seed) for n in names]
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        for n in names:
            task = bar.add_task(f"seeding {n}", total=count)

            def advance(k: int, task: Any = task) -> None:
                bar.advance(task, k)

            results.append(seed_account(store, n, count, random_seed, advance))
    return results
