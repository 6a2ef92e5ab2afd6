"""A protocol-faithful fake of signal-cli's JSON-RPC daemon (``signal-cli -a NUMBER daemon --tcp``).

Served on 127.0.0.1 (port 0 by default), newline-delimited JSON-RPC 2.0 both
ways, as ``signal-cli-jsonrpc(5)`` and signal-cli's own classes describe it:

- incoming messages are notifications ``{"jsonrpc":"2.0","method":"receive",
  "params":{"envelope":{...},"account":"+..."}}``, the envelope built field by
  field as ``JsonMessageEnvelope``/``JsonDataMessage``/``JsonSyncMessage``...
  serialise them (null fields present as ``null``; the ``NON_NULL`` ones left
  out when empty);
- ``send`` answers ``{"timestamp":..., "results":[{"recipientAddress":
  {"uuid","number","username"}, "type":"SUCCESS"}]}`` (``groupId`` added for
  groups); a send that reached nobody fails as ``SendMessageResultUtils`` makes
  it fail: ``-5`` for rate limits, ``-4`` for untrusted identities, ``-1``
  "Failed to send message" otherwise, with the results in
  ``error.data.response``;
- ``sendTyping``, ``sendReceipt``, ``getAttachment``, ``getSticker``,
  ``listContacts`` and (multi-account mode only) ``listAccounts``; anything
  else is ``-32601 "Method not implemented"``; a bad line is ``-32700``.
- Parameters are read as signal-cli's ``JsonRpcNamespace`` reads them: a list
  parameter may be one value or a list, under its name or its plural
  (``attachment``/``attachments``).

Receive modes: ``on-connection`` (default) keeps envelopes that arrive while no
client is connected and hands them to the next one (as the daemon does with
``--receive-mode=on-connection``: it receives from Signal's servers only while
a client is connected, so messages wait there); ``on-start`` drops them.
Attachments of injected messages are written to ``<data_dir>/attachments/<id>``
as the daemon's ``AttachmentStore`` does.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import secrets
import time
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote


@dataclass(frozen=True)
class Person:
    """A Signal user as the daemon knows them: ACI UUID, number (may be hidden), profile name."""

    uuid: str
    number: str | None
    name: str | None

    @staticmethod
    def new(name: str, number: str | None = None) -> Person:
        return Person(str(uuidlib.uuid4()), number, name)

    def address(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "number": self.number, "username": None}


@dataclass
class Sent:
    """One ``send`` the fake took: to ``recipients`` or ``group_id``."""

    timestamp: int
    recipients: list[str]
    group_id: str | None
    message: str
    files: list[tuple[str, str, bytes]]  # (file name, mime, bytes)
    params: dict[str, Any]


@dataclass
class Call:
    method: str
    params: dict[str, Any]


@dataclass
class Failure:
    code: int
    message: str
    data: Any = None


def new_group_id() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


@dataclass
class Group:
    id: str
    name: str
    members: list[Person] = field(default_factory=list)


class FakeSignalCli:
    """The daemon. ``await start()``, ``url`` for ``SIGNAL_CLI_URL``, ``inject_*`` to
    make people write, ``sent``/``calls`` to see what the client did."""

    def __init__(
        self,
        data_dir: Path,
        *,
        account: str = "+15550000001",
        multi_account: bool = False,
        receive_mode: str = "on-connection",
        socket_path: Path | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.data_dir = data_dir
        self.account = account
        self.me = Person(str(uuidlib.uuid4()), account, "onethread bot")
        self.multi_account = multi_account
        self.receive_mode = receive_mode
        self.port = 0
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._held: list[dict[str, Any]] = []  # envelopes waiting for a client
        self._tasks: set[asyncio.Future[None]] = set()  # requests being handled
        self._clock = itertools.count(int(time.time() * 1000))
        self.people: dict[str, Person] = {self.me.uuid: self.me}
        self.groups: dict[str, Group] = {}
        self.unregistered: set[str] = set()
        self.calls: list[Call] = []
        self.sent: list[Sent] = []
        self.failures: dict[str, list[Failure]] = {}
        self.stalled: set[str] = set()  # methods never answered (a daemon stuck mid-call)
        self._changed = asyncio.Condition()
        self.connections = 0

    # -- server ----------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.socket_path is not None:
            return f"unix://{self.socket_path}"
        return f"tcp://127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self.socket_path is not None:  # `daemon --socket PATH`
            self._server = await asyncio.start_unix_server(self._serve, str(self.socket_path))
            return
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """The daemon goes away: the listening socket and every connection close."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._clients):
            writer.close()
        self._clients.clear()
        for task in list(self._tasks):
            task.cancel()
        if server is not None:
            await server.wait_closed()

    async def restart(self) -> None:
        await self.stop()
        await self.start()  # same port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        self.connections += 1
        held, self._held = self._held, []
        for envelope in held:
            self._write(writer, self._notification(envelope))
        async with self._changed:
            self._changed.notify_all()
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ConnectionError, ValueError):
                    break
                if not line:
                    break
                # signal-cli runs each request on its own (virtual) thread.
                task = asyncio.ensure_future(self._handle_line(writer, line))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            self._clients.discard(writer)
            writer.close()

    def _write(self, writer: asyncio.StreamWriter, obj: Any) -> None:
        if writer.is_closing():
            return
        writer.write((json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8"))

    async def wait_connected(self, connections: int, timeout: float = 10.0) -> None:
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: self.connections >= connections), timeout
            )

    # -- requests ----------------------------------------------------------------

    async def _handle_line(self, writer: asyncio.StreamWriter, line: bytes) -> None:
        if not line.strip():
            self._write(writer, _error(None, -32700, "Empty input line"))
            return
        try:
            request = json.loads(line)
        except ValueError as exc:
            self._write(writer, _error(None, -32700, str(exc)))
            return
        if not isinstance(request, dict):
            self._write(writer, _error(None, -32600, "unexpected type"))
            return
        request_id = request.get("id")
        if request.get("jsonrpc") != "2.0":
            self._write(writer, _error(request_id, -32600, "only jsonrpc version 2.0 is supported"))
            return
        method = request.get("method")
        if not isinstance(method, str):
            self._write(writer, _error(request_id, -32600, "method field must be set"))
            return
        params = request.get("params") or {}
        self.calls.append(Call(method, dict(params)))
        async with self._changed:
            self._changed.notify_all()
        scripted = self.failures.get(method)
        if scripted:
            failure = scripted.pop(0)
            self._write(writer, _error(request_id, failure.code, failure.message, failure.data))
            return
        if method in self.stalled:
            await asyncio.Event().wait()  # until the connection or the server goes
        handler = getattr(self, f"_rpc_{method}", None)
        if handler is None or (method == "listAccounts" and not self.multi_account):
            self._write(writer, _error(request_id, -32601, "Method not implemented"))
            return
        try:
            result = await handler(params)
        except RpcFailure as exc:
            self._write(writer, _error(request_id, exc.code, exc.message, exc.data))
            return
        if request_id is not None:
            self._write(writer, {"jsonrpc": "2.0", "result": result, "id": request_id})

    def fail_next(self, method: str, code: int, message: str, data: Any = None) -> None:
        """The next call of ``method`` gets this JSON-RPC error."""
        self.failures.setdefault(method, []).append(Failure(code, message, data))

    def rate_limit_next_send(self, retry_after_seconds: int | None) -> None:
        """The next ``send`` fails as signal-cli's does when only rate limits came back."""
        result: dict[str, Any] = {
            "recipientAddress": self.me.address(),
            "type": "RATE_LIMIT_FAILURE",
        }
        if retry_after_seconds is not None:
            result["retryAfterSeconds"] = retry_after_seconds
        data = {"response": {"timestamp": next(self._clock), "results": [result]}}
        self.fail_next("send", -5, "Failed to send message due to rate limiting", data)

    async def _rpc_listAccounts(self, params: Mapping[str, Any]) -> Any:  # noqa: N802
        return [{"number": self.account}]

    async def _rpc_listContacts(self, params: Mapping[str, Any]) -> Any:  # noqa: N802
        self._check_account(params)
        wanted = set(_list(params, "recipient"))
        out = []
        for person in self.people.values():
            if wanted and person.number not in wanted and person.uuid not in wanted:
                continue
            out.append(_contact(person))
        return out

    async def _rpc_send(self, params: Mapping[str, Any]) -> Any:
        self._check_account(params)
        recipients = _list(params, "recipient")
        group_ids = _list(params, "groupId")
        if not recipients and not group_ids:
            raise RpcFailure(-1, "No recipients given")
        message = str(params.get("message") or "")
        files = [self._read_attachment(a) for a in _list(params, "attachment")]
        if not message and not files:
            raise RpcFailure(
                -1,
                "Sending empty message is not allowed, either a message, attachment or sticker "
                "must be given.",
            )
        for style in _list(params, "textStyle"):  # SendCommand.parseTextStyles
            match = re.fullmatch(r"(\d+):(\d+):(.+)", str(style))
            if not match:
                raise RpcFailure(
                    -1, f"Invalid textStyle syntax ({style}) expected 'start:length:STYLE'"
                )
            if match[3] not in ("NONE", "BOLD", "ITALIC", "SPOILER", "STRIKETHROUGH", "MONOSPACE"):
                raise RpcFailure(-1, f"Invalid style: {match[3]}")
        timestamp = next(self._clock)
        results: list[dict[str, Any]] = []
        for group_id in group_ids:
            group = self.groups.get(group_id)
            if group is None:
                raise RpcFailure(-1, f"Group not found: {group_id}")
            for member in group.members:
                if member is not self.me:
                    results.append({"recipientAddress": member.address(), "groupId": group_id,
                                    "type": "SUCCESS"})  # fmt: skip
        for recipient in recipients:
            person = self._person(recipient)
            kind = "UNREGISTERED_FAILURE" if recipient in self.unregistered else "SUCCESS"
            results.append({"recipientAddress": person.address(), "type": kind})
        response = {"timestamp": timestamp, "results": results}
        if results and all(r["type"] != "SUCCESS" for r in results):
            raise RpcFailure(-1, "Failed to send message", {"response": response})
        self.sent.append(Sent(timestamp, recipients, group_ids[0] if group_ids else None,
                              message, files, dict(params)))  # fmt: skip
        async with self._changed:
            self._changed.notify_all()
        return response

    async def _rpc_sendTyping(self, params: Mapping[str, Any]) -> Any:  # noqa: N802
        self._check_account(params)
        recipients = _list(params, "recipient")
        group_ids = _list(params, "groupId")
        if not recipients and not group_ids:
            raise RpcFailure(-1, "No recipients given")
        results = [{"recipientAddress": self._person(r).address(), "type": "SUCCESS"}
                   for r in recipients]  # fmt: skip
        return {"timestamp": next(self._clock), "results": results}

    async def _rpc_sendReceipt(self, params: Mapping[str, Any]) -> Any:  # noqa: N802
        self._check_account(params)
        recipient = params.get("recipient")
        if isinstance(recipient, list):
            recipient = recipient[0] if recipient else None
        if not recipient:
            raise RpcFailure(-32602, "recipient is required")
        if not _list(params, "targetTimestamp"):
            raise RpcFailure(-32602, "target-timestamp is required")
        kind = params.get("type") or "read"
        if kind not in ("read", "viewed"):
            raise RpcFailure(-1, f"Unknown receipt type: {kind}")
        person = self._person(str(recipient))
        return {"timestamp": next(self._clock),
                "results": [{"recipientAddress": person.address(), "type": "SUCCESS"}]}  # fmt: skip

    async def _rpc_getAttachment(self, params: Mapping[str, Any]) -> Any:  # noqa: N802
        self._check_account(params)
        attachment_id = str(params.get("id") or "")
        if not attachment_id:
            raise RpcFailure(-1, "Missing attachment id parameter")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", attachment_id)
        path = self.data_dir / "attachments" / safe
        if not path.is_file():
            raise RpcFailure(-1, f"Could not find attachment with ID: {attachment_id}")
        return {"data": base64.b64encode(path.read_bytes()).decode("ascii")}

    async def _rpc_getSticker(self, params: Mapping[str, Any]) -> Any:  # noqa: N802
        path = self.data_dir / "stickers" / str(params.get("packId")) / str(params.get("stickerId"))
        if not path.is_file():
            raise RpcFailure(-1, "Sticker not found")
        return {"data": base64.b64encode(path.read_bytes()).decode("ascii")}

    def _check_account(self, params: Mapping[str, Any]) -> None:
        account = params.get("account")
        if self.multi_account and account is not None and account != self.account:
            raise RpcFailure(-32602, "Specified account does not exist")

    def _person(self, recipient: str) -> Person:
        for person in self.people.values():
            if recipient in (person.uuid, person.number):
                return person
        person = Person(recipient if "-" in recipient else str(uuidlib.uuid4()),
                        recipient if recipient.startswith("+") else None, None)  # fmt: skip
        self.people[person.uuid] = person
        return person

    def _read_attachment(self, value: str) -> tuple[str, str, bytes]:
        """A ``send`` attachment: an RFC 2397 data URI or a path on this machine."""
        match = re.fullmatch(
            r"data:(?P<type>.+?/.+?)?(?P<parameters>;.+?=.+?)?(?P<base64>;base64)?,(?P<data>.+)",
            value,
            re.DOTALL | re.IGNORECASE,
        )
        if match:
            parameters = dict(
                (k, unquote(v))
                for k, v in re.findall(r";([^;=]+)=([^;]+)", match["parameters"] or "")
            )
            raw = match["data"]
            data = base64.b64decode(raw) if match["base64"] else unquote(raw).encode()
            return parameters.get("filename", ""), match["type"] or "text/plain", data
        path = Path(value)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RpcFailure(
                -32603, f"Failed to send message: {exc} (FileNotFoundException)"
            ) from exc
        return path.name, "", data

    # -- people write ----------------------------------------------------------

    def person(self, name: str, number: str | None = None) -> Person:
        p = Person.new(name, number)
        self.people[p.uuid] = p
        return p

    def group(self, name: str, *members: Person) -> Group:
        g = Group(new_group_id(), name, [self.me, *members])
        self.groups[g.id] = g
        return g

    def attachment(
        self, data: bytes, content_type: str, filename: str | None = None, *, store: bool = True
    ) -> dict[str, Any]:
        """A received attachment as ``JsonAttachment``; its bytes in ``data_dir/attachments``."""
        remote = base64.urlsafe_b64encode(secrets.token_bytes(15)).decode("ascii")
        ext = ""
        if filename and "." in filename:
            ext = "." + filename.rsplit(".", 1)[1]
        elif content_type == "image/png":
            ext = ".png"
        attachment_id = re.sub(r"[^A-Za-z0-9_.-]", "_", remote) + ext
        if store:
            folder = self.data_dir / "attachments"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / attachment_id).write_bytes(data)
        return {"contentType": content_type, "filename": filename, "id": attachment_id,
                "size": len(data), "width": None, "height": None, "caption": None,
                "uploadTimestamp": next(self._clock)}  # fmt: skip

    def _envelope(self, sender: Person, timestamp: int, **content: Any) -> dict[str, Any]:
        envelope: dict[str, Any] = {
            "source": sender.number or sender.uuid,
            "sourceNumber": sender.number,
            "sourceUuid": sender.uuid,
            "sourceName": sender.name,
            "sourceDevice": 1,
            "timestamp": timestamp,
            "serverReceivedTimestamp": timestamp + 20,
            "serverDeliveredTimestamp": timestamp + 40,
        }
        envelope.update(content)
        return envelope

    def _data_message(
        self,
        timestamp: int,
        text: str | None,
        *,
        group: Group | None = None,
        attachments: list[dict[str, Any]] | None = None,
        mentions: list[dict[str, Any]] | None = None,
        quote: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"timestamp": timestamp, "message": text, "expiresInSeconds": 0,
                                "isExpirationUpdate": False, "viewOnce": False}  # fmt: skip
        if quote is not None:
            data["quote"] = quote
        if mentions:
            data["mentions"] = mentions
        if attachments:
            data["attachments"] = attachments
        if group is not None:
            data["groupInfo"] = {"groupId": group.id, "groupName": group.name, "revision": 3,
                                 "type": "DELIVER"}  # fmt: skip
        return data

    def mention_of(self, person: Person, start: int = 0) -> dict[str, Any]:
        return {"name": person.number or person.uuid, "number": person.number,
                "uuid": person.uuid, "start": start, "length": 1}  # fmt: skip

    def quote_of(self, sent_timestamp: int, author: Person, text: str) -> dict[str, Any]:
        return {"id": sent_timestamp, "author": author.number or author.uuid,
                "authorNumber": author.number, "authorUuid": author.uuid, "text": text,
                "attachments": []}  # fmt: skip

    def inject_dm(
        self,
        sender: Person,
        text: str | None,
        *,
        attachments: list[dict[str, Any]] | None = None,
        quote: dict[str, Any] | None = None,
    ) -> int:
        timestamp = next(self._clock)
        data = self._data_message(timestamp, text, attachments=attachments, quote=quote)
        self.emit(self._envelope(sender, timestamp, dataMessage=data))
        return timestamp

    def inject_group(
        self,
        sender: Person,
        group: Group,
        text: str | None,
        *,
        mentions: list[dict[str, Any]] | None = None,
        quote: dict[str, Any] | None = None,
    ) -> int:
        timestamp = next(self._clock)
        data = self._data_message(timestamp, text, group=group, mentions=mentions, quote=quote)
        self.emit(self._envelope(sender, timestamp, dataMessage=data))
        return timestamp

    def inject_sync_sent(self, to: Person, text: str) -> int:
        """What the account's phone sent to ``to``, as a sync message to this device."""
        timestamp = next(self._clock)
        sent = {"destination": to.number or to.uuid, "destinationNumber": to.number,
                "destinationUuid": to.uuid,
                **self._data_message(timestamp, text)}  # fmt: skip
        self.emit(self._envelope(self.me, timestamp, syncMessage={"sentMessage": sent}))
        return timestamp

    def inject_receipt(self, sender: Person, timestamps: list[int]) -> None:
        timestamp = next(self._clock)
        receipt = {"when": timestamp, "isDelivery": False, "isRead": True, "isViewed": False,
                   "timestamps": timestamps}  # fmt: skip
        self.emit(self._envelope(sender, timestamp, receiptMessage=receipt))

    def inject_typing(self, sender: Person) -> None:
        timestamp = next(self._clock)
        self.emit(
            self._envelope(
                sender, timestamp, typingMessage={"action": "STARTED", "timestamp": timestamp}
            )
        )

    def emit(self, envelope: dict[str, Any]) -> None:
        """Hand ``envelope`` to every connected client (held for the next one if none)."""
        if not self._clients:
            if self.receive_mode == "on-connection":
                self._held.append(envelope)
            return
        for writer in list(self._clients):
            self._write(writer, self._notification(envelope))

    def _notification(self, envelope: dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "method": "receive",
                "params": {"envelope": envelope, "account": self.account}}  # fmt: skip

    # -- waiting ---------------------------------------------------------------

    async def wait_for_sent(self, count: int, timeout: float = 10.0) -> list[Sent]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.sent) >= count),
                                   timeout)  # fmt: skip
        return self.sent[:count]

    async def wait_for_call(self, method: str, timeout: float = 10.0) -> Call:
        def found() -> Call | None:
            return next((c for c in self.calls if c.method == method), None)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None), timeout)
        call = found()
        assert call is not None
        return call


class RpcFailure(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        self.code = code
        self.message = message
        self.data = data
        super().__init__(message)


def _error(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message, "data": data},
            "id": request_id}  # fmt: skip


def _list(params: Mapping[str, Any], name: str) -> list[Any]:
    """A list parameter as ``JsonRpcNamespace.getList`` reads it: one value, a list, or
    the plural key."""
    value = params.get(name)
    if value is None:
        value = params.get(name + "s")
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _contact(person: Person) -> dict[str, Any]:
    return {"number": person.number, "uuid": person.uuid, "username": None,
            "name": person.name or "", "givenName": None, "familyName": None,
            "nickName": None, "nickGivenName": None, "nickFamilyName": None, "note": None,
            "color": None, "isArchived": False, "isBlocked": False, "isHidden": False,
            "messageExpirationTime": 0, "profileSharing": False, "unregistered": False,
            "profile": None, "internal": None}  # fmt: skip


def sticker_file(data_dir: Path, pack_id: str, sticker_id: int, data: bytes) -> None:
    folder = data_dir / "stickers" / pack_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(sticker_id)).write_bytes(data)
