"""A fake Telegram Bot API server: the real wire protocol on 127.0.0.1.

The real python-telegram-bot client talks to it over HTTP, so tests exercise the
SDK's request building, response parsing and error classes. Answers have the
Bot API's exact shape: ``{"ok": true, "result": ...}`` or ``{"ok": false,
"error_code": N, "description": "...", "parameters": {...}}``.

Usage::

    async with FakeTelegram() as tg:                  # token tg.token, bot @tg.bot_username
        adapter = TelegramAdapter(token=tg.token, base_url=tg.base_url)
        await adapter.start(on_inbound)
        tg.inject_message(42, "hello")                # a DM from user 42
        tg.inject_message(42, "@onethread_test_bot hi", chat_id=-1001, chat_type="supergroup",
                          thread_id=7)                # a mention in forum topic 7
        [reply] = await tg.wait_for_messages(1)       # SentMessage(chat_id, text, thread_id, ...)

API
---
``FakeTelegram(token=..., *, bot_id=..., bot_username=..., bot_name=...)``;
``await start()`` / ``await stop()`` (or ``async with``); ``base_url`` is the
server root to pass as ``TELEGRAM_API_BASE_URL``; ``api_url`` is
``{base_url}/bot{token}``.

Inbound: ``inject_message(user_id, text, *, chat_id=None, chat_type="private",
username=None, first_name="Test", last_name=None, chat_title=None,
thread_id=None, reply_to_bot=False, entities=None, is_bot=False)`` queues an
update and returns its ``update_id``; entities (``@mention``, ``/command``) are
computed as Telegram's server does unless ``entities`` is given.
``chat_type="channel"`` makes a ``channel_post``. ``inject_update(raw)`` queues
any raw update dict (an ``update_id`` is assigned when missing), e.g. the same
message again to test duplicate handling. ``message_update(...)`` (module
function) builds the same dicts without a server, for pure tests.

Outbound: ``sent`` (list of :class:`SentMessage`: ``chat_id`` (``int``, or the
``"@name"`` string), ``text`` as the
user sees it after entity parsing, ``raw_text``, ``parse_mode``, ``thread_id``,
``message_id``, ``entities``), ``chat_actions`` (list of :class:`ChatActionCall`),
``requests`` (every API call: :class:`ApiCall`). ``await
wait_for_messages(n, timeout=5)`` returns the first ``n`` sent messages,
``await wait_for_call(method, n=1, timeout=5)`` the first ``n`` calls of a method,
``await wait_until(predicate, timeout=5)`` any condition on the fake's state.
``confirmed_offset`` is the highest ``offset`` a ``getUpdates`` acknowledged;
``pending_updates`` the updates not yet confirmed; ``open_connections`` the
client connections currently open (0 once a client closed its sockets).

Edits: ``editMessageText`` changes a sent message (its ``SentMessage`` shows the
new text, and ``edits`` records each :class:`EditCall` with its arrival time).
Like the real API it refuses the same text again ("message is not modified")
and edits closer together than ``edit_interval`` seconds (default 1.0) in one
chat with 429 and ``parameters.retry_after`` (whole seconds, at least 1).

Faults: ``rate_limit(method="sendMessage", retry_after=1, times=1)`` (429 with
``parameters.retry_after``; real Telegram sends whole seconds, fractions are
accepted for fast tests), ``server_error(method, status=500, times=1)`` (502 is
an nginx HTML page, as in production), ``fail(method, status, description,
times=1)`` for any scripted error (``method="*"`` matches all),
``auth_failure = True`` (every call, long polls in flight too, answers 401
Unauthorized, like a revoked token), ``slow(method, seconds, times=1)`` (the
call is carried out, e.g. the message sent, and answered ``seconds`` late),
``drop_connections()`` / ``restore()``
(every request, long polls in flight too, gets its TCP connection closed
without an answer), and
``webhook_url`` (while set, ``getUpdates`` answers 409 Conflict).

Webhooks, as the Bot API does them: ``setWebhook`` takes ``url`` (HTTPS only,
unless the fake is built with ``local=True``, like a local Bot API server
started with ``--local``, which also takes ``http://`` and any port),
``secret_token`` (1-256 of ``A-Za-z0-9_-``), ``allowed_updates`` and
``drop_pending_updates``; then every queued update of an allowed type is
POSTed to the URL as JSON with ``X-Telegram-Bot-Api-Secret-Token``, one at a
time, and dropped once answered 2xx; any other answer (or none) is retried
after ``webhook_retry_delay`` seconds, recorded in ``webhook_deliveries``
(``(update_id, status)``, status 0 for no answer) and in ``getWebhookInfo``'s
``last_error_message``. ``deleteWebhook`` stops the deliveries.
``webhook_secret`` and ``webhook_allowed_updates`` show what was registered.

Protocol details honoured: wrong token -> 401; unknown method -> 404;
``getUpdates`` long polling (held until an update arrives or ``timeout``
elapses), ``offset`` confirming and dropping earlier updates, ``limit``,
``allowed_updates`` (remembered, as Telegram does), a newer ``getUpdates``
ending an older one with 409; ``sendMessage`` parses ``HTML``, ``Markdown`` and
``MarkdownV2`` (400 "can't parse entities" on bad markup) and enforces 4096
characters after entity parsing (400 "message is too long").
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = [
    "ApiCall",
    "ChatActionCall",
    "FakeTelegram",
    "MarkupError",
    "SentMessage",
    "auto_entities",
    "message_update",
    "parse_markup",
]

DEFAULT_TOKEN = "123456789:AAFakeTokenForOnethreadTests_0123456"
MAX_TEXT = 4096
_CHAT_ACTIONS = {
    "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
    "upload_document", "choose_sticker", "find_location", "record_video_note",
    "upload_video_note",
}  # fmt: skip
_DEFAULT_ALLOWED = None  # all update types except chat_member & reactions (not modelled)


@dataclass
class SentMessage:
    """A message the bot sent: ``text`` is what the user sees, ``raw_text`` what was posted."""

    chat_id: int | str
    text: str
    thread_id: int | None
    message_id: int
    raw_text: str
    parse_mode: str | None
    entities: list[dict[str, Any]] = field(default_factory=list)
    at: float = field(default_factory=time.monotonic)  # when it arrived


@dataclass
class EditCall:
    """One accepted ``editMessageText``: ``at`` is its arrival (``time.monotonic()``)."""

    chat_id: int | str
    message_id: int
    text: str
    raw_text: str
    parse_mode: str | None
    at: float


@dataclass
class SentFile:
    """A photo or document the bot uploaded (``method`` is ``sendPhoto``/``sendDocument``)."""

    chat_id: int | str
    method: str
    filename: str
    data: bytes
    caption: str
    thread_id: int | None
    message_id: int


@dataclass
class ChatActionCall:
    """One ``sendChatAction`` call."""

    chat_id: int | str
    action: str
    thread_id: int | None


@dataclass
class ApiCall:
    """One HTTP request to the Bot API: method, decoded parameters, HTTP status answered."""

    method: str
    params: dict[str, Any]
    status: int = 200


@dataclass
class _Fault:
    status: int
    description: str
    parameters: dict[str, Any] | None = None


class MarkupError(ValueError):
    """The text's markup cannot be parsed (Telegram: "can't parse entities")."""


# -- helpers shared by the server and pure tests -----------------------------------------


def _u16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _byte_offset(src: str, index: int) -> int:
    return len(src[:index].encode("utf-8"))


_AUTO_ENTITIES = (
    ("bot_command", re.compile(r"(?<!\S)/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?")),
    ("mention", re.compile(r"(?<![\w@])@[A-Za-z0-9_]{3,32}")),
)


def auto_entities(text: str) -> list[dict[str, Any]]:
    """The ``mention``/``bot_command`` entities Telegram's server adds to a user's text."""
    found = []
    for kind, pattern in _AUTO_ENTITIES:
        for m in pattern.finditer(text):
            found.append({"type": kind, "offset": _u16(text[: m.start()]), "length": _u16(m[0])})
    return sorted(found, key=lambda e: e["offset"])


def _user(user_id: int, first_name: str, username: str | None, last_name: str | None,
          is_bot: bool) -> dict[str, Any]:  # fmt: skip
    user: dict[str, Any] = {"id": user_id, "is_bot": is_bot, "first_name": first_name}
    if last_name:
        user["last_name"] = last_name
    if username:
        user["username"] = username
    if not is_bot:
        user["language_code"] = "en"
    return user


def _chat(chat_id: int, chat_type: str, *, title: str | None, user: dict[str, Any] | None,
          is_forum: bool) -> dict[str, Any]:  # fmt: skip
    chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
    if chat_type == "private" and user is not None:
        for key in ("first_name", "last_name", "username"):
            if key in user:
                chat[key] = user[key]
    else:
        chat["title"] = title or "Test group"
    if is_forum:
        chat["is_forum"] = True
    return chat


def message_update(
    user_id: int,
    text: str,
    *,
    update_id: int = 1,
    message_id: int = 1,
    chat_id: int | None = None,
    chat_type: str = "private",
    username: str | None = None,
    first_name: str = "Test",
    last_name: str | None = None,
    chat_title: str | None = None,
    thread_id: int | None = None,
    reply_to: dict[str, Any] | None = None,
    topic_creator: dict[str, Any] | None = None,
    entities: list[dict[str, Any]] | None = None,
    is_bot: bool = False,
    caption: bool = False,
) -> dict[str, Any]:
    """Build a Bot API ``Update`` dict for a text message (``channel_post`` for channels).

    ``thread_id`` makes a forum-topic message: ``message_thread_id``,
    ``is_topic_message`` and, unless ``reply_to`` is given, the implicit reply to
    the topic's creation message (created by ``topic_creator``, default the sender).
    ``caption=True`` sends the text as a photo caption.
    """
    if chat_id is None:
        if chat_type != "private":
            raise ValueError("group and channel messages need a chat_id")
        chat_id = user_id
    sender = _user(user_id, first_name, username, last_name, is_bot)
    chat = _chat(chat_id, chat_type, title=chat_title, user=sender, is_forum=thread_id is not None)
    now = int(time.time())
    msg: dict[str, Any] = {"message_id": message_id, "date": now, "chat": chat}
    if chat_type == "channel":
        msg["sender_chat"] = chat
    else:
        msg["from"] = sender
    ents = auto_entities(text) if entities is None else entities
    if caption:
        msg["caption"] = text
        msg["photo"] = [{"file_id": "AgAD", "file_unique_id": "AQAD", "width": 90, "height": 90}]
        if ents:
            msg["caption_entities"] = ents
    else:
        msg["text"] = text
        if ents:
            msg["entities"] = ents
    if thread_id is not None:
        msg["message_thread_id"] = thread_id
        msg["is_topic_message"] = True
        if reply_to is None:
            reply_to = {
                "message_id": thread_id, "date": now - 60, "chat": chat,
                "from": topic_creator or sender,
                "forum_topic_created": {"name": "Topic", "icon_color": 7322096},
                "message_thread_id": thread_id, "is_topic_message": True,
            }  # fmt: skip
    if reply_to is not None:
        msg["reply_to_message"] = reply_to
    return {"update_id": update_id, "channel_post" if chat_type == "channel" else "message": msg}


# -- markup parsing (what Telegram does with parse_mode) -------------------------------------

_HTML_TAGS = {
    "b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline",
    "ins": "underline", "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough",
    "tg-spoiler": "spoiler", "span": "spoiler", "a": "text_link", "code": "code", "pre": "pre",
    "blockquote": "blockquote", "tg-emoji": "custom_emoji",
}  # fmt: skip
_HTML_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*/?)((?:\s+[^<>]*?)?)\s*>")
_HTML_ATTR = re.compile(r"""([a-zA-Z-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")
_HTML_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|lt|gt|amp|quot|apos);")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


class _Builder:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0  # UTF-16 offset
        self.entities: list[dict[str, Any]] = []

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.pos += _u16(text)

    def entity(self, kind: str, start: int, **extra: Any) -> None:
        if self.pos > start:
            self.entities.append({"type": kind, "offset": start, "length": self.pos - start,
                                  **extra})  # fmt: skip

    def result(self) -> tuple[str, list[dict[str, Any]]]:
        return "".join(self.parts), sorted(self.entities, key=lambda e: (e["offset"], -e["length"]))


def _parse_html(src: str) -> tuple[str, list[dict[str, Any]]]:
    out = _Builder()
    stack: list[tuple[str, int, dict[str, str]]] = []
    i = 0
    while i < len(src):
        c = src[i]
        if c == "<":
            m = _HTML_TAG.match(src, i)
            if m is None:
                raise MarkupError(
                    f"Unexpected end of name token at byte offset {_byte_offset(src, i)}"
                )
            closing, tag = m[1] == "/", m[2].lower()
            if tag not in _HTML_TAGS:
                word = "end" if closing else "start"
                raise MarkupError(f'Unsupported {word} tag "{tag}" at byte offset '
                                  f"{_byte_offset(src, i)}")  # fmt: skip
            if closing:
                if not stack or stack[-1][0] != tag:
                    expected = f'"</{stack[-1][0]}>"' if stack else "no end tag"
                    raise MarkupError(f"Unmatched end tag at byte offset {_byte_offset(src, i)}, "
                                      f'expected {expected}, found "</{tag}>"')  # fmt: skip
                _, start, attrs = stack.pop()
                kind = _HTML_TAGS[tag]
                if kind == "text_link":
                    out.entity(kind, start, url=attrs.get("href", ""))
                elif kind == "code" and stack and stack[-1][0] == "pre":
                    lang = attrs.get("class", "").removeprefix("language-")
                    stack[-1][2].setdefault("language", lang)
                elif kind == "pre" and attrs.get("language"):
                    out.entity(kind, start, language=attrs["language"])
                elif tag != "span" or attrs.get("class") == "tg-spoiler":
                    out.entity(kind, start)
            else:
                attrs = {
                    a[1].lower(): _HTML_ENTITY.sub(_html_entity, a[2] or a[3] or a[4] or "")
                    for a in _HTML_ATTR.finditer(m[3])
                }
                if tag == "a" and not attrs.get("href"):
                    raise MarkupError("Can't find href attribute of tag a")
                stack.append((tag, out.pos, attrs))
            i = m.end()
        elif c == "&" and (m := _HTML_ENTITY.match(src, i)) is not None:
            out.add(_html_entity(m))
            i = m.end()
        else:
            out.add(c)
            i += 1
    if stack:
        raise MarkupError(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    return out.result()


def _html_entity(m: re.Match[str]) -> str:
    name = m[1]
    if name.startswith("#x"):
        return chr(int(name[2:], 16))
    if name.startswith("#"):
        return chr(int(name[1:]))
    return _NAMED[name]


def _parse_markdown(src: str, *, v2: bool) -> tuple[str, list[dict[str, Any]]]:
    """Legacy ``Markdown`` (``v2=False``) or ``MarkdownV2``, as Telegram's parser reads them."""
    out = _Builder()
    markers = ("||", "__", "*", "_", "~") if v2 else ("*", "_")
    kinds = {"||": "spoiler", "__": "underline", "*": "bold", "_": "italic", "~": "strikethrough"}
    reserved = set("_*[]()~`>#+-=|{}.!")
    stack: list[tuple[str, int, int]] = []  # marker, utf16 start, src index
    link_starts: list[int] = []
    i = 0
    while i < len(src):
        c = src[i]
        if c == "\\" and i + 1 < len(src) and (v2 or src[i + 1] in "_*`["):
            out.add(src[i + 1])
            i += 2
            continue
        if c == "`":
            fence = src.startswith("```", i)
            width = 3 if fence else 1
            end = src.find("```" if fence else "`", i + width)
            if end < 0:
                raise MarkupError(f"Can't find end of the entity starting at byte offset "
                                  f"{_byte_offset(src, i)}")  # fmt: skip
            body = src[i + width : end]
            if v2:
                body = re.sub(r"\\([`\\])", r"\1", body)
            start = out.pos
            language = ""
            if fence and "\n" in body:
                first, rest = body.split("\n", 1)
                if first and not first.strip() == "" and " " not in first:
                    language, body = first, rest
            out.add(body)
            if fence:
                out.entity("pre", start, **({"language": language} if language else {}))
            else:
                out.entity("code", start)
            i = end + width
            continue
        if c == "[":
            link_starts.append(out.pos)
            i += 1
            continue
        if c == "]" and link_starts and src.startswith("(", i + 1):
            end = src.find(")", i + 2)
            if end < 0:
                raise MarkupError(f"Can't find end of a url at byte offset {_byte_offset(src, i)}")
            out.entity("text_link", link_starts.pop(), url=src[i + 2 : end])
            i = end + 1
            continue
        marker = next((mk for mk in markers if src.startswith(mk, i)), None)
        if marker is not None:
            if stack and stack[-1][0] == marker:
                _, start, _ = stack.pop()
                out.entity(kinds[marker], start)
            elif any(m == marker for m, _, _ in stack) or (not v2 and stack):
                raise MarkupError(f"Can't find end of the entity starting at byte offset "
                                  f"{_byte_offset(src, stack[-1][2])}")  # fmt: skip
            else:
                stack.append((marker, out.pos, i))
            i += len(marker)
            continue
        if v2 and c in reserved:
            raise MarkupError(f"Character '{c}' is reserved and must be escaped with the "
                              "preceding '\\'")  # fmt: skip
        out.add(c)
        i += 1
    if stack:
        marker, _, at = stack[-1]
        what = f"{kinds[marker].capitalize()} entity at" if v2 else "the entity starting at"
        raise MarkupError(f"Can't find end of {what} byte offset {_byte_offset(src, at)}")
    if link_starts and v2:
        raise MarkupError("Can't find end of a link")
    return out.result()


def parse_markup(text: str, parse_mode: str | None) -> tuple[str, list[dict[str, Any]]]:
    """Render ``text`` as Telegram does for ``parse_mode``: (visible text, entities).

    Raises :class:`MarkupError` for markup Telegram would refuse and
    ``ValueError`` for an unknown parse mode.
    """
    mode = (parse_mode or "").lower()
    if mode == "":
        return text, []
    if mode == "html":
        return _parse_html(text)
    if mode in ("markdown", "markdownv2"):
        return _parse_markdown(text, v2=mode == "markdownv2")
    raise ValueError("unsupported parse_mode")


# -- the server ----------------------------------------------------------------------------


class _ApiError(Exception):
    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None):
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


def _bad(description: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {description}")


def _value(params: dict[str, Any], name: str) -> Any:
    """A parameter as JSON: form fields arrive as strings holding JSON (PTB's encoding)."""
    raw = params.get(name)
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _int(params: dict[str, Any], name: str) -> int | None:
    raw = _value(params, name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise _bad(f"invalid {name} specified") from None


def _chat_id(params: dict[str, Any]) -> int | str:
    raw = params.get("chat_id")
    if raw is None or raw == "":
        raise _bad("chat_id is empty")
    text = str(raw)
    if text.startswith("@"):
        return text
    try:
        return int(text)
    except ValueError:
        raise _bad("chat not found") from None


class FakeTelegram:
    """The fake Bot API server (see the module docstring for the API)."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_id: int | None = None,
        bot_username: str = "onethread_test_bot",
        bot_name: str = "Onethread Test",
        local: bool = False,
    ) -> None:
        self.token = token
        self.local = local
        self.webhook_secret = ""
        self.webhook_allowed_updates: list[str] | None = None
        self.webhook_deliveries: list[tuple[int, int]] = []
        self.webhook_retry_delay = 0.2
        self._webhook_error = ""
        self._webhook_task: asyncio.Task[None] | None = None
        self._webhook_generation = 0
        self.bot_id = bot_id if bot_id is not None else int(token.split(":", 1)[0])
        self.bot_username = bot_username
        self.bot_user = _user(self.bot_id, bot_name, bot_username, None, True)
        self.requests: list[ApiCall] = []
        self.sent: list[SentMessage] = []
        self.chat_actions: list[ChatActionCall] = []
        self.confirmed_offset = 0
        self._auth_failure = False
        self.webhook_url = ""
        self.dropping = False
        self.commands: list[dict[str, Any]] = []
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids: defaultdict[int | str, itertools.count[int]] = defaultdict(
            lambda: itertools.count(1)
        )
        self._chats: dict[int | str, dict[str, Any]] = {}
        # Files users sent: file_id -> (file_path, bytes); served at /file/bot<token>/<path>.
        self.files: dict[str, tuple[str, bytes]] = {}
        self.file_downloads = 0
        self.sent_files: list[SentFile] = []
        self.edits: list[EditCall] = []
        self.edit_interval = 1.0
        self.edits_refused = 0  # 429s answered to edits too close together
        self._last_edit: dict[int | str, float] = {}
        self._faults: defaultdict[str, deque[_Fault]] = defaultdict(deque)
        self._slow: defaultdict[str, deque[float]] = defaultdict(deque)
        self._allowed_updates: list[str] | None = _DEFAULT_ALLOWED
        self._poll_generation = 0
        self._changed = asyncio.Event()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._port = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1 (a free port)."""
        app = web.Application(client_max_size=60 * 1024 * 1024)  # uploads up to 50 MB
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        self._closing = False

    async def stop(self) -> None:
        """Release pending long polls, stop webhook deliveries and close the server."""
        self._closing = True
        self._notify()
        await self._stop_deliveries()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """The server root (what ``TELEGRAM_API_BASE_URL`` takes)."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_url(self) -> str:
        """``{base_url}/bot{token}``: the prefix of every method URL."""
        return f"{self.base_url}/bot{self.token}"

    @property
    def open_connections(self) -> int:
        """TCP connections from clients currently open on the server."""
        if self._runner is None or self._runner.server is None:
            return 0
        return sum(1 for c in self._runner.server.connections if c.transport is not None)

    @property
    def auth_failure(self) -> bool:
        """While true every call (long polls in flight too) answers 401, like a revoked token."""
        return self._auth_failure

    @auth_failure.setter
    def auth_failure(self, value: bool) -> None:
        self._auth_failure = value
        self._notify()

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates queued and not yet confirmed by an ``offset``."""
        return list(self._updates)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(
        self, predicate: Callable[[], object], timeout: float = 5.0, what: str = "a condition"
    ) -> None:
        """Wait until ``predicate()`` is true; it is re-checked after every request/injection."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                continue

    # -- inbound -------------------------------------------------------------------------

    def inject_update(self, raw: dict[str, Any]) -> int:
        """Queue a raw update (``update_id`` assigned if missing); return its ``update_id``."""
        update = dict(raw)
        if "update_id" not in update:
            update["update_id"] = next(self._update_ids)
        else:
            self._update_ids = itertools.count(max(update["update_id"] + 1,
                                                   next(self._update_ids)))  # fmt: skip
        self._updates.append(update)
        self._notify()
        return int(update["update_id"])

    def inject_message(
        self,
        user_id: int,
        text: str,
        *,
        chat_id: int | None = None,
        chat_type: str = "private",
        username: str | None = None,
        first_name: str = "Test",
        last_name: str | None = None,
        chat_title: str | None = None,
        thread_id: int | None = None,
        reply_to_bot: bool = False,
        entities: list[dict[str, Any]] | None = None,
        is_bot: bool = False,
    ) -> int:
        """Queue a text message from a user (DM, group, forum topic, channel); return update_id.

        ``reply_to_bot`` makes it a reply to the bot's last message in that chat
        (or to a made-up bot message when it sent none).
        """
        cid = user_id if chat_id is None and chat_type == "private" else chat_id
        if cid is None:
            raise ValueError("group and channel messages need a chat_id")
        reply_to = None
        if reply_to_bot:
            reply_to = self._last_bot_message(cid, thread_id)
        update = message_update(
            user_id, text, update_id=next(self._update_ids),
            message_id=next(self._message_ids[cid]), chat_id=cid, chat_type=chat_type,
            username=username, first_name=first_name, last_name=last_name,
            chat_title=chat_title, thread_id=thread_id, reply_to=reply_to, entities=entities,
            is_bot=is_bot,
        )  # fmt: skip
        message = update.get("message") or update["channel_post"]
        self._chats[cid] = message["chat"]
        return self.inject_update(update)

    def _last_bot_message(self, chat_id: int, thread_id: int | None) -> dict[str, Any]:
        chat = self._chats.get(chat_id, {"id": chat_id, "type": "private", "first_name": "Test"})
        for sent in reversed(self.sent):
            if sent.chat_id == chat_id:
                return {"message_id": sent.message_id, "date": int(time.time()),
                        "chat": chat, "from": self.bot_user, "text": sent.text}  # fmt: skip
        msg: dict[str, Any] = {"message_id": next(self._message_ids[chat_id]),
                               "date": int(time.time()), "chat": chat, "from": self.bot_user,
                               "text": "(an earlier bot message)"}  # fmt: skip
        if thread_id is not None:
            msg.update(message_thread_id=thread_id, is_topic_message=True)
        return msg

    # -- faults --------------------------------------------------------------------------

    def fail(self, method: str, status: int, description: str, *, times: int = 1,
             parameters: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Answer the next ``times`` calls of ``method`` (``"*"``: any) with this error."""
        for _ in range(times):
            self._faults[method].append(_Fault(status, description, parameters))

    def rate_limit(self, method: str = "sendMessage", retry_after: float = 1, *,
                   times: int = 1) -> None:  # fmt: skip
        """Answer 429 with ``parameters.retry_after`` (seconds) to the next ``times`` calls."""
        shown = int(retry_after) if float(retry_after).is_integer() else retry_after
        self.fail(method, 429, f"Too Many Requests: retry after {shown}", times=times,
                  parameters={"retry_after": shown})  # fmt: skip

    def server_error(self, method: str = "sendMessage", status: int = 500, *,
                     times: int = 1) -> None:  # fmt: skip
        """Answer a 5xx to the next ``times`` calls (502: nginx's HTML page, as Telegram does)."""
        descriptions = {500: "Internal Server Error", 502: "Bad Gateway",
                        503: "Service Unavailable", 504: "Gateway Timeout"}  # fmt: skip
        self.fail(method, status, descriptions.get(status, "Internal Server Error"), times=times)

    def slow(self, method: str = "sendMessage", seconds: float = 1.0, *, times: int = 1) -> None:
        """Carry out the next ``times`` calls of ``method``, then answer ``seconds`` late
        (the message is sent: a client that gives up first cannot know it)."""
        for _ in range(times):
            self._slow[method].append(seconds)

    def drop_connections(self) -> None:
        """Close every connection without answering, including long polls in flight."""
        self.dropping = True
        self._notify()

    def restore(self) -> None:
        """Undo ``drop_connections``."""
        self.dropping = False
        self._notify()

    # -- waiting -------------------------------------------------------------------------

    async def wait_for_messages(self, n: int, timeout: float = 5.0) -> list[SentMessage]:
        """Wait until the bot has sent ``n`` messages; return the first ``n``."""
        await self.wait_until(lambda: len(self.sent) >= n, timeout, f"{n} sent message(s)")
        return self.sent[:n]

    async def wait_for_call(self, method: str, n: int = 1, timeout: float = 5.0) -> list[ApiCall]:
        """Wait until ``method`` was called ``n`` times; return those calls."""

        def calls() -> list[ApiCall]:
            return [c for c in self.requests if c.method == method]

        await self.wait_until(lambda: len(calls()) >= n, timeout, f"{n} {method} call(s)")
        return calls()[:n]

    # -- HTTP ------------------------------------------------------------------------------

    def add_file(self, data: bytes, *, kind: str = "documents", name: str = "file") -> str:
        """Keep ``data`` as a file a user sent; its ``file_id`` (use it in an update)."""
        file_id = f"BQAC{len(self.files) + 1:04d}{hashlib.sha1(data).hexdigest()[:12]}"
        self.files[file_id] = (f"{kind}/file_{len(self.files)}_{name}", bytes(data))
        return file_id

    def inject_media(
        self,
        user_id: int,
        field: str,
        data: bytes,
        *,
        caption: str = "",
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Queue a DM carrying a file: ``field`` is ``photo``, ``voice``, ``audio``,
        ``document``, ``video`` or ``sticker``, shaped as the Bot API sends it
        (``extra`` adds fields such as ``file_name``/``mime_type``)."""
        file_id = self.add_file(data, kind=field + "s")
        obj: dict[str, Any] = {"file_id": file_id, "file_unique_id": file_id[-8:],
                               "file_size": len(data), **(extra or {})}  # fmt: skip
        if field == "photo":
            small = {**obj, "width": 90, "height": 60, "file_id": self.add_file(data[:10])}
            value: Any = [small, {**obj, "width": 1280, "height": 853}]
        elif field == "voice":
            value = {"duration": 3, "mime_type": "audio/ogg", **obj}
        elif field == "sticker":
            value = {"width": 512, "height": 512, "is_animated": False, "is_video": False,
                     "type": "regular", "emoji": "😀", **obj}  # fmt: skip
        elif field in ("video", "audio"):
            value = {"duration": 3, **({"width": 640, "height": 480} if field == "video" else {}),
                     **obj}  # fmt: skip
        else:
            value = obj
        update = message_update(user_id, caption, update_id=next(self._update_ids),
                                message_id=next(self._message_ids[user_id]))  # fmt: skip
        message = update["message"]
        message.pop("text", None)
        message.pop("entities", None)
        if caption:
            message["caption"] = caption
        message[field] = value
        self._chats[user_id] = message["chat"]
        return self.inject_update(update)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401,
                                      "description": "Unauthorized"}, status=401)  # fmt: skip
        path = request.match_info["path"]
        for file_path, data in self.files.values():
            if file_path == path:
                self.file_downloads += 1
                return web.Response(body=data, content_type="application/octet-stream")
        return await self._not_found(request)

    async def _m_getfile(self, params: dict[str, Any], request: web.Request) -> Any:
        file_id = str(_value(params, "file_id"))
        if file_id not in self.files:
            raise _bad("wrong file_id or the file is temporarily unavailable")
        path, data = self.files[file_id]
        if len(data) > 20 * 1024 * 1024:
            raise _bad("file is too big")
        return {"file_id": file_id, "file_unique_id": file_id[-8:], "file_size": len(data),
                "file_path": path}  # fmt: skip

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"},
                                 status=404)  # fmt: skip

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                body = await request.json()
                if isinstance(body, dict):
                    params.update(body)
            else:  # x-www-form-urlencoded (PTB) or multipart/form-data
                form = await request.post()
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
        return params

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params = await self._params(request)
        call = ApiCall(method, params)
        self.requests.append(call)
        self._notify()
        if self.dropping:
            return self._drop(request, call)
        try:
            if request.match_info["token"] != self.token or self.auth_failure:
                raise _ApiError(401, "Unauthorized")
            queue = self._faults.get(method) or self._faults.get("*")
            if queue:
                fault = queue.popleft()
                raise _ApiError(fault.status, fault.description, fault.parameters)
            handler = getattr(self, f"_m_{method.lower()}", None)
            if handler is None:
                raise _ApiError(404, "Not Found")
            result = await handler(params, request)
            if self._slow.get(method):
                await asyncio.sleep(self._slow[method].popleft())
        except _ApiError as exc:
            call.status = exc.status
            if exc.status == 502:
                return web.Response(status=502, content_type="text/html",
                                    text="<html><head><title>502 Bad Gateway</title></head>"
                                         "<body><center><h1>502 Bad Gateway</h1></center>"
                                         "<hr><center>nginx</center></body></html>")  # fmt: skip
            body: dict[str, Any] = {"ok": False, "error_code": exc.status,
                                    "description": exc.description}  # fmt: skip
            if exc.parameters:
                body["parameters"] = exc.parameters
            return web.json_response(body, status=exc.status)
        except _Dropped:
            return self._drop(request, call)
        return web.json_response({"ok": True, "result": result})

    def _drop(self, request: web.Request, call: ApiCall) -> web.Response:
        call.status = 0
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=502)  # never written: the transport is closed

    # -- methods ----------------------------------------------------------------------------

    async def _m_getme(self, params: dict[str, Any], request: web.Request) -> Any:
        return {**self.bot_user, "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False, "can_connect_to_business": False,
                "has_main_web_app": False}  # fmt: skip

    async def _m_getupdates(self, params: dict[str, Any], request: web.Request) -> Any:
        if self.webhook_url:
            raise _ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = _int(params, "offset") or 0
        limit = max(1, min(100, _int(params, "limit") or 100))
        timeout = float(_value(params, "timeout") or 0)
        allowed = _value(params, "allowed_updates")
        if isinstance(allowed, list):
            self._allowed_updates = allowed or None
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
            self.confirmed_offset = max(self.confirmed_offset, offset)
        elif offset < 0:
            self._updates = self._updates[offset:]
        self._poll_generation += 1
        generation = self._poll_generation
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if generation != self._poll_generation:
                raise _ApiError(409, "Conflict: terminated by other getUpdates request; make "
                                     "sure that only one bot instance is running")  # fmt: skip
            if self.dropping:
                raise _Dropped
            if self._auth_failure:
                raise _ApiError(401, "Unauthorized")
            ready = [u for u in self._updates if self._wanted(u)][:limit]
            remaining = deadline - asyncio.get_running_loop().time()
            if ready or remaining <= 0 or self._closing:
                return ready
            if request.transport is None or request.transport.is_closing():
                return []  # the client went away (e.g. it was stopped): end the poll
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass

    def _wanted(self, update: dict[str, Any]) -> bool:
        if self._allowed_updates is None:
            return True
        return any(kind in update for kind in self._allowed_updates)

    async def _m_sendmessage(self, params: dict[str, Any], request: web.Request) -> Any:
        chat_id = _chat_id(params)
        raw_text = params.get("text")
        if not isinstance(raw_text, str) or not raw_text.strip():
            raise _bad("message text is empty")
        parse_mode = params.get("parse_mode") or None
        try:
            text, entities = parse_markup(raw_text, parse_mode)
        except MarkupError as exc:
            raise _bad(f"can't parse entities: {exc}") from None
        except ValueError:
            raise _bad("unsupported parse_mode") from None
        if not text.strip():
            raise _bad("message text is empty")
        if len(text) > MAX_TEXT:  # code points after entity parsing, as tdlib counts
            raise _bad("message is too long")
        thread_id = _int(params, "message_thread_id")
        message_id = next(self._message_ids[chat_id])
        self.sent.append(SentMessage(chat_id, text, thread_id, message_id, raw_text, parse_mode,
                                     entities))  # fmt: skip
        self._notify()
        chat = self._chats.get(chat_id) or {"id": chat_id, "type": "private", "first_name": "Test"}
        result: dict[str, Any] = {"message_id": message_id, "from": self.bot_user, "chat": chat,
                                  "date": int(time.time()), "text": text}  # fmt: skip
        if entities:
            result["entities"] = entities
        if thread_id is not None:
            result["message_thread_id"] = thread_id
            result["is_topic_message"] = bool(chat.get("is_forum"))
        return result

    async def _m_editmessagetext(self, params: dict[str, Any], request: web.Request) -> Any:
        chat_id = _chat_id(params)
        message_id = _int(params, "message_id")
        target = next((m for m in self.sent if m.chat_id == chat_id
                       and m.message_id == message_id), None)  # fmt: skip
        if target is None:
            raise _bad("message to edit not found")
        raw_text = params.get("text")
        if not isinstance(raw_text, str) or not raw_text.strip():
            raise _bad("message text is empty")
        parse_mode = params.get("parse_mode") or None
        try:
            text, entities = parse_markup(raw_text, parse_mode)
        except MarkupError as exc:
            raise _bad(f"can't parse entities: {exc}") from None
        if len(text) > MAX_TEXT:
            raise _bad("MESSAGE_TOO_LONG")
        if text == target.text and entities == target.entities:
            raise _bad("message is not modified: specified new message content and reply "
                       "markup are exactly the same as a current content and reply markup "
                       "of the message")  # fmt: skip
        now = time.monotonic()
        last = self._last_edit.get(chat_id)
        if last is not None and now - last < self.edit_interval:
            self.edits_refused += 1
            wait = max(1, int(self.edit_interval - (now - last) + 0.999))
            raise _ApiError(429, f"Too Many Requests: retry after {wait}",
                            {"retry_after": wait})  # fmt: skip
        self._last_edit[chat_id] = now
        target.text, target.raw_text, target.parse_mode = text, raw_text, parse_mode
        target.entities = entities
        self.edits.append(EditCall(chat_id, message_id or 0, text, raw_text, parse_mode, now))
        self._notify()
        chat = self._chats.get(chat_id) or {"id": chat_id, "type": "private", "first_name": "Test"}
        result: dict[str, Any] = {"message_id": message_id, "from": self.bot_user, "chat": chat,
                                  "date": int(time.time()), "edit_date": int(time.time()),
                                  "text": text}  # fmt: skip
        if entities:
            result["entities"] = entities
        return result

    async def _upload(self, method: str, field_name: str, limit: int, request: web.Request,
                      params: dict[str, Any]) -> Any:  # fmt: skip
        """``sendPhoto``/``sendDocument`` with a multipart upload, as the Bot API takes them:
        the file in the part the ``attach://NAME`` value names (PTB's ``attach=True``)
        or in the field itself."""
        chat_id = _chat_id(params)
        form = await request.post() if request.content_type.startswith("multipart/") else {}
        ref = params.get(field_name)
        part = form.get(field_name)
        if isinstance(ref, str) and ref.startswith("attach://"):
            part = form.get(ref[len("attach://") :])
        if not isinstance(part, web.FileField):
            raise _bad(f"there is no {field_name} in the request")
        data = part.file.read()
        if not data:
            raise _bad("file must be non-empty")
        if len(data) > limit:
            raise _ApiError(413, "Request Entity Too Large")
        caption = str(params.get("caption") or "")
        thread_id = _int(params, "message_thread_id")
        message_id = next(self._message_ids[chat_id])
        self.sent_files.append(SentFile(chat_id, method, part.filename or "", data, caption,
                                        thread_id, message_id))  # fmt: skip
        self._notify()
        chat = self._chats.get(chat_id) or {"id": chat_id, "type": "private", "first_name": "Test"}
        result: dict[str, Any] = {"message_id": message_id, "from": self.bot_user, "chat": chat,
                                  "date": int(time.time())}  # fmt: skip
        file_id = self.add_file(data, kind=field_name + "s", name=part.filename or "file")
        if field_name == "photo":
            result["photo"] = [{"file_id": file_id, "file_unique_id": file_id[-8:],
                                "width": 90, "height": 90, "file_size": len(data)}]  # fmt: skip
        else:
            result["document"] = {"file_id": file_id, "file_unique_id": file_id[-8:],
                                  "file_name": part.filename or "file",
                                  "file_size": len(data)}  # fmt: skip
        if caption:
            result["caption"] = caption
        return result

    async def _m_sendphoto(self, params: dict[str, Any], request: web.Request) -> Any:
        return await self._upload("sendPhoto", "photo", 10 * 1024 * 1024, request, params)

    async def _m_senddocument(self, params: dict[str, Any], request: web.Request) -> Any:
        return await self._upload("sendDocument", "document", 50 * 1024 * 1024, request, params)

    async def wait_for_files(self, n: int, timeout: float = 5.0) -> list[SentFile]:
        """Wait until the bot has uploaded ``n`` files."""
        await self.wait_until(lambda: len(self.sent_files) >= n, timeout, f"{n} file(s)")
        return list(self.sent_files)

    async def _m_sendchataction(self, params: dict[str, Any], request: web.Request) -> Any:
        chat_id = _chat_id(params)
        action = params.get("action")
        if action not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        self.chat_actions.append(ChatActionCall(chat_id, action,
                                                _int(params, "message_thread_id")))  # fmt: skip
        self._notify()
        return True

    async def _m_deletewebhook(self, params: dict[str, Any], request: web.Request) -> Any:
        self.webhook_url = ""
        self.webhook_secret = ""
        await self._stop_deliveries()
        if _value(params, "drop_pending_updates") is True:
            self._updates.clear()
        return True

    async def _m_setwebhook(self, params: dict[str, Any], request: web.Request) -> Any:
        url = str(params.get("url") or "")
        if not url:  # an empty url removes the webhook, as deleteWebhook does
            return await self._m_deletewebhook(params, request)
        if not url.startswith("https://") and not (self.local and url.startswith("http://")):
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        secret = str(params.get("secret_token") or "")
        if secret and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
            raise _bad("secret token contains unallowed characters")
        allowed = _value(params, "allowed_updates")
        if isinstance(allowed, list):
            self._allowed_updates = allowed or None
            self.webhook_allowed_updates = allowed
        if _value(params, "drop_pending_updates") is True:
            self._updates.clear()
        self.webhook_url, self.webhook_secret = url, secret
        await self._stop_deliveries()
        self._webhook_task = asyncio.create_task(
            self._deliver_webhooks(url, secret, self._webhook_generation)
        )
        return True

    async def _m_getwebhookinfo(self, params: dict[str, Any], request: web.Request) -> Any:
        info: dict[str, Any] = {"url": self.webhook_url, "has_custom_certificate": False,
                                "pending_update_count": len(self._updates)}  # fmt: skip
        if self.webhook_allowed_updates is not None:
            info["allowed_updates"] = self.webhook_allowed_updates
        if self._webhook_error:
            info["last_error_message"] = self._webhook_error
        return info

    async def _stop_deliveries(self) -> None:
        # Python 3.11's wait_for can swallow a cancel: the loop checks its generation too.
        self._webhook_generation += 1
        task, self._webhook_task = self._webhook_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _deliver_webhooks(self, url: str, secret: str, generation: int) -> None:
        """POST queued updates to the webhook, one at a time, until it is deleted."""
        import aiohttp

        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
        async with aiohttp.ClientSession() as session:
            while generation == self._webhook_generation and not self._closing:
                self._updates = [u for u in self._updates if self._wanted(u)]
                if not self._updates:
                    changed = self._changed
                    try:
                        await asyncio.wait_for(changed.wait(), 0.2)
                    except TimeoutError:
                        pass
                    continue
                update = self._updates[0]
                status = 0
                try:
                    async with session.post(
                        url, json=update, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
                    ) as resp:
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self._webhook_error = f"Connection error: {exc!r}"
                self.webhook_deliveries.append((int(update["update_id"]), status))
                self._notify()
                if 200 <= status < 300:
                    if self._updates and self._updates[0] is update:
                        self._updates.pop(0)
                    continue
                if status:
                    self._webhook_error = f"Wrong response from the webhook: {status}"
                await asyncio.sleep(self.webhook_retry_delay)

    async def _m_setmycommands(self, params: dict[str, Any], request: web.Request) -> Any:
        commands = _value(params, "commands")
        if not isinstance(commands, list):
            raise _bad('parameter "commands" is required')
        self.commands = commands
        return True

    async def _m_getmycommands(self, params: dict[str, Any], request: web.Request) -> Any:
        return self.commands

    async def _m_deletemycommands(self, params: dict[str, Any], request: web.Request) -> Any:
        self.commands = []
        return True

    async def _m_close(self, params: dict[str, Any], request: web.Request) -> Any:
        return True

    async def _m_logout(self, params: dict[str, Any], request: web.Request) -> Any:
        return True


class _Dropped(Exception):
    """Raised inside a handler to close its connection without an answer."""
