"""What the model sees of attachments: a line of text each, image parts, small text inline.

Every attachment becomes one bracketed line in the message text, so any
model, and every later turn, knows what was sent: a voice note reads as what
was said (its transcript), an image or a file as its name, type and size.
For the message being answered, :func:`content_parts` adds what needs the
bytes: images as image parts (for models that take images) and the text of
small text files.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from typing import Any

from ..errors import OnethreadError
from ..session.attachments import Attachment

__all__ = [
    "IMAGE_PART_TOKENS",
    "INLINE_TEXT_MAX",
    "VISION_MODEL_PREFIXES",
    "attachment_line",
    "content_parts",
    "inline_tokens",
    "takes_images",
]

log = logging.getLogger("onethread.agent")

#: Text files up to this many bytes are put in the message whole.
INLINE_TEXT_MAX = 100_000

#: What one image part costs a model, in tokens, as the budget counts it: OpenAI's
#: high-detail figure for a 1024x1024 image (85 + 4 tiles x 170). Counted for every
#: image of the message being answered, whether or not the model takes images.
IMAGE_PART_TOKENS = 765

#: Model names (prefixes, lower case) known to take image parts. ``Agent(vision=...)``
#: overrides the guess either way.
VISION_MODEL_PREFIXES = (
    "gpt-4o", "gpt-4.1", "gpt-4-turbo", "gpt-4-vision", "gpt-5", "o1", "o3", "o4",
    "chatgpt-4o", "claude-3", "claude-sonnet-4", "claude-opus-4", "claude-haiku-4",
    "gemini", "gemma-3", "llava", "bakllava", "llama3.2-vision", "llama-3.2-11b-vision",
    "llama-3.2-90b-vision", "llama-4", "qwen-vl", "qwen2-vl", "qwen2.5-vl", "pixtral",
    "mistral-small-3", "minicpm-v", "moondream", "grok-2-vision", "grok-4",
)  # fmt: skip

_NAMES = {
    "image": "image",
    "voice": "voice note",
    "audio": "audio",
    "video": "video",
    "file": "file",
    "sticker": "sticker",
}


def takes_images(model_name: str) -> bool:
    """Whether ``model_name`` is known to take image parts (see ``VISION_MODEL_PREFIXES``)."""
    name = model_name.lower().rsplit("/", 1)[-1]  # "openai/gpt-4o" -> "gpt-4o"
    return name.startswith(VISION_MODEL_PREFIXES)


def _size(size: int) -> str:
    if size >= 1_000_000:
        return f"{size / 1_000_000:.1f} MB"
    if size >= 1000:
        return f"{size / 1000:.0f} KB"
    return f"{size} bytes"


def attachment_line(a: Attachment) -> str:
    """One line for the model: ``[voice note] what was said``, ``[image: cat.png (...)]``."""
    noun = _NAMES.get(a.kind, a.kind)
    caption = f' with the caption "{a.caption}"' if a.caption else ""
    if a.kind in ("voice", "audio"):
        if a.transcript:
            return f"[{noun}{caption}] {a.transcript}"
        return f"[{noun}{caption}, not transcribed: no transcription model is configured]"
    facts = ", ".join(x for x in (a.mime, _size(a.size) if a.size else "") if x)
    name = f": {a.name}" if a.name else ""
    return f"[{noun}{name} ({facts}){caption}]" if facts else f"[{noun}{name}{caption}]"


def _inlined_text(a: Attachment) -> bool:
    return a.kind == "file" and a.mime.startswith("text/") and a.size <= INLINE_TEXT_MAX


def _image(a: Attachment) -> bool:
    return a.kind in ("image", "sticker") and a.mime.startswith("image/")


def inline_tokens(attachments: Sequence[Attachment]) -> int:
    """The tokens :func:`content_parts` adds to the message being answered (estimated
    without reading the bytes): a small text file's text (a token per 4 bytes, at most
    one per byte read as UTF-8 text) and :data:`IMAGE_PART_TOKENS` per image."""
    total = 0
    for a in attachments:
        if not a.blob:
            continue
        if _inlined_text(a):
            total += (a.size + 3) // 4 + (2 * len(a.name or "file") + 40) // 4
        elif _image(a):
            total += IMAGE_PART_TOKENS
    return total


def with_attachments(text: str, attachments: Sequence[Attachment]) -> str:
    """``text`` followed by one line per attachment."""
    lines = [attachment_line(a) for a in attachments]
    return "\n".join([text, *lines] if text.strip() else lines)


async def content_parts(
    text: str, attachments: Sequence[Attachment], blobs: Any, *, images: bool
) -> str | list[dict[str, Any]]:
    """The content of the user message being answered, with what needs the bytes.

    ``text`` already holds each attachment's line. Small text files are
    appended whole; with ``images``, each image becomes an image part (a
    ``data:`` URL, so nothing is fetched by the model's server). Without a
    blob store, or when a blob cannot be read (logged), the lines stay alone.
    """
    parts: list[dict[str, Any]] = []
    extra: list[str] = []
    for a in attachments:
        if not a.blob or blobs is None:
            continue
        wants_text = _inlined_text(a)
        wants_image = images and _image(a)
        if not (wants_text or wants_image):
            continue
        try:
            data: bytes = await blobs.get(a.blob)
        except (OnethreadError, OSError, ValueError) as exc:
            log.warning("could not read attachment %s for the model: %s", a.blob, exc)
            continue
        if wants_text:
            body = data.decode("utf-8", errors="replace")
            extra.append(f"--- {a.name or 'file'} ---\n{body}\n--- end of {a.name or 'file'} ---")
        else:
            url = f"data:{a.mime};base64,{base64.b64encode(data).decode('ascii')}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
    full = "\n\n".join([text, *extra])
    if not parts:
        return full
    return [{"type": "text", "text": full}, *parts]
