"""The people's side of the Matrix tests: matrix-nio clients of the test Synapse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DownloadResponse,
    RoomCreateResponse,
    RoomPreset,
    RoomSendResponse,
    SyncResponse,
    TypingNoticeEvent,
    UploadResponse,
)

from synapse_server import Registered, Synapse

Event = dict[str, Any]


class Person:
    """One account, synced by hand: ``events`` keeps every timeline event seen
    (with its ``room_id``), ``typing`` the user ids ever seen typing and ``typing_now``
    those typing as of the last notice, per room."""

    def __init__(self, server: Synapse, account: Registered) -> None:
        self.account = account
        self.user_id = account.user_id
        config = AsyncClientConfig(max_timeouts=3, encryption_enabled=False)
        self.client = AsyncClient(server.url, account.user_id, config=config)
        self.client.user_id = account.user_id
        self.client.device_id = account.device_id
        self.client.access_token = account.access_token
        self.events: list[Event] = []
        self.typing: dict[str, set[str]] = {}
        self.typing_now: dict[str, set[str]] = {}

    async def __aenter__(self) -> Person:
        await self.sync(0)  # from now on: only what is new
        self.events.clear()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def sync(self, timeout_ms: int = 500) -> None:
        resp = await self.client.sync(timeout=timeout_ms)
        assert isinstance(resp, SyncResponse), resp
        for room_id, info in resp.rooms.join.items():
            for event in info.timeline.events:
                self.events.append({**event.source, "room_id": room_id})
            for ephemeral in info.ephemeral:
                if isinstance(ephemeral, TypingNoticeEvent):
                    self.typing.setdefault(room_id, set()).update(ephemeral.users)
                    self.typing_now[room_id] = set(ephemeral.users)

    async def wait_for(self, match: Callable[[Event], bool], timeout: float = 30.0) -> Event:
        """The first event seen (or arriving within ``timeout``) that ``match`` accepts."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if match(event):
                    return event
            if time.monotonic() > deadline:
                seen = [(e.get("sender"), e.get("type"), e.get("content")) for e in self.events]
                raise AssertionError(f"no matching event within {timeout:g}s; seen: {seen}")
            await self.sync()

    def messages(self, room_id: str, sender: str) -> list[Event]:
        """``m.room.message`` events of ``sender`` in ``room_id`` seen so far, edits excluded."""
        return [
            e
            for e in self.events
            if e["room_id"] == room_id
            and e.get("sender") == sender
            and e.get("type") == "m.room.message"
            and not is_edit(e)
        ]

    async def wait_messages(
        self, room_id: str, sender: str, count: int, timeout: float = 30.0
    ) -> list[Event]:
        """The first ``count`` messages of ``sender`` in the room, waiting for them."""
        deadline = time.monotonic() + timeout
        while len(found := self.messages(room_id, sender)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} messages from {sender}: {found}")
            await self.sync()
        return found[:count]

    async def quiet(self, seconds: float = 1.0) -> None:
        """Keep syncing for ``seconds`` (to see that nothing more comes)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self.sync(200)

    async def create_room(
        self,
        invite: list[str],
        *,
        direct: bool = False,
        name: str = "",
        initial_state: list[dict[str, Any]] | None = None,
    ) -> str:
        resp = await self.client.room_create(
            name=name or None,
            invite=invite,
            is_direct=direct,
            preset=RoomPreset.trusted_private_chat if direct else RoomPreset.private_chat,
            initial_state=initial_state or [],
        )
        assert isinstance(resp, RoomCreateResponse), resp
        return str(resp.room_id)

    async def join(self, room_id: str) -> None:
        resp = await self.client.join(room_id)
        assert not hasattr(resp, "status_code"), resp

    async def wait_joined(self, room_id: str, user_id: str, timeout: float = 30.0) -> None:
        """Until ``user_id`` is a joined member of the room (the bot took the invite)."""
        deadline = time.monotonic() + timeout
        while True:
            resp = await self.client.joined_members(room_id)
            if user_id in [m.user_id for m in getattr(resp, "members", [])]:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{user_id} never joined {room_id}")
            await asyncio.sleep(0.1)

    async def send(
        self, room_id: str, content: Mapping[str, Any], event_type: str = "m.room.message"
    ) -> str:
        resp = await self.client.room_send(room_id, event_type, dict(content))
        assert isinstance(resp, RoomSendResponse), resp
        return str(resp.event_id)

    async def say(self, room_id: str, text: str, **extra: Any) -> str:
        return await self.send(room_id, {"msgtype": "m.text", "body": text, **extra})

    async def upload(self, data: bytes, mime: str, name: str) -> str:
        import io

        resp, _ = await self.client.upload(
            io.BytesIO(data), content_type=mime, filename=name, filesize=len(data)
        )
        assert isinstance(resp, UploadResponse), resp
        return str(resp.content_uri)

    async def download(self, mxc: str) -> bytes:
        resp = await self.client.download(mxc=mxc)
        assert isinstance(resp, DownloadResponse), resp
        assert isinstance(resp.body, bytes)
        return resp.body


def is_edit(event: Event) -> bool:
    rel = (event.get("content") or {}).get("m.relates_to") or {}
    return bool(rel.get("rel_type") == "m.replace")


def body(event: Event) -> str:
    """The text shown for a message: the latest edit's, when it was edited (see ``final``)."""
    return str((event.get("content") or {}).get("body") or "")


def final(events: list[Event], event_id: str) -> dict[str, Any]:
    """The content of ``event_id`` after its last edit among ``events``."""
    content: dict[str, Any] = {}
    for event in events:
        if event.get("event_id") == event_id:
            content = dict(event["content"])
        rel = (event.get("content") or {}).get("m.relates_to") or {}
        if rel.get("rel_type") == "m.replace" and rel.get("event_id") == event_id:
            content = dict(event["content"]["m.new_content"])
    return content


class CuttableProxy:
    """A TCP relay on 127.0.0.1 in front of the homeserver that can cut every connection
    and refuse new ones (``cut()``) until ``restore()``: a network outage, for the bot."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.up = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def cut(self) -> None:
        self.up = False
        for writer in list(self._writers):
            writer.close()

    def restore(self) -> None:
        self.up = True

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
