"""Files in the web chat: uploads from the page, and serving files to their owner.

The page uploads a file with ``POST /files?user=<id>&name=<file name>`` (the
raw bytes as the body, at most ``max_bytes``; the web access token as for the
socket), gets back ``{"file": "<64 hex>", "kind", "mime", "name", "size"}``,
and then sends its message over the socket with ``"attachments": [{"file":
"<64 hex>"}]``. Bytes go to the bot's blob store; the type is found from the
bytes, never the name.

``GET /files/<64 hex>?user=<id>`` serves a file to the browser id that owns
it: one it uploaded, one the bot sent it, or one in the conversation its page
was shown. Anything else is 404 (the same answer as for bytes that do not
exist), never a listing; the address is only a key into the blob store, never
a path. Images of safe types are shown inline; everything else downloads
(``Content-Disposition: attachment``), so no HTML or SVG from a file runs in
the page's origin.
"""

from __future__ import annotations

import re
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from ..errors import BlobNotFound, StoreError
from ..session.attachments import Attachment
from ..session.blobs import BlobStore, sniff_mime
from .web_protocol import valid_id

__all__ = ["INLINE_IMAGES", "WebFiles", "file_json", "kind_of", "user_of"]

#: Image types the page shows inline; others (SVG...) download instead.
INLINE_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK = 64 * 1024


def kind_of(mime: str) -> str:
    """The attachment kind for bytes of type ``mime``."""
    for prefix, kind in (("image/", "image"), ("audio/", "audio"), ("video/", "video")):
        if mime.startswith(prefix):
            return kind
    return "file"


def file_json(attachment: Attachment) -> dict[str, Any]:
    """An attachment as the page sees it: ``file`` is the hex of its blob address."""
    return {
        "file": attachment.blob.removeprefix("sha256:"),
        "kind": attachment.kind,
        "mime": attachment.mime,
        "name": attachment.name,
        "size": attachment.size,
    }


class WebFiles:
    """Who may read which file, and the two HTTP handlers (upload and serve).

    The registry is in memory and bounded (``per_user`` files for each of
    ``max_users`` browser ids, least recently used dropped); a page load
    fills it again from the history it shows. Touched on the event loop only.
    """

    def __init__(self, *, max_bytes: int, per_user: int = 2000, max_users: int = 1000) -> None:
        self.max_bytes = max_bytes
        self.per_user = per_user
        self.max_users = max_users
        self.blob_store: Callable[[], BlobStore] | None = None
        """Gives the blob store (the bot's session's, opened on first use); set by ``bind``."""
        self._owned: OrderedDict[str, OrderedDict[str, Attachment]] = OrderedDict()

    @property
    def blobs(self) -> BlobStore | None:
        """The blob store files go to; ``None`` before the adapter is bound to a bot."""
        return self.blob_store() if self.blob_store is not None else None

    # -- ownership -------------------------------------------------------------

    def own(self, user: str, attachments: Iterable[Attachment]) -> None:
        """Let ``user`` read each of ``attachments`` (stored ones: ``blob`` set)."""
        box = self._owned.get(user)
        if box is None:
            box = self._owned[user] = OrderedDict()
        self._owned.move_to_end(user)
        for a in attachments:
            if a.blob.startswith("sha256:"):
                box[a.blob[7:]] = a
                box.move_to_end(a.blob[7:])
        while len(box) > self.per_user:
            box.popitem(last=False)
        while len(self._owned) > self.max_users:
            self._owned.popitem(last=False)

    def own_shown(self, user: str, messages: Iterable[Mapping[str, Any]]) -> None:
        """Let ``user`` read the files of the messages its page is shown."""
        found = []
        for m in messages:
            for f in m.get("attachments") or ():
                if isinstance(f, Mapping) and _HEX.fullmatch(str(f.get("file", ""))):
                    found.append(Attachment(
                        str(f.get("kind") or "file"), str(f.get("mime") or ""),
                        str(f.get("name") or ""), int(f.get("size") or 0),
                        "sha256:" + str(f["file"]),
                    ))  # fmt: skip
        if found:
            self.own(user, found)

    def owned(self, user: str, file: str) -> Attachment | None:
        """The attachment ``file`` (64 hex) when ``user`` may read it, else ``None``."""
        box = self._owned.get(user)
        return box.get(file) if box is not None else None

    # -- HTTP ------------------------------------------------------------------

    async def upload(self, request: web.Request, user: str) -> web.Response:
        """``POST /files``: store the body (size-capped), return its description."""
        blobs = self.blobs
        if blobs is None:
            raise web.HTTPServiceUnavailable(text="this web chat takes no files")
        name = _clean_file_name(request.query.get("name", ""))
        declared = request.content_length
        if declared is not None and declared > self.max_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_bytes, actual_size=declared)
        data = bytearray()
        async for chunk in request.content.iter_chunked(_CHUNK):
            data += chunk
            if len(data) > self.max_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=self.max_bytes, actual_size=len(data))
        if not data:
            raise web.HTTPBadRequest(text="the file is empty")
        raw = bytes(data)
        mime = sniff_mime(raw)
        try:
            blob = await blobs.put(raw)
        except StoreError as exc:
            raise web.HTTPServiceUnavailable(text=f"could not store the file: {exc}") from exc
        attachment = Attachment(kind_of(mime), mime, name or "file", len(raw), blob)
        self.own(user, [attachment])
        return web.json_response(file_json(attachment))

    async def serve(self, request: web.Request, user: str) -> web.Response:
        """``GET /files/<hex>``: the bytes, to their owner only; 404 otherwise."""
        file = request.match_info["file"]
        attachment = self.owned(user, file) if _HEX.fullmatch(file) else None
        blobs = self.blobs
        if attachment is None or blobs is None:
            raise web.HTTPNotFound()
        try:
            data = await blobs.get(attachment.blob)
        except BlobNotFound as exc:  # gone from the store (deleted): as if never there
            raise web.HTTPNotFound() from exc
        except StoreError as exc:
            raise web.HTTPServiceUnavailable(text="the file store is unavailable") from exc
        mime = attachment.mime or "application/octet-stream"
        inline = mime in INLINE_IMAGES
        quoted = urllib.parse.quote(attachment.name or "file", safe="")
        headers = {
            "Content-Disposition": f"{'inline' if inline else 'attachment'}; "
            f"filename*=UTF-8''{quoted}",
            "Cache-Control": "private, max-age=86400",
        }
        return web.Response(
            body=data, content_type=mime if inline else "application/octet-stream",
            headers=headers,
        )  # fmt: skip


def _clean_file_name(name: str) -> str:
    """A file name fit to show: printable, no path separators, at most 255 characters."""
    cleaned = "".join(c for c in name if c.isprintable() and c not in "/\\").strip()
    return cleaned[:255]


def user_of(request: web.Request) -> str:
    """The browser id in ``?user=``; 400 when malformed."""
    user = request.query.get("user", "")
    if not valid_id(user):
        raise web.HTTPBadRequest(text="user must be 1-128 letters, digits, '_' or '-'")
    return user
