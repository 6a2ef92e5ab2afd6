"""Blobs in a folder: ``file:PATH`` (default ``$ONETHREAD_HOME/blobs``), for one host.

Layout: ``PATH/ab/cd/<64 hex digits>``, named by the SHA-256 of the bytes only
(never by a sender's file name). Written atomically: a temporary file in the
same folder, flushed and synced, renamed into place, then the folder synced;
files 0600, folders 0700. Two writers of the same bytes race harmlessly (both
rename the same content onto one name). ``get`` checks the bytes against
their address, so a damaged file is reported, never served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from ...errors import BlobNotFound, CorruptStoreError, StoreError
from .base import blob_ref, check_ref

__all__ = ["FileBlobStore"]


class FileBlobStore:
    """Content-addressed files under ``root``. File I/O runs in worker threads."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = f"file:{self.root}"

    def _path(self, ref: str) -> Path:
        digest = check_ref(ref)
        return self.root / digest[:2] / digest[2:4] / digest

    def _write(self, data: bytes, ref: str) -> None:
        path = self._path(ref)
        if path.exists():
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=".blob.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StoreError(
                f"blob store {self.root}: cannot write ({exc.strerror or exc}); "
                "check free space and permissions"
            ) from exc

    async def put(self, data: bytes) -> str:
        """Store ``data`` (durable on return); its ``sha256:`` address."""
        ref = blob_ref(data)
        await asyncio.to_thread(self._write, data, ref)
        return ref

    def _read(self, ref: str) -> bytes:
        path = self._path(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(str(self.root), ref) from None
        except OSError as exc:
            raise StoreError(f"blob store {self.root}: cannot read {ref}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != check_ref(ref):
            raise CorruptStoreError(str(path), "the bytes do not match their address")
        return data

    async def get(self, ref: str) -> bytes:
        """The bytes at ``ref`` (checked against it)."""
        return await asyncio.to_thread(self._read, ref)

    async def exists(self, ref: str) -> bool:
        """Whether ``ref`` is stored."""
        return await asyncio.to_thread(self._path(ref).exists)

    def _delete(self, ref: str) -> bool:
        try:
            self._path(ref).unlink()
        except FileNotFoundError:
            return False
        return True

    async def delete(self, ref: str) -> bool:
        """Remove ``ref``; whether it was there."""
        return await asyncio.to_thread(self._delete, ref)

    async def close(self) -> None:
        """Nothing to release."""
