"""Keep one adapter connected: restart it with backoff when it fails.

Bad credentials (``PlatformAuthError``) and configuration mistakes
(``ConfigError``) are fatal for that platform: they are raised, not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass

from ..errors import ConfigError, PlatformAuthError, PlatformError
from ..platforms.base import Adapter, OnInbound

__all__ = ["Backoff", "supervise"]

log = logging.getLogger("onethread.supervisor")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: ``base * 2**n``, capped, times [0.5, 1)."""

    base: float = 1.0
    cap: float = 60.0
    healthy_after: float = 30.0  # a connection up this long resets the attempt count

    def delay(self, attempt: int) -> float:
        """Seconds to wait before restart number ``attempt`` (1-based)."""
        return float(min(self.cap, self.base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))


async def _wait_or_stop(delay: float, stopping: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), delay)


async def _stop_adapter(adapter: Adapter) -> None:
    try:
        await asyncio.wait_for(adapter.stop(), 10.0)
    except Exception:
        log.exception("%s: error while stopping the adapter", adapter.name)


async def supervise(
    adapter: Adapter,
    on_inbound: OnInbound,
    stopping: asyncio.Event,
    ready: asyncio.Event,
    backoff: Backoff | None = None,
) -> None:
    """Run ``adapter`` until ``stopping`` is set, restarting it after failures.

    ``ready`` is set whenever the adapter is connected, cleared while it is
    down. Returns after ``stopping``; raises ``PlatformAuthError`` or
    ``ConfigError`` (fatal) at once. The adapter is not stopped on return: the
    caller drains running turns first, then stops it.
    """
    policy = backoff or Backoff()
    loop = asyncio.get_running_loop()
    attempt = 0
    while not stopping.is_set():
        started = loop.time()
        try:
            await adapter.start(on_inbound)
        except (PlatformAuthError, ConfigError):
            await _stop_adapter(adapter)
            raise
        except Exception as exc:
            attempt += 1
            delay = policy.delay(attempt)
            # A PlatformError or OSError is the network; anything else is probably a bug
            # in an adapter: retried all the same, but logged with its traceback.
            expected = isinstance(exc, PlatformError | OSError | TimeoutError)
            log.warning(
                "%s: could not connect (%s); retrying in %.1fs",
                adapter.name, exc, delay, exc_info=not expected,
            )  # fmt: skip
            await _stop_adapter(adapter)
            adapter.reset_failure()
            await _wait_or_stop(delay, stopping)
            continue
        ready.set()
        log.info("%s: connected", adapter.name)
        failure = asyncio.ensure_future(adapter.wait_failure())
        stop_wait = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({failure, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (failure, stop_wait):
                if not fut.done():
                    fut.cancel()
        if stopping.is_set():
            return
        ready.clear()
        error = failure.result()
        if isinstance(error, PlatformAuthError | ConfigError):
            await _stop_adapter(adapter)
            raise error
        if loop.time() - started > policy.healthy_after:
            attempt = 0
        attempt += 1
        delay = policy.delay(attempt)
        log.warning("%s: connection lost (%s); restarting in %.1fs", adapter.name, error, delay)
        await _stop_adapter(adapter)
        adapter.reset_failure()
        await _wait_or_stop(delay, stopping)
