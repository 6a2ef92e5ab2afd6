"""A fake OpenAI-compatible server for tests: the real wire format on 127.0.0.1.

The real ``openai`` SDK talks to it over HTTP, so tests exercise the SDK's
request building, response parsing, error classes, retries and timeouts.
Answers come from a queue (``server.queue(...)``) or, when the queue is empty,
from ``server.handler(body)``; every request body is recorded in
``server.requests``. ::

    async with FakeOpenAI() as server:
        server.queue(text("hi"), tool_call("add", {"a": 1}), error(500))
        model = OpenAIModel("gpt-test", base_url=server.base_url, api_key="sk-test")

A request with ``"stream": true`` gets the answer as server-sent events, as the
real API sends them (``chat.completion.chunk`` objects: the text a word at a
time, tool calls as deltas by index, then ``data: [DONE]``), spread over the
reply's ``stream_over`` seconds (:func:`streamed`). ``fail_after=n`` sends an
``error`` event after ``n`` text chunks instead of the rest, as the API does
when a stream breaks. ``stream_starts`` records when each stream's first text
chunk was written (``time.monotonic()``), ``stream_bodies`` the request of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

__all__ = [
    "FakeOpenAI",
    "FakeReply",
    "Handler",
    "error",
    "streamed",
    "text",
    "tool_call",
    "tool_calls",
]


@dataclass
class FakeReply:
    """One scripted HTTP answer: a chat completion, or an error status with OpenAI's error JSON."""

    content: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    error_message: str = ""
    error_type: str = ""
    error_code: str | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    stream_over: float = 0.0
    fail_after: int | None = None


Handler = Callable[[dict[str, Any]], "FakeReply | str | Awaitable[FakeReply | str]"]

_ids = itertools.count(1)


def text(content: str, *, delay: float = 0.0) -> FakeReply:
    """A final assistant message with ``content``."""
    return FakeReply(content=content, delay=delay)


def streamed(content: str, *, over: float = 0.0, fail_after: int | None = None) -> FakeReply:
    """``content``, streamed (to a ``stream=True`` request) evenly over ``over`` seconds.

    ``fail_after``: break the stream with an error event after that many chunks.
    """
    return FakeReply(content=content, stream_over=over, fail_after=fail_after)


def tool_call(
    name: str, arguments: dict[str, Any] | str = "{}", *, id: str | None = None
) -> FakeReply:
    """An assistant message asking for one function call (``arguments`` dict or raw JSON text)."""
    return tool_calls((name, arguments, id))


def tool_calls(*calls: tuple[str, dict[str, Any] | str, str | None]) -> FakeReply:
    """An assistant message asking for several calls, each ``(name, arguments, id or None)``."""
    wire = [
        {
            "id": call_id or f"call_{next(_ids)}",
            "type": "function",
            "function": {
                "name": name,
                "arguments": args if isinstance(args, str) else json.dumps(args),
            },
        }
        for name, args, call_id in calls
    ]
    return FakeReply(content=None, calls=wire)


_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("insufficient_permissions", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def error(
    status: int, message: str = "", *, headers: dict[str, str] | None = None, delay: float = 0.0
) -> FakeReply:
    """An error status with OpenAI's ``{"error": {message, type, param, code}}`` body."""
    kind, code = _ERROR_TYPES.get(status, ("server_error", None))
    default = {
        401: "Incorrect API key provided: sk-****. You can find your API key at the dashboard.",
        429: "Rate limit reached for requests.",
    }.get(status, "The server had an error while processing your request.")
    return FakeReply(
        status=status,
        error_message=message or default,
        error_type=kind,
        error_code=code,
        headers=dict(headers or {}),
        delay=delay,
    )


class FakeOpenAI:
    """An aiohttp server implementing ``POST /v1/chat/completions`` (and
    ``GET /v1/models``, listing ``models``) on 127.0.0.1, port 0.

    With ``api_key`` set, requests with another bearer token get 401 as the
    real API does. ``requests`` and ``auth_headers`` record every request.
    Without a queued reply or handler, a request gets 500 and is counted in
    ``unexpected``. Delays end early when the server closes.
    """

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        api_key: str | None = None,
        models: Sequence[str] = ("fake-model",),
    ) -> None:
        self.handler = handler
        self.api_key = api_key
        self.models = list(models)
        self.model_listings = 0
        self.requests: list[dict[str, Any]] = []
        self.auth_headers: list[str] = []
        self.unexpected = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._queue: deque[FakeReply | str] = deque()
        # POST /v1/audio/transcriptions: what each upload says (by its bytes), and the calls.
        self.transcripts: dict[bytes, str] = {}
        self.transcriptions: list[dict[str, Any]] = []
        self.stream_starts: list[float] = []
        self.stream_bodies: list[dict[str, Any]] = []
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """The ``OPENAI_BASE_URL`` for this server (ends in ``/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def queue(self, *replies: FakeReply | str) -> None:
        """Answer the next requests with ``replies``, in order (a ``str`` is :func:`text`)."""
        self._queue.extend(replies)

    async def start(self) -> None:
        """Bind to a free port on 127.0.0.1 and serve."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        """Stop serving; pending delays end at once."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``: ``models`` as the API lists them (auth as for completions)."""
        self.model_listings += 1
        if self.api_key is not None and request.headers.get("Authorization") != (
            f"Bearer {self.api_key}"
        ):
            return _error_response(error(401))
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _transcriptions(self, request: web.Request) -> web.Response:
        """``multipart/form-data`` with ``file`` and ``model``, as the real endpoint takes."""
        if self.api_key is not None and request.headers.get("Authorization") != (
            f"Bearer {self.api_key}"
        ):
            return _error_response(error(401))
        if not request.content_type.startswith("multipart/"):
            return _error_response(error(400, "Expected multipart/form-data."))
        fields: dict[str, Any] = {}
        async for part in await request.multipart():
            if isinstance(part, BodyPartReader) and part.name:
                data = await part.read()
                fields[part.name] = (part.filename, bytes(data))
        if "file" not in fields or "model" not in fields:
            return _error_response(error(400, "'file' and 'model' are required."))
        filename, data = fields["file"]
        self.transcriptions.append(
            {"model": fields["model"][1].decode(), "filename": filename, "bytes": len(data)}
        )
        said = self.transcripts.get(data)
        if said is None:
            return _error_response(error(400, "fake_openai: no transcript set for these bytes"))
        return web.json_response({"text": said})

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        self.auth_headers.append(auth)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error_response(error(400, "We could not parse the JSON body of your request."))
        if not isinstance(body, dict) or "messages" not in body or "model" not in body:
            return _error_response(error(400, "'messages' and 'model' are required properties."))
        self.requests.append(body)
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return _error_response(error(401))
        reply = await self._next_reply(body)
        if reply.delay > 0:
            with contextlib.suppress(TimeoutError):  # the delay ran its course
                await asyncio.wait_for(self._closing.wait(), reply.delay)
        if reply.status != 200:
            return _error_response(reply)
        if body.get("stream"):
            return await self._stream(request, body, reply)
        return web.json_response(_completion(body, reply))

    async def _stream(
        self, request: web.Request, body: dict[str, Any], reply: FakeReply
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk_id = f"chatcmpl-fake{next(_ids)}"

        async def event(delta: dict[str, Any], finish: str | None = None) -> None:
            payload = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body["model"],
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            await response.write(f"data: {json.dumps(payload)}\n\n".encode())

        await event({"role": "assistant", "content": ""})
        words = re.findall(r"\S+\s*|\s+", reply.content or "")
        pause = reply.stream_over / max(1, len(words) - 1)
        for index, word in enumerate(words):
            if reply.fail_after is not None and index >= reply.fail_after:
                error_body = {"error": {"message": "The server had an error while processing "
                              "your request.", "type": "server_error", "param": None,
                              "code": None}}  # fmt: skip
                await response.write(f"data: {json.dumps(error_body)}\n\n".encode())
                await response.write_eof()
                return response
            if index and pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), pause)
            if index == 0:
                self.stream_starts.append(time.monotonic())
                self.stream_bodies.append(body)
            await event({"content": word})
        for index, call in enumerate(reply.calls):
            args = call["function"]["arguments"]
            half = len(args) // 2
            await event({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                         "function": {"name": call["function"]["name"],
                                                      "arguments": args[:half]}}]})  # fmt: skip
            await event({"tool_calls": [{"index": index, "function": {"arguments": args[half:]}}]})
        await event({}, "tool_calls" if reply.calls else "stop")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _next_reply(self, body: dict[str, Any]) -> FakeReply:
        answer: FakeReply | str | Awaitable[FakeReply | str]
        if self._queue:
            answer = self._queue.popleft()
        elif self.handler is not None:
            answer = self.handler(body)
            if inspect.isawaitable(answer):
                answer = await answer
        else:
            self.unexpected += 1
            return error(500, "fake_openai: no reply queued and no handler set")
        assert not inspect.isawaitable(answer)
        return text(answer) if isinstance(answer, str) else answer


def _completion(body: dict[str, Any], reply: FakeReply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.calls:
        message["tool_calls"] = reply.calls
    prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
    completion_tokens = len((reply.content or "").split())
    return {
        "id": f"chatcmpl-fake{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if reply.calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": "fp_fake",
    }


def _error_response(reply: FakeReply) -> web.Response:
    payload = {
        "error": {
            "message": reply.error_message,
            "type": reply.error_type,
            "param": None,
            "code": reply.error_code,
        }
    }
    return web.json_response(payload, status=reply.status, headers=reply.headers)
