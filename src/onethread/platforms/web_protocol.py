"""The web chat's wire protocol: JSON frames between the page and ``WebAdapter``.

Pure data and functions, no I/O, so they are tested without a server.

The page connects to ``/ws?user=<id>&name=<display name>[&history=0][&token=...]``.

Client to server::

    {"type": "message", "id": "<client message id>", "text": "...",
     "attachments": [{"file": "<64 hex>"}, ...]}    files uploaded first with
        POST /files (see onethread.platforms.web_files); text may then be empty
    {"type": "ack", "id": "<server message id>"}      a bot message was shown
    {"type": "stop", "id": "<reply id>"}              stop the reply streaming as that id
    {"type": "ping"}

Server to client::

    {"type": "hello", "user": "...", "name": "..."}
    {"type": "history", "messages": [{"role", "text", "ts", "platform", "source", "mirror",
                                      "attachments"?}]}
        (a slash command and its reply, kept out of the history, carry "command": true)
    {"type": "message", "id", "role": "assistant" | "user", "text", "ts", "format", "html",
     "attachments"?}
        each attachment {"file": "<64 hex>", "kind", "mime", "name", "size"}, its
        bytes at GET /files/<64 hex>?user=<id> for this user only
    {"type": "delta", "id": "<reply id>", "text": "<the next piece>"}   a reply streaming
    {"type": "abandon", "id": "<reply id>"}            that streamed reply ended without text
    {"type": "ack", "id": "<client message id>"}       the message reached the bot
    {"type": "typing"}
    {"type": "error", "error": "...", "id": "<client message id, if any>"}
    {"type": "pong"}

Delivery is at least once both ways and deduplicated by id: the page resends a
message until it is acked (the bot's gate drops the repeats by message id), and
the server keeps each bot message in a bounded per-user :class:`Outbox` until a
page acks it, replaying the rest when the user reconnects.

Streaming: ``delta`` frames (not kept, not acked) show a reply while the model
writes it; the final ``message`` frame with the same id replaces it. ``html`` is
the Markdown rendered by markdown-it with raw HTML off
(:func:`onethread.platforms.markup.to_web_html`): the page may insert it as
HTML; ``text`` is always shown as text.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..session.history.base import HistoryEntry
from .markup import to_web_html

__all__ = [
    "CHAT_PREFIX",
    "MAX_TEXT_LENGTH",
    "ClientFrame",
    "Outbox",
    "ProtocolError",
    "SideLog",
    "chat_id_for",
    "clean_name",
    "history_message",
    "parse_client_frame",
    "user_for_chat",
    "valid_id",
]

CHAT_PREFIX = "web-"
MAX_TEXT_LENGTH = 20_000  # characters of one message from the page
MAX_NAME_LENGTH = 64
MAX_FILES = 10  # attachments on one message from the page
_FILE_RE = re.compile(r"[0-9a-f]{64}")
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_CLIENT_TYPES = frozenset({"message", "ack", "stop", "ping"})


class ProtocolError(ValueError):
    """A frame from the page is malformed; the message says what is wrong."""

    def __init__(self, message: str, *, frame_id: str = "") -> None:
        self.frame_id = frame_id
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class ClientFrame:
    """One parsed frame from the page: ``type`` is ``message``, ``ack``, ``stop`` or ``ping``."""

    type: str
    id: str = ""
    text: str = ""
    files: tuple[str, ...] = ()
    """Uploaded files (64 hex digits each) the message carries."""


def valid_id(value: str) -> bool:
    """True for a user or message id the protocol accepts: 1-128 of ``[A-Za-z0-9_-]``."""
    return bool(_ID_RE.fullmatch(value))


def clean_name(name: str, default: str = "guest") -> str:
    """A display name fit to show: control characters removed, trimmed, at most 64 chars."""
    cleaned = "".join(ch for ch in name if ch.isprintable()).strip()[:MAX_NAME_LENGTH].strip()
    return cleaned or default


def chat_id_for(user_id: str) -> str:
    """The chat id of a web visitor: ``web-<user id>``."""
    return f"{CHAT_PREFIX}{user_id}"


def user_for_chat(chat_id: str) -> str | None:
    """The visitor's user id for a ``web-<user id>`` chat id, else ``None``."""
    if not chat_id.startswith(CHAT_PREFIX):
        return None
    user = chat_id[len(CHAT_PREFIX) :]
    return user if valid_id(user) else None


def parse_client_frame(raw: str) -> ClientFrame:
    """Parse and validate one text frame from the page.

    Raises :class:`ProtocolError` (a ``ValueError``) for anything malformed:
    not a JSON object, an unknown type, a missing or bad id, empty or
    over-long text. ``frame_id`` is set when the frame had a usable id, so the
    error can be tied to the message it refuses.
    """
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError("frame is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ProtocolError("frame must be a JSON object")
    kind = data.get("type")
    if kind not in _CLIENT_TYPES:
        raise ProtocolError(f"unknown frame type {kind!r}")
    if kind == "ping":
        return ClientFrame("ping")
    frame_id = data.get("id")
    if not isinstance(frame_id, str) or not valid_id(frame_id):
        raise ProtocolError(f"{kind} frame needs an id of 1-128 letters, digits, '_' or '-'")
    if kind in ("ack", "stop"):
        return ClientFrame(kind, frame_id)
    files = _files_of(data.get("attachments", []), frame_id)
    text = data.get("text", "")
    if not isinstance(text, str) or not (text.strip() or files):
        raise ProtocolError("message text must be a non-empty string", frame_id=frame_id)
    if len(text) > MAX_TEXT_LENGTH:
        raise ProtocolError(
            f"message is too long ({len(text)} characters, at most {MAX_TEXT_LENGTH})",
            frame_id=frame_id,
        )
    return ClientFrame("message", frame_id, text, files)


def _files_of(value: Any, frame_id: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_FILES:
        raise ProtocolError(f"attachments must be a list of at most {MAX_FILES}",
                            frame_id=frame_id)  # fmt: skip
    files = []
    for item in value:
        file = item.get("file") if isinstance(item, dict) else None
        if not isinstance(file, str) or not _FILE_RE.fullmatch(file):
            raise ProtocolError("each attachment must be {\"file\": \"<64 hex digits>\"}",
                                frame_id=frame_id)  # fmt: skip
        files.append(file)
    return tuple(files)


def history_message(entry: HistoryEntry) -> dict[str, Any]:
    """One history entry as the page shows it (``role, text, ts, platform, source, mirror``,
    and ``attachments`` when it has stored ones)."""
    shown: dict[str, Any] = {
        "role": entry.role,
        "text": entry.content,
        **({"html": to_web_html(entry.content)} if entry.role != "user" else {}),
        "ts": entry.timestamp,
        "platform": entry.platform,
        "source": entry.source,
        "mirror": entry.mirror,
    }
    files = [a for a in entry.attachments if a.blob.startswith("sha256:")]
    if files:
        shown["attachments"] = [
            {"file": a.blob[7:], "kind": a.kind, "mime": a.mime, "name": a.name, "size": a.size}
            for a in files
        ]
    return shown


class Outbox:
    """Bot messages per user, kept until a page acks them (bounded, oldest dropped).

    ``per_user`` messages are kept for each user and ``max_users`` users at
    most (the least recently used user's outbox is dropped first). Touched on
    the event loop thread only.
    """

    def __init__(self, per_user: int = 100, max_users: int = 1000) -> None:
        if per_user < 1 or max_users < 1:
            raise ValueError("outbox sizes must be at least 1")
        self.per_user = per_user
        self.max_users = max_users
        self._boxes: OrderedDict[str, OrderedDict[str, dict[str, Any]]] = OrderedDict()

    def add(self, user_id: str, payload: dict[str, Any]) -> None:
        """Keep ``payload`` (a ``message`` frame with an ``id``) until it is acked."""
        box = self._boxes.get(user_id)
        if box is None:
            box = self._boxes[user_id] = OrderedDict()
        self._boxes.move_to_end(user_id)
        box[str(payload["id"])] = payload
        while len(box) > self.per_user:
            box.popitem(last=False)
        while len(self._boxes) > self.max_users:
            self._boxes.popitem(last=False)

    def ack(self, user_id: str, message_id: str) -> bool:
        """Forget an acked message; True if it was pending."""
        box = self._boxes.get(user_id)
        if box is None or box.pop(message_id, None) is None:
            return False
        if not box:
            del self._boxes[user_id]
        return True

    def pending(self, user_id: str) -> list[dict[str, Any]]:
        """The user's unacked messages, oldest first."""
        box = self._boxes.get(user_id)
        return list(box.values()) if box else []

    def discard_files(self, user_id: str, files: Iterable[str]) -> int:
        """Forget pending file messages whose files are all in ``files`` (already shown).

        Returns how many were dropped.
        """
        box = self._boxes.get(user_id)
        if not box:
            return 0
        shown = set(files)
        gone = [
            mid
            for mid, payload in box.items()
            if payload.get("attachments")
            and all(f.get("file") in shown for f in payload["attachments"])
        ]
        for mid in gone:
            del box[mid]
        if not box:
            del self._boxes[user_id]
        return len(gone)

    def discard_texts(self, user_id: str, texts: Iterable[str]) -> int:
        """Forget pending messages whose text is in ``texts`` (already shown as history).

        Returns how many were dropped.
        """
        box = self._boxes.get(user_id)
        if not box:
            return 0
        shown = set(texts)
        gone = [mid for mid, payload in box.items()
                if payload.get("text") in shown and not payload.get("attachments")]  # fmt: skip
        for mid in gone:
            del box[mid]
        if not box:
            del self._boxes[user_id]
        return len(gone)


class SideLog:
    """Per user, the messages kept out of the history: slash commands and their replies.

    The page redraws the conversation from the history on every load; these
    are not in it (the model must never see them), so the adapter keeps them
    here and :meth:`merge` puts them back in time order. Bounded:
    ``per_user`` messages for each user, ``max_users`` users (the least
    recently used dropped first). In this process's memory: a page reload
    keeps them, a server restart forgets them. Touched on the event loop
    thread only.
    """

    def __init__(self, per_user: int = 100, max_users: int = 1000) -> None:
        if per_user < 1 or max_users < 1:
            raise ValueError("side log sizes must be at least 1")
        self.per_user = per_user
        self.max_users = max_users
        self._logs: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()

    def add(self, user_id: str, *messages: dict[str, Any]) -> None:
        """Keep ``messages`` (``history_message``-shaped dicts with a ``ts``) for ``user_id``."""
        log = self._logs.get(user_id)
        if log is None:
            log = self._logs[user_id] = deque(maxlen=self.per_user)
        self._logs.move_to_end(user_id)
        log.extend(messages)
        while len(self._logs) > self.max_users:
            self._logs.popitem(last=False)

    def messages(self, user_id: str) -> list[dict[str, Any]]:
        """The user's kept messages, oldest first."""
        return list(self._logs.get(user_id, ()))

    def merge(self, user_id: str, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``history`` with the user's kept messages put in, ordered by ``ts`` (stable)."""
        kept = self.messages(user_id)
        if not kept:
            return history
        return sorted([*history, *kept], key=lambda m: float(m.get("ts") or 0.0))
