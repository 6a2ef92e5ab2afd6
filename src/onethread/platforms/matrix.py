"""Matrix adapter: matrix-nio's ``AsyncClient`` against any homeserver (Synapse, Conduit...).

Credentials: ``MATRIX_HOMESERVER`` (the URL, e.g. ``https://matrix.example.org``),
``MATRIX_USER_ID`` (``@bot:example.org``) and either ``MATRIX_ACCESS_TOKEN`` or
``MATRIX_PASSWORD`` (options ``homeserver``, ``user_id``, ``token``,
``password``), read at construction.

Login (``matrix_login``): a given access token is checked with ``whoami``. A
password logs in once; the device id and token are kept in
``$ONETHREAD_HOME/matrix/`` (0600, see ``matrix_state``), so restarts reuse the
device instead of adding one to the account each time; a kept token the
server no longer takes is replaced by a new login on the same device.

Sync: one initial sync (timeline limit 0: no history) loads the rooms' state,
then ``sync_forever`` runs from the kept ``next_batch``, which is saved after
each batch was handed to the bot: a restart neither replays nor misses a
message. The first start has no ``next_batch``: it begins after the initial
sync, skipping history. A sync the server refuses or that cannot connect is
retried ``max_sync_failures`` times with backoff, then ``ConnectionLost`` (or
``PlatformAuthError`` for a revoked token) goes to the supervisor.

Rooms: invites are joined (``invite_from``: inviters' user ids or homeserver
names allowed; default anyone; others are rejected); the access policy still
applies to each sender. A room is a DM when it is in the bot's ``m.direct``,
was invited to as direct (``is_direct``), or has two members; other rooms are
groups, answered only when the bot is mentioned (``m.mentions``, its user id
or display name in the body), replied to, or sent a ``/command``. Threads
(``m.thread``) are ``thread_id``; replies stay in the thread. Edits of a
person's message are not answered again.

Out: ``m.text`` with ``formatted_body`` (HTML from the Markdown,
``markup.to_matrix_html``) and the plain text as ``body``; streamed replies
are edited (``m.replace``); typing notifications while a turn runs; files are
uploaded to the media repository and sent as ``m.image``/``m.audio``/
``m.video``/``m.file``. Files in (``mxc://``) are downloaded on demand through
the homeserver (authenticated media).

Encrypted rooms: end-to-end encryption is not supported. The bot says once
per encrypted room (remembered across restarts) that it cannot read it.

Errors: ``matrix_events.check`` / ``map_matrix_errors``; the SDK's own
retries are off (``send()`` retries what certainly did not arrive).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DownloadResponse,
    InviteMemberEvent,
    MatrixRoom,
    RoomGetEventResponse,
    SyncResponse,
    UploadResponse,
)
from nio.responses import SyncError

from ..errors import (
    BadRequest,
    ConfigError,
    ConnectionLost,
    PlatformAuthError,
    PlatformError,
    PlatformUnavailable,
    RetryAfter,
)
from ..session.attachments import Attachment
from .base import Adapter, Inbound, OnInbound, credential_in, whitespace_problem
from .delivery import RetryPolicy
from .markup import to_matrix_html, to_plain
from .matrix_events import (
    PLATFORM,
    check,
    edit_content,
    file_content,
    map_matrix_errors,
    media_of,
    normalize_event,
    reply_target,
    text_content,
    thread_relation,
)
from .matrix_login import ENV, invite_allowed, invite_allowlist, is_user_id, log_in
from .matrix_state import MatrixState

__all__ = ["MatrixAdapter", "normalize_event"]

log = logging.getLogger("onethread.platforms.matrix")

ENCRYPTED_NOTICE = (
    "I cannot read messages in this room: it is end-to-end encrypted, and I do not "
    "support encryption yet. Please write to me in a room without encryption."
)
_NO_HISTORY = {"room": {"timeline": {"limit": 0}}}
# Events per room in one sync: after a long downtime a room with more than this
# many new messages comes back "limited" (the older ones skipped, logged).
_BATCH = {"room": {"timeline": {"limit": 100}}}
_CACHE = 2000  # own event ids and thread tails remembered


class MatrixAdapter(Adapter):
    """Matrix via matrix-nio (see the module docstring).

    Args:
        homeserver: the homeserver URL (default ``MATRIX_HOMESERVER``).
        user_id: the bot's full user id (default ``MATRIX_USER_ID``).
        token: an access token (default ``MATRIX_ACCESS_TOKEN``), or
        password: the account's password (default ``MATRIX_PASSWORD``).
        invite_from: user ids (``@alice:example.org``) or homeserver names
            (``example.org``) whose invites are accepted; default: anyone's.
        device_name: shown in the account's device list after a password login.
        poll_timeout: seconds the server holds each sync open.
        max_sync_failures: failed syncs in a row before the connection is
            reported lost (then the supervisor restarts the adapter).
        retry_policy: how ``send`` retries rate limits and server errors.

    ``client`` is the running ``nio.AsyncClient`` (``None`` while stopped).
    """

    name: ClassVar[str] = PLATFORM
    # A Matrix event is at most 64 KiB; an edit carries the text twice, as
    # body and formatted_body both: measured in bytes of those two.
    max_message_length: ClassVar[int] = 24_000
    max_file_bytes: ClassVar[int] = 50 * 1024 * 1024  # Synapse's default max_upload_size
    sync_retry_delay: float = 0.5  # first backoff after a failed sync; doubles each time

    _OPTIONS: ClassVar[tuple[str, ...]] = (
        "homeserver", "user_id", "token", "password", "invite_from", "device_name",
        "poll_timeout", "max_sync_failures", "retry_policy",
    )  # fmt: skip

    @classmethod
    def check_options(
        cls, options: Mapping[str, Any], env: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """The homeserver URL's shape, the user id's, and the token's.

        That a token or a password is set at all is checked by ``--check`` from
        the registry entry's ``one_of``."""
        problems: list[tuple[str, str]] = []
        url, where = credential_in(options, env, "homeserver", ENV["homeserver"])
        if url and not url.startswith(("http://", "https://")):
            problems.append(("homeserver", f"{where} must be the homeserver's http(s) URL, "
                             "e.g. https://matrix.example.org"))  # fmt: skip
        user, where = credential_in(options, env, "user_id", ENV["user_id"])
        if user and not is_user_id(user):
            problems.append(("user_id", f"{where} must be a full user id like "
                             "@bot:example.org"))  # fmt: skip
        token, where = credential_in(options, env, "token", ENV["token"])
        if token:
            problem = whitespace_problem(token, where)
            if problem:
                problems.append(("token", problem))
        try:
            invite_allowlist(options.get("invite_from"))
        except ConfigError as exc:
            problems.append(("invite_from", str(exc)))
        return problems

    def __init__(
        self,
        *,
        homeserver: str | None = None,
        user_id: str | None = None,
        token: str | None = None,
        password: str | None = None,
        invite_from: Iterable[str] | str | None = None,
        device_name: str = "onethread",
        poll_timeout: float = 30.0,
        max_sync_failures: int = 5,
        retry_policy: RetryPolicy | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigError(
                f"unknown matrix option(s) {', '.join(sorted(unknown))}; "
                f"accepted: {', '.join(self._OPTIONS)}"
            )
        super().__init__(retry_policy=retry_policy)
        if poll_timeout <= 0 or max_sync_failures < 1:
            raise ConfigError("matrix: poll_timeout must be > 0 and max_sync_failures >= 1")
        self.homeserver = (homeserver or os.environ.get(ENV["homeserver"], "")).rstrip("/")
        self.user_id = user_id or os.environ.get(ENV["user_id"], "")
        self._token = token or os.environ.get(ENV["token"], "")
        self._password = password or os.environ.get(ENV["password"], "")
        self.invite_from = invite_allowlist(invite_from)
        self.device_name = device_name
        self.poll_timeout = float(poll_timeout)
        self.max_sync_failures = max_sync_failures
        self.client: AsyncClient | None = None
        self.display_name = ""
        self.state: MatrixState | None = None
        self._on_inbound: OnInbound | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._own: OrderedDict[str, None] = OrderedDict()  # event ids this bot sent
        self._thread_tail: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._direct: set[str] = set()  # from the bot's m.direct account data
        self._typing: set[str] = set()  # rooms with our typing notice on
        self._failures = 0

    def __repr__(self) -> str:
        return f"MatrixAdapter(homeserver={self.homeserver!r}, user_id={self.user_id!r})"

    # -- lifecycle -------------------------------------------------------------

    def _check_config(self) -> None:
        missing = [ENV[k] for k, v in (("homeserver", self.homeserver),
                                       ("user_id", self.user_id)) if not v]  # fmt: skip
        if not (self._token or self._password):
            missing.append(f"{ENV['token']} (or {ENV['password']})")
        if missing:
            raise ConfigError(f"the matrix platform needs {', '.join(missing)}")
        if not self.homeserver.startswith(("http://", "https://")):
            raise ConfigError(f"{ENV['homeserver']} must be an http(s) URL, got "
                              f"{self.homeserver!r}")  # fmt: skip
        if not is_user_id(self.user_id):
            raise ConfigError(f"{ENV['user_id']} must be a full user id like @bot:example.org, "
                              f"got {self.user_id!r}")  # fmt: skip

    async def start(self, on_inbound: OnInbound) -> None:
        """Log in, load the rooms, join pending invites, start syncing; return once syncing.

        Raises ``ConfigError`` for missing or malformed settings,
        ``PlatformAuthError`` for a refused token or password and
        ``PlatformUnavailable`` when the homeserver cannot be reached.
        """
        if self._sync_task is not None:
            raise RuntimeError("the matrix adapter is already started; stop() it first")
        self._check_config()
        config = AsyncClientConfig(
            max_limit_exceeded=0, max_timeouts=0,  # retrying is send()'s job
            request_timeout=self.poll_timeout + 30, store_sync_tokens=False,
            encryption_enabled=False,
        )  # fmt: skip
        client = AsyncClient(self.homeserver, self.user_id, config=config)
        self.client = client
        try:
            self.state = await log_in(
                client, self.homeserver, self.user_id, token=self._token,
                password=self._password, device_name=self.device_name,
            )  # fmt: skip
            # Bounded: nio sends a full-state sync without a timeout of its own.
            with map_matrix_errors("initial sync"):
                async with asyncio.timeout(self.poll_timeout + 60):
                    resp = await client.sync(timeout=0, sync_filter=_NO_HISTORY, full_state=True)
            first = check(resp, "initial sync")
            await self._load_direct(client)
            with map_matrix_errors("display name"):
                name = await client.get_displayname(self.user_id)
            self.display_name = str(getattr(name, "displayname", "") or "")
            await self._handle_invites(first)
        except BaseException:
            await self.stop()
            raise
        state = self._state()
        since = state.next_batch or first.next_batch
        if not state.next_batch:
            log.info("matrix: first start for %s: history skipped", self.user_id)
            state.next_batch = since
            state.save()
        self._on_inbound = on_inbound
        self._failures = 0
        self._sync_task = asyncio.create_task(self._sync(client, since), name="matrix-sync")
        log.info("matrix: syncing as %s (device %s) on %s", self.user_id, client.device_id,
                 self.homeserver)  # fmt: skip

    def _state(self) -> MatrixState:
        if self.state is None:
            raise PlatformUnavailable("not logged in: start() the adapter first", platform=PLATFORM)
        return self.state

    async def _load_direct(self, client: AsyncClient) -> None:
        """The rooms the bot's own ``m.direct`` account data calls direct chats."""
        with map_matrix_errors("m.direct"):
            resp = await client.list_direct_rooms()
        rooms = getattr(resp, "rooms", None)
        if isinstance(rooms, Mapping):
            self._direct = {r for ids in rooms.values() if isinstance(ids, list) for r in ids}

    async def stop(self) -> None:
        """Stop syncing and close the HTTP session. Idempotent."""
        task, self._sync_task = self._sync_task, None
        self._on_inbound = None
        pending = [t for t in (task, *self._tasks) if t is not None]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        client, self.client = self.client, None
        if client is not None:
            await client.close()

    # -- the sync loop ---------------------------------------------------------

    async def _sync(self, client: AsyncClient, since: str) -> None:
        client.add_response_callback(self._on_sync, SyncResponse)
        client.add_response_callback(self._on_sync_error, SyncError)
        timeout_ms = int(self.poll_timeout * 1000)
        while True:
            try:
                with map_matrix_errors("sync"):
                    await client.sync_forever(timeout=timeout_ms, since=since,
                                              sync_filter=_BATCH)  # fmt: skip
                return
            except PlatformAuthError as exc:
                self.report_failure(exc)
                return
            except RetryAfter as exc:
                wait = min(exc.retry_after, self.retry_policy.max_delay)
                log.warning("matrix: sync rate limited; waiting %gs", wait)
                await asyncio.sleep(wait)
            except PlatformError as exc:
                self._failures += 1
                if self._failures >= self.max_sync_failures:
                    lost = ConnectionLost(f"sync failed {self._failures} times in a row, "
                                          f"last: {exc}", platform=PLATFORM)  # fmt: skip
                    lost.__cause__ = exc
                    self.report_failure(lost)
                    return
                delay = self.sync_retry_delay * 2 ** (self._failures - 1)
                log.warning("matrix: sync failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
            except Exception as exc:  # a bug or an unreadable answer: restart cleanly
                log.error("matrix: the sync loop stopped unexpectedly", exc_info=exc)
                lost = ConnectionLost(f"sync stopped: {exc!r}", platform=PLATFORM)
                lost.__cause__ = exc
                self.report_failure(lost)
                return
            since = client.next_batch or since

    async def _on_sync_error(self, resp: SyncError) -> None:
        check(resp, "sync")  # raises the mapped error out of sync_forever

    async def _on_sync(self, resp: SyncResponse) -> None:
        """One batch: invites, messages (handed to the bot), then the token is saved."""
        self._failures = 0
        for event in resp.account_data_events:
            if getattr(event, "type", "") == "m.direct":
                content = getattr(event, "content", {})
                if isinstance(content, Mapping):
                    self._direct = {r for ids in content.values() if isinstance(ids, list)
                                    for r in ids}  # fmt: skip
        await self._handle_invites(resp)
        for room_id, info in resp.rooms.join.items():
            if info.timeline.limited:
                log.warning("matrix: more new messages in %s than one sync returns; "
                            "the older ones were skipped", room_id)  # fmt: skip
            for event in info.timeline.events:
                source = getattr(event, "source", None)
                if isinstance(source, Mapping):
                    await self._handle_event(room_id, source)
        state = self._state()
        state.next_batch = resp.next_batch
        state.save()

    async def _handle_event(self, room_id: str, source: Mapping[str, Any]) -> None:
        client, on_inbound = self.client, self._on_inbound
        if client is None or on_inbound is None:
            return
        room = client.rooms.get(room_id)
        sender = str(source.get("sender") or "")
        if source.get("type") == "m.room.encrypted" and sender != self.user_id:
            await self._tell_encrypted(room_id)
            return
        direct = room_id in self._direct or room_id in self._state().direct_rooms
        if room is not None and room.member_count <= 2:
            direct = True
        thread = _thread_of(source)
        if thread:
            self._remember(self._thread_tail, (room_id, thread), str(source.get("event_id")))
        msg = normalize_event(
            source, room_id=room_id, bot_user_id=self.user_id, bot_names=self._names(room),
            direct=direct, user_name=(room.user_name(sender) or "") if room else "",
            chat_name="" if room is None else room.display_name,
        )  # fmt: skip
        if msg is None:
            return
        if msg.chat_type == "dm":
            msg = dataclasses.replace(msg, chat_name=msg.user_name)
        elif not msg.mentions_bot and not msg.from_self:
            target = reply_target(source)
            if target and await self._is_own(room_id, target):
                msg = dataclasses.replace(msg, mentions_bot=True)
        try:
            await on_inbound(msg)
        except Exception:  # one bad message must not stop the sync loop
            log.exception("matrix: handling event %s failed", msg.message_id)

    def _names(self, room: MatrixRoom | None) -> list[str]:
        names = [self.display_name]
        if room is not None:
            user = room.users.get(self.user_id)
            if user is not None and user.display_name:
                names.append(user.display_name)
        return [n for n in names if n]

    async def _is_own(self, room_id: str, event_id: str) -> bool:
        """Whether ``event_id`` was sent by this bot (remembered, else asked once)."""
        if event_id in self._own:
            return True
        client = self.client
        if client is None:
            return False
        try:
            with map_matrix_errors("get event"):
                resp = check(await client.room_get_event(room_id, event_id), "get event")
        except PlatformError as exc:
            log.debug("matrix: could not read replied-to event %s: %s", event_id, exc)
            return False
        return isinstance(resp, RoomGetEventResponse) and resp.event.sender == self.user_id

    async def _handle_invites(self, resp: SyncResponse) -> None:
        client = self.client
        if client is None:
            return
        for room_id, info in resp.rooms.invite.items():
            if room_id in client.rooms:
                continue  # joined already
            inviter, direct = "", False
            for event in info.invite_state:
                # nio moves an invite's content out of its source: read its fields.
                if (
                    isinstance(event, InviteMemberEvent)
                    and event.state_key == self.user_id
                    and event.membership == "invite"
                ):
                    content = event.content if isinstance(event.content, Mapping) else {}
                    inviter, direct = event.sender, bool(content.get("is_direct"))
            await self._answer_invite(client, room_id, inviter, direct)

    async def _answer_invite(
        self, client: AsyncClient, room_id: str, inviter: str, direct: bool
    ) -> None:
        if not invite_allowed(self.invite_from, inviter):
            log.info("matrix: invite to %s from %s rejected (not in invite_from)", room_id,
                     inviter)  # fmt: skip
            try:
                with map_matrix_errors("reject invite"):
                    check(await client.room_leave(room_id), "reject invite")
            except PlatformError as exc:
                log.warning("matrix: could not reject the invite to %s: %s", room_id, exc)
            return
        try:
            with map_matrix_errors("join"):
                check(await client.join(room_id), f"join {room_id}")
        except PlatformError as exc:
            log.warning("matrix: could not join %s (invited by %s): %s", room_id, inviter, exc)
            return
        log.info("matrix: joined %s (invited by %s)", room_id, inviter)
        state = self._state()
        if direct and state.add_room("direct_rooms", room_id):
            state.save()

    async def _tell_encrypted(self, room_id: str) -> None:
        """Say once per room (kept across restarts) that encrypted messages are unreadable."""
        state = self._state()
        if not state.add_room("told_encrypted", room_id):
            return
        state.save()
        try:
            await self._send_content(room_id, text_content(ENCRYPTED_NOTICE, formatted=False,
                                                           notice=True))  # fmt: skip
        except PlatformError as exc:
            log.warning("matrix: could not tell %s that it is encrypted: %s", room_id, exc)

    # -- sending ---------------------------------------------------------------

    def _remember(self, cache: OrderedDict[Any, Any], key: Any, value: Any = None) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > _CACHE:
            cache.popitem(last=False)

    def _running(self) -> AsyncClient:
        if self.client is None:
            raise PlatformUnavailable("not connected: start() the adapter first", platform=PLATFORM)
        return self.client

    async def _send_content(
        self, room_id: str, content: dict[str, Any], thread_id: str = ""
    ) -> str:
        client = self._running()
        if thread_id:
            latest = self._thread_tail.get((room_id, thread_id), thread_id)
            content["m.relates_to"] = thread_relation(thread_id, latest)
        self._stop_typing(room_id)
        with map_matrix_errors(f"send to {room_id}"):
            resp = check(await client.room_send(room_id, "m.room.message", content),
                         f"send to {room_id}")  # fmt: skip
        event_id = str(resp.event_id)
        self._remember(self._own, event_id)
        if thread_id:
            self._remember(self._thread_tail, (room_id, thread_id), event_id)
        return event_id

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        """Send one chunk as ``m.text`` (with HTML ``formatted_body``) into the thread;
        return its event id."""
        return await self._send_content(chat_id, text_content(text, formatted=formatted),
                                        thread_id)  # fmt: skip

    def measure(self, markdown: str) -> int:
        """Bytes of the ``body`` and ``formatted_body`` sent (both count in the event's size)."""
        return len(to_plain(markdown).encode()) + len(to_matrix_html(markdown).encode())

    async def do_edit(
        self, chat_id: str, message_id: str, text: str, thread_id: str = "", *,
        formatted: bool = True,
    ) -> None:  # fmt: skip
        """Replace a sent message's text with an ``m.replace`` edit."""
        client = self._running()
        content = edit_content(message_id, text, formatted=formatted)
        with map_matrix_errors(f"edit in {chat_id}"):
            check(await client.room_send(chat_id, "m.room.message", content),
                  f"edit in {chat_id}")  # fmt: skip

    async def do_typing(self, chat_id: str, thread_id: str = "") -> None:
        """A typing notification, held a little longer than ``typing_interval``; the
        next message the bot sends in the room clears it."""
        client = self._running()
        self._typing.add(chat_id)
        with map_matrix_errors("typing"):
            hold = int((self.typing_interval + 3) * 1000)
            check(await client.room_typing(chat_id, True, hold), "typing")

    def _stop_typing(self, room_id: str) -> None:
        if room_id not in self._typing or self.client is None:
            return
        self._typing.discard(room_id)
        task = asyncio.create_task(self._typing_off(self.client, room_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _typing_off(client: AsyncClient, room_id: str) -> None:
        try:
            with map_matrix_errors("typing"):
                check(await client.room_typing(room_id, False), "typing")
        except PlatformError as exc:
            log.debug("matrix: could not clear typing in %s: %s", room_id, exc)

    async def do_send_file(
        self, chat_id: str, attachment: Attachment, data: bytes, *, thread_id: str = ""
    ) -> str:
        """Upload to the media repository, then send the ``mxc://`` as ``m.image`` /
        ``m.audio`` / ``m.video`` / ``m.file`` with the caption as ``body``."""
        client = self._running()
        name = attachment.name or attachment.kind
        with map_matrix_errors(f"upload of {name}"):
            resp, _ = await client.upload(
                io.BytesIO(data), content_type=attachment.mime or "application/octet-stream",
                filename=name, filesize=len(data),
            )  # fmt: skip
        uploaded = check(resp, f"upload of {name}")
        assert isinstance(uploaded, UploadResponse)
        content = file_content(attachment, str(uploaded.content_uri), len(data))
        return await self._send_content(chat_id, content, thread_id)

    async def do_download(self, msg: Inbound, index: int) -> bytes:
        """The ``mxc://`` file of the message, through the homeserver (authenticated media)."""
        if not isinstance(msg.raw, Mapping):
            raise BadRequest("this message carries no Matrix file", platform=PLATFORM)
        client = self._running()
        url = media_of(msg.raw)[index][1]
        with map_matrix_errors(f"download of {url}"):
            resp = check(await client.download(mxc=url), f"download of {url}")
        if not isinstance(resp, DownloadResponse) or not isinstance(resp.body, bytes):
            raise BadRequest(f"download of {url}: no bytes in the answer", platform=PLATFORM)
        return resp.body


def _thread_of(source: Mapping[str, Any]) -> str:
    content = source.get("content")
    rel = content.get("m.relates_to") if isinstance(content, Mapping) else None
    if isinstance(rel, Mapping) and rel.get("rel_type") == "m.thread":
        return str(rel.get("event_id") or "")
    return ""
