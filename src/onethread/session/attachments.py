"""Attachments: photos, voice notes, audio, video, files and stickers in a conversation.

An :class:`Attachment` is a reference, never the bytes: ``blob`` is the content
address (``"sha256:<hex>"``) of the bytes in the deployment's blob store
(:mod:`onethread.session.blobs`). History entries carry attachments; the
history database keeps only these references.

Here, in the platform-free core, because history entries (``session/``) carry
them; ``onethread.platforms`` re-exports the class for adapters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .text import clean_text

__all__ = ["KINDS", "Attachment"]

#: Every ``Attachment.kind``.
KINDS = ("image", "voice", "audio", "video", "file", "sticker")


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attachment of a message.

    ``kind``: one of :data:`KINDS`. ``mime``: the type found in the bytes
    (not the name). ``name``: the sender's file name, shown to people and
    the model, never used as a path. ``size``: bytes. ``blob``: the content
    address in the blob store once fetched (``""`` before). ``transcript``:
    what a voice note or audio says, transcribed once and kept. ``caption``:
    the text the sender put on it.

    Raises ``ValueError`` for an unknown kind or a negative size. Lone
    surrogates in the strings become U+FFFD (``onethread.session.text``).
    """

    kind: str
    mime: str = ""
    name: str = ""
    size: int = 0
    blob: str = ""
    transcript: str = ""
    caption: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown attachment kind {self.kind!r}; use one of {KINDS}")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise ValueError(f"attachment size must be a whole number of bytes, got {self.size!r}")
        for name in ("mime", "name", "transcript", "caption"):  # as Inbound's strings
            value = getattr(self, name)
            if isinstance(value, str):
                cleaned = clean_text(value)
                if cleaned is not value:
                    object.__setattr__(self, name, cleaned)  # frozen: set once, here

    def with_(self, **changes: Any) -> Attachment:
        """A copy with ``changes`` (``blob=``, ``transcript=``, ...)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields; empty ones left out (what the stores write)."""
        out: dict[str, Any] = {"kind": self.kind}
        for name in ("mime", "name", "blob", "transcript", "caption"):
            value = getattr(self, name)
            if value:
                out[name] = value
        if self.size:
            out["size"] = self.size
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attachment:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (a newer release's)."""
        return cls(
            kind=str(data["kind"]),
            mime=str(data.get("mime", "")),
            name=str(data.get("name", "")),
            size=int(data.get("size", 0)),
            blob=str(data.get("blob", "")),
            transcript=str(data.get("transcript", "")),
            caption=str(data.get("caption", "")),
        )
