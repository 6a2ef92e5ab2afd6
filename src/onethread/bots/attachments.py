"""Taking a message's attachments in: fetch, check against limits and bytes, store.

The adapter describes what came with a message (``Inbound.attachments``);
this module, run by the ``Bot`` after the gate and the access policy, fetches
each one through ``Adapter.download`` (size-capped), finds its type from the
bytes (never the name), refuses what cannot be served with a message for the
person, and stores the bytes in the blob store. What comes out carries
``blob``, the checked ``mime`` and the real ``size``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import AttachmentRefused, OnethreadError
from ..platforms.base import Adapter, Inbound
from ..session.attachments import Attachment
from ..session.blobs import BlobStore, sniff_mime

__all__ = ["Taken", "kind_matches", "take_attachments"]

log = logging.getLogger("onethread.attachments")

# What the bytes of each kind may be. "file" and "sticker" take anything.
_KIND_PREFIXES = {
    "image": ("image/",),
    "voice": ("audio/", "video/ogg", "video/webm", "application/ogg"),
    "audio": ("audio/", "video/mp4", "video/ogg", "video/webm", "application/ogg"),
    "video": ("video/",),
}


def kind_matches(kind: str, mime: str) -> bool:
    """Whether bytes of type ``mime`` can be an attachment of ``kind``."""
    prefixes = _KIND_PREFIXES.get(kind)
    return prefixes is None or mime.startswith(prefixes)


@dataclass(frozen=True, slots=True)
class Taken:
    """The attachments stored, and what to tell the person about the others."""

    attachments: tuple[Attachment, ...]
    refusals: tuple[str, ...]


async def take_attachments(
    adapter: Adapter, msg: Inbound, blobs: BlobStore, *, max_bytes: int
) -> Taken:
    """Fetch, check and store every attachment of ``msg``.

    An attachment past ``max_bytes``, or whose bytes are not of its kind (a
    "photo" that is not an image), is refused: left out, with one line for the
    person in ``refusals``. One that cannot be fetched (the platform failed)
    is left out with a line too, and logged. Already stored ones (``blob``
    set) are kept as they are.
    """
    kept: list[Attachment] = []
    refusals: list[str] = []
    for index, attachment in enumerate(msg.attachments):
        if attachment.blob:
            kept.append(attachment)
            continue
        label = attachment.name or f"the {attachment.kind}"
        try:
            data = await adapter.download(msg, index, max_bytes=max_bytes)
        except AttachmentRefused as exc:
            refusals.append(f"{label}: {exc}")
            continue
        except (OnethreadError, NotImplementedError, OSError) as exc:
            log.warning("%s: could not fetch %s of message %s: %s", adapter.name,
                        attachment.kind, msg.message_id, exc)  # fmt: skip
            refusals.append(f"{label}: I could not fetch it from {adapter.name}; please resend.")
            continue
        mime = sniff_mime(data)
        if not kind_matches(attachment.kind, mime):
            refusals.append(
                f"{label}: it was sent as a {attachment.kind} but the file is {mime}; "
                "send it as a file instead."
            )
            continue
        blob = await blobs.put(data)
        kept.append(attachment.with_(blob=blob, mime=mime, size=len(data)))
    return Taken(tuple(kept), tuple(refusals))
