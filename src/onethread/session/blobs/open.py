"""``open_blob_store(url)``: the one place blob store URLs are read."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from ..home import onethread_home
from .base import BlobStore

__all__ = ["ACCEPTED_BLOB_FORMS", "default_blob_url", "open_blob_store"]

ACCEPTED_BLOB_FORMS = "file:PATH, s3://BUCKET/PREFIX, memory://"


def default_blob_url() -> str:
    """``file:$ONETHREAD_HOME/blobs``."""
    return f"file:{onethread_home() / 'blobs'}"


def open_blob_store(url: str | None = None, **options: Any) -> BlobStore:
    """Open the blob store at ``url`` (default :func:`default_blob_url`).

    ``memory://`` keeps bytes in this process (tests, ephemeral bots).
    Raises ``ConfigError`` naming the accepted forms for a bad URL and
    ``MissingDependencyError`` when ``s3://`` is used without boto3.
    """
    url = url or default_blob_url()
    scheme, sep, rest = url.partition(":") if isinstance(url, str) else ("", "", "")
    scheme = scheme.lower()
    if sep and scheme == "file" and rest:
        from .file import FileBlobStore

        return FileBlobStore(rest[2:] if rest.startswith("//") else rest)
    if sep and scheme == "s3" and rest.startswith("//") and rest[2:].split("/")[0]:
        from .s3 import S3BlobStore

        bucket, _, prefix = rest[2:].partition("/")
        return S3BlobStore(bucket, prefix, **options)
    if sep and scheme == "memory":
        from .memory import MemoryBlobStore

        return MemoryBlobStore()
    raise ConfigError(f"bad blob store URL {url!r}; accepted forms: {ACCEPTED_BLOB_FORMS}")
