"""The Graph API calls the WhatsApp adapter makes (aiohttp), and their errors mapped once.

Every call goes to ``{base_url}/{path}`` with ``Authorization: Bearer
<access token>``; ``base_url`` is ``WHATSAPP_API_BASE_URL`` (default
``https://graph.facebook.com/v22.0``). An error answer is Graph's
``{"error": {"message", "type", "code", "error_subcode", "error_data":
{"details"}, "fbtrace_id"}}``; :func:`map_whatsapp_errors` turns it (and
transport failures) into ``onethread.errors``, with ``code``, ``subcode`` and
``trace_id`` set on the error.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
import yarl

from ..errors import (
    BadRequest,
    DeliveryWindowClosed,
    OutcomeUnknown,
    PlatformAuthError,
    PlatformError,
    PlatformUnavailable,
    RetryAfter,
)
from ._describe import describe

__all__ = ["DEFAULT_BASE_URL", "GraphClient", "GraphFailure", "map_whatsapp_errors"]

PLATFORM = "whatsapp"
DEFAULT_BASE_URL = "https://graph.facebook.com/v22.0"

# Graph error codes (error.code), from the Cloud API's error code reference.
RATE_LIMITS = {
    4: 60.0,  # app-level call limit
    80007: 60.0,  # WhatsApp Business Account rate limit
    130429: 1.0,  # throughput limit (messages per second of the number)
    131056: 6.0,  # pair rate limit: too many messages to one person in a short time
}
AUTH_ERRORS = frozenset({0, 10, 190, 131005})  # 190: access token expired or invalid
WINDOW_CLOSED = 131047  # re-engagement: more than 24 hours since the person last wrote
UNAVAILABLE_ERRORS = frozenset({1, 2, 131000, 131016, 133004})
# 200-299: a permission the token lacks.


class GraphFailure(Exception):
    """A Graph API answer that is not a success (raised inside ``map_whatsapp_errors``)."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str], recipient: str = ""):
        self.status = status
        self.body = body
        self.headers = headers
        self.recipient = recipient
        super().__init__(f"HTTP {status}")


def _retry_after(headers: Mapping[str, str], default: float) -> float:
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


def _error_of(failure: GraphFailure) -> PlatformError:
    body = failure.body if isinstance(failure.body, Mapping) else {}
    found = body.get("error")
    err: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    code = err.get("code") if isinstance(err.get("code"), int) else None
    subcode = err.get("error_subcode") if isinstance(err.get("error_subcode"), int) else None
    details = (err.get("error_data") or {}).get("details") if err else None
    message = str(err.get("message") or f"HTTP {failure.status}")
    detail = f"{message} (code {code})" if code is not None else message
    if details:
        detail += f": {details}"
    exc: PlatformError
    if code in RATE_LIMITS or failure.status == 429:
        exc = RetryAfter(_retry_after(failure.headers, RATE_LIMITS.get(code or 0, 1.0)),
                         platform=PLATFORM)  # fmt: skip
    elif code == WINDOW_CLOSED:
        exc = DeliveryWindowClosed(failure.recipient, platform=PLATFORM)
    elif code in AUTH_ERRORS or (code is not None and 200 <= code <= 299):
        exc = PlatformAuthError(
            f"{detail}; check WHATSAPP_ACCESS_TOKEN (a system user's permanent token with "
            "whatsapp_business_messaging) and WHATSAPP_PHONE_NUMBER_ID",
            platform=PLATFORM,
        )
    elif failure.status == 401:
        exc = PlatformAuthError(detail, platform=PLATFORM)
    elif code in UNAVAILABLE_ERRORS or failure.status >= 500:
        exc = PlatformUnavailable(detail, platform=PLATFORM)
    else:  # 100 (invalid parameter) and every other refusal
        exc = BadRequest(detail, platform=PLATFORM)
    exc.code, exc.subcode = code, subcode
    exc.trace_id = str(err.get("fbtrace_id") or "")
    return exc


@contextlib.contextmanager
def map_whatsapp_errors(what: str = "whatsapp call") -> Iterator[None]:
    """Translate Graph API answers and aiohttp errors raised in the block into ``onethread.errors``.

    By Graph's ``error.code``: 130429 (throughput), 131056 (pair rate limit),
    4 and 80007 -> ``RetryAfter`` (a ``Retry-After`` header if sent, else
    1 s, 6 s, 60 s); 190 (token), 0, 10, 131005 and 200-299 (permissions) ->
    ``PlatformAuthError``; 131047 -> ``DeliveryWindowClosed``; 1, 2, 131000,
    131016, 133004 and any 5xx -> ``PlatformUnavailable``; 100 (invalid
    parameter) and every other code -> ``BadRequest``. ``code``, ``subcode``
    and ``trace_id`` (``fbtrace_id``) are set on the error. A connection that
    could not be made -> ``PlatformUnavailable``; a timeout or a connection
    lost mid-call -> ``OutcomeUnknown`` (a send is not repeated). Chained
    with ``from``.
    """
    try:
        yield
    except GraphFailure as exc:
        mapped = _error_of(exc)
        mapped.args = (f"{what}: {mapped.args[0]}",)
        raise mapped from exc
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise PlatformUnavailable(f"{what}: {describe(exc)}", platform=PLATFORM) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise OutcomeUnknown(f"{what}: {describe(exc)}", platform=PLATFORM) from exc


class GraphClient:
    """A bearer-token client of the Graph API at ``base_url`` (one aiohttp session).

    ``open()`` before use, ``close()`` after; every method raises
    :class:`GraphFailure` or aiohttp errors, for :func:`map_whatsapp_errors`.
    """

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=10)
        self._http: aiohttp.ClientSession | None = None

    def open(self) -> None:
        """Create the HTTP session (in the running loop)."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=self.timeout, headers={"Authorization": f"Bearer {self._token}"}
            )

    async def close(self) -> None:
        """Close the HTTP session. Idempotent."""
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise PlatformUnavailable("not connected: start() the adapter first", platform=PLATFORM)
        return self._http

    async def _answer(self, resp: aiohttp.ClientResponse, recipient: str = "") -> Any:
        raw = await resp.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if resp.status >= 300 or (isinstance(body, Mapping) and "error" in body):
            raise GraphFailure(resp.status, body, dict(resp.headers), recipient)
        return body

    async def get(self, path: str, **params: str) -> Any:
        """GET ``path`` (JSON answer)."""
        async with self.http.get(f"{self.base_url}/{path}", params=params or None) as resp:
            return await self._answer(resp)

    async def post(self, path: str, payload: Mapping[str, Any], recipient: str = "") -> Any:
        """POST ``payload`` as JSON to ``path`` (JSON answer)."""
        async with self.http.post(f"{self.base_url}/{path}", json=payload) as resp:
            return await self._answer(resp, recipient)

    async def upload(self, path: str, data: bytes, *, mime: str, filename: str) -> Any:
        """POST a file as ``multipart/form-data`` (``messaging_product``, ``type``, ``file``)."""
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", mime)
        form.add_field("file", data, filename=filename, content_type=mime)
        async with self.http.post(f"{self.base_url}/{path}", data=form) as resp:
            return await self._answer(resp)

    async def fetch(self, url: yarl.URL, *, max_bytes: int) -> bytes:
        """GET media bytes at ``url`` with the bearer token; redirects not followed."""
        async with self.http.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                await self._answer(resp)
                raise GraphFailure(resp.status, {}, dict(resp.headers))
            data = bytearray()
            # Stop one byte past the limit: the caller refuses it as too large,
            # without this process holding a file of any size in memory.
            async for chunk in resp.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > max_bytes:
                    break
            return bytes(data)
