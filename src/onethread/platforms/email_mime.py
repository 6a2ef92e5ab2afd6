"""Email messages in and out: parse a fetched mail, build a reply. Pure: no I/O.

In (:func:`parse_mail`): the sender (``From:``, never ``Reply-To:``: a reply
goes to the address the mail claims to come from, so a forged ``From:`` gets
the answer sent to the real owner of that mailbox, not to the forger), the
text (the ``text/plain`` part, else text taken from the HTML part; a quoted
previous message and the signature are cut off), the attachments, and the
threading headers. ``thread_id`` is the thread's root ``Message-ID`` (the
first of ``References``, else ``In-Reply-To``, else the mail's own).

Ignored (:func:`ignore_reason`): automatic mail must never be answered, or two
robots answer each other forever (RFC 3834): ``Auto-Submitted`` other than
``no``, ``Precedence: bulk|list|junk``, ``List-Id`` (a mailing list), and
bounces (a null return path ``<>``, ``MAILER-DAEMON``, ``multipart/report``).

Out (:func:`build_mail`): ``text/plain`` plus ``text/html`` rendered from the
Markdown (:func:`onethread.platforms.markup.to_email_html`), ``In-Reply-To``
and ``References`` of the mail answered, a ``Re:`` subject, and
``Auto-Submitted: auto-replied`` (``auto-generated`` for a mail that starts a
thread) so that other robots leave it alone.
"""

from __future__ import annotations

import email.policy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import formatdate, make_msgid, parseaddr
from html.parser import HTMLParser

from ..session.attachments import Attachment
from .markup import to_email_html, to_plain

__all__ = [
    "MAX_REFERENCES",
    "ParsedMail",
    "ReplyTo",
    "build_mail",
    "dmarc_passed",
    "html_to_text",
    "ignore_reason",
    "parse_mail",
    "reply_subject",
]

#: ``References`` keeps the root and this many of the latest ids (RFC 5322 allows trimming).
MAX_REFERENCES = 20

_MSGID = re.compile(r"<[^<>\s]+>")
_RE_PREFIX = re.compile(r"^\s*((re|aw|sv|antw)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_ATTRIBUTION = re.compile(r"^(On .+wrote:|.+ <[^>]+> (wrote|schrieb):|-+ ?Original Message ?-+)$")


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """What a reply in one thread needs: the mail answered and the thread's subject."""

    message_id: str
    references: tuple[str, ...] = ()
    subject: str = ""


@dataclass(frozen=True, slots=True)
class ParsedMail:
    """One fetched mail, read. ``parts[i]`` holds the bytes of ``attachments[i]``."""

    address: str
    name: str
    subject: str
    text: str
    message_id: str
    thread_id: str
    reply: ReplyTo
    attachments: tuple[Attachment, ...] = ()
    parts: tuple[bytes, ...] = field(default=(), repr=False)


def _ids(value: object) -> list[str]:
    return _MSGID.findall(str(value or ""))


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except (ValueError, TypeError, IndexError):  # a header the parser cannot read
        value = None
    return " ".join(str(value).split()) if value is not None else ""


def ignore_reason(msg: Message) -> str | None:
    """Why ``msg`` must not be answered (auto-reply, list, bounce), or ``None``."""
    auto = _header(msg, "Auto-Submitted").lower()
    if auto and auto.split(";")[0].strip() != "no":
        return f"Auto-Submitted: {auto}"
    if _header(msg, "X-Autoreply") or _header(msg, "X-Autorespond"):
        return "an X-Autoreply header"
    precedence = _header(msg, "Precedence").lower()
    if precedence in ("bulk", "list", "junk"):
        return f"Precedence: {precedence}"
    if _header(msg, "List-Id"):
        return "a mailing list (List-Id)"
    if _header(msg, "Return-Path").replace(" ", "") == "<>":
        return "a bounce (null return path)"
    sender = parseaddr(_header(msg, "From"))[1].lower()
    if sender.partition("@")[0] in ("mailer-daemon", "postmaster"):
        return f"a bounce (from {sender})"
    if msg.get_content_type() == "multipart/report":
        return "a delivery or read report (multipart/report)"
    return None


_COMMENT = re.compile(r"\([^()]*\)")


def dmarc_passed(msg: Message, authserv_id: str) -> bool:
    """Whether the receiving server ``authserv_id`` says ``msg`` passed DMARC for its ``From:``.

    Reads the topmost ``Authentication-Results`` header (RFC 8601) that names
    ``authserv_id``: the one the receiving server added (it removes any such
    header a sender brought along). DMARC ``pass`` with ``header.from`` equal
    to the domain of ``From:`` means that domain vouched for the sender.
    """
    domain = parseaddr(_header(msg, "From"))[1].rpartition("@")[2].lower()
    wanted = authserv_id.strip().lower()
    for value in msg.get_all("Authentication-Results") or []:
        text = _COMMENT.sub(" ", " ".join(str(value).split()))
        server, *results = (part.strip() for part in text.split(";"))
        if server.split(" ")[0].lower() != wanted:
            continue
        for result in results:
            words = result.lower().split()
            if words and words[0] == "dmarc=pass" and f"header.from={domain}" in words[1:]:
                return bool(domain)
        return False  # the topmost header of that server decides
    return False


class _TextFromHtml(HTMLParser):
    """The visible text of an HTML body: paragraphs and line breaks kept, scripts dropped."""

    _BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6",
                        "blockquote", "pre", "table", "ul", "ol", "hr"})  # fmt: skip
    _HIDDEN = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.out.append(data.replace("\n", " "))  # whitespace is tidied per line after


def html_to_text(html: str) -> str:
    """The readable text of an HTML mail body (tags gone, blocks on their own lines)."""
    parser = _TextFromHtml()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.out).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _strip_quote(text: str) -> str:
    """The new text of a reply: the quoted earlier mail and the signature cut off."""
    lines = text.replace("\r\n", "\n").split("\n")
    if "-- " in lines:  # the signature delimiter (RFC 3676)
        lines = lines[: lines.index("-- ")]
    end = len(lines)
    while end and (not lines[end - 1].strip() or lines[end - 1].startswith(">")):
        end -= 1
    if end < len(lines) and end and _ATTRIBUTION.match(lines[end - 1].strip()):
        end -= 1  # "On Mon, Alice <a@example.org> wrote:" above the quote
    kept = "\n".join(lines[:end]).strip()
    return kept or text.strip()


def _kind(mime: str) -> str:
    major = mime.partition("/")[0]
    return {"image": "image", "audio": "audio", "video": "video"}.get(major, "file")


def _body_and_files(msg: EmailMessage) -> tuple[str, list[tuple[Attachment, bytes]]]:
    plain = html = ""
    files: list[tuple[Attachment, bytes]] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        disposition = part.get_content_disposition()
        filename = part.get_filename() or ""
        if disposition != "attachment" and not filename and ctype in ("text/plain", "text/html"):
            try:
                content = part.get_content()
            except (LookupError, ValueError):  # an unknown charset: read it as latin-1
                payload = part.get_payload(decode=True)
                content = payload.decode("latin-1") if isinstance(payload, bytes) else ""
            if ctype == "text/plain" and not plain:
                plain = str(content)
            elif ctype == "text/html" and not html:
                html = str(content)
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        name = filename or ("image" if ctype.startswith("image/") else "attachment")
        files.append((Attachment(_kind(ctype), ctype, name, len(payload)), payload))
    text = plain if plain.strip() else html_to_text(html) if html else ""
    return _strip_quote(text) if text else "", files


def parse_mail(raw: bytes) -> tuple[EmailMessage, ParsedMail]:
    """Read a fetched mail (its RFC 5322 bytes): the message and what onethread needs of it.

    The sender is ``From:`` (lower-cased address); the text the plain part,
    else the HTML part's text; with neither and no files, the subject.
    """
    msg = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)  # the default policy's message_factory
    name, address = parseaddr(_header(msg, "From"))
    subject = _header(msg, "Subject")
    message_id = (_ids(_header(msg, "Message-ID")) or [""])[0]
    references = tuple(_ids(_header(msg, "References")))
    in_reply_to = _ids(_header(msg, "In-Reply-To"))
    root = references[0] if references else in_reply_to[0] if in_reply_to else message_id
    text, files = _body_and_files(msg)
    if not text and not files:
        text = _RE_PREFIX.sub("", subject).strip()  # "/link" written in the subject line
    chain = list(references) or in_reply_to[:1]
    if message_id:
        chain.append(message_id)
    return msg, ParsedMail(
        address=address.strip().lower(),
        name=name.strip(),
        subject=subject,
        text=text,
        message_id=message_id,
        thread_id=root,
        reply=ReplyTo(message_id, tuple(_trim(chain)), subject),
        attachments=tuple(a for a, _ in files),
        parts=tuple(data for _, data in files),
    )


def _trim(chain: Sequence[str]) -> list[str]:
    if len(chain) <= MAX_REFERENCES:
        return list(chain)
    return [chain[0], *chain[-(MAX_REFERENCES - 1) :]]


def reply_subject(subject: str, default: str) -> str:
    """``Re: <subject>`` (one ``Re:``, whatever the sender's client stacked up)."""
    bare = _RE_PREFIX.sub("", " ".join(subject.split())).strip()
    return f"Re: {bare}" if bare else default


def build_mail(
    *,
    sender: str,
    sender_name: str,
    to: str,
    markdown: str,
    reply: ReplyTo | None,
    subject: str,
    formatted: bool = True,
    files: Sequence[tuple[Attachment, bytes]] = (),
) -> EmailMessage:
    """A mail from ``sender`` to ``to``: ``markdown`` as plain text and (``formatted``) HTML.

    With ``reply`` it answers that mail (``In-Reply-To``, ``References``, a
    ``Re:`` subject) and quotes nothing; without, it starts a thread with
    ``subject``. ``files`` are attached with their names and types.
    """
    msg = EmailMessage()
    domain = sender.rpartition("@")[2] or None
    msg["From"] = Address(sender_name, addr_spec=sender) if sender_name else sender
    msg["To"] = to
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=domain)
    # RFC 3834: other robots must not answer this.
    msg["Auto-Submitted"] = "auto-replied" if reply is not None else "auto-generated"
    msg["Subject"] = reply_subject(reply.subject, subject) if reply is not None else subject
    if reply is not None and reply.message_id:  # a mail without a Message-ID: no threading
        msg["In-Reply-To"] = reply.message_id
        refs = list(reply.references)
        if reply.message_id not in refs:
            refs.append(reply.message_id)
        msg["References"] = " ".join(_trim(refs))
    msg.set_content((to_plain(markdown) or markdown) if formatted else markdown)
    if formatted:
        msg.add_alternative(
            '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
            f"{to_email_html(markdown)}</body></html>",
            subtype="html",
        )
    for attachment, data in files:
        maintype, _, subtype = (attachment.mime or "application/octet-stream").partition("/")
        msg.add_attachment(
            data,
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=attachment.name or "attachment",
        )
    return msg
