"""The history store contract: append-only conversation entries per session key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..attachments import Attachment

__all__ = [
    "DELIVERY_CUT",
    "DELIVERY_FAILED",
    "HistoryEntry",
    "HistoryStore",
    "SessionSummary",
    "delivery_failed",
]

DELIVERY_FAILED = "failed"
"""``metadata["delivery"]`` of text that did not reach the person (see ``delivery_failed``)."""

DELIVERY_CUT = "cut"
"""``metadata["delivery"]`` of a reply too long to send whole: only its first part went out."""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One message in a conversation, with where it came from.

    ``role`` is ``"user"`` or ``"assistant"`` (``"summary"`` for a folded
    summary, kept under ``summary_key(key)``: see ``onethread.agent.summary``).
    ``mirror`` marks text the bot sent
    on its own (a reminder, a cross-platform reply) that was mirrored in with
    ``mirror_to_session``; ``source`` says who produced it (``"cron"``,
    ``"notify"``) and ``metadata`` carries the caller's extra JSON-able data.
    ``timestamp`` is Unix seconds. Text the bot meant to send and could not
    deliver is kept, marked ``metadata["delivery"] == "failed"`` and
    ``metadata["delivery_error"]`` (the error's class name); see
    :attr:`undelivered`. A reply sent only in part (too long) is marked
    ``metadata["delivery"] == "cut"``.
    ``attachments`` are references to bytes in the blob store (photos, voice
    notes, files), never the bytes.
    """

    role: str
    content: str
    timestamp: float
    platform: str = ""
    chat_id: str = ""
    user_id: str = ""
    user_name: str = ""
    message_id: str = ""
    mirror: bool = False
    source: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()

    @property
    def undelivered(self) -> bool:
        """True when the bot's text did not reach the person (a send that failed for good)."""
        return bool(self.metadata) and self.metadata.get("delivery") == DELIVERY_FAILED

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (used by export and the Redis store).

        ``attachments`` is left out when there are none, so a text entry reads
        exactly as the previous release wrote it.
        """
        out = {
            "role": self.role,
            "content": self.content,
            "timestamp": self.timestamp,
            "platform": self.platform,
            "chat_id": self.chat_id,
            "user_id": self.user_id,
            "user_name": self.user_name,
            "message_id": self.message_id,
            "mirror": self.mirror,
            "source": self.source,
            "metadata": dict(self.metadata),
        }
        if self.attachments:
            out["attachments"] = [a.to_dict() for a in self.attachments]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HistoryEntry:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        return cls(
            role=str(data["role"]),
            content=str(data["content"]),
            timestamp=float(data["timestamp"]),
            platform=str(data.get("platform", "")),
            chat_id=str(data.get("chat_id", "")),
            user_id=str(data.get("user_id", "")),
            user_name=str(data.get("user_name", "")),
            message_id=str(data.get("message_id", "")),
            mirror=bool(data.get("mirror", False)),
            source=str(data.get("source", "")),
            metadata=dict(data.get("metadata") or {}),
            attachments=tuple(Attachment.from_dict(a) for a in data.get("attachments") or ()),
        )


def delivery_failed(exc: BaseException) -> dict[str, str]:
    """The metadata that marks an entry as not delivered because of ``exc``."""
    return {"delivery": DELIVERY_FAILED, "delivery_error": type(exc).__name__}


SIDE_KEY_SUFFIXES = ("#summary", "#archived")
"""Keys ending so hold a session's summaries or its archive (``onethread.session.keys``
``summary_key``/``archive_key``), not a session of their own: ``sessions()`` leaves them out."""


def is_side_key(key: str) -> bool:
    """True for a ``{key}#summary`` or ``{key}#archived`` key (see :data:`SIDE_KEY_SUFFIXES`)."""
    return key.endswith(SIDE_KEY_SUFFIXES)


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One row of ``onethread sessions``: a key, its size and when it was last used."""

    key: str
    count: int
    last_timestamp: float
    platforms: tuple[str, ...]


@runtime_checkable
class HistoryStore(Protocol):
    """Async, append-only store of conversation entries, keyed by session key.

    Entries of one ``append`` call land in one transaction: all or none.
    ``load`` returns entries oldest first, ordered by timestamp (ties in
    insertion order). Implementations are safe to call from many tasks at once.
    """

    async def load(self, key: str, limit: int | None = None) -> list[HistoryEntry]:
        """The last ``limit`` entries of ``key`` (all when ``None``), oldest first."""
        ...

    async def append(self, key: str, entries: Sequence[HistoryEntry]) -> None:
        """Append ``entries`` to ``key`` atomically."""
        ...

    async def clear(self, key: str) -> int:
        """Delete every entry of ``key``; return how many were deleted."""
        ...

    async def merge(self, src_key: str, dst_key: str) -> int:
        """Move every entry of ``src_key`` into ``dst_key`` (once; idempotent). Return count."""
        ...

    async def count(self, key: str) -> int:
        """How many entries ``key`` holds."""
        ...

    async def sessions(self, limit: int = 50) -> list[SessionSummary]:
        """The most recently used sessions, newest first. Summaries and archives
        (``{key}#summary``, ``{key}#archived``: :func:`is_side_key`) are not sessions."""
        ...

    async def close(self) -> None:
        """Release connections and threads. Further calls are errors."""
        ...
