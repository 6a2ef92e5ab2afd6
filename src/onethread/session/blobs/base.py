"""The blob store contract, content addresses and the type check on bytes."""

from __future__ import annotations

import hashlib
import re
from typing import Protocol, runtime_checkable

__all__ = ["DEFAULT_MAX_BYTES", "BlobStore", "blob_ref", "check_ref", "sniff_mime"]

#: Largest attachment taken by default (20 MB); ``max_bytes=`` changes it.
DEFAULT_MAX_BYTES = 20 * 1024 * 1024

_REF = re.compile(r"sha256:([0-9a-f]{64})")


def blob_ref(data: bytes) -> str:
    """The content address of ``data``: ``"sha256:<64 hex digits>"``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_ref(ref: str) -> str:
    """The hex digest of ``ref``; ``ValueError`` unless it is ``sha256:<64 lowercase hex>``.

    Stores build paths and object keys from the digest only, so a reference
    can never name a file outside the store.
    """
    match = _REF.fullmatch(ref) if isinstance(ref, str) else None
    if match is None:
        raise ValueError(f"not a blob address: {ref!r} (expected sha256:<64 hex digits>)")
    return match.group(1)


def sniff_mime(data: bytes) -> str:
    """The MIME type the bytes themselves show (magic numbers), never the file name.

    ``text/plain`` for bytes that decode as UTF-8 text without control
    characters, ``application/octet-stream`` when nothing matches.
    """
    import filetype  # pure Python, reads the first 8 KB

    kind = filetype.guess(data[:8192])
    if kind is not None:
        return str(kind.mime)
    head = data[:8192]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 8 KB mark
            return "application/octet-stream"
        text = head[: exc.start].decode("utf-8")
    if all(c.isprintable() or c in "\n\r\t\f" for c in text):
        return "text/plain"
    return "application/octet-stream"


@runtime_checkable
class BlobStore(Protocol):
    """Bytes by content address. Safe to call from many tasks at once.

    ``put`` is idempotent (the same bytes, the same address, stored once) and
    durable when it returns; ``get`` raises ``BlobNotFound`` for an unknown
    address and ``ValueError`` for a malformed one.
    """

    url: str

    async def put(self, data: bytes) -> str:
        """Store ``data``; return its address (``blob_ref(data)``)."""
        ...

    async def get(self, ref: str) -> bytes:
        """The bytes at ``ref``."""
        ...

    async def exists(self, ref: str) -> bool:
        """Whether the store holds ``ref``."""
        ...

    async def delete(self, ref: str) -> bool:
        """Remove ``ref``; whether it was there."""
        ...

    async def close(self) -> None:
        """Release clients and threads."""
        ...
