"""One readable line for an error from a network library, for logs and error messages."""

from __future__ import annotations

__all__ = ["describe"]

_LIMIT = 200


def describe(exc: BaseException) -> str:
    """``exc`` as one short line: its message (first line), else its class name.

    Network libraries' reprs nest their arguments (aiohttp's DNS error is 300
    characters of ``ConnectionKey(...)``); their ``str`` already says what
    happened ("Cannot connect to host discord.com:443 ssl:default [Name or
    service not known]"). A message-less error (``TimeoutError()``) gives its
    class name. At most 200 characters.
    """
    text = " ".join(str(exc).split("\n", 1)[0].split())
    if not text:
        text = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
    return text if len(text) <= _LIMIT else text[: _LIMIT - 1].rstrip() + "…"
