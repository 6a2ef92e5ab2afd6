"""Discord error mapping: discord.py and aiohttp errors as ``onethread.errors``.

Used by :class:`onethread.platforms.discord.DiscordAdapter` around every REST
and gateway call (see :func:`map_discord_errors`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import discord

from ..errors import (
    BadRequest,
    ConnectionLost,
    OutcomeUnknown,
    PlatformAuthError,
    PlatformUnavailable,
    RetryAfter,
)
from ._describe import describe

__all__ = ["INTENT_HELP", "PLATFORM", "map_discord_errors"]

PLATFORM = "discord"
INTENT_HELP = (
    "enable the Message Content intent for this bot in the Discord developer portal "
    "(Applications -> your app -> Bot -> Privileged Gateway Intents -> Message Content Intent)"
)


@contextlib.asynccontextmanager
async def map_discord_errors() -> AsyncIterator[None]:
    """Translate discord.py and aiohttp errors raised in the block into ``onethread.errors``.

    Async because a 429's ``retry_after`` is read from the (already received)
    JSON body. Every translation chains the original with ``raise ... from``.
    """
    try:
        yield
    except discord.LoginFailure as exc:
        raise PlatformAuthError(f"the bot token was refused ({exc})", platform=PLATFORM) from exc
    except discord.PrivilegedIntentsRequired as exc:
        raise PlatformAuthError(
            f"the gateway refused the Message Content intent; {INTENT_HELP}", platform=PLATFORM
        ) from exc
    except discord.RateLimited as exc:
        raise RetryAfter(exc.retry_after, platform=PLATFORM) from exc
    except discord.HTTPException as exc:
        what = f"HTTP {exc.status} (code {exc.code}): {exc.text}"
        if exc.status == 401:
            raise PlatformAuthError(f"token refused: {what}", platform=PLATFORM) from exc
        if exc.status == 429:
            retry_after = 1.0
            response = exc.response
            if isinstance(response, aiohttp.ClientResponse):
                # discord.py has read the body already; json() returns the cached copy.
                with contextlib.suppress(aiohttp.ClientError, ValueError, KeyError, TypeError):
                    retry_after = float((await response.json(content_type=None))["retry_after"])
            raise RetryAfter(retry_after, platform=PLATFORM) from exc
        if exc.status >= 500:
            raise PlatformUnavailable(what, platform=PLATFORM) from exc
        if isinstance(exc, discord.Forbidden):
            raise BadRequest(f"no permission: {what}", platform=PLATFORM) from exc
        raise BadRequest(what, platform=PLATFORM) from exc
    except discord.ConnectionClosed as exc:
        if exc.code == 4004:
            raise PlatformAuthError("gateway refused the token (4004)", platform=PLATFORM) from exc
        if exc.code == 4014:
            raise PlatformAuthError(
                f"the gateway refused the Message Content intent (4014); {INTENT_HELP}",
                platform=PLATFORM,
            ) from exc
        raise ConnectionLost(
            f"the gateway closed the connection ({exc.code}: {exc.reason})", platform=PLATFORM
        ) from exc
    except discord.GatewayNotFound as exc:
        raise PlatformUnavailable("could not fetch the gateway URL", platform=PLATFORM) from exc
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        # No connection was made: nothing was sent, a retry cannot repeat anything.
        raise PlatformUnavailable(f"network error: {describe(exc)}", platform=PLATFORM) from exc
    except (aiohttp.ClientError, OSError) as exc:  # OSError covers TimeoutError
        # A timeout or a connection lost after the request went out: the message may
        # have been posted, so a send must not be repeated.
        raise OutcomeUnknown(f"network error: {describe(exc)}", platform=PLATFORM) from exc
