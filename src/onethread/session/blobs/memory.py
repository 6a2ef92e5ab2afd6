"""Blobs in this process's memory: ``memory://`` (tests, ephemeral bots)."""

from __future__ import annotations

from ...errors import BlobNotFound
from .base import blob_ref, check_ref

__all__ = ["MemoryBlobStore"]


class MemoryBlobStore:
    """A dict of bytes by address. Every method runs on the caller's loop without
    awaiting, so the dict needs no lock."""

    url = "memory://"

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    async def put(self, data: bytes) -> str:
        """Keep ``data``; its address."""
        ref = blob_ref(data)
        self._blobs[ref] = bytes(data)
        return ref

    async def get(self, ref: str) -> bytes:
        """The bytes at ``ref``."""
        check_ref(ref)
        try:
            return self._blobs[ref]
        except KeyError:
            raise BlobNotFound("memory://", ref) from None

    async def exists(self, ref: str) -> bool:
        """Whether ``ref`` is kept."""
        return check_ref(ref) is not None and ref in self._blobs

    async def delete(self, ref: str) -> bool:
        """Forget ``ref``; whether it was kept."""
        check_ref(ref)
        return self._blobs.pop(ref, None) is not None

    async def close(self) -> None:
        """Nothing to release."""
