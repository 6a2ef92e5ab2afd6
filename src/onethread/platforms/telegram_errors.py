"""Telegram error mapping: python-telegram-bot's errors as ``onethread.errors``.

Used by :class:`onethread.platforms.telegram.TelegramAdapter` around every Bot
API call (see :func:`map_telegram_errors`).
"""

from __future__ import annotations

import contextlib
import datetime as dtm
import warnings
from collections.abc import Iterator

import httpx
from telegram import error as tg
from telegram.warnings import PTBDeprecationWarning

from ..errors import (
    BadRequest,
    FormattingRejected,
    OutcomeUnknown,
    PlatformAuthError,
    PlatformUnavailable,
    RetryAfter,
)

__all__ = ["BASE_URL_ENV", "PLATFORM", "TOKEN_ENV", "map_telegram_errors", "not_modified"]

PLATFORM = "telegram"
TOKEN_ENV = "TELEGRAM_BOT_TOKEN"
BASE_URL_ENV = "TELEGRAM_API_BASE_URL"


def _retry_after_seconds(exc: tg.RetryAfter) -> float:
    # PTB >= 22.2 returns a timedelta when PTB_TIMEDELTA is set and otherwise a
    # number plus a deprecation warning; accept both, silence only that notice.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    if isinstance(value, dtm.timedelta):
        return value.total_seconds()
    return float(value)


def _is_parse_error(exc: tg.BadRequest) -> bool:
    # The ONE place we read an error text. The Bot API answers every bad
    # request with error_code 400 and PTB raises a plain BadRequest for all of
    # them, so the description ("Bad Request: can't parse entities: ...", which
    # PTB stores capitalised without the prefix) is the only signal that the
    # markup, not the request, was refused ("can't parse message text" is the
    # older wording). Pinned by a test against the fake's Bot API descriptions.
    return exc.message.lower().startswith(("can't parse entities", "can't parse message text"))


@contextlib.contextmanager
def map_telegram_errors() -> Iterator[None]:
    """Translate ``telegram.error`` exceptions raised in the block into ``onethread.errors``.

    ``RetryAfter`` -> ``RetryAfter`` (seconds, timedelta-safe); ``InvalidToken``
    (401/404) -> ``PlatformAuthError``; a markup parse error -> ``FormattingRejected``;
    other 400s, ``Forbidden`` (403: blocked by the user, not in the chat) and
    ``ChatMigrated`` -> ``BadRequest``; a refused connection, a 5xx and
    ``Conflict`` -> ``PlatformUnavailable`` (retried); a timeout, a connection
    lost mid-call and unreadable answers -> ``OutcomeUnknown`` (the call may have
    gone through: a send is not retried; see ``_may_have_arrived``).
    """
    try:
        yield
    except tg.RetryAfter as exc:
        raise RetryAfter(_retry_after_seconds(exc), platform=PLATFORM) from exc
    except tg.InvalidToken as exc:
        # Bot.initialize() re-raises InvalidToken with the token in its text;
        # chain to the server's own error so the token stays out of tracebacks.
        cause = exc.__cause__ if isinstance(exc.__cause__, tg.InvalidToken) else exc
        raise PlatformAuthError(
            f"the bot token was rejected ({cause}); check {TOKEN_ENV} (and {BASE_URL_ENV}, "
            "which is the server root, without /bot)",
            platform=PLATFORM,
        ) from cause
    except tg.Forbidden as exc:
        raise BadRequest(f"forbidden: {exc}", platform=PLATFORM) from exc
    except tg.ChatMigrated as exc:
        raise BadRequest(
            f"the group became supergroup {exc.new_chat_id}; use that chat id", platform=PLATFORM
        ) from exc
    except tg.BadRequest as exc:  # before NetworkError: PTB derives BadRequest from it
        if _is_parse_error(exc):
            raise FormattingRejected(str(exc), platform=PLATFORM) from exc
        raise BadRequest(str(exc), platform=PLATFORM) from exc
    except tg.TelegramError as exc:  # NetworkError, TimedOut, Conflict, invalid answers
        unknown = _may_have_arrived(exc)
        kind = OutcomeUnknown if unknown else PlatformUnavailable
        raise kind(f"{type(exc).__name__}: {exc}", platform=PLATFORM) from exc


def not_modified(exc: tg.BadRequest) -> bool:
    """Whether Telegram refused an edit because the text did not change."""
    # PTB has no subclass for it; Telegram's description is the only signal there is.
    return "message is not modified" in exc.message.lower()


def _may_have_arrived(exc: tg.TelegramError) -> bool:
    """Whether the Bot API may have acted on the call that raised ``exc``.

    PTB keeps the transport's error as ``__cause__``: a connection that was
    never made (``ConnectError``, ``ConnectTimeout``) or a pool that had no
    free connection (``PoolTimeout``) sent nothing. A server that answered
    with an error status (5xx, a 502 page; no ``__cause__``, or the body's
    parse error) did not take the call, nor did a 409 ``Conflict``. Anything
    else (a read or write timeout, a connection cut off mid-call, a 2xx
    whose body cannot be read) may have gone through.
    """
    if isinstance(exc, tg.Conflict):
        return False
    cause = exc.__cause__
    if isinstance(exc, tg.TimedOut):
        return not isinstance(cause, httpx.ConnectTimeout | httpx.PoolTimeout)
    if isinstance(exc, tg.NetworkError):
        if cause is None or isinstance(cause, tg.TelegramError):
            return False  # the server answered with an error status
        return not isinstance(cause, httpx.ConnectError)
    return True  # e.g. "Invalid server response": a 2xx the SDK could not parse
