"""Signal adapter: signal-cli's JSON-RPC daemon, which the user runs themselves.

signal-cli (https://github.com/AsamK/signal-cli) holds the Signal account (a
phone number registered or linked with signal-cli itself) and serves it as
JSON-RPC: ``signal-cli -a +NUMBER daemon --tcp 127.0.0.1:7583
--receive-mode=on-connection``. This adapter connects to it (``SIGNAL_CLI_URL``,
default ``tcp://127.0.0.1:7583``; ``unix:///PATH`` for ``--socket``) as the
account ``SIGNAL_ACCOUNT`` and speaks the protocol in ``signal_rpc``.

What comes in (``receive`` notifications, one ``envelope`` each): a
``dataMessage`` from a person is a message; receipts, typing notices, calls,
stories, edits, reactions and ``syncMessage`` envelopes (what the account's
own other devices sent) start nothing. People are known by their UUID
(``sourceUuid``; Signal may hide phone numbers), named by ``sourceName``; the
message id is the message's ``timestamp``. Groups are chats by ``groupId``;
the bot answers there only when mentioned (``dataMessage.mentions`` naming the
account's number or UUID), when a message quotes one of its own
(``quote.authorUuid``), or for a ``/command``.

Signal shows plain text with text styles: replies are the agent's Markdown
rendered as plain text with bold, italic, strikethrough and monospace ranges
(``markup.to_styled_plain``), cut at 2000 UTF-8 bytes per message (Signal's
body limit: signal-cli would turn a longer text into a long-text attachment).
Replies are not streamed: Signal can edit a sent message (``send`` with
``editTimestamp``), but every edit is marked "Edited" with a
history and its clients accept only a few edits per message, so a draft
edited once a second would stop updating. A read receipt (``sendReceipt``)
answers each message the bot takes up, and ``sendTyping`` shows it writing.

Attachments in: the daemon downloads them into ``<data_dir>/attachments/<id>``
(``data_dir`` is signal-cli's ``--data-dir``, default
``$XDG_DATA_HOME/signal-cli``); they are read from there, or fetched over the
connection (``getAttachment``) when that folder is not on this machine.
Attachments out: signal-cli reads them itself, so they are passed either
inline as an RFC 2397 data URI (the default: works wherever the daemon runs)
or, with ``outbox_dir``, as the path of a file written into that folder,
which the daemon must be able to read (the same machine, or a shared volume),
removed once the send is answered.

A lost connection (the daemon stopped or restarted) is reported as
``ConnectionLost``; the supervisor reconnects with backoff. Started with
``--receive-mode=on-connection``, the daemon takes messages from Signal's
servers only while onethread is connected, so what arrives meanwhile waits
there and is delivered on reconnect.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

from ..errors import (
    BadRequest,
    ConfigError,
    ConnectionLost,
    PlatformAuthError,
    PlatformError,
    PlatformUnavailable,
)
from ..session.attachments import Attachment
from .base import Adapter, Inbound, OnInbound, credential_in, whitespace_problem
from .delivery import RetryPolicy
from .markup import to_plain, to_styled_plain
from .signal_events import SignalMessage, envelope_of, is_group_id, normalize_envelope
from .signal_rpc import (
    DEFAULT_URL,
    METHOD_NOT_FOUND,
    RpcCallError,
    RpcConnection,
    map_rpc_error,
    parse_endpoint,
    unreachable,
)

__all__ = ["SignalAdapter", "SignalMessage", "is_group_id", "normalize_envelope"]

log = logging.getLogger("onethread.platforms.signal")

PLATFORM = "signal"
ACCOUNT_ENV = "SIGNAL_ACCOUNT"
URL_ENV = "SIGNAL_CLI_URL"
# signal-cli's accounts are phone numbers in international form: "+" and the digits.
ACCOUNT_SHAPE = re.compile(r"\+[1-9][0-9]{6,14}")
_STYLES = {"bold": "BOLD", "italic": "ITALIC", "strike": "STRIKETHROUGH", "code": "MONOSPACE"}
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # AttachmentStore.sanitizeId's output


def _target(chat_id: str) -> dict[str, Any]:
    if not chat_id:
        raise BadRequest("no chat: a Signal UUID, +NUMBER or group id is needed", platform=PLATFORM)
    return {"groupId": chat_id} if is_group_id(chat_id) else {"recipient": [chat_id]}


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "signal-cli"


# -- the adapter ---------------------------------------------------------------


class SignalAdapter(Adapter):
    """Signal through signal-cli's JSON-RPC daemon (which you run; see the module doc).

    Args:
        account: the bot's Signal number, ``+`` and digits (default
            ``SIGNAL_ACCOUNT``; ``token`` is the same, for ``Bot(token=...)``).
        url: the daemon, ``tcp://HOST:PORT`` or ``unix:///PATH`` (default
            ``SIGNAL_CLI_URL``, else ``tcp://127.0.0.1:7583``).
        data_dir: signal-cli's data folder (its ``--data-dir``; default
            ``$XDG_DATA_HOME/signal-cli``, i.e. ``~/.local/share/signal-cli``),
            where the daemon keeps received attachments. When the files are
            not there (the daemon runs elsewhere) they are fetched over the
            connection instead.
        outbox_dir: a folder the daemon can read, for files the bot sends:
            each is written there, passed to ``send`` by path and removed once
            the daemon answered. Default ``None``: files go inline as data
            URIs (no shared folder needed; about a third larger on the wire).
        read_receipts: send a read receipt for each message the bot takes up
            (DMs, and group messages addressed to it). Default True.
        request_timeout: seconds to wait for the daemon's answer to a call; a
            send not answered by then may have gone out and is not repeated.
        retry_policy: how ``send`` retries rate limits and network failures.

    Raises ``ConfigError`` (from ``start``) without an account, and
    ``PlatformAuthError`` when a multi-account daemon does not have it.
    """

    name: ClassVar[str] = PLATFORM
    max_message_length: ClassVar[int] = 2000  # bytes of UTF-8: ServiceConfig.MAX_MESSAGE_SIZE_BYTES
    max_file_bytes: ClassVar[int] = 100 * 1024 * 1024  # Signal's attachment limit
    typing_interval: ClassVar[float] = 10.0  # Signal shows a typing notice for 15 s

    _OPTIONS: ClassVar[tuple[str, ...]] = (
        "account", "url", "data_dir", "outbox_dir", "read_receipts", "request_timeout",
        "retry_policy",
    )  # fmt: skip

    @classmethod
    def check_options(
        cls, options: Mapping[str, Any], env: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """The account's shape (``+`` and 7 to 15 digits) and the daemon URL's."""
        problems: list[tuple[str, str]] = []
        account, where = credential_in(options, env, "account", ACCOUNT_ENV)
        if account:
            problem = whitespace_problem(account, where)
            if problem is None and not ACCOUNT_SHAPE.fullmatch(account):
                problem = (
                    f"{where} is not a Signal number: write it as signal-cli knows it, "
                    "in international form with a leading + (e.g. +4915112345678)"
                )
            if problem:
                problems.append(("account", problem))
        url = str(options.get("url") or env.get(URL_ENV) or DEFAULT_URL)
        try:
            parse_endpoint(url)
        except ConfigError as exc:
            problems.append(("url", str(exc)))
        return problems

    @classmethod
    async def probe_options(
        cls, options: Mapping[str, Any], env: Mapping[str, str], timeout: float
    ) -> list[tuple[str, str]]:
        """Whether signal-cli's daemon takes a connection at the configured URL."""
        where = "the url option" if options.get("url") else URL_ENV
        url = str(options.get("url") or env.get(URL_ENV) or DEFAULT_URL)
        endpoint = parse_endpoint(url)  # its shape passed check_options
        why = await unreachable(endpoint, timeout)
        if why is None:
            return []
        if endpoint.scheme == "unix":
            listen = f"--socket {endpoint.path}"
        else:
            listen = f"--tcp {endpoint.host}:{endpoint.port}"
        return [
            (
                "url",
                f"cannot reach signal-cli's daemon at {endpoint} ({why}); start it "
                f"(signal-cli -a ACCOUNT daemon {listen}) or point {where} at where it "
                "listens",
            )
        ]

    def __init__(
        self,
        *,
        account: str | None = None,
        token: str | None = None,
        url: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        outbox_dir: str | os.PathLike[str] | None = None,
        read_receipts: bool = True,
        request_timeout: float = 60.0,
        retry_policy: RetryPolicy | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigError(
                f"unknown signal option(s) {', '.join(sorted(unknown))}; "
                f"accepted: {', '.join(self._OPTIONS)}"
            )
        super().__init__(retry_policy=retry_policy)
        if request_timeout <= 0:
            raise ConfigError("signal: request_timeout must be > 0 seconds")
        self._account = account or token or os.environ.get(ACCOUNT_ENV, "")
        self.endpoint = parse_endpoint(url or os.environ.get(URL_ENV, "") or DEFAULT_URL)
        # "~" expanded: a config file's folders are often written that way.
        self.data_dir = Path(data_dir).expanduser() if data_dir else _default_data_dir()
        self.outbox_dir = Path(outbox_dir).expanduser() if outbox_dir else None
        self.read_receipts = read_receipts
        self.request_timeout = float(request_timeout)
        self.self_uuid = ""  # the account's UUID, learned at start (and from sync messages)
        self.multi_account = False
        self._rpc: RpcConnection | None = None
        self._on_inbound: OnInbound | None = None
        # Envelopes received, in order, not yet handed on. Kept across reconnects, so
        # a connection lost while some wait loses none of them. Loop thread only.
        self._queue: asyncio.Queue[Mapping[str, Any]] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()  # read receipts in flight
        self._handing: asyncio.Future[None] | None = None  # a message being handed on
        self._wrong_account_seen = False

    @property
    def account(self) -> str:
        """The bot's Signal number (``+...``)."""
        return self._account

    def __repr__(self) -> str:
        return f"SignalAdapter(url={str(self.endpoint)!r})"

    # -- lifecycle -------------------------------------------------------------

    async def start(self, on_inbound: OnInbound) -> None:
        """Connect to the daemon, check the account, start taking messages.

        Raises ``ConfigError`` without an account, ``PlatformUnavailable``
        when the daemon cannot be reached (the supervisor retries) and
        ``PlatformAuthError`` when the daemon does not serve the account.
        """
        if self._rpc is not None:
            raise RuntimeError("signal adapter is already started; stop() it first")
        self._account = self._account or os.environ.get(ACCOUNT_ENV, "")
        if not self._account:
            raise ConfigError(
                f"no Signal account: set {ACCOUNT_ENV} to the number signal-cli serves "
                "(or pass account=)"
            )
        if not ACCOUNT_SHAPE.fullmatch(self._account):
            raise ConfigError(
                f"{ACCOUNT_ENV}={self._account!r} is not a Signal number; use the international "
                "form with a leading + (e.g. +4915112345678)"
            )
        self._on_inbound = on_inbound
        if self._queue is None:
            self._queue = asyncio.Queue()
        rpc = RpcConnection(
            self.endpoint, on_notify=self._notified, on_close=self._closed,
            platform=PLATFORM, timeout=self.request_timeout,
        )  # fmt: skip
        self._rpc = rpc
        try:
            await rpc.connect()
            await self._check_account(rpc)
        except BaseException:
            await self.stop()
            raise
        self._dispatcher = asyncio.create_task(self._dispatch(), name="signal-dispatch")
        log.info("signal: connected to signal-cli at %s", self.endpoint)

    async def _check_account(self, rpc: RpcConnection) -> None:
        try:
            accounts = await rpc.call_raw("listAccounts")
        except RpcCallError as exc:
            if exc.code != METHOD_NOT_FOUND:
                raise map_rpc_error("listAccounts", exc.error, platform=PLATFORM) from exc
            self.multi_account = False  # a daemon started with -a serves that one account
        else:
            self.multi_account = True
            numbers = [a.get("number") for a in accounts or () if isinstance(a, Mapping)]
            if self._account not in numbers:
                raise PlatformAuthError(
                    f"the signal-cli daemon at {self.endpoint} has no account {self._account} "
                    f"(it has {', '.join(map(str, numbers)) or 'none'}); register or link it "
                    "with signal-cli first, or set SIGNAL_ACCOUNT to one of those",
                    platform=PLATFORM,
                )
        try:  # the account's own UUID, to know mentions of and replies to the bot
            contacts = await self._call_on(
                rpc, "listContacts", {"recipient": [self._account], "allRecipients": True}
            )
        except PlatformError as exc:
            log.debug("signal: could not look up the account's UUID: %s", exc)
            return
        for contact in contacts or ():
            if isinstance(contact, Mapping) and contact.get("number") == self._account:
                self.self_uuid = str(contact.get("uuid") or "") or self.self_uuid

    async def stop(self) -> None:
        """Close the connection and stop handing on messages. Idempotent."""
        tasks = [t for t in (self._dispatcher, *self._side_tasks) if t is not None]
        handing, self._handing = self._handing, None
        self._dispatcher = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if handing is not None and not handing.done():
            await asyncio.wait({handing}, timeout=5.0)
        rpc, self._rpc = self._rpc, None
        if rpc is not None:
            await rpc.close()

    def _closed(self, reason: BaseException) -> None:
        """The daemon's connection ended under us: the supervisor reconnects."""
        lost = ConnectionLost(f"signal-cli's daemon went away ({reason})", platform=PLATFORM)
        lost.__cause__ = reason
        self.report_failure(lost)

    def _notified(self, method: str, params: Any) -> None:
        if method != "receive":
            return
        found = envelope_of(params)
        if found is None:
            return
        envelope, account, exception = found
        if isinstance(exception, Mapping):  # its message may name the sender: type only
            log.info("signal: the daemon could not read a message (%s)", exception.get("type"))
        if account and account != self._account:
            if self.multi_account:
                return  # another account of the same daemon
            if not self._wrong_account_seen:
                self._wrong_account_seen = True
                self.report_failure(
                    ConfigError(
                        f"the signal-cli daemon at {self.endpoint} serves {account}, not "
                        f"{ACCOUNT_ENV}={self._account}; point SIGNAL_CLI_URL at the right "
                        "daemon or fix SIGNAL_ACCOUNT"
                    )
                )
            return
        if self._queue is not None:
            self._queue.put_nowait(envelope)

    async def _dispatch(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            envelope = await queue.get()
            if envelope.get("syncMessage") is not None:
                # What the account's own other devices did (sent, read): never a turn.
                if envelope.get("sourceNumber") == self._account:
                    self.self_uuid = self.self_uuid or str(envelope.get("sourceUuid") or "")
                continue
            inbound = normalize_envelope(envelope, account=self._account, self_uuid=self.self_uuid)
            if inbound is None:
                log.debug("signal: ignoring an envelope that is no message")
                continue
            if self.read_receipts and inbound.mentions_bot and not inbound.from_self:
                self._spawn(self._receipt(inbound.user_id, inbound.message_id))
            handler = self._on_inbound
            if handler is None:
                continue
            # Shielded: a stop() (a reconnect) while the bot takes the message waits
            # for it rather than lose a message the daemon has already handed over.
            self._handing = asyncio.ensure_future(self._hand_on(handler, inbound))
            await asyncio.shield(self._handing)

    @staticmethod
    async def _hand_on(handler: OnInbound, inbound: Inbound) -> None:
        try:
            await handler(inbound)
        except Exception:  # one bad message must not stop the others
            log.exception("signal: handling message %s failed", inbound.message_id)

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _receipt(self, sender: str, message_id: str) -> None:
        if not message_id.isdigit():
            return
        try:
            await self._call(
                "sendReceipt",
                {"recipient": sender, "targetTimestamp": [int(message_id)], "type": "read"},
            )
        except PlatformError as exc:  # a receipt is a courtesy: never worth a failed turn
            log.debug("signal: read receipt for %s not sent: %s", message_id, exc)

    # -- calls -----------------------------------------------------------------

    async def _call_on(self, rpc: RpcConnection, method: str, params: Mapping[str, Any]) -> Any:
        # Every call names the account: a daemon serving several needs it, one
        # started with -a ignores it.
        return await rpc.call(method, {**params, "account": self._account})

    async def _call(self, method: str, params: Mapping[str, Any]) -> Any:
        rpc = self._rpc
        if rpc is None or rpc.closed.is_set():
            raise PlatformUnavailable(
                f"{method}: not connected to signal-cli's daemon", platform=PLATFORM
            )
        return await self._call_on(rpc, method, params)

    @staticmethod
    def _timestamp(result: Any) -> str:
        if isinstance(result, Mapping) and result.get("timestamp") is not None:
            return str(result["timestamp"])
        return ""

    # -- sending ---------------------------------------------------------------

    def measure(self, markdown: str) -> int:
        """UTF-8 bytes of the plain text Signal gets (its message body limit counts bytes)."""
        return len(to_plain(markdown).encode("utf-8"))

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        """``send`` one chunk; returns its timestamp. ``formatted``: the Markdown rendered
        as plain text with Signal's text styles (bold, italic, strikethrough,
        monospace: ``textStyle``, ``start:length:STYLE`` in UTF-16 units)."""
        params: dict[str, Any] = {**_target(chat_id), "message": text}
        if formatted:
            body, styles = to_styled_plain(text)
            if body:
                params["message"] = body
                if styles:
                    params["textStyle"] = [f"{a}:{n}:{_STYLES[k]}" for a, n, k in styles]
        result = await self._call("send", params)
        return self._timestamp(result)

    async def do_typing(self, chat_id: str, thread_id: str = "") -> None:
        """``sendTyping`` to the person or group (Signal shows it for 15 s)."""
        await self._call("sendTyping", _target(chat_id))

    async def do_send_file(
        self, chat_id: str, attachment: Attachment, data: bytes, *, thread_id: str = ""
    ) -> str:
        """``send`` with the file (a data URI, or a path in ``outbox_dir``) and its caption."""
        params: dict[str, Any] = {**_target(chat_id), "message": attachment.caption}
        if attachment.kind == "voice":
            params["voiceNote"] = True
        path: Path | None = None
        if self.outbox_dir is None:
            mime = attachment.mime or "application/octet-stream"
            name = quote(attachment.name or "file", safe="")
            encoded = base64.b64encode(data).decode("ascii")
            params["attachments"] = [f"data:{mime};filename={name};base64,{encoded}"]
        else:
            path = await asyncio.to_thread(self._write_outbox, attachment.name, data)
            params["attachments"] = [str(path)]
        try:
            result = await self._call("send", params)
        finally:
            if path is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(path.unlink)
        return self._timestamp(result)

    def _write_outbox(self, name: str, data: bytes) -> Path:
        """``data`` as a new file in ``outbox_dir``, under its own (safe) name.

        Made readable by the file's group too, for a daemon that runs as
        another user of the same group; written whole before its name is given.
        """
        assert self.outbox_dir is not None
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name or "file").name).lstrip(".") or "file"
        try:
            self.outbox_dir.mkdir(parents=True, exist_ok=True)
            path = self.outbox_dir / f"{secrets.token_hex(8)}-{safe}"
            tmp = path.with_name(path.name + ".part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise ConfigError(
                f"signal: cannot write the file to send into outbox_dir {self.outbox_dir} "
                f"({exc}); make it a folder this process can write and the daemon can read"
            ) from exc
        return path

    # -- receiving files ---------------------------------------------------------

    async def do_download(self, msg: Inbound, index: int) -> bytes:
        """The bytes of attachment ``index``: from ``data_dir/attachments`` when the
        daemon's folder is here, else ``getAttachment`` (stickers: ``getSticker``)."""
        raw = msg.raw
        if not isinstance(raw, SignalMessage) or index >= len(raw.files):
            raise BadRequest("this message carries no Signal attachment", platform=PLATFORM)
        attachment_id, pack_id, sticker_id = raw.files[index]
        if pack_id:
            result = await self._call("getSticker", {"packId": pack_id, "stickerId": sticker_id})
            return self._decoded(result)
        if not _SAFE_ID.fullmatch(attachment_id) or attachment_id in (".", ".."):
            raise BadRequest(f"unexpected attachment id {attachment_id!r}", platform=PLATFORM)
        path = self.data_dir / "attachments" / attachment_id
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            log.debug("signal: %s not here; fetching it from the daemon", path)
        except OSError as exc:
            log.warning("signal: cannot read %s (%s); fetching it from the daemon", path, exc)
        where = {"groupId": raw.group_id} if raw.group_id else {"recipient": raw.source}
        result = await self._call("getAttachment", {"id": attachment_id, **where})
        return self._decoded(result)

    @staticmethod
    def _decoded(result: Any) -> bytes:
        data = result.get("data") if isinstance(result, Mapping) else None
        if not isinstance(data, str):
            raise PlatformUnavailable("the daemon sent no file data", platform=PLATFORM)
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PlatformUnavailable(
                "the daemon sent file data that is not base64", platform=PLATFORM
            ) from exc
