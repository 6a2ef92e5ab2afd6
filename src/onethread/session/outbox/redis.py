"""The cross-host outbox on Redis Streams (guarantees: see :mod:`onethread.session.outbox`).

Key layout (``P`` is the prefix, default ``onethread:``)::

    P outbox:{platform}    stream; consumer group "onethread"; field "m" = item JSON
    P outbox:attempts      hash: "{platform}/{entry id}" -> hand-outs so far
    P outbox:dead          stream of items given up after max_attempts

``put`` is ``XADD``. A serving host reads new entries with ``XREADGROUP``
(each entry goes to one consumer), and every ``visibility/2`` seconds takes
over entries left unacknowledged for ``visibility`` seconds by any consumer
(``XAUTOCLAIM``): that is the retry after a crash or a failed delivery. While
``deliver`` runs, the entry's idle time is reset every ``visibility/3``
seconds, so no other host takes it. Success is ``XACK`` + ``XDEL`` in one
Lua script (atomic, as a ``MULTI`` would be).

On Redis Cluster (``redis+cluster://``) every key carries the hash tag
``{outbox}`` (``P {outbox}:telegram``, ``P {outbox}:attempts``,
``P {outbox}:dead``), so one ``XREADGROUP`` reads every platform's stream
and the finishing script touches one slot.

Items are taken one at a time, so one platform's items go out in order (a
retried item goes out when it is retried).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Collection
from typing import Any, cast

from .._conn.redis import (
    AsyncClient,
    LuaScript,
    RedisError,
    async_client,
    check_pool_options,
    group_tag,
    is_cluster,
    redis,
    reraise_swallowed_cancel,
    store_error,
    validate_prefix,
)
from .._conn.shared import PerLoop
from .base import Deliver, OutboxItem

__all__ = ["RedisOutbox"]

log = logging.getLogger("onethread.outbox")

GROUP = "onethread"

# KEYS: stream, attempts, dead stream. ARGV: entry id, counter, then (only to
# set the entry aside) its item JSON and the reason.
_FINISH = LuaScript("""
if ARGV[3] then
  redis.call('XADD', KEYS[3], '*', 'm', ARGV[3], 'id', ARGV[1], 'stream', KEYS[1],
             'reason', ARGV[4])
end
redis.call('XACK', KEYS[1], 'onethread', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
""")


def _entries(reply: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """``XREADGROUP``'s reply as [(stream, [(id, fields)])], for RESP2 and RESP3."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(k, v[0] if v and isinstance(v[0], list) else v) for k, v in reply.items()]
    return [(stream, entries) for stream, entries in reply]


class RedisOutbox:
    """A durable outbox shared by every host on one Redis (see the module doc).

    Args:
        url: ``redis://[:password@]HOST:PORT/DB``.
        prefix: namespace of the keys (default ``onethread:``).
        visibility: seconds an unacknowledged item stays with the host that
            took it before another host may retry it.
        max_attempts: hand-outs before an item is set aside as dead.
        consumer: this host's name in the consumer group (default
            ``hostname-pid-random``).
        poll: longest wait for new items in one ``XREADGROUP`` (it also paces
            the checks for items to retry).

    Errors: ``put`` raises ``StoreError`` when Redis fails (nothing was
    stored). ``serve`` logs a failing ``deliver`` and retries the item later;
    it raises ``StoreError`` if Redis fails, and runs until cancelled.

    Concurrency: ``put`` is safe from any task, loop or host; run one
    ``serve`` per host and platform set. ``_clients`` (a ``PerLoop``) guards
    the connection pools.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "onethread:",
        visibility: float = 60.0,
        max_attempts: int = 5,
        consumer: str | None = None,
        poll: float = 1.0,
        **options: Any,
    ) -> None:
        if visibility <= 0 or max_attempts < 1 or poll <= 0:
            raise ValueError("visibility and poll must be > 0, max_attempts >= 1")
        self.url = url
        self.prefix = validate_prefix(prefix, url)
        self._k = f"{self.prefix}{group_tag('outbox', is_cluster(url))}:"
        self.visibility = visibility
        self.max_attempts = max_attempts
        self.poll = poll
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        opts: dict[str, Any] = check_pool_options({"decode_responses": True, **options})

        async def create(home: bool) -> AsyncClient:
            return async_client(url, opts)

        async def destroy(client: AsyncClient) -> None:
            await client.aclose()

        self._clients: PerLoop[AsyncClient] = PerLoop(create, destroy, what="this outbox")

    def _stream(self, platform: str) -> str:
        return f"{self._k}{platform}"

    async def put(self, item: OutboxItem) -> str:
        """Store ``item`` for the host serving ``item.platform``; return its entry id."""
        async with self._clients.borrow() as client:
            try:
                entry_id = await client.xadd(self._stream(item.platform), {"m": item.to_json()})
            except RedisError as exc:
                raise store_error(self.url, exc) from exc
        return str(entry_id)

    async def depth(self, platforms: Collection[str]) -> dict[str, int]:
        """Messages waiting (or being delivered) per platform: one round trip to the server."""
        names = sorted(set(platforms))
        async with self._clients.borrow() as client:
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for name in names:
                        pipe.xlen(self._stream(name))
                    counts = await pipe.execute()
            except RedisError as exc:
                raise store_error(self.url, exc) from exc
        return {name: int(n) for name, n in zip(names, counts, strict=True)}

    async def dead(self, limit: int = 100) -> list[OutboxItem]:
        """Items given up after ``max_attempts`` (oldest first), for inspection."""
        async with self._clients.borrow() as client:
            try:
                rows = cast(
                    list[tuple[str, dict[str, str]]],
                    await client.xrange(self._k + "dead", count=limit),
                )
            except RedisError as exc:
                raise store_error(self.url, exc) from exc
        return [
            OutboxItem.from_json(f["m"], id=f.get("id", i), attempts=int(f.get("attempts", 0)))
            for i, f in rows
        ]

    async def serve(self, platforms: Collection[str], deliver: Deliver) -> None:
        """Deliver ``platforms``' items with ``deliver`` until cancelled (see the class doc)."""
        streams = {self._stream(p): p for p in platforms}
        if not streams:
            raise ValueError("serve() needs at least one platform")
        vis_ms = max(1, round(self.visibility * 1000))
        block_ms = max(1, round(min(self.poll, self.visibility / 2) * 1000))
        async with self._clients.borrow() as client:
            try:
                for stream in streams:
                    await self._ensure_group(client, stream)
                next_reclaim = 0.0
                while True:
                    reraise_swallowed_cancel()
                    if time.monotonic() >= next_reclaim:
                        next_reclaim = time.monotonic() + min(self.visibility / 2, 5.0)
                        for stream, platform in streams.items():
                            await self._reclaim(client, stream, platform, vis_ms, deliver)
                    reply = await client.xreadgroup(
                        GROUP, self.consumer, dict.fromkeys(streams, ">"), count=1, block=block_ms
                    )
                    for stream, entries in _entries(reply):
                        for entry_id, fields in entries:
                            await self._handle(
                                client, stream, streams[stream], entry_id, fields, deliver
                            )
            except RedisError as exc:
                raise store_error(self.url, exc) from exc

    async def close(self) -> None:
        """Close the connection pools."""
        await self._clients.aclose()

    # -- internals -------------------------------------------------------------

    async def _ensure_group(self, client: AsyncClient, stream: str) -> None:
        try:
            # From id 0: items put before any host served the platform count too.
            await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # the server's documented reply code
                raise

    async def _reclaim(
        self,
        client: AsyncClient,
        stream: str,
        platform: str,
        vis_ms: int,
        deliver: Deliver,
    ) -> None:
        """Take over and deliver entries left unacknowledged for ``visibility`` seconds."""
        start = "0-0"
        while True:
            reraise_swallowed_cancel()
            reply = await client.xautoclaim(
                stream, GROUP, self.consumer, vis_ms, start_id=start, count=1
            )
            start, entries = reply[0], reply[1]
            for entry_id, fields in entries:
                if fields:  # None: the entry was deleted meanwhile
                    await self._handle(client, stream, platform, entry_id, fields, deliver)
            if start in ("0-0", b"0-0"):
                return

    async def _handle(
        self,
        client: AsyncClient,
        stream: str,
        platform: str,
        entry_id: str,
        fields: dict[str, str],
        deliver: Deliver,
    ) -> None:
        counter = f"{platform}/{entry_id}"
        attempts = int(await client.hincrby(self._k + "attempts", counter, 1))
        try:
            item = OutboxItem.from_json(fields["m"], id=entry_id, attempts=attempts)
        except (KeyError, ValueError) as exc:
            log.error(
                "outbox entry %s %s is unreadable (%s); setting it aside", stream, entry_id, exc
            )
            await self._finish(client, stream, entry_id, counter, dead=fields, reason=str(exc))
            return
        if attempts > self.max_attempts:
            log.error(
                "outbox: giving up on %s %s after %d attempts", stream, entry_id, attempts - 1
            )
            await self._finish(client, stream, entry_id, counter, dead=fields, reason="attempts")
            return
        keeper = asyncio.create_task(self._keep_claimed(client, stream, entry_id))
        try:
            await deliver(item)
        except Exception:
            log.exception(
                "outbox: delivering %s %s failed (attempt %d of %d); retrying in %g s",
                stream, entry_id, attempts, self.max_attempts, self.visibility,
            )  # fmt: skip
            return
        finally:
            keeper.cancel()
        await self._finish(client, stream, entry_id, counter)

    async def _keep_claimed(self, client: AsyncClient, stream: str, entry_id: str) -> None:
        """Reset the entry's idle time while it is being delivered."""
        while True:
            await asyncio.sleep(self.visibility / 3)
            reraise_swallowed_cancel()
            try:
                await client.xclaim(stream, GROUP, self.consumer, 0, [entry_id], justid=True)
            except RedisError as exc:
                log.warning(
                    "outbox: extending the claim on %s %s failed: %s", stream, entry_id, exc
                )

    async def _finish(
        self,
        client: AsyncClient,
        stream: str,
        entry_id: str,
        counter: str,
        *,
        dead: dict[str, str] | None = None,
        reason: str = "",
    ) -> None:
        """Acknowledge and delete the entry (moving it to the dead stream if ``dead``)."""
        args = [entry_id, counter]
        if dead is not None:
            args += [dead.get("m", ""), reason]
        await _FINISH.run(client, [stream, self._k + "attempts", self._k + "dead"], args)
