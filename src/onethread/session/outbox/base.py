"""Cross-host delivery: a durable queue of messages for the host that owns a platform.

With several hosts, ``notify()`` may run on a host that has no connection to
the person's platform (host A runs Discord, host B runs Telegram). Host A puts
the message in the shared outbox; host B, which serves Telegram, takes it,
sends it and mirrors it into the person's history, then acknowledges it.

Guarantees (both back-ends, :mod:`.redis` and :mod:`.postgres`):

* ``put`` returns once the message is stored durably on the server;
* each message is handed to one serving host at a time; while ``deliver``
  runs its claim is extended, so no other host takes it;
* a host that dies (or whose ``deliver`` raises) leaves the message
  unacknowledged; after ``visibility`` seconds another serving host (or the
  same one) takes it again; after ``max_attempts`` it is set aside as dead
  (kept, logged) instead of being retried forever;
* acknowledged messages are never delivered again.

So the person gets each message once, except in one window: a host that dies
after the platform accepted the message and before the acknowledgement
(milliseconds) causes one repeat when the message is retried, because no
platform API lets a sender ask "did you already get this?". Delivery is
at-least-once; exactly-once as the person sees it outside that window.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..attachments import Attachment

__all__ = ["Deliver", "Outbox", "OutboxItem"]


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One message waiting for the host that serves ``platform``.

    ``id`` is assigned by the outbox (empty before ``put``); ``attempts``
    counts the hand-outs so far, including the current one. ``unified_user_id``,
    ``source`` and ``metadata`` are for the mirror into the person's history.
    ``attachments`` are files to send after the text, by their address in the
    blob store: the serving host must reach the same blob store (``s3://``
    when hosts do not share a disk).
    """

    platform: str
    chat_id: str
    text: str
    thread_id: str = ""
    unified_user_id: str = ""
    source: str = "notify"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""
    attempts: int = 0
    attachments: tuple[Attachment, ...] = ()

    def to_json(self) -> str:
        """The message fields (not ``id``/``attempts``) as JSON."""
        fields: dict[str, Any] = {
            "platform": self.platform,
            "chat_id": self.chat_id,
            "text": self.text,
            "thread_id": self.thread_id,
            "unified_user_id": self.unified_user_id,
            "source": self.source,
            "metadata": dict(self.metadata),
        }
        if self.attachments:  # absent otherwise: an item reads as the previous release wrote it
            fields["attachments"] = [a.to_dict() for a in self.attachments]
        return json.dumps(fields, ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str, *, id: str, attempts: int) -> OutboxItem:
        """Inverse of :meth:`to_json`, with the outbox's ``id`` and ``attempts``."""
        d = json.loads(data)
        return cls(
            platform=str(d["platform"]),
            chat_id=str(d["chat_id"]),
            text=str(d["text"]),
            thread_id=str(d.get("thread_id", "")),
            unified_user_id=str(d.get("unified_user_id", "")),
            source=str(d.get("source", "notify")),
            metadata=dict(d.get("metadata") or {}),
            id=id,
            attempts=attempts,
            attachments=tuple(Attachment.from_dict(a) for a in d.get("attachments") or ()),
        )


Deliver = Callable[[OutboxItem], Awaitable[None]]
"""Sends one item (and mirrors it). Returning acknowledges it; raising retries it later."""


@runtime_checkable
class Outbox(Protocol):
    """A durable, shared queue of outgoing messages per platform (see the module doc)."""

    async def put(self, item: OutboxItem) -> str:
        """Store ``item`` durably for the host serving ``item.platform``; return its id."""
        ...

    async def serve(self, platforms: Collection[str], deliver: Deliver) -> None:
        """Deliver items of ``platforms`` with ``deliver`` until cancelled."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
