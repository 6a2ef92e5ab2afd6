"""Matrix events in, message contents out, and nio's errors mapped: pure functions.

Everything here works on the event JSON (``event.source`` of a matrix-nio
event, as the homeserver sent it), so it is tested on real events without a
server. The adapter (``onethread.platforms.matrix``) does the I/O.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import aiohttp
from nio import ErrorResponse

from ..errors import (
    BadRequest,
    OutcomeUnknown,
    PlatformAuthError,
    PlatformUnavailable,
    RetryAfter,
)
from ..session.attachments import Attachment
from ._describe import describe
from .base import Inbound
from .markup import to_matrix_html, to_plain

__all__ = [
    "HTML_FORMAT",
    "check",
    "edit_content",
    "file_content",
    "map_matrix_errors",
    "media_of",
    "normalize_event",
    "reply_target",
    "text_content",
    "thread_relation",
]

PLATFORM = "matrix"
HTML_FORMAT = "org.matrix.custom.html"

# The homeserver's errcodes (the ``errcode`` field), not message text.
_AUTH_CODES = frozenset({"M_UNKNOWN_TOKEN", "M_MISSING_TOKEN", "M_USER_DEACTIVATED",
                         "M_USER_LOCKED", "M_USER_SUSPENDED"})  # fmt: skip
_MEDIA_KINDS = {"m.image": "image", "m.audio": "audio", "m.video": "video", "m.file": "file"}
_MSGTYPES = {"image": "m.image", "sticker": "m.image", "audio": "m.audio", "voice": "m.audio",
             "video": "m.video", "file": "m.file"}  # fmt: skip


# -- errors --------------------------------------------------------------------


def check(resp: Any, what: str) -> Any:
    """``resp`` when it is a success; else the mapped ``onethread.errors``.

    matrix-nio returns errors rather than raising them: an ``ErrorResponse``
    carries the homeserver's ``errcode`` (``status_code``), ``retry_after_ms``
    and the HTTP response. ``M_LIMIT_EXCEEDED`` (or HTTP 429) -> ``RetryAfter``;
    ``M_UNKNOWN_TOKEN``, ``M_MISSING_TOKEN``, a deactivated, locked or
    suspended account -> ``PlatformAuthError``; HTTP 5xx or an answer that is
    not Matrix JSON (a proxy's error page) -> ``PlatformUnavailable``; any
    other errcode (``M_FORBIDDEN``: not in the room, ``M_TOO_LARGE``,
    ``M_NOT_FOUND``...) -> ``BadRequest``.
    """
    if not isinstance(resp, ErrorResponse):
        return resp
    code = str(resp.status_code or "")
    transport = getattr(resp, "transport_response", None)
    status = int(getattr(transport, "status", 0) or 0)
    detail = f"{what}: {code or f'HTTP {status}'} {resp.message}".strip()
    if code == "M_LIMIT_EXCEEDED" or status == 429:
        retry_ms = resp.retry_after_ms
        seconds = retry_ms / 1000 if isinstance(retry_ms, int | float) and retry_ms >= 0 else 1.0
        raise RetryAfter(seconds, platform=PLATFORM)
    if code in _AUTH_CODES:
        raise PlatformAuthError(detail, platform=PLATFORM)
    if status >= 500 or not code:
        raise PlatformUnavailable(detail, platform=PLATFORM)
    raise BadRequest(detail, platform=PLATFORM)


@contextlib.contextmanager
def map_matrix_errors(what: str) -> Iterator[None]:
    """Translate transport errors raised in the block (matrix-nio raises those) into
    ``onethread.errors``: no connection made -> ``PlatformUnavailable`` (nothing was
    sent); a timeout or a connection lost mid-call -> ``OutcomeUnknown`` (the call
    may have been carried out: a send is not retried)."""
    try:
        yield
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise PlatformUnavailable(f"{what}: {describe(exc)}", platform=PLATFORM) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise OutcomeUnknown(f"{what}: {describe(exc)}", platform=PLATFORM) from exc


# -- inbound -------------------------------------------------------------------


def _relates(content: Mapping[str, Any]) -> Mapping[str, Any]:
    rel = content.get("m.relates_to")
    return rel if isinstance(rel, Mapping) else {}


def reply_target(source: Mapping[str, Any]) -> str:
    """The event a message replies to (``m.in_reply_to``), ``""`` for none.

    A thread message's fallback reply (``is_falling_back``) is not a reply:
    clients add it to every thread message for clients without threads.
    """
    content = source.get("content")
    if not isinstance(content, Mapping):
        return ""
    rel = _relates(content)
    if rel.get("rel_type") == "m.thread" and rel.get("is_falling_back"):
        return ""
    target = rel.get("m.in_reply_to")
    return str(target.get("event_id") or "") if isinstance(target, Mapping) else ""


def media_of(source: Mapping[str, Any]) -> list[tuple[Attachment, str]]:
    """The event's file as ``(attachment, mxc:// URL)``; none for text or an
    encrypted file (end-to-end encryption is not supported)."""
    content = source.get("content")
    if not isinstance(content, Mapping):
        return []
    url = content.get("url")
    if not isinstance(url, str) or not url.startswith("mxc://"):
        return []
    if source.get("type") == "m.sticker":
        kind = "sticker"
    else:
        kind = _MEDIA_KINDS.get(str(content.get("msgtype") or ""), "")
        if kind == "audio" and "org.matrix.msc3245.voice" in content:
            kind = "voice"
    if not kind:
        return []
    info = content.get("info")
    info = info if isinstance(info, Mapping) else {}
    size = info.get("size")
    name = content.get("filename") or content.get("body") or ""
    attachment = Attachment(
        kind,
        str(info.get("mimetype") or ""),
        str(name) if kind != "sticker" else "",
        size if isinstance(size, int) and size > 0 else 0,
    )
    return [(attachment, url)]


def _caption(content: Mapping[str, Any]) -> str:
    """A file's caption: ``body`` when ``filename`` says the name (MSC2530), else none."""
    body = str(content.get("body") or "")
    filename = content.get("filename")
    return body if isinstance(filename, str) and filename and body != filename else ""


_FALLBACK = re.compile(r"\A(?:>[^\n]*\n)+\n")  # a reply's quoted fallback (older clients)


def _mentioned(text: str, names: Iterable[str]) -> bool:
    lowered = text.lower()
    for name in names:
        name = name.strip().lower()
        if name and re.search(rf"(?<![\w@]){re.escape(name)}(?![\w])", lowered):
            return True
    return False


def _strip_address(text: str, names: Iterable[str]) -> str:
    """``text`` without a leading ``Bot:``/``@bot:server,`` (so ``Bot: /whoami`` is a command)."""
    for name in sorted((n for n in names if n.strip()), key=len, reverse=True):
        match = re.match(rf"\s*{re.escape(name.strip())}[:,]?\s+", text, re.IGNORECASE)
        if match:
            return text[match.end() :]
    return text


def normalize_event(
    source: Mapping[str, Any],
    *,
    room_id: str,
    bot_user_id: str,
    bot_names: Iterable[str] = (),
    direct: bool = False,
    user_name: str = "",
    chat_name: str = "",
) -> Inbound | None:
    """A room message event (``m.room.message``, ``m.sticker``) as an ``Inbound``;
    ``None`` for anything else (state, edits, reactions, redacted or encrypted events).

    ``direct``: the room is a direct chat (``"dm"``, else ``"group"``). In a
    group the message addresses the bot when ``m.mentions.user_ids`` names it,
    its user id or one of ``bot_names`` (display names) is in the body, or the
    text is a ``/command``; a reply to the bot's message is found by the
    adapter (:func:`reply_target`). ``thread_id`` is the thread root of an
    ``m.thread`` relation. ``m.notice`` is what bots send: ``from_bot``.
    Pure: no I/O.
    """
    kind = source.get("type")
    content = source.get("content")
    event_id = str(source.get("event_id") or "")
    sender = str(source.get("sender") or "")
    if kind not in ("m.room.message", "m.sticker") or not isinstance(content, Mapping):
        return None
    if not event_id or not sender:
        return None
    rel = _relates(content)
    if rel.get("rel_type") == "m.replace":
        return None  # an edit: the message was answered as first sent
    msgtype = str(content.get("msgtype") or "")
    files = tuple(a for a, _ in media_of(source))
    if files:
        text = _caption(content)
    elif kind == "m.room.message" and msgtype in ("m.text", "m.notice", "m.emote"):
        text = str(content.get("body") or "")
        if "m.in_reply_to" in rel:
            text = _FALLBACK.sub("", text, count=1)
    else:
        return None  # an encrypted file, a location, an unknown msgtype...
    names = [bot_user_id, *bot_names]
    mentions = content.get("m.mentions")
    user_ids = mentions.get("user_ids") if isinstance(mentions, Mapping) else None
    mentioned = isinstance(user_ids, list) and bot_user_id in user_ids
    mentioned = mentioned or _mentioned(text, names)
    text = _strip_address(text, names)
    thread_id = ""
    if rel.get("rel_type") == "m.thread" and isinstance(rel.get("event_id"), str):
        thread_id = str(rel["event_id"])
    return Inbound(
        platform=PLATFORM,
        chat_id=room_id,
        chat_type="dm" if direct else "group",
        user_id=sender,
        text=text,
        message_id=event_id,
        chat_name=chat_name,
        thread_id=thread_id,
        user_name=user_name,
        mentions_bot=direct or mentioned or text.lstrip().startswith("/"),
        from_bot=msgtype == "m.notice",
        from_self=sender == bot_user_id,
        attachments=files,
        raw=source,
    )


# -- outbound ------------------------------------------------------------------


def text_content(text: str, *, formatted: bool = True, notice: bool = False) -> dict[str, Any]:
    """An ``m.text`` (or ``m.notice``) content: ``body`` the plain text, and for a
    formatted chunk ``formatted_body`` HTML rendered from the Markdown."""
    content: dict[str, Any] = {"msgtype": "m.notice" if notice else "m.text"}
    if formatted:
        content["body"] = to_plain(text) or text
        content["format"] = HTML_FORMAT
        content["formatted_body"] = to_matrix_html(text)
    else:
        content["body"] = text
    return content


def thread_relation(root: str, latest: str) -> dict[str, Any]:
    """``m.relates_to`` of a message in the thread of ``root`` (the fallback reply to
    ``latest`` is for clients without threads)."""
    return {"rel_type": "m.thread", "event_id": root, "is_falling_back": True,
            "m.in_reply_to": {"event_id": latest or root}}  # fmt: skip


def edit_content(event_id: str, text: str, *, formatted: bool = True) -> dict[str, Any]:
    """An edit (``m.replace``) of ``event_id`` to ``text``: ``m.new_content`` is the
    new message; the outer body (``* text``) is for clients without edits."""
    new = text_content(text, formatted=formatted)
    outer = {"msgtype": new["msgtype"], "body": "* " + new["body"]}
    if formatted:
        outer |= {"format": HTML_FORMAT, "formatted_body": "* " + new["formatted_body"]}
    return {**outer, "m.new_content": new,
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id}}  # fmt: skip


def file_content(attachment: Attachment, url: str, size: int) -> dict[str, Any]:
    """The content of an uploaded file's message (``m.image``, ``m.audio``, ``m.video``,
    ``m.file``): ``filename`` its name, ``body`` the caption (or the name)."""
    name = attachment.name or attachment.kind
    content: dict[str, Any] = {
        "msgtype": _MSGTYPES.get(attachment.kind, "m.file"),
        "body": attachment.caption or name,
        "filename": name,
        "url": url,
        "info": {"mimetype": attachment.mime or "application/octet-stream", "size": size},
    }
    if attachment.kind == "voice":
        content["org.matrix.msc3245.voice"] = {}
    return content
