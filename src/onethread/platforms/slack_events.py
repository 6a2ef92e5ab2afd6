"""Slack event normalising: a ``message``/``app_mention`` event as an ``Inbound``.

Used by :class:`onethread.platforms.slack.SlackAdapter` (see its module
docstring for the rules: threads, mentions, files).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..session.attachments import Attachment
from .base import Inbound

__all__ = ["attachments_of", "hosted_files", "normalize_event"]

# Message subtypes that carry something a person (or another bot) said.
_KEPT_SUBTYPES = frozenset({"bot_message", "file_share", "thread_broadcast", "me_message"})


def hosted_files(event: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The event's files that have bytes to fetch (not tombstoned, hidden or external)."""
    found = []
    for item in event.get("files") or ():
        if not isinstance(item, Mapping) or item.get("mode") in ("tombstone", "hidden_by_limit"):
            continue
        if item.get("is_external") or not item.get("url_private_download"):
            continue
        found.append(item)
    return found


def attachments_of(event: Mapping[str, Any]) -> tuple[Attachment, ...]:
    """The event's hosted files as attachments, by Slack's ``mimetype``
    (``image/*``, ``audio/*`` — a recorded clip too —, ``video/*``, else ``"file"``)."""
    found = []
    for item in hosted_files(event):
        mime = str(item.get("mimetype") or "").split(";")[0].strip().lower()
        kind = "file"
        for prefix, name in (("image/", "image"), ("audio/", "audio"), ("video/", "video")):
            if mime.startswith(prefix):
                kind = name
        size = item.get("size")
        found.append(Attachment(kind, mime, str(item.get("name") or ""),
                                size if isinstance(size, int) and size > 0 else 0))  # fmt: skip
    return tuple(found)


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def normalize_event(
    event: Mapping[str, Any], *, bot_user_id: str, bot_id: str = ""
) -> Inbound | None:
    """A Slack ``message``/``app_mention`` event as an ``Inbound``; ``None`` for anything else.

    ``bot_user_id`` (``U…``) and ``bot_id`` (``B…``) are this bot's, from
    ``auth.test``. ``message_id`` is ``"{channel}:{ts}"`` for both event kinds.
    Names are not looked up here (see ``SlackAdapter``): ``user_name`` is set
    only for bot posts that carry one.
    """
    kind = event.get("type")
    subtype = event.get("subtype")
    if kind not in ("message", "app_mention"):
        return None
    if subtype is not None and subtype not in _KEPT_SUBTYPES:
        return None
    channel = str(event.get("channel") or "")
    ts = str(event.get("ts") or "")
    sender_bot = str(event.get("bot_id") or "")
    user = str(event.get("user") or sender_bot)
    if not channel or not ts or not user:
        return None
    channel_type = event.get("channel_type") or ("im" if channel.startswith("D") else "channel")
    is_dm = channel_type == "im"
    raw_text = str(event.get("text") or "")
    text = raw_text
    mentioned = False
    if bot_user_id:
        mentioned = f"<@{bot_user_id}" in raw_text
        text = re.sub(rf"^\s*<@{re.escape(bot_user_id)}(?:\|[^>]*)?>[\s:,]*", "", raw_text)
    text = _unescape(text)
    replied_to_bot = bool(bot_user_id) and event.get("parent_user_id") == bot_user_id
    thread_ts = str(event.get("thread_ts") or "")
    profile = event.get("bot_profile")
    bot_name = profile.get("name") if isinstance(profile, Mapping) else None
    return Inbound(
        platform="slack",
        chat_id=channel,
        chat_type="dm" if is_dm else "group",
        user_id=user,
        text=text,
        message_id=f"{channel}:{ts}",
        thread_id=thread_ts if is_dm else (thread_ts or ts),
        user_name=str(event.get("username") or bot_name or ""),
        mentions_bot=(
            is_dm
            or kind == "app_mention"
            or mentioned
            or replied_to_bot
            or text.lstrip().startswith("/")
        ),
        from_bot=bool(sender_bot) or subtype == "bot_message",
        from_self=bool((bot_user_id and user == bot_user_id) or (bot_id and sender_bot == bot_id)),
        attachments=attachments_of(event),
        raw=event,
    )
