"""Slack error mapping: slack-sdk and aiohttp errors as ``onethread.errors``.

Used by :class:`onethread.platforms.slack.SlackAdapter` around every Web API
call (see :func:`map_slack_errors`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError

from ..errors import (
    BadRequest,
    FormattingRejected,
    OutcomeUnknown,
    PlatformAuthError,
    PlatformUnavailable,
    RetryAfter,
)
from ._describe import describe

__all__ = ["map_slack_errors", "retry_after_seconds"]

# Slack's own error codes (the ``error`` field), not message text.
_AUTH_ERRORS = frozenset({
    "invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
    "not_allowed_token_type", "missing_scope", "no_permission", "org_login_required",
    "ekm_access_denied", "team_access_not_granted", "two_factor_setup_required",
})  # fmt: skip
_UNAVAILABLE_ERRORS = frozenset(
    {"fatal_error", "internal_error", "service_unavailable", "request_timeout"}
)
_FORMAT_ERRORS = frozenset({"invalid_blocks", "invalid_blocks_format", "msg_blocks_too_long"})


def retry_after_seconds(headers: Any) -> float:
    """The ``Retry-After`` header's seconds (1 when absent or unreadable)."""
    value = None
    if headers is not None:
        for key, val in headers.items():
            if str(key).lower() == "retry-after":
                value = val
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except (TypeError, ValueError):
        return 1.0


@contextlib.contextmanager
def map_slack_errors(what: str = "slack call") -> Iterator[None]:
    """Translate slack-sdk and aiohttp errors raised in the block into ``onethread.errors``.

    By HTTP status and Slack's ``error`` code: 429/``ratelimited`` ->
    ``RetryAfter`` (``Retry-After``), 5xx/``fatal_error``/``internal_error`` ->
    ``PlatformUnavailable``, token codes (``invalid_auth``, ``not_authed``,
    ``account_inactive``, ``missing_scope``...) -> ``PlatformAuthError``, block
    codes -> ``FormattingRejected``, any other code -> ``BadRequest``; a
    connection that could not be made -> ``PlatformUnavailable``; a timeout or
    a connection lost mid-call -> ``OutcomeUnknown`` (may have been carried
    out: a send is not retried). Chained with ``from``.
    """
    try:
        yield
    except SlackApiError as exc:
        response = exc.response
        status = int(getattr(response, "status_code", 0) or 0)
        data = getattr(response, "data", None)
        code = str(data.get("error") or "") if isinstance(data, dict) else ""
        detail = f"{what}: {code or f'HTTP {status}'}"
        if code == "ratelimited" or status == 429:
            raise RetryAfter(retry_after_seconds(getattr(response, "headers", None)),
                             platform="slack") from exc  # fmt: skip
        if status >= 500 or code in _UNAVAILABLE_ERRORS:
            raise PlatformUnavailable(detail, platform="slack") from exc
        if code in _AUTH_ERRORS:
            raise PlatformAuthError(detail, platform="slack") from exc
        if code in _FORMAT_ERRORS:
            raise FormattingRejected(detail, platform="slack") from exc
        raise BadRequest(detail, platform="slack") from exc
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        # No connection was made: nothing was sent, a retry cannot repeat anything.
        raise PlatformUnavailable(f"{what}: {describe(exc)}", platform="slack") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        # A timeout, or a connection lost after the request went out: it may have
        # been carried out (a message posted), so a send must not be repeated.
        raise OutcomeUnknown(f"{what}: {describe(exc)}", platform="slack") from exc
