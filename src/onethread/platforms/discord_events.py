"""Discord message normalising: a discord.py ``Message`` as an ``Inbound``, and its
files as attachments.

Used by :class:`onethread.platforms.discord.DiscordAdapter`.
"""

from __future__ import annotations

import re

import discord

from ..session.attachments import Attachment
from .base import Inbound
from .discord_errors import PLATFORM

__all__ = ["TEXT_TYPES", "attachments_of", "normalize_message"]

# The message types that carry what someone wrote (not joins, pins, thread notices).
TEXT_TYPES = (discord.MessageType.default, discord.MessageType.reply)


def attachments_of(message: discord.Message) -> tuple[Attachment, ...]:
    """The message's files as attachments, by the ``content_type`` Discord gives.

    A voice message (``flags.voice``, Opus in Ogg) is ``"voice"``; other
    ``audio/*`` is ``"audio"``; ``image/*`` and ``video/*`` are images and
    videos; anything else, or no type at all, is a ``"file"``. The bot checks
    the type again against the bytes once fetched.
    """
    found: list[Attachment] = []
    for item in message.attachments:
        mime = (item.content_type or "").split(";")[0].strip().lower()
        if item.is_voice_message():
            kind = "voice"
        elif mime.startswith("image/"):
            kind = "image"
        elif mime.startswith("audio/"):
            kind = "audio"
        elif mime.startswith("video/"):
            kind = "video"
        else:
            kind = "file"
        found.append(Attachment(kind, mime, item.filename, max(item.size, 0)))
    return tuple(found)


def normalize_message(
    message: discord.Message, *, bot_id: int | str, channel: object | None = None
) -> Inbound | None:
    """Turn a discord.py ``Message`` into an ``Inbound``; ``None`` for anything else.

    ``channel`` overrides ``message.channel`` (the adapter passes the fetched
    channel when discord.py only had a ``PartialMessageable``). System messages
    (joins, pins, thread notices) and messages with neither text nor attachments
    (content withheld without the Message Content intent) give ``None``. A
    leading mention of the bot is removed from the text, so ``@bot /help`` reads
    ``/help``. No filtering beyond that: own and bot messages are marked, not dropped.
    """
    if message.type not in TEXT_TYPES:
        return None
    bot = int(bot_id)
    where: object = message.channel if channel is None else channel
    author = message.author
    text = re.sub(rf"^\s*<@!?{bot}>\s*", "", message.content)
    files = attachments_of(message)
    if not (text.strip() or files):
        return None
    chat_id = str(getattr(where, "id", message.channel.id))
    thread_id = ""
    chat_type = "group"
    chat_name = str(getattr(where, "name", "") or "")
    if isinstance(where, discord.Thread):
        thread_id, chat_id = str(where.id), str(where.parent_id)
        parent = where.parent
        chat_name = parent.name if parent is not None else ""
    elif isinstance(where, discord.DMChannel):
        chat_type, chat_name = "dm", author.display_name
    elif isinstance(where, discord.TextChannel) and where.is_news():
        chat_type = "channel"
    elif isinstance(where, discord.PartialMessageable) and where.guild_id is None:
        chat_type, chat_name = "dm", author.display_name
    ref = message.reference
    resolved = ref.resolved if ref is not None else None
    mentions_bot = (
        chat_type == "dm"
        or any(user.id == bot for user in message.mentions)
        or bot in message.raw_mentions
        or (isinstance(resolved, discord.Message) and resolved.author.id == bot)
        or text.lstrip().startswith("/")
    )
    return Inbound(
        platform=PLATFORM,
        chat_id=chat_id,
        chat_type=chat_type,
        chat_name=chat_name,
        thread_id=thread_id,
        user_id=str(author.id),
        user_name=author.display_name,
        message_id=str(message.id),
        text=text,
        mentions_bot=mentions_bot,
        from_bot=author.bot,
        from_self=author.id == bot,
        attachments=files,
        raw=message,
    )
