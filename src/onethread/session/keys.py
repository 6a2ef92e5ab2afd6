"""The one function that builds every session key.

========================================  ==========================================
situation                                 key
========================================  ==========================================
DM, no resolver, or resolver: unlinked    ``bot_{platform}_{user_id}`` (legacy, exact)
DM, linked                                ``user:{unified_user_id}``
group/channel                             ``chat:{platform}:{chat_id}``
group/channel thread                      ``chat:{platform}:{chat_id}:thread:{thread_id}``
========================================  ==========================================

DM sessions never share a key with group sessions: the three forms have
distinct prefixes, and a unified id can contain no ``:``.
"""

from __future__ import annotations

__all__ = [
    "DM",
    "GROUP_TYPES",
    "archive_key",
    "legacy_key",
    "session_key",
    "summary_key",
    "unified_key",
]

DM = "dm"
GROUP_TYPES = frozenset({"group", "channel"})


def legacy_key(platform: str, user_id: str) -> str:
    """The pre-identity DM key, bit for bit: ``bot_{platform}_{user_id}``."""
    return f"bot_{platform}_{user_id}"


def unified_key(unified_user_id: str) -> str:
    """The DM key of a linked person: ``user:{unified_user_id}``."""
    return f"user:{unified_user_id}"


def session_key(
    *,
    platform: str,
    user_id: str,
    chat_type: str = DM,
    chat_id: str = "",
    thread_id: str = "",
    unified_user_id: str | None = None,
) -> str:
    """Build the history/lock key of one conversation.

    ``unified_user_id`` is what the resolver returned, or ``None`` when there is
    no resolver. Group and channel conversations belong to the chat (and its
    thread), whoever speaks. A DM belongs to the person when linked, else to the
    account (legacy key).
    """
    if chat_type in GROUP_TYPES:
        if not chat_id:
            raise ValueError(f"a {chat_type} session needs a chat_id")
        key = f"chat:{platform}:{chat_id}"
        return f"{key}:thread:{thread_id}" if thread_id else key
    if chat_type != DM:
        raise ValueError(f"unknown chat_type {chat_type!r}: use 'dm', 'group' or 'channel'")
    if unified_user_id is None or unified_user_id == f"{platform}:{user_id}":
        return legacy_key(platform, user_id)
    return unified_key(unified_user_id)


def summary_key(key: str) -> str:
    """Where the summaries of session ``key`` are kept (newest last): ``{key}#summary``."""
    return f"{key}#summary"


def archive_key(key: str) -> str:
    """Where ``/new`` moves session ``key``'s entries (kept, not loaded): ``{key}#archived``."""
    return f"{key}#archived"
