"""The blob store: attachment bytes, content-addressed, outside the history database.

``open_blob_store(url)`` opens ``file:PATH`` (default ``$ONETHREAD_HOME/blobs``,
one host) or ``s3://BUCKET/PREFIX`` (any S3-compatible server, several hosts).
Every store has the same shape (:class:`.base.BlobStore`); the bytes of an
attachment live here, and history entries keep only their ``sha256:<hex>``
address.
"""

from __future__ import annotations

from .base import DEFAULT_MAX_BYTES, BlobStore, blob_ref, sniff_mime
from .open import default_blob_url, open_blob_store

__all__ = [
    "DEFAULT_MAX_BYTES",
    "BlobStore",
    "blob_ref",
    "default_blob_url",
    "open_blob_store",
    "sniff_mime",
]
