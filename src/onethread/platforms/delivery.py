"""Delivery policy: split long replies to a platform's limit, retry what is retryable.

Pure functions and a small retry policy, used by the adapter base's ``send()``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import PlatformUnavailable, RetryAfter

__all__ = ["RetryPolicy", "send_with_retry", "split_message"]

log = logging.getLogger("onethread.delivery")
T = TypeVar("T")

_FENCE = "```"


def _cut_point(text: str, limit: int) -> int:
    """Where to cut ``text`` (longer than ``limit``): paragraph, line, word, else hard."""
    window = text[:limit]
    for sep in ("\n\n", "\n", " "):
        idx = window.rfind(sep)
        if idx > limit // 4:
            return idx + len(sep)
    return limit


def _open_fence(text: str) -> str | None:
    """The opening fence line (e.g. ```` ```python ````) if ``text`` ends inside a code block."""
    opener: str | None = None
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith(_FENCE):
            opener = None if opener is not None else stripped
    return opener


def split_message(text: str, limit: int) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` characters.

    Cuts at a paragraph break, else a line break, else a space, else hard.
    A cut inside a fenced code block closes the fence at the end of the chunk
    and reopens it (same language tag) at the start of the next, so every chunk
    renders on its own. Joining the chunks' text (less the added fences and the
    whitespace at cuts) gives back the original.
    """
    if limit < 16:
        raise ValueError("limit must be at least 16 characters")
    if len(text) <= limit:
        return [text] if text else []
    chunks: list[str] = []
    rest = text
    reopen = ""
    while rest:
        body_limit = limit - len(reopen)
        if len(rest) <= body_limit:
            chunks.append(reopen + rest)
            break
        # Leave room for a closing fence in case the cut lands in a code block.
        cut = _cut_point(rest, body_limit - len(_FENCE) - 1)
        piece = reopen + rest[:cut]
        rest = rest[cut:]
        fence = _open_fence(piece)
        if fence is not None:
            piece = piece.rstrip("\n") + "\n" + _FENCE
            reopen = fence + "\n"
        else:
            reopen = ""
        piece = piece.rstrip() if fence is None else piece
        if piece.strip():
            chunks.append(piece)
        if fence is None:
            rest = rest.lstrip("\n")
    return chunks


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How ``send`` retries: ``attempts`` tries in all, waits capped at ``max_delay``.

    A ``RetryAfter`` longer than ``max_delay`` is not waited out: the send gives up.
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter for a ``PlatformUnavailable``."""
        return float(min(self.max_delay, self.base_delay * (2**attempt)) * random.uniform(0.5, 1.0))


async def send_with_retry(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_wait: Callable[[bool, float], None] | None = None,
) -> T:
    """Run ``call``, retrying ``RetryAfter`` and ``PlatformUnavailable`` per ``policy``.

    Other errors propagate at once. After the last attempt the error propagates.
    ``on_wait(rate_limited, seconds)`` is told of each wait before a retry
    (``rate_limited`` is True for a ``RetryAfter``), for metrics.
    """
    for attempt in range(policy.attempts):
        try:
            return await call()
        except RetryAfter as exc:
            if attempt + 1 >= policy.attempts or exc.retry_after > policy.max_delay:
                log.error("%s: giving up after rate limit (retry_after=%ss)", what, exc.retry_after)
                raise
            log.warning("%s: rate limited, retrying in %.2fs", what, exc.retry_after)
            if on_wait is not None:
                on_wait(True, exc.retry_after)
            await sleep(exc.retry_after)
        except PlatformUnavailable as exc:
            if attempt + 1 >= policy.attempts:
                log.error("%s: giving up after %d attempts: %s", what, policy.attempts, exc)
                raise
            delay = policy.backoff(attempt)
            log.warning("%s: %s; retrying in %.2fs", what, exc, delay)
            if on_wait is not None:
                on_wait(False, delay)
            await sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")
