"""Blobs in an S3-compatible bucket: ``s3://BUCKET/PREFIX``, shared by several hosts.

Objects are named ``PREFIX/sha256/<64 hex digits>``. boto3 (the ``s3``
extra) does the talking, in worker threads; any S3-compatible server works:
AWS, MinIO, Ceph, Garage, moto. The endpoint comes from ``endpoint_url=`` or
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (boto3 reads those itself), the
credentials from boto3's usual chain (``AWS_ACCESS_KEY_ID``, ...).

``put`` sends the bytes with their SHA-256 (``ChecksumSHA256``), so the
server refuses a body damaged on the way; an object already there is not sent
again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from typing import Any

from ...errors import BlobNotFound, MissingDependencyError, StoreError
from .._conn.shared import redact
from .base import blob_ref, check_ref

__all__ = ["S3BlobStore"]


class S3BlobStore:
    """Content-addressed objects in ``bucket`` under ``prefix``.

    Concurrency: one boto3 client (thread-safe by boto3's documentation),
    created on first use under ``_lock``; calls run in worker threads.
    """

    def __init__(
        self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, **client: Any
    ) -> None:
        if not bucket:
            raise ValueError("an S3 blob store needs a bucket: s3://BUCKET/PREFIX")
        try:
            import boto3  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("the S3 blob store", "s3") from exc
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._options = dict(client)
        if endpoint_url:
            self._options["endpoint_url"] = endpoint_url
        self._client: Any = None
        self._lock = threading.Lock()

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3

                self._client = boto3.client("s3", **self._options)
            return self._client

    def _key(self, ref: str) -> str:
        digest = check_ref(ref)
        return f"{self.prefix}/sha256/{digest}" if self.prefix else f"sha256/{digest}"

    def _error(self, exc: Exception, what: str) -> StoreError:
        where = redact(str(self._options.get("endpoint_url", ""))) or "S3"
        return StoreError(f"blob store {self.url} ({where}): {what} failed: {exc}")

    def _put(self, data: bytes, ref: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(ref)
        try:
            if self._exists(ref):
                return
            checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
            self._s3().put_object(Bucket=self.bucket, Key=key, Body=data, ChecksumSHA256=checksum)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "put") from exc

    async def put(self, data: bytes) -> str:
        """Store ``data`` (durable on return); its ``sha256:`` address."""
        ref = blob_ref(data)
        await asyncio.to_thread(self._put, data, ref)
        return ref

    def _get(self, ref: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self._s3().get_object(Bucket=self.bucket, Key=self._key(ref))["Body"]
            data: bytes = body.read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise BlobNotFound(self.url, ref) from None
            raise self._error(exc, "get") from exc
        except BotoCoreError as exc:
            raise self._error(exc, "get") from exc
        if blob_ref(data) != ref:
            raise StoreError(f"blob store {self.url}: {ref} came back with other bytes")
        return data

    async def get(self, ref: str) -> bytes:
        """The bytes at ``ref`` (checked against it)."""
        return await asyncio.to_thread(self._get, ref)

    def _exists(self, ref: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3().head_object(Bucket=self.bucket, Key=self._key(ref))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def exists(self, ref: str) -> bool:
        """Whether ``ref`` is stored."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(self._exists, ref)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "head") from exc

    def _delete(self, ref: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            if not self._exists(ref):
                return False
            self._s3().delete_object(Bucket=self.bucket, Key=self._key(ref))
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "delete") from exc
        return True

    async def delete(self, ref: str) -> bool:
        """Remove ``ref``; whether it was there."""
        return await asyncio.to_thread(self._delete, ref)

    async def close(self) -> None:
        """Close the client's connection pool."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)
