"""Slack file download: a hosted file's bytes, fetched with the bot token.

Used by :meth:`onethread.platforms.slack.SlackAdapter.do_download` (see the
``Files`` part of :mod:`onethread.platforms.slack`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import yarl

from ..errors import BadRequest, PlatformAuthError, PlatformUnavailable, RetryAfter
from .slack_errors import map_slack_errors, retry_after_seconds

__all__ = ["FILE_HOSTS", "download_file"]

# Where url_private_download may point (besides the host of base_url).
FILE_HOSTS = frozenset({"files.slack.com"})


async def download_file(item: Mapping[str, Any], *, base_url: str, token: str) -> bytes:
    """GET ``item``'s ``url_private_download`` with the bot ``token``: only from
    :data:`FILE_HOSTS` over https or the host of ``base_url``, redirects not followed."""
    url = yarl.URL(str(item["url_private_download"]))
    api = yarl.URL(base_url)
    # Slack's own hosts over https only; the API host (a proxy, the tests' fake) as configured.
    slack_host = url.host in FILE_HOSTS and url.scheme == "https"
    api_host = url.host == api.host and url.scheme == api.scheme
    if not (slack_host or api_host):
        raise BadRequest(f"file URL host {url.host!r} is not Slack's; not fetched",
                         platform="slack")  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
    what = f"download of {item.get('id', 'a file')}"
    with map_slack_errors(what):
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(url, headers=headers, allow_redirects=False) as resp,
        ):
            data = await resp.read()
            status, content_type = resp.status, resp.content_type
            retry_after = retry_after_seconds(resp.headers)
    if status == 429:
        raise RetryAfter(retry_after, platform="slack")
    if status >= 500:
        raise PlatformUnavailable(f"{what}: HTTP {status}", platform="slack")
    if status != 200:
        raise BadRequest(f"{what}: HTTP {status} (redirects are not followed)",
                         platform="slack")  # fmt: skip
    if content_type == "text/html" and "html" not in str(item.get("mimetype") or ""):
        raise PlatformAuthError(
            f"{what}: Slack answered with its sign-in page; give the bot token the "
            "files:read scope (OAuth & Permissions) and reinstall the app",
            platform="slack",
        )
    return data
