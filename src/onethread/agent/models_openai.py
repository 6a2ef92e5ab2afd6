"""A model client for any OpenAI-compatible chat completions endpoint.

The ``openai`` SDK is imported on the first call, not at import or
construction, so ``import onethread`` and building an ``Agent`` stay light.
Every SDK error is translated to :class:`~onethread.errors.ModelError` in one
place, :func:`map_openai_errors`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from ..errors import ConfigError, ModelError
from .models import ModelReply, OnDelta, ToolCall

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.types.chat import ChatCompletion

__all__ = ["OpenAIModel", "list_models", "map_openai_errors"]

logger = logging.getLogger("onethread.agent")

# A local server (llama.cpp, vLLM, Ollama) may need no key, but the SDK insists on one.
_PLACEHOLDER_KEY = "not-needed"


class OpenAIModel:
    """``model`` on an OpenAI-compatible endpoint, through the official ``openai`` SDK.

    ``api_key`` and ``base_url`` default to ``OPENAI_API_KEY`` and
    ``OPENAI_BASE_URL``, read at construction. With a base URL and no key a
    placeholder key is sent (local servers need none). With neither,
    ``ConfigError`` is raised. ``timeout`` (seconds) bounds each HTTP attempt;
    the SDK retries connection errors, 408, 429 and 5xx ``max_retries`` times.
    Safe for concurrent use; one SDK client (and connection pool) is created
    lazily per event loop.
    """

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        if not model or not model.strip():
            raise ConfigError("the model name is empty; pass a name such as 'gpt-4o-mini'")
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if api_key is None and base_url is None:
            raise ConfigError(
                f"model {model!r} needs an OpenAI-compatible endpoint: set OPENAI_API_KEY "
                "(for api.openai.com) or OPENAI_BASE_URL (for another server), "
                "or pass api_key= / base_url="
            )
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, got {timeout!r}")
        self.model = model.strip()
        self.base_url = base_url
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self._api_key = api_key or _PLACEHOLDER_KEY
        self._client: AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        where = self.base_url or "api.openai.com"
        return f"OpenAIModel({self.model!r}, base_url={where!r}, timeout={self.timeout:g})"

    def _get_client(self) -> AsyncOpenAI:
        # The SDK's connection pool belongs to the loop it was first used in; a new
        # loop (a second asyncio.run) gets a new client instead of a broken pool.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            import openai

            self._client = openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
            self._client_loop = loop
        return self._client

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelReply:
        """One chat completion; ``tools`` omitted from the request when empty.

        Raises ``ModelError`` (with ``status_code`` for HTTP errors) on timeout,
        connection failure, an error status, or a reply without choices.
        """
        client = self._get_client()
        started = time.monotonic()
        with map_openai_errors(self):
            if tools:
                completion = await client.chat.completions.create(
                    model=self.model, messages=cast(Any, messages), tools=cast(Any, tools)
                )
            else:
                completion = await client.chat.completions.create(
                    model=self.model, messages=cast(Any, messages)
                )
        logger.debug("model %s answered in %.3fs", self.model, time.monotonic() - started)
        return _to_reply(completion, self.model)

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], on_delta: OnDelta
    ) -> ModelReply:
        """One chat completion with ``stream=True``: text to ``on_delta`` as it comes.

        Tool-call deltas are gathered by index into whole calls. Raises
        ``ModelError`` like :meth:`complete`, also mid-stream (the text already
        passed to ``on_delta`` stays passed); an exception from ``on_delta``
        closes the stream and propagates.
        """
        client = self._get_client()
        started = time.monotonic()
        text: list[str] = []
        calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]
        with map_openai_errors(self):
            extra: dict[str, Any] = {"tools": cast(Any, tools)} if tools else {}
            stream = await client.chat.completions.create(
                model=self.model, messages=cast(Any, messages), stream=True, **extra
            )
            async with stream:
                async for chunk in stream:
                    if not chunk.choices:
                        continue
                    delta = chunk.choices[0].delta
                    for call in delta.tool_calls or ():
                        slot = calls.setdefault(call.index, ["", "", ""])
                        if call.id:
                            slot[0] = call.id
                        if call.function is not None:
                            slot[1] += call.function.name or ""
                            slot[2] += call.function.arguments or ""
                    piece = delta.content or getattr(delta, "refusal", None) or ""
                    if piece:
                        text.append(piece)
                        await on_delta(piece)
        logger.debug("model %s streamed in %.3fs", self.model, time.monotonic() - started)
        tool_calls = [
            ToolCall(id=slot[0] or f"call_{index}", name=slot[1], arguments=slot[2] or "{}")
            for index, slot in sorted(calls.items())
            if slot[1]
        ]
        return ModelReply(content="".join(text), tool_calls=tool_calls)

    async def aclose(self) -> None:
        """Close the SDK client's connections; the next call opens new ones."""
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            await client.close()


async def list_models(
    base_url: str | None = None, api_key: str | None = None, *, timeout: float = 5.0
) -> list[str]:
    """The model names an OpenAI-compatible server offers (``GET {base_url}/models``).

    ``base_url`` and ``api_key`` default to ``OPENAI_BASE_URL`` and
    ``OPENAI_API_KEY``. One attempt, no retries, at most ``timeout`` seconds.
    Raises ``ModelError`` when the server cannot be reached or refuses.
    """
    import openai

    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    api_key = api_key or os.environ.get("OPENAI_API_KEY") or _PLACEHOLDER_KEY
    where = base_url or "api.openai.com"
    client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
    try:
        page = await asyncio.wait_for(client.models.list(), timeout + 1.0)
        return [model.id async for model in page]
    except TimeoutError as exc:
        raise ModelError(f"{where} did not list its models within {timeout:g}s") from exc
    except openai.APIStatusError as exc:
        raise ModelError(
            f"{where} answered HTTP {exc.status_code} to GET /models",
            status_code=exc.status_code,
        ) from exc
    except openai.OpenAIError as exc:
        raise ModelError(f"cannot list the models of {where}: {exc}") from exc
    finally:
        await client.close()


@contextmanager
def map_openai_errors(model: OpenAIModel) -> Iterator[None]:
    """Translate ``openai`` SDK exceptions raised inside into ``ModelError``.

    The one place SDK errors are mapped: a timeout, a connection failure, an
    HTTP error status (``status_code`` set) and any other SDK error.
    """
    import openai

    where = model.base_url or "api.openai.com"
    try:
        yield
    except openai.APITimeoutError as exc:
        raise ModelError(
            f"model {model.model!r} at {where} timed out after {model.timeout:g}s"
        ) from exc
    except openai.APIConnectionError as exc:
        raise ModelError(f"cannot reach the model endpoint {where}: {exc}") from exc
    except openai.APIStatusError as exc:
        body = exc.body
        detail = body.get("message") if isinstance(body, dict) else None
        raise ModelError(
            f"model endpoint {where} answered HTTP {exc.status_code}: {detail or exc.message}",
            status_code=exc.status_code,
        ) from exc
    except openai.OpenAIError as exc:
        raise ModelError(f"model {model.model!r} at {where} failed: {exc}") from exc


def _to_reply(completion: ChatCompletion, model: str) -> ModelReply:
    if not completion.choices:
        raise ModelError(f"model {model!r} returned no choices")
    message = completion.choices[0].message
    calls: list[ToolCall] = []
    for index, call in enumerate(message.tool_calls or ()):
        if call.type != "function":
            continue  # only function tools are ever offered
        calls.append(
            ToolCall(
                id=call.id or f"call_{index}",
                name=call.function.name,
                arguments=call.function.arguments or "{}",
            )
        )
    return ModelReply(content=message.content or message.refusal or "", tool_calls=calls)
