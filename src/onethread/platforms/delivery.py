"""Delivery policy: split long replies to a platform's limit, retry what is retryable.

Pure functions and a small retry policy, used by the adapter base's ``send()``.

What a failed call does: a rate limit (429) and a server error or refused
connection (``PlatformUnavailable``) are retried with backoff; a **timeout**
(or a connection lost after the request went out: ``OutcomeUnknown``) is
never retried, because the platform may have delivered the message before
the answer was lost and a retry would send it twice. The send fails instead
and the reply is kept in history marked not delivered.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import OutcomeUnknown, PlatformUnavailable, RetryAfter

__all__ = ["CUT_NOTE", "RetryPolicy", "cap_messages", "send_with_retry", "split_message"]

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


CUT_NOTE = "[Too long to send in full: cut here. The whole reply follows as a file.]"
"""Ends the last message of a reply cut by :func:`cap_messages`."""


def cap_messages(text: str, limit: int, max_messages: int) -> tuple[list[str], bool]:
    """``split_message(text, limit)``, at most ``max_messages`` of it; True when cut.

    A reply longer than ``max_messages`` messages goes out as its first part:
    the last message is shortened (at a paragraph, line or word) to make room
    for :data:`CUT_NOTE`, so the person knows the rest is missing. The bot
    then sends the whole text as a file (``reply.md``, ``Bot``'s turn delivery).
    """
    if max_messages < 1:
        raise ValueError("max_messages must be at least 1")
    # Splitting costs O(len(text) ** 2 / limit); a long text is split only as far as
    # the cap needs. Every chunk but the last of a prefix is the whole text's own
    # (each cut looks ``limit`` characters ahead), so a prefix with more than
    # ``max_messages`` chunks decides both the cut and the chunks kept.
    window = (max_messages + 2) * limit
    chunks = split_message(text[:window], limit) if len(text) > window else []
    if len(chunks) <= max_messages:
        chunks = split_message(text, limit)
    if len(chunks) <= max_messages:
        return chunks, False
    kept = chunks[:max_messages]
    room = limit - len(CUT_NOTE) - 2
    if room < 16:  # a tiny limit: the note takes the last message (or what fits of it)
        kept[-1] = CUT_NOTE[:limit]
        return kept, True
    last = kept[-1]
    if len(last) > room:
        last = split_message(last, room)[0]
    kept[-1] = f"{last}\n\n{CUT_NOTE}"
    return kept, True


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
    """Run ``call``, retrying what certainly did not arrive, per ``policy``.

    Retried: ``RetryAfter`` (a 429: the platform refused the call; waited out
    up to ``policy.max_delay``) and ``PlatformUnavailable`` (the connection
    could not be made, or the server answered 5xx: nothing was sent or the
    server said it did not take it). Not retried: ``OutcomeUnknown``, the
    error adapters raise when a call timed out waiting for the answer or lost
    its connection after the request went out. Such a message may well have
    arrived, and sending it again could show it twice, so the timeout is
    raised at once: ``send()`` fails, and a reply is stored marked
    ``delivery: failed`` (``delivery_error: "OutcomeUnknown"``). Other errors
    (``BadRequest``, ``PlatformAuthError``) propagate at once too. After the
    last attempt the error propagates. ``on_wait(rate_limited, seconds)`` is
    told of each wait before a retry (``rate_limited`` is True for a
    ``RetryAfter``), for metrics.
    """
    for attempt in range(policy.attempts):
        try:
            return await call()
        except OutcomeUnknown as exc:
            log.error("%s: %s; not retried: it may have arrived, a retry could repeat it",
                      what, exc)  # fmt: skip
            raise
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
