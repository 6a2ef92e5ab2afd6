"""WhatsApp Cloud API webhooks: the signature check and the payload, as pure functions.

A webhook body is ``{"object": "whatsapp_business_account", "entry": [{"id",
"changes": [{"field": "messages", "value": {...}}]}]}``; each ``value`` has
``messaging_product``, ``metadata`` (``display_phone_number``,
``phone_number_id``), and ``contacts`` + ``messages`` (what people sent) or
``statuses`` (what became of what the bot sent). Meta signs the raw body:
``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body, keyed with the
app secret>``.

Who is who (:func:`person_of`): a person's id is their ``wa_id`` (the phone
number WhatsApp gives); with usernames WhatsApp adds a business-scoped user
id (BSUID, ``user_id`` in ``contacts[]``, ``from_user_id`` in ``messages[]``,
e.g. ``US.13491208655302741918``) beside the ``wa_id``, or instead of it for
someone whose number is hidden. One id per person: the ``wa_id`` when the
payload has it; else the ``wa_id`` seen earlier with that BSUID
(:class:`Aliases`); else the BSUID itself. See the adapter's docstring for
how a history survives the change.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..session.attachments import Attachment
from .base import Inbound

__all__ = [
    "MEDIA_KINDS",
    "Aliases",
    "Status",
    "is_bsuid",
    "media_ids",
    "normalize_message",
    "parse_webhook",
    "person_of",
    "sign",
    "signature_ok",
]

PLATFORM = "whatsapp"
SIGNATURE_HEADER = "X-Hub-Signature-256"

# Cloud API message type -> our attachment kind (audio becomes "voice" when ``voice`` is true).
MEDIA_KINDS = {
    "image": "image",
    "audio": "audio",
    "video": "video",
    "document": "file",
    "sticker": "sticker",
}


def sign(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends with ``body``: ``sha256=<hex>``."""
    digest = hmac.new(app_secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signature_ok(body: bytes, header: str | None, app_secret: str) -> bool:
    """True when ``header`` is Meta's signature of ``body`` (constant-time compare)."""
    if not header or not app_secret or not header.startswith("sha256="):
        return False
    expected = sign(body, app_secret)
    return hmac.compare_digest(expected.encode("ascii"), header.strip().encode("ascii", "replace"))


def is_bsuid(value: str) -> bool:
    """A business-scoped user id (``CC.digits``, ``US.ENT.…``), not a phone number."""
    return "." in value and not value.isdigit()


class Aliases:
    """BSUID -> ``wa_id`` learned from payloads that carry both; bounded (LRU).

    Touched on the event loop thread only (no lock needed). Per process: a
    host that never saw the pair uses the BSUID until a payload with both
    arrives (see the adapter's docstring on keeping one history).
    """

    def __init__(self, max_size: int = 100_000) -> None:
        self._map: OrderedDict[str, str] = OrderedDict()
        self.max_size = max_size

    def learn(self, bsuid: str, wa_id: str) -> bool:
        """Remember the pair; True when it is new to this process."""
        if not bsuid or not wa_id:
            return False
        known = self._map.get(bsuid)
        self._map[bsuid] = wa_id
        self._map.move_to_end(bsuid)
        while len(self._map) > self.max_size:
            self._map.popitem(last=False)
        return known != wa_id

    def get(self, bsuid: str) -> str:
        """The ``wa_id`` seen with ``bsuid``, else ``""``."""
        return self._map.get(bsuid, "")


def _contact_for(
    message: Mapping[str, Any], contacts: list[Mapping[str, Any]]
) -> Mapping[str, Any]:
    sender, bsuid = str(message.get("from") or ""), str(message.get("from_user_id") or "")
    for contact in contacts:
        if (sender and contact.get("wa_id") == sender) or (
            bsuid and contact.get("user_id") == bsuid
        ):
            return contact
    return contacts[0] if len(contacts) == 1 else {}


def person_of(
    message: Mapping[str, Any], contact: Mapping[str, Any], aliases: Aliases | None = None
) -> tuple[str, str]:
    """``(person id, BSUID)`` of a message's sender (see the module docstring)."""
    wa_id = str(message.get("from") or contact.get("wa_id") or "")
    bsuid = str(message.get("from_user_id") or contact.get("user_id") or "")
    if wa_id and not is_bsuid(wa_id):
        if aliases is not None and bsuid:
            aliases.learn(bsuid, wa_id)
        return wa_id, bsuid
    bsuid = bsuid or wa_id  # "from" holding a BSUID (no phone number given)
    if aliases is not None:
        known = aliases.get(bsuid)
        if known:
            return known, bsuid
    return bsuid, bsuid


def _location_text(loc: Mapping[str, Any]) -> str:
    lat, lon = loc.get("latitude"), loc.get("longitude")
    where = ", ".join(str(loc[k]) for k in ("name", "address") if loc.get(k))
    place = f"{where} " if where else ""
    return f"[Location: {place}({lat}, {lon}) https://maps.google.com/?q={lat},{lon}]"


def _interactive_text(inter: Mapping[str, Any]) -> str:
    for kind in ("button_reply", "list_reply"):
        reply = inter.get(kind)
        if isinstance(reply, Mapping):
            title = str(reply.get("title") or reply.get("id") or "")
            desc = str(reply.get("description") or "")
            return f"{title} ({desc})" if desc else title
    nfm = inter.get("nfm_reply")  # a WhatsApp Flow's answer: its JSON as sent
    if isinstance(nfm, Mapping):
        return str(nfm.get("response_json") or nfm.get("body") or "")
    return ""


def _contacts_text(cards: Any) -> str:
    lines = []
    for card in cards if isinstance(cards, list) else ():
        if not isinstance(card, dict):
            continue
        name = str((card.get("name") or {}).get("formatted_name") or "")
        numbers = card.get("phones") or ()
        phones = [str(p.get("phone") or "") for p in numbers if isinstance(p, dict)]
        lines.append(" ".join(["[Contact:", name, *(p for p in phones if p)]) + "]")
    return "\n".join(lines)


def media_ids(message: Mapping[str, Any]) -> list[str]:
    """The Graph media ids of a message's attachments, in :func:`normalize_message`'s order."""
    media = message.get(str(message.get("type") or ""))
    if str(message.get("type")) in MEDIA_KINDS and isinstance(media, Mapping) and media.get("id"):
        return [str(media["id"])]
    return []


def _attachments(message: Mapping[str, Any]) -> tuple[tuple[Attachment, ...], str]:
    """The message's media as attachments, and its caption."""
    kind = str(message.get("type") or "")
    media = message.get(kind)
    if kind not in MEDIA_KINDS or not isinstance(media, Mapping) or not media.get("id"):
        return (), ""
    ours = MEDIA_KINDS[kind]
    if kind == "audio" and media.get("voice"):
        ours = "voice"
    mime = str(media.get("mime_type") or "").split(";")[0].strip().lower()
    if kind == "sticker" and not mime:
        mime = "image/webp"
    caption = str(media.get("caption") or "")
    size = media.get("file_size")
    attachment = Attachment(ours, mime, str(media.get("filename") or ""),
                            size if isinstance(size, int) and size > 0 else 0)  # fmt: skip
    return (attachment,), caption


def normalize_message(
    message: Mapping[str, Any],
    contacts: list[Mapping[str, Any]],
    *,
    aliases: Aliases | None = None,
) -> Inbound | None:
    """One ``messages[]`` item as an ``Inbound``; ``None`` for what is not a message to
    answer (a reaction, an unsupported or system message, one with nothing in it).

    Text as is; media as attachments (their caption as the text); a location
    and a shared contact card as a line of text; a button or list reply as the
    title the person tapped. Always a DM (``chat_id`` is the person's id): a
    group message (``group_id``) is left out, never answered as a DM.
    """
    kind = str(message.get("type") or "")
    if kind in ("reaction", "unsupported", "unknown", "system", "ephemeral", "errors"):
        return None
    if message.get("group_id"):  # a group chat (Groups API): not served yet, never as a DM
        return None
    attachments: tuple[Attachment, ...] = ()
    text = ""
    if kind == "text":
        text = str((message.get("text") or {}).get("body") or "")
    elif kind in MEDIA_KINDS:
        attachments, text = _attachments(message)
    elif kind == "location":
        text = _location_text(message.get("location") or {})
    elif kind == "interactive":
        text = _interactive_text(message.get("interactive") or {})
    elif kind == "button":  # a template's quick-reply button
        text = str((message.get("button") or {}).get("text") or "")
    elif kind == "contacts":
        text = _contacts_text(message.get("contacts"))
    msg_id = str(message.get("id") or "")
    contact = _contact_for(message, contacts)
    person, _bsuid = person_of(message, contact, aliases)
    if not (text or attachments) or not person or not msg_id:
        return None
    profile = contact.get("profile") or {}
    name = str(profile.get("name") or profile.get("username") or "")
    return Inbound(
        platform=PLATFORM,
        chat_id=person,
        chat_type="dm",
        user_id=person,
        text=text,
        message_id=msg_id,
        chat_name=name,
        user_name=name,
        mentions_bot=True,
        attachments=attachments,
        raw=message,
    )


@dataclass(frozen=True, slots=True)
class Status:
    """One ``statuses[]`` callback: what became of a message the bot sent.

    ``status`` is ``sent``, ``delivered``, ``read`` or ``failed`` (then
    ``error_code``/``error_title`` say why: 131047 is the closed 24-hour
    window). ``recipient`` is the person's id as :func:`person_of` gives it.
    """

    message_id: str
    status: str
    recipient: str
    timestamp: float = 0.0
    error_code: int | None = None
    error_title: str = ""


def _status(item: Mapping[str, Any]) -> Status | None:
    message_id, status = str(item.get("id") or ""), str(item.get("status") or "")
    if not message_id or not status:
        return None
    recipient = str(item.get("recipient_id") or item.get("recipient_user_id") or "")
    code: int | None = None
    title = ""
    for error in item.get("errors") or ():
        if isinstance(error, Mapping):
            raw = error.get("code")
            code = raw if isinstance(raw, int) else None
            title = str(error.get("title") or error.get("message") or "")
            break
    try:
        when = float(item.get("timestamp") or 0)
    except (TypeError, ValueError):
        when = 0.0
    return Status(message_id, status, recipient, when, code, title)


def _values(payload: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for entry in payload.get("entry") or ():
        if not isinstance(entry, Mapping):
            continue
        for change in entry.get("changes") or ():
            if not isinstance(change, Mapping) or change.get("field") not in (None, "messages"):
                continue
            value = change.get("value")
            if isinstance(value, Mapping) and value.get("messaging_product") in (None, "whatsapp"):
                yield value


def parse_webhook(
    payload: Mapping[str, Any], *, phone_number_id: str = "", aliases: Aliases | None = None
) -> tuple[list[Inbound], list[Status]]:
    """The messages and status callbacks in a webhook body, in order.

    With ``phone_number_id``, changes for another number of the same app
    (``metadata.phone_number_id``) are left out. Reactions and other events
    that are not messages to answer are left out (see :func:`normalize_message`).
    """
    inbound: list[Inbound] = []
    statuses: list[Status] = []
    for value in _values(payload):
        meta = value.get("metadata") or {}
        if phone_number_id and str(meta.get("phone_number_id") or "") not in ("", phone_number_id):
            continue
        contacts = [c for c in value.get("contacts") or () if isinstance(c, Mapping)]
        for message in value.get("messages") or ():
            if isinstance(message, Mapping):
                found = normalize_message(message, contacts, aliases=aliases)
                if found is not None:
                    inbound.append(found)
        for item in value.get("statuses") or ():
            if isinstance(item, Mapping):
                status = _status(item)
                if status is not None:
                    statuses.append(status)
    return inbound, statuses
