"""Who may use the web chat: the access token, loopback hosts, browsers' origins,
and the security headers on every answer.

Used by :class:`onethread.platforms.web.WebAdapter` (see its module docstring:
"Binding").
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

from aiohttp import web

__all__ = [
    "COOKIE",
    "SECURITY_HEADERS",
    "authorized",
    "given_token",
    "host_name",
    "is_loopback",
    "origin_allowed",
]

COOKIE = "onethread_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def host_name(host: str) -> str:
    """The name in a Host header: ``127.0.0.1:8080`` -> ``127.0.0.1``; ``[::1]:80`` -> ``::1``."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def given_token(request: web.Request) -> str | None:
    """The token a request carries: ``Authorization: Bearer``, ``?token=`` or the cookie."""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query.get("token") or request.cookies.get(COOKIE)


def authorized(request: web.Request, access_token: str | None) -> bool:
    """True when ``request`` carries ``access_token`` (or, with none set, comes to a
    loopback host name)."""
    if access_token is None:
        # No token means "this machine only": refuse a Host that is not a
        # loopback name, so a DNS-rebinding page cannot drive the agent.
        return is_loopback(host_name(request.host))
    given = given_token(request)
    return given is not None and hmac.compare_digest(
        given.encode("utf-8"), access_token.encode("utf-8")
    )


def origin_allowed(request: web.Request, allowed_origins: Iterable[str]) -> bool:
    """Browsers send Origin on socket handshakes; refuse other sites' pages."""
    origin = request.headers.get("Origin")
    if origin is None:  # not a browser
        return True
    origin = origin.rstrip("/").lower()
    if origin in allowed_origins:
        return True
    _, sep, authority = origin.partition("://")
    return bool(sep) and authority == request.host.lower()
