"""Readiness: does every configured store answer, is every platform connected?

``GET /readyz`` answers 200 only when both hold, else 503, with a JSON body
naming each store and platform and its state. The body names kinds of store
(``RedisHistoryStore``) and error classes (``StoreError``), never a URL, a
host or a credential: readiness endpoints are often reachable by more than
the operator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..bots.botos import BotOS

__all__ = ["PROBE_KEY", "PROBE_TIMEOUT", "platform_states", "readiness", "store_probes"]

PROBE_TIMEOUT = 2.0
PROBE_KEY = "onethread:readyz"  # a session key no turn ever uses; only counted, never written


def store_probes(botos: BotOS) -> dict[str, tuple[str, Callable[[], Awaitable[Any]]]]:
    """``name -> (kind, probe)``: one network round trip (or file read) per configured store."""
    session = botos.session
    probes: dict[str, tuple[str, Callable[[], Awaitable[Any]]]] = {}
    store = session.store
    probes["history"] = (type(store).__name__, lambda: store.count(PROBE_KEY))
    resolver = session.identity_resolver
    if resolver is not None:
        ping = getattr(resolver, "ping", None)
        if callable(ping):
            probes["identity"] = (type(resolver).__name__, lambda: asyncio.to_thread(ping))
        else:
            probes["identity"] = (
                type(resolver).__name__,
                lambda: asyncio.to_thread(resolver.resolve, "readyz", "probe"),
            )
    outbox = botos.outbox
    depth = getattr(outbox, "depth", None)
    if outbox is not None and callable(depth):
        platforms = list(botos.bots)
        probes["coordination"] = (type(outbox).__name__, lambda: depth(platforms))
    pairing = botos.pairing_store()
    if pairing is not None:
        probes["pairing"] = (
            type(pairing).__name__,
            lambda: asyncio.to_thread(pairing.pending, "approve"),
        )
    return probes


async def _probe(kind: str, probe: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    try:
        await asyncio.wait_for(probe(), PROBE_TIMEOUT)
    except TimeoutError:
        return {"ok": False, "kind": kind, "error": f"no answer within {PROBE_TIMEOUT:g}s"}
    except Exception as exc:  # any failure means "not ready"; the class name says which
        return {"ok": False, "kind": kind, "error": type(exc).__name__}
    return {"ok": True, "kind": kind}


def platform_states(botos: BotOS) -> dict[str, dict[str, Any]]:
    """``name -> {"ok", "state"}``; state is ``connected``, ``connecting`` or ``failed``."""
    out: dict[str, dict[str, Any]] = {}
    for name, bot in botos.bots.items():
        if name in botos.failed:
            out[name] = {"ok": False, "state": "failed", "error": type(botos.failed[name]).__name__}
        elif bot.ready.is_set():
            out[name] = {"ok": True, "state": "connected"}
        else:
            out[name] = {"ok": False, "state": "connecting"}
    return out


async def readiness(botos: BotOS) -> tuple[bool, dict[str, Any]]:
    """Probe every store at once (each bounded by :data:`PROBE_TIMEOUT`) and read the
    platforms' states. Returns ``(ready, body)``."""
    probes = store_probes(botos)
    results = await asyncio.gather(*(_probe(kind, fn) for kind, fn in probes.values()))
    stores: Mapping[str, dict[str, Any]] = dict(zip(probes, results, strict=True))
    platforms = platform_states(botos)
    ready = all(s["ok"] for s in stores.values()) and all(p["ok"] for p in platforms.values())
    return ready, {"ready": ready, "stores": stores, "platforms": platforms}
