"""Helpers shared across the package: network back-ends (Redis, PostgreSQL), logs.

:class:`PerLoop` -- a network client owned by one event loop, usable from any
loop. Async clients (``redis.asyncio``, psycopg's async pool) bind their
sockets to the loop that opened them. A store is normally used from the bot's
loop, but ``mirror_to_session`` may run a write in a private ``asyncio.run``
loop from a plain thread. ``PerLoop`` keeps one long-lived client for the loop
that uses the store first (the "home" loop) and opens a short-lived client for
a call made from any other loop, closed when that call ends. If the home loop
has been closed, the next loop to ask becomes home.

:func:`redact` -- a URL fit for messages and logs (no password).

:func:`who`, :func:`masked` -- accounts, chats and keys fit for logs (the web
chat's id is its credential).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

__all__ = ["PerLoop", "declare_secret_ids", "masked", "redact", "who"]

# Platforms whose user id is a bearer credential: whoever knows it is that user.
# Filled in by the platform registry (``PlatformSpec.secret_ids``), which every
# module that logs a platform's ids imports first; the session layer names no
# platform. Guarded by the GIL: a set replaced whole, never mutated.
_SECRET_IDS: frozenset[str] = frozenset()


def declare_secret_ids(platforms: Iterable[str]) -> None:
    """Mask the ids of ``platforms`` in logs from now on (see :func:`masked`)."""
    global _SECRET_IDS
    _SECRET_IDS = _SECRET_IDS | frozenset(platforms)


def masked(platform: str, value: str, *, always: bool = False) -> str:
    """``value`` (a user id, chat id or session key of ``platform``) fit for logs.

    On a platform whose user id is a credential (the web chat: the browser's
    id is all it takes to be that user), or on any platform with ``always``
    (the per-turn line, which log shippers carry off the host), anything
    holding it is shown as a short hash, the same for the same value, so log
    lines can still be matched up.
    """
    if always or platform in _SECRET_IDS:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        return f"#{digest[:8]}"
    return value


def who(platform: str, user_id: str = "", *, always: bool = False) -> str:
    """``platform:user_id`` for logs, the id :func:`masked` where it is a credential
    (on every platform with ``always``).

    With one argument, it is a ``platform:user_id`` reference (or a unified
    id, shown as it is).
    """
    if not user_id:
        platform, sep, user_id = platform.partition(":")
        if not sep:
            return platform
    return f"{platform}:{masked(platform, user_id, always=always)}"


R = TypeVar("R")


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs).

    A libpq key/value string (``host=... password=...``) is reduced to its
    host and database names.
    """
    if "://" not in url and "=" not in url:  # file:PATH, memory: nothing secret
        return url
    if "://" not in url:
        kept = [p for p in url.split() if p.split("=", 1)[0] in ("host", "port", "dbname")]
        return " ".join(kept) or "(connection string)"
    scheme, _, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if "," in netloc:  # redis+cluster://user:pw@h1:p1,h2:p2/: several hosts, no urlsplit
        userinfo, at, hosts = netloc.rpartition("@")
        if not at or ":" not in userinfo:
            return url
        user = userinfo.partition(":")[0]
        return f"{scheme}://{user}:***@{hosts}{slash}{tail}"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class PerLoop(Generic[R]):
    """One client per home loop, short-lived clients elsewhere (see the module docstring).

    ``create(home)`` opens a client in the running loop (``home`` is False for a
    short-lived one, which may be smaller); ``destroy`` closes one.
    ``_lock`` (a ``threading.Lock``) guards ``_loop``, ``_client``, ``_ready``
    and ``_closed``; nothing awaits while holding it. ``_ready`` (an
    ``asyncio.Lock`` of the home loop) makes concurrent first calls open the
    home client once.
    """

    def __init__(
        self,
        create: Callable[[bool], Awaitable[R]],
        destroy: Callable[[R], Awaitable[None]],
        *,
        what: str = "this store",
    ) -> None:
        self._create = create
        self._destroy = destroy
        self._what = what
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: R | None = None
        self._ready: asyncio.Lock | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has been called."""
        return self._closed

    def home_client(self) -> R | None:
        """The home client when called from its loop once it is open, else None.

        For hot paths: no generator and no await, where :meth:`borrow` costs an
        async generator per call. On None, use :meth:`borrow` (it opens the
        client, or makes a short-lived one on another loop). Reads without
        ``_lock``: each attribute read is atomic, and a client closed by
        :meth:`aclose` in the meantime fails its call as it would mid-call.
        """
        client = self._client
        if client is None or self._closed or self._loop is not asyncio.get_running_loop():
            return None
        return client

    @asynccontextmanager
    async def borrow(self) -> AsyncIterator[R]:
        """Yield a client usable in the running loop. ``RuntimeError`` after :meth:`aclose`."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._what} is closed")
            if self._loop is None or self._loop.is_closed():
                # The old home loop (if any) is gone; its client's sockets went with it.
                self._loop, self._client, self._ready = loop, None, asyncio.Lock()
            home = self._loop is loop
            ready = self._ready
        if not home:
            client = await self._create(False)
            try:
                yield client
            finally:
                await self._destroy(client)
            return
        assert ready is not None
        current = self._client
        if current is None:
            async with ready:
                current = self._client
                if current is None:
                    current = await self._create(True)
                    with self._lock:
                        stale = self._closed
                        if not stale:
                            self._client = current
                    if stale:
                        await self._destroy(current)
                        raise RuntimeError(f"{self._what} is closed")
        yield current

    async def aclose(self) -> None:
        """Close the home client (if opened). Idempotent.

        Called from another loop than home, the close is handed to the home
        loop when it still runs; a home loop already closed took its sockets
        with it.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            client, loop = self._client, self._loop
            self._client = None
        if client is None or loop is None:
            return
        if loop is asyncio.get_running_loop():
            await self._destroy(client)
        elif loop.is_running() and not loop.is_closed():
            done = asyncio.run_coroutine_threadsafe(_call(self._destroy, client), loop)
            await asyncio.wrap_future(done)


async def _call(fn: Callable[[R], Awaitable[None]], arg: R) -> None:
    await fn(arg)
