"""The model used when none is configured: says so plainly, and shows it remembers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..session.attachments import Attachment
from ..session.history.base import HistoryEntry
from .attachments import attachment_line
from .models import ModelReply

__all__ = ["OfflineModel"]

_QUOTE_LIMIT = 200
_HOW_TO = (
    "To use a language model, set ONETHREAD_MODEL to a model name (for example gpt-4o-mini) "
    "and OPENAI_API_KEY, or OPENAI_BASE_URL for a local OpenAI-compatible server."
)


class OfflineModel:
    """Answers without any language model: a plain notice, a quote, and the memory it holds.

    The reply never pretends to be an AI answer. It quotes the user's message
    and says how many earlier messages the conversation holds and from which
    platforms. The notice (no model, and how to configure one) is said once
    per conversation: only when no earlier reply in the history carries it
    (so again after ``/new``). No I/O and no waiting, so it is also fit for
    benchmarks. ``reason`` (optional) replaces the first sentence, e.g. to
    say that ``ONETHREAD_MODEL`` is set but no endpoint is; ``note`` says the
    same in a few words for start-up banners.
    """

    def __init__(self, reason: str = "", *, note: str = "") -> None:
        self.reason = reason or "No language model is configured, so this is an automatic reply."
        #: Why no model runs and how to get one, in a few words for banners.
        self.note = note or "set ONETHREAD_MODEL and OPENAI_API_KEY for a real one"

    async def reply(
        self, history: Sequence[HistoryEntry], message: HistoryEntry, *, group: bool = False
    ) -> str:
        """The offline reply to ``message``, given the earlier ``history`` entries."""
        platforms: list[str] = []
        for entry in history:
            if entry.platform and entry.platform not in platforms:
                platforms.append(entry.platform)
        told = any(e.role == "assistant" and _HOW_TO in e.content for e in history)
        text = self._text(message.content, len(history), platforms, notice=not told)
        if message.attachments:
            text += "\n" + _received(message.attachments)
        return text

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelReply:
        """The offline reply from chat messages alone (platforms are unknown there)."""
        turns = [m for m in messages if m.get("role") in ("user", "assistant")]
        last = str(turns[-1].get("content") or "") if turns else ""
        told = any(m["role"] == "assistant" and _HOW_TO in str(m.get("content")) for m in turns)
        return ModelReply(self._text(last, max(len(turns) - 1, 0), [], notice=not told))

    def _text(self, said: str, earlier: int, platforms: list[str], *, notice: bool) -> str:
        quote = " ".join(said.split())
        if len(quote) > _QUOTE_LIMIT:
            quote = quote[: _QUOTE_LIMIT - 1].rstrip() + "…"
        said_line = f'You said: "{quote}"' if quote else "You sent no text."
        if earlier == 0:
            memory = "This is the start of our conversation: I hold no earlier messages."
        else:
            noun = "message" if earlier == 1 else "messages"
            memory = f"I remember this conversation: {earlier} earlier {noun}"
            memory += f" from {_join(platforms)}." if platforms else "."
        if not notice:
            return f"{said_line}\n{memory}"
        return f"{self.reason}\n{said_line}\n{memory}\n{_HOW_TO}"


def _received(attachments: Sequence[Attachment]) -> str:
    """What came with the message, and what it would take to read it."""
    lines = [attachment_line(a) for a in attachments]
    needs: list[str] = []
    kinds = {a.kind for a in attachments}
    if kinds & {"image", "sticker"}:
        needs.append("a model that takes images (e.g. ONETHREAD_MODEL=gpt-4o-mini)")
    if any(a.kind in ("voice", "audio") and not a.transcript for a in attachments):
        needs.append("a transcription model (ONETHREAD_TRANSCRIBE_MODEL, e.g. whisper-1)")
    if kinds & {"file", "video"}:
        needs.append("a language model to read what the files say")
    text = "You sent: " + "; ".join(lines) + "."
    if needs:
        text += " I received it and keep it with our conversation; to read it I need " + (
            _join(needs) + "."
        )
    return text


def _join(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + f" and {items[-1]}"
