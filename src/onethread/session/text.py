"""Inbound text made storable: lone surrogates become U+FFFD.

A Python ``str`` may hold a lone surrogate (``"\\ud800"``): JSON allows the
escape, so a web page, a platform SDK or a caller's code can hand one in. It
cannot be encoded as UTF-8, so SQLite, PostgreSQL and most wire protocols
refuse it with ``UnicodeEncodeError``, and the turn (or the mirror) would be
lost. Every string that enters onethread passes :func:`clean_text` (or
:func:`clean_value` for JSON-able metadata) once, where it enters:

- ``Inbound`` (every platform event, before the gate, the access policy,
  commands, identity and history see it);
- ``BotSessionManager.chat()`` and ``.mirror()`` (text handed in by code;
  ``mirror_to_session``, ``amirror_to_session`` and ``BotOS.notify`` reach the
  store through ``mirror()``), and ``BotOS.notify()`` for its outbox item.

No single call sees every string: a platform event is gated, access-checked
and may be a command before the manager sees it, and code calls the manager
without any ``Inbound``. So the rule is one function at the two doors; the
stores themselves stay strict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["REPLACEMENT", "clean_text", "clean_value"]

REPLACEMENT = "\ufffd"


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD.

    A high and low surrogate that stand next to each other (``"\\ud83d\\ude00"``,
    as a UTF-16 decoder without pairing leaves them) are joined into the one
    character they encode. Text that is already valid is returned as is (the
    same object), so the common case costs one scan.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def clean_value(value: Any) -> Any:
    """:func:`clean_text` applied to every string in JSON-able ``value`` (keys too)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        return {clean_value(k): clean_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(clean_value(v) for v in value)
    return value
