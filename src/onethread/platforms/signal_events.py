"""Signal's incoming side, pure: signal-cli envelopes as ``Inbound`` messages.

The envelope is signal-cli's ``JsonMessageEnvelope`` as the daemon's
``receive`` notifications carry it (see ``signal.py`` for what counts as a
message and who is addressed). No I/O here: the adapter feeds these functions
and keeps ``SignalMessage`` in ``Inbound.raw`` to fetch the files later.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..session.attachments import Attachment
from .base import Inbound

__all__ = ["SignalMessage", "envelope_of", "is_group_id", "normalize_envelope"]

PLATFORM = "signal"
MENTION_MARK = "\ufffc"  # Signal puts this in the text where a mention stands
LONG_TEXT = "text/x-signal-plain"  # the body of a long message; signal-cli inlines it


def is_group_id(chat_id: str) -> bool:
    """True for a Signal group id (base64 of 32 bytes, or 16 for old groups).

    Everything else is a person: a UUID, ``+NUMBER``, ``PNI:...`` or ``u:name``
    (none of which decodes to 16 or 32 bytes).
    """
    try:
        raw = base64.b64decode(chat_id, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) in (16, 32)


# -- normalising ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignalMessage:
    """``Inbound.raw`` of a Signal message: the envelope and where its files are.

    ``files`` holds one ``(attachment id, sticker pack id, sticker id)`` per
    ``Inbound.attachments`` entry (an attachment has an id; a sticker the pack
    and sticker ids). ``source`` is the sender (UUID, else number) and
    ``group_id`` the group, for ``getAttachment``.
    """

    envelope: Mapping[str, Any]
    files: tuple[tuple[str, str, int], ...]
    source: str
    group_id: str


def _py_index(text: str, utf16_offset: int) -> int:
    """The ``str`` index of a UTF-16 code-unit offset (Signal counts mentions in those)."""
    units = 0
    for index, char in enumerate(text):
        if units >= utf16_offset:
            return index
        units += 2 if ord(char) > 0xFFFF else 1
    return len(text)


def _is_self(number: Any, uuid: Any, *, account: str, self_uuid: str) -> bool:
    return bool((number and number == account) or (self_uuid and uuid == self_uuid))


def _with_mentions(
    text: str, mentions: Sequence[Any], *, account: str, self_uuid: str
) -> tuple[str, bool]:
    """``text`` with each mention's mark replaced by ``@number`` (or ``@uuid``); a
    leading mention of the bot is removed (``@bot /help`` reads ``/help``).
    Returns the text and whether the bot was mentioned."""
    spans: list[tuple[int, int, str, bool]] = []
    for m in mentions:
        if not isinstance(m, Mapping) or not isinstance(m.get("start"), int):
            continue
        start = _py_index(text, m["start"])
        end = _py_index(text, m["start"] + int(m.get("length") or 0))
        me = _is_self(m.get("number"), m.get("uuid"), account=account, self_uuid=self_uuid)
        label = str(m.get("number") or m.get("uuid") or m.get("name") or "someone")
        spans.append((start, end, label, me))
    mentioned = any(me for *_, me in spans)
    for start, end, label, me in sorted(spans, reverse=True):
        leading = me and not text[:start].strip()
        text = text[:start] + ("" if leading else f"@{label}") + text[end:]
        if leading:
            text = text.lstrip()
    return text, mentioned


def _kind(content_type: str, filename: str) -> str:
    if content_type.startswith("image/"):
        return "image"
    if content_type.startswith("video/"):
        return "video"
    if content_type.startswith("audio/"):
        return "audio" if filename else "voice"  # Signal's voice notes carry no file name
    return "file"


def _files(data: Mapping[str, Any]) -> list[tuple[Attachment, tuple[str, str, int]]]:
    found: list[tuple[Attachment, tuple[str, str, int]]] = []
    for item in data.get("attachments") or ():
        if not isinstance(item, Mapping) or not item.get("id"):
            continue
        mime = str(item.get("contentType") or "")
        if mime == LONG_TEXT:
            continue  # already the message's text
        name = str(item.get("filename") or "")
        size = item.get("size")
        attachment = Attachment(
            _kind(mime, name), mime, name,
            size if isinstance(size, int) and size > 0 else 0,
            caption=str(item.get("caption") or ""),
        )  # fmt: skip
        found.append((attachment, (str(item["id"]), "", 0)))
    sticker = data.get("sticker")
    if isinstance(sticker, Mapping) and sticker.get("packId"):
        ref = ("", str(sticker["packId"]), int(sticker.get("stickerId") or 0))
        found.append((Attachment("sticker", "image/webp", "sticker"), ref))
    return found


def normalize_envelope(
    envelope: Mapping[str, Any], *, account: str, self_uuid: str = ""
) -> Inbound | None:
    """A signal-cli ``envelope`` as an ``Inbound``; ``None`` for anything but a message.

    ``account`` (``+NUMBER``) and ``self_uuid`` are the bot's own. Only
    envelopes with a ``dataMessage`` holding text, files or a sticker count:
    receipts, typing, sync messages (the account's other devices), edits,
    reactions, group updates and deletions give ``None``. Pure: no I/O, and
    the bot's own messages are marked (``from_self``), not dropped.
    """
    data = envelope.get("dataMessage")
    if not isinstance(data, Mapping):
        return None
    user_id = str(envelope.get("sourceUuid") or envelope.get("sourceNumber") or "")
    if not user_id or data.get("reaction") or data.get("remoteDelete"):
        return None
    mentions = data.get("mentions") or ()
    text, mentioned = _with_mentions(
        str(data.get("message") or ""), mentions, account=account, self_uuid=self_uuid
    )
    files = _files(data)
    if not text.strip() and not files:
        return None
    group = data.get("groupInfo")
    group_id = str(group.get("groupId") or "") if isinstance(group, Mapping) else ""
    quote = data.get("quote")
    quoted_bot = isinstance(quote, Mapping) and _is_self(
        quote.get("authorNumber") or quote.get("author"), quote.get("authorUuid"),
        account=account, self_uuid=self_uuid,
    )  # fmt: skip
    name = str(envelope.get("sourceName") or envelope.get("sourceNumber") or "")
    timestamp = data.get("timestamp") or envelope.get("timestamp")
    return Inbound(
        platform=PLATFORM,
        chat_id=group_id or user_id,
        chat_type="group" if group_id else "dm",
        chat_name=str(group.get("groupName") or "") if group_id and group else name,
        user_id=user_id,
        user_name=name,
        text=text,
        message_id=str(timestamp or ""),
        mentions_bot=not group_id or mentioned or quoted_bot or text.lstrip().startswith("/"),
        from_self=_is_self(
            envelope.get("sourceNumber"),
            envelope.get("sourceUuid"),
            account=account,
            self_uuid=self_uuid,
        ),
        attachments=tuple(a for a, _ in files),
        raw=SignalMessage(envelope, tuple(ref for _, ref in files), user_id, group_id),
    )


def envelope_of(params: Any) -> tuple[Mapping[str, Any], str, Any] | None:
    """``(envelope, account, exception)`` of a ``receive`` notification's params, either
    shape: ``{envelope, account}`` (automatic receiving) or ``{subscription, result:
    {envelope, account}}`` (after ``subscribeReceive``)."""
    if not isinstance(params, Mapping):
        return None
    inner = params.get("result") if "subscription" in params else params
    if not isinstance(inner, Mapping) or not isinstance(inner.get("envelope"), Mapping):
        return None
    return inner["envelope"], str(inner.get("account") or ""), inner.get("exception")
