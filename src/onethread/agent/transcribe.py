"""Voice notes and audio to text, on an OpenAI-compatible ``/audio/transcriptions`` endpoint.

``Transcriber.from_env()`` reads ``ONETHREAD_TRANSCRIBE_MODEL`` (e.g.
``whisper-1``; unset: no transcription) and the endpoint: the chat model's
(``OPENAI_BASE_URL``, ``OPENAI_API_KEY``) unless ``ONETHREAD_TRANSCRIBE_BASE_URL``
/ ``ONETHREAD_TRANSCRIBE_API_KEY`` set one apart. The session manager
transcribes each voice note once, before the turn, and keeps the text in the
attachment's ``transcript``, so the person's message reads as what they said.
"""

from __future__ import annotations

import os

from .models_openai import OpenAIModel, map_openai_errors

__all__ = ["Transcriber"]


class Transcriber:
    """Transcribe audio with ``model`` through the ``openai`` SDK.

    Raises ``ConfigError`` at construction when no endpoint is configured and
    ``ModelError`` from :meth:`transcribe` on any failure (timeouts, HTTP
    errors), like the chat model. Safe for concurrent use.
    """

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        self._endpoint = OpenAIModel(model, api_key=api_key, base_url=base_url, timeout=timeout)
        self.model = self._endpoint.model

    def __repr__(self) -> str:
        return f"Transcriber({self.model!r}, base_url={self._endpoint.base_url!r})"

    @classmethod
    def from_env(cls) -> Transcriber | None:
        """The transcriber the environment configures, or ``None`` (read now)."""
        model = os.environ.get("ONETHREAD_TRANSCRIBE_MODEL", "").strip()
        if not model:
            return None
        return cls(
            model,
            api_key=os.environ.get("ONETHREAD_TRANSCRIBE_API_KEY") or None,
            base_url=os.environ.get("ONETHREAD_TRANSCRIBE_BASE_URL") or None,
        )

    async def transcribe(self, data: bytes, *, name: str = "audio.ogg", mime: str = "") -> str:
        """What ``data`` says, as text (stripped)."""
        client = self._endpoint._get_client()
        upload = (name or "audio.ogg", data, mime or "application/octet-stream")
        with map_openai_errors(self._endpoint):
            result = await client.audio.transcriptions.create(model=self.model, file=upload)
        return str(getattr(result, "text", "") or "").strip()

    async def aclose(self) -> None:
        """Close the SDK client's connections."""
        await self._endpoint.aclose()
