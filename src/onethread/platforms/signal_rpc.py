"""signal-cli's JSON-RPC daemon, spoken directly: one connection, its calls and its errors.

The daemon (``signal-cli -a +NUMBER daemon --tcp 127.0.0.1:7583``, or
``--socket PATH``) speaks JSON-RPC 2.0 as newline-delimited JSON objects, both
ways (man page ``signal-cli-jsonrpc(5)``). Requests carry an ``id``; the
daemon answers each with ``result`` or ``error`` and the same ``id``, in any
order (it runs requests concurrently). Incoming messages arrive as
notifications (no ``id``): ``{"method": "receive", "params": {"envelope":
..., "account": ...}}``, or wrapped as ``params.result`` after a manual
``subscribeReceive``.

Errors (``SignalJsonRpcCommandHandler``): ``-1`` a user error (unknown group,
unregistered recipient, "Failed to send message"), ``-3`` an I/O error, ``-4``
an untrusted identity (the safety number changed), ``-5`` rate limiting, ``-6``
a rejected CAPTCHA, and the JSON-RPC codes (``-32700`` parse error, ``-32600``
invalid request, ``-32601`` method not found, ``-32602`` invalid params,
``-32603`` an unexpected internal error). A failed send carries the send's
results in ``error.data.response`` (``results[].type`` such as
``UNREGISTERED_FAILURE`` or ``RATE_LIMIT_FAILURE`` with
``retryAfterSeconds``): :func:`map_rpc_error` reads those fields, never the
message text.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import (
    BadRequest,
    ConfigError,
    OutcomeUnknown,
    PlatformError,
    PlatformUnavailable,
    RetryAfter,
)

__all__ = [
    "DEFAULT_URL",
    "Endpoint",
    "RpcConnection",
    "map_rpc_error",
    "parse_endpoint",
    "unreachable",
]

log = logging.getLogger("onethread.platforms.signal")

DEFAULT_URL = "tcp://127.0.0.1:7583"

# signal-cli's own error codes (SignalJsonRpcCommandHandler) and JSON-RPC's.
USER_ERROR = -1
IO_ERROR = -3
UNTRUSTED_KEY_ERROR = -4
RATELIMIT_ERROR = -5
CAPTCHA_REJECTED_ERROR = -6
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603

# A rate limit with no retryAfterSeconds in it: wait this long before the retry.
DEFAULT_RATE_LIMIT_WAIT = 10.0
# One answer can be a whole attachment in base64 (getAttachment): lines up to this.
MAX_LINE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the daemon listens: ``tcp`` with ``host``/``port``, or ``unix`` with ``path``."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        return f"tcp://{self.host}:{self.port}"


def parse_endpoint(url: str) -> Endpoint:
    """``tcp://HOST:PORT`` (signal-cli's ``--tcp``) or ``unix:///PATH`` (``--socket``).

    Raises ``ConfigError`` naming the accepted forms for anything else.
    """
    parts = urlsplit(url.strip())
    if parts.scheme == "unix" and parts.path:
        return Endpoint("unix", path=parts.path)
    if parts.scheme == "tcp":
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.hostname and port:
            return Endpoint("tcp", host=parts.hostname, port=port)
    raise ConfigError(
        f"signal: {url!r} is not a signal-cli daemon address; use tcp://HOST:PORT "
        f"(as given to `signal-cli daemon --tcp`, default {DEFAULT_URL}) or unix:///PATH "
        "(`--socket`)"
    )


async def unreachable(endpoint: Endpoint, timeout: float) -> str | None:
    """Why the daemon at ``endpoint`` takes no connection within ``timeout`` seconds
    (``None``: it does; the connection is closed again, nothing is sent)."""
    try:
        if endpoint.scheme == "unix":
            opening = asyncio.open_unix_connection(endpoint.path)
        else:
            opening = asyncio.open_connection(endpoint.host, endpoint.port)
        _, writer = await asyncio.wait_for(opening, timeout)
    except (OSError, TimeoutError) as exc:
        return f"{exc or type(exc).__name__}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


# -- errors --------------------------------------------------------------------


def _send_results(error: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """``error.data.response.results`` of a failed send (``[]`` when there are none)."""
    data = error.get("data")
    response = data.get("response") if isinstance(data, Mapping) else None
    results = response.get("results") if isinstance(response, Mapping) else None
    if not isinstance(results, list):
        return []
    return [r for r in results if isinstance(r, Mapping)]


def _who(result: Mapping[str, Any]) -> str:
    address = result.get("recipientAddress")
    if isinstance(address, Mapping):
        return str(address.get("number") or address.get("uuid") or address.get("username") or "?")
    return "?"


def map_rpc_error(method: str, error: Mapping[str, Any], *, platform: str) -> PlatformError:
    """The ``onethread.errors`` exception (of ``platform``) for a JSON-RPC ``error``
    object that answered ``method``.

    - ``-5`` (rate limited) -> ``RetryAfter``, the longest ``retryAfterSeconds``
      of the send's results (else ``DEFAULT_RATE_LIMIT_WAIT``).
    - ``-1`` whose results are all ``NETWORK_FAILURE`` -> ``PlatformUnavailable``
      (nothing went out; retried). ``UNREGISTERED_FAILURE`` -> ``BadRequest``
      saying the person is not on Signal (any more). Other ``-1``: ``BadRequest``
      with signal-cli's own message (an unknown group, "not registered").
    - ``-4`` -> ``BadRequest`` naming ``signal-cli trust``; ``-6`` -> ``BadRequest``.
    - ``-3`` (I/O error) -> ``PlatformUnavailable``.
    - ``-32603`` (unexpected error, e.g. a send cut off) -> ``OutcomeUnknown``:
      the call may have been carried out, so a send is not repeated.
    - ``-32601`` -> ``BadRequest`` saying the daemon's signal-cli is too old;
      other JSON-RPC codes -> ``BadRequest``.
    """
    code = error.get("code")
    message = str(error.get("message") or "no message")
    results = _send_results(error)
    types = {str(r.get("type")) for r in results}
    what = f"{method}: {message}"
    if code == RATELIMIT_ERROR or (types and types <= {"RATE_LIMIT_FAILURE"}):
        waits = [
            float(r["retryAfterSeconds"])
            for r in results
            if isinstance(r.get("retryAfterSeconds"), int | float)
        ]
        return RetryAfter(max(waits) if waits else DEFAULT_RATE_LIMIT_WAIT, platform=platform)
    if code == UNTRUSTED_KEY_ERROR or (types and types <= {"IDENTITY_FAILURE"}):
        who = ", ".join(sorted({_who(r) for r in results})) or "the recipient"
        return BadRequest(
            f"{what}: the safety number of {who} changed; check it, then trust the new key "
            "with `signal-cli -a ACCOUNT trust -a RECIPIENT`",
            platform=platform,
        )
    if types and types <= {"UNREGISTERED_FAILURE"}:
        who = ", ".join(sorted({_who(r) for r in results}))
        return BadRequest(
            f"{who} is not registered on Signal (any more): nobody can receive messages there",
            platform=platform,
        )
    if types and types <= {"NETWORK_FAILURE"}:
        return PlatformUnavailable(f"{what} (network failure)", platform=platform)
    if code == IO_ERROR:
        return PlatformUnavailable(what, platform=platform)
    if code == INTERNAL_ERROR:
        return OutcomeUnknown(what, platform=platform)
    if code == METHOD_NOT_FOUND:
        return BadRequest(
            f"{what}; the daemon's signal-cli does not know {method!r}: upgrade signal-cli",
            platform=platform,
        )
    if code == CAPTCHA_REJECTED_ERROR:
        return BadRequest(f"{what} (the CAPTCHA was rejected)", platform=platform)
    return BadRequest(what, platform=platform)


class RpcCallError(Exception):
    """Internal: the daemon answered ``method`` with ``error`` (mapped by the caller)."""

    def __init__(self, method: str, error: Mapping[str, Any]) -> None:
        self.method = method
        self.error = error
        self.code = error.get("code")
        super().__init__(f"{method}: {error.get('message')}")


# -- the connection ------------------------------------------------------------


Notify = Callable[[str, Any], None]


class RpcConnection:
    """One JSON-RPC connection to signal-cli's daemon.

    ``await connect()``, then ``await call(method, params)`` from any task;
    notifications go to ``on_notify(method, params)`` (called on the loop, in
    arrival order; it must not block). When the daemon closes the connection
    (it stopped, or restarted), ``closed`` is set, every call still waiting
    fails with ``OutcomeUnknown`` (it may have been carried out) and
    ``on_close(reason)`` is called once.

    ``_pending`` (id -> the future of its answer) is touched on the event loop
    only; ``_write_lock`` keeps one line's write and drain from interleaving
    with another's.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        on_notify: Notify,
        on_close: Callable[[BaseException], None],
        platform: str,
        timeout: float = 60.0,
    ) -> None:
        self.endpoint = endpoint
        self.platform = platform  # named in the errors raised
        self.timeout = timeout
        self._on_notify = on_notify
        self._on_close = on_close
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self.closed = asyncio.Event()

    async def connect(self, timeout: float = 10.0) -> None:
        """Open the connection; ``PlatformUnavailable`` naming the daemon if it cannot."""
        ep = self.endpoint
        try:
            if ep.scheme == "unix":
                opening = asyncio.open_unix_connection(ep.path, limit=MAX_LINE_BYTES)
            else:
                opening = asyncio.open_connection(ep.host, ep.port, limit=MAX_LINE_BYTES)
            self._reader, self._writer = await asyncio.wait_for(opening, timeout)
        except (OSError, TimeoutError) as exc:
            raise PlatformUnavailable(
                f"cannot reach signal-cli's daemon at {ep} ({exc or type(exc).__name__}); "
                "is `signal-cli -a ACCOUNT daemon` running there?",
                platform=self.platform,
            ) from exc
        self._read_task = asyncio.create_task(self._read(), name=f"signal-rpc-read-{ep}")

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Call ``method`` and return its ``result``.

        Raises the mapped error (:func:`map_rpc_error`) when the daemon
        answers with one, ``PlatformUnavailable`` when the request could not
        be written (not sent), ``OutcomeUnknown`` when the connection closed or
        ``timeout`` passed after it was (it may have been carried out).
        """
        try:
            return await self.call_raw(method, params)
        except RpcCallError as exc:
            raise map_rpc_error(method, exc.error, platform=self.platform) from exc

    async def call_raw(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """As :meth:`call`, but a daemon error is raised unmapped as ``RpcCallError``."""
        writer = self._writer
        if writer is None or self.closed.is_set():
            raise PlatformUnavailable(
                f"{method}: not connected to signal-cli's daemon", platform=self.platform
            )
        request_id = next(self._ids)
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params:
            request["params"] = dict(params)
        line = json.dumps(request, ensure_ascii=False, separators=(",", ":")) + "\n"
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (method, answer)
        try:
            try:
                async with self._write_lock:
                    writer.write(line.encode("utf-8"))
                    await writer.drain()
            except (OSError, RuntimeError) as exc:  # RuntimeError: the transport was closed
                raise PlatformUnavailable(
                    f"{method}: the daemon connection failed ({exc})", platform=self.platform
                ) from exc
            try:
                return await asyncio.wait_for(asyncio.shield(answer), self.timeout)
            except TimeoutError as exc:
                raise OutcomeUnknown(
                    f"{method}: no answer from signal-cli within {self.timeout:g}s",
                    platform=self.platform,
                ) from exc
        finally:
            self._pending.pop(request_id, None)
            if not answer.done():
                answer.cancel()
            elif not answer.cancelled():
                answer.exception()  # retrieved: a caller cancelled meanwhile leaves no warning

    async def close(self) -> None:
        """Close the connection and stop reading. Idempotent."""
        task, self._read_task = self._read_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, RuntimeError):
                await writer.wait_closed()
        self._fail_pending("the connection was closed")
        self.closed.set()

    # -- reading ---------------------------------------------------------------

    async def _read(self) -> None:
        reader = self._reader
        assert reader is not None
        reason: BaseException
        try:
            while True:
                line = await reader.readline()
                if not line:
                    reason = ConnectionResetError("signal-cli's daemon closed the connection")
                    break
                self._dispatch(line)
        except asyncio.CancelledError:
            raise
        except (OSError, ValueError) as exc:  # ValueError: a line past MAX_LINE_BYTES
            reason = exc
        self._fail_pending(f"the connection was lost ({reason})")
        self.closed.set()
        self._on_close(reason)

    def _dispatch(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            log.warning("signal: the daemon sent a line that is not JSON; ignored")
            return
        for item in message if isinstance(message, list) else [message]:
            if not isinstance(item, dict):
                continue
            if "method" in item and "id" not in item:
                try:
                    self._on_notify(str(item["method"]), item.get("params"))
                except Exception:  # a bug in a handler must not end the connection
                    log.exception("signal: handling a %r notification failed", item["method"])
                continue
            waiting = self._pending.get(item.get("id"))  # type: ignore[arg-type]
            if waiting is None or waiting[1].done():
                log.debug("signal: an answer to no waiting request (id %r)", item.get("id"))
                continue
            method, answer = waiting
            error = item.get("error")
            if isinstance(error, dict):
                answer.set_exception(RpcCallError(method, error))
            else:
                answer.set_result(item.get("result"))

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for _, answer in pending.values():
            if not answer.done():
                answer.set_exception(
                    OutcomeUnknown(f"no answer from signal-cli: {why}", platform=self.platform)
                )
