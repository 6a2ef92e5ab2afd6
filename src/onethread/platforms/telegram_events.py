"""Telegram update normalising: a ``Message`` (or ``Update``) as an ``Inbound``,
and its files as attachments.

Used by :class:`onethread.platforms.telegram.TelegramAdapter`.
"""

from __future__ import annotations

from telegram import Message, Update
from telegram.constants import ChatType, MessageEntityType

from ..session.attachments import Attachment
from .base import Inbound
from .telegram_errors import PLATFORM

__all__ = ["media", "normalize_message", "normalize_update"]

_CHAT_TYPES: dict[str, str] = {
    ChatType.PRIVATE: "dm",
    ChatType.GROUP: "group",
    ChatType.SUPERGROUP: "group",
    ChatType.CHANNEL: "channel",
}


def _addresses_bot(message: Message, bot_id: int, bot_username: str) -> bool:
    """A mention of the bot, a command for it, or a reply to one of its messages."""
    entities = (
        message.parse_entities() if message.text is not None else message.parse_caption_entities()
    )
    username = bot_username.lower()
    for entity, value in entities.items():
        if entity.type == MessageEntityType.MENTION and value[1:].lower() == username:
            return True
        if entity.type == MessageEntityType.TEXT_MENTION and entity.user is not None:
            if entity.user.id == bot_id:
                return True
        if entity.type == MessageEntityType.BOT_COMMAND and entity.offset == 0:
            target = value.partition("@")[2].lower()  # "/help@otherbot" is not ours
            if not target or target == username:
                return True
    reply = message.reply_to_message
    if reply is None or reply.from_user is None or reply.from_user.id != bot_id:
        return False
    # In a forum topic every message "replies" to the topic's first message;
    # that is not a reply to the bot even when the bot opened the topic.
    return not (message.is_topic_message and reply.message_id == message.message_thread_id)


def normalize_message(message: Message, *, bot_id: int, bot_username: str) -> Inbound | None:
    """Turn a Telegram ``Message`` into an ``Inbound``; ``None`` with neither text nor a file.

    ``thread_id`` is the forum topic (``message_thread_id`` of a topic message),
    else ``""``. A message sent on behalf of a chat (anonymous admin, channel)
    is attributed to that chat. Pure: no I/O, no filtering of own/bot messages.
    """
    text = (message.text if message.text is not None else message.caption) or ""
    chat_type = _CHAT_TYPES.get(message.chat.type)
    files = tuple(a for a, _ in media(message))
    if not (text or files) or chat_type is None:
        return None
    from_bot = from_self = False
    if message.sender_chat is not None:
        user_id = str(message.sender_chat.id)
        user_name = message.sender_chat.effective_name or ""
    elif message.from_user is not None:
        user_id = str(message.from_user.id)
        user_name = message.from_user.full_name
        from_bot = message.from_user.is_bot
        from_self = message.from_user.id == bot_id
    else:
        return None
    thread_id = ""
    if message.is_topic_message and message.message_thread_id is not None:
        thread_id = str(message.message_thread_id)
    return Inbound(
        platform=PLATFORM,
        chat_id=str(message.chat.id),
        chat_type=chat_type,
        user_id=user_id,
        text=text,
        message_id=str(message.message_id),
        chat_name=message.chat.effective_name or "",
        thread_id=thread_id,
        user_name=user_name,
        mentions_bot=chat_type == "dm" or _addresses_bot(message, bot_id, bot_username),
        from_bot=from_bot,
        from_self=from_self,
        attachments=files,
        raw=message,
    )


def media(message: Message) -> list[tuple[Attachment, str]]:
    """The message's files as attachments, each with its Bot API ``file_id``.

    A photo comes in several sizes: the largest is taken. Telegram re-encodes
    photos as JPEG; other files keep the sender's type and name, which the bot
    checks against the bytes once fetched.
    """
    found: list[tuple[Attachment, str]] = []
    if message.photo:
        best = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        found.append((Attachment("image", "image/jpeg", size=best.file_size or 0), best.file_id))
    if message.voice is not None:
        v = message.voice
        found.append((Attachment("voice", v.mime_type or "audio/ogg", size=v.file_size or 0),
                      v.file_id))  # fmt: skip
    if message.audio is not None:
        a = message.audio
        found.append((Attachment("audio", a.mime_type or "", a.file_name or "",
                                 a.file_size or 0), a.file_id))  # fmt: skip
    for video in (message.video, message.video_note, message.animation):
        if video is not None:
            name = getattr(video, "file_name", None) or ""
            mime = getattr(video, "mime_type", None) or "video/mp4"
            found.append((Attachment("video", mime, name, video.file_size or 0), video.file_id))
    if message.document is not None and message.animation is None:
        d = message.document
        found.append((Attachment("file", d.mime_type or "", d.file_name or "",
                                 d.file_size or 0), d.file_id))  # fmt: skip
    if message.sticker is not None:
        s = message.sticker
        mime = (
            "video/webm"
            if s.is_video
            else "application/x-tgsticker"
            if s.is_animated
            else ("image/webp")
        )
        found.append((Attachment("sticker", mime, s.emoji or "", s.file_size or 0), s.file_id))
    return found


def normalize_update(update: Update, *, bot_id: int, bot_username: str) -> Inbound | None:
    """Normalise an ``Update``: new messages and channel posts; ``None`` for anything else."""
    message = update.message or update.channel_post
    if message is None:
        return None
    return normalize_message(message, bot_id=bot_id, bot_username=bot_username)
