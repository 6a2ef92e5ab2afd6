"""The history store contract: append-only conversation entries per session key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..attachments import Attachment

__all__ = ["HistoryEntry", "HistoryStore", "SessionSummary"]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One message in a conversation, with where it came from.

    ``role`` is ``"user"`` or ``"assistant"``. ``mirror`` marks text the bot sent
    on its own (a reminder, a cross-platform reply) that was mirrored in with
    ``mirror_to_session``; ``source`` says who produced it (``"cron"``,
    ``"notify"``) and ``metadata`` carries the caller's extra JSON-able data.
    ``timestamp`` is Unix seconds. ``attachments`` are references to bytes in
    the blob store (photos, voice notes, files), never the bytes.
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
        """The most recently used sessions, newest first."""
        ...

    async def close(self) -> None:
        """Release connections and threads. Further calls are errors."""
        ...
