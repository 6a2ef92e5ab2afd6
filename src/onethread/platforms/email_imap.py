"""The IMAP side of the email adapter: one aioimaplib connection watching a folder.

:class:`MailUrl` reads ``imaps://host:993`` (TLS from the start),
``imap://host:143`` (STARTTLS, required), ``smtps://host:465`` and
``smtp://host:587`` (STARTTLS, required). ``?plaintext`` (loopback hosts
only, for tests) allows a connection without TLS.

:class:`Inbox` logs in, selects the folder and reads its ``UIDVALIDITY``;
lists the UIDs after the last one processed; fetches a mail without setting
``\\Seen`` (``BODY.PEEK[]``); marks a processed mail with ``\\Seen`` and the
keyword :data:`DONE_KEYWORD` (an ignored one with the keyword only, so that a
person reading the mailbox still sees it unread); and waits for new mail
with IDLE (RFC 2177), or sleeps ``poll_interval`` when the server lacks IDLE.

aioimaplib (untyped) is used only here, behind these typed methods; its
errors become ``onethread.errors`` in :func:`map_imap_errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aioimaplib

from ..errors import ConfigError, ConnectionLost, PlatformAuthError, PlatformUnavailable

__all__ = ["DONE_KEYWORD", "Inbox", "MailUrl", "map_imap_errors"]

log = logging.getLogger("onethread.platforms.email")

PLATFORM = "email"
#: The IMAP keyword on every mail the adapter has processed (answered or ignored).
DONE_KEYWORD = "OnethreadDone"

_DEFAULT_PORTS = {"imaps": 993, "imap": 143, "smtps": 465, "smtp": 587}
_FETCH_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_FETCH_UID = re.compile(rb"UID (\d+)")
_FETCH_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_CODE = re.compile(r"\[(UIDVALIDITY) (\d+)\]")


@dataclass(frozen=True, slots=True)
class MailUrl:
    """A mail server address: ``scheme://[user@]host[:port][?plaintext]``.

    ``tls``: ``"implicit"`` (imaps, smtps), ``"starttls"`` (imap, smtp) or
    ``"none"`` (``?plaintext``, accepted for loopback hosts only).
    """

    scheme: str
    host: str
    port: int
    tls: str
    username: str = ""

    @classmethod
    def parse(cls, url: str, *, kinds: tuple[str, str], variable: str) -> MailUrl:
        """Read ``url``, one of the two schemes in ``kinds`` (e.g. ``("imaps", "imap")``).

        Raises ``ConfigError`` naming ``variable`` and the accepted forms.
        """
        example = f"{kinds[0]}://mail.example.org:{_DEFAULT_PORTS[kinds[0]]}"
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"{variable} is not a URL ({exc}); e.g. {example}") from exc
        if parts.scheme not in kinds or not parts.hostname:
            raise ConfigError(
                f"{variable} must look like {example} (TLS) or "
                f"{kinds[1]}://mail.example.org:{_DEFAULT_PORTS[kinds[1]]} (STARTTLS), "
                f"not {url!r}"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"plaintext"}
        if unknown or parts.path not in ("", "/"):
            raise ConfigError(
                f"{variable}: only ?plaintext (loopback tests) may follow the host and port"
            )
        tls = "implicit" if parts.scheme == kinds[0] else "starttls"
        if "plaintext" in query:
            if not _loopback(parts.hostname) or parts.scheme != kinds[1]:
                raise ConfigError(
                    f"{variable}: ?plaintext sends the password unencrypted and is allowed only "
                    f"with {kinds[1]}:// on a loopback address (a local test server)"
                )
            tls = "none"
        return cls(
            parts.scheme,
            parts.hostname,
            port or _DEFAULT_PORTS[parts.scheme],
            tls,
            unquote(parts.username or ""),
        )

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def map_imap_errors(what: str) -> Iterator[None]:
    """Translate aioimaplib, TLS and network errors raised in the block into ``onethread.errors``.

    A TLS certificate failure is ``PlatformAuthError`` (retrying cannot fix
    it; the message names the fix); a refused or dropped connection, a
    timeout or an IMAP protocol abort is ``PlatformUnavailable``.
    """
    try:
        yield
    except ssl.SSLCertVerificationError as exc:
        raise PlatformAuthError(
            f"{what}: the server's TLS certificate was not accepted ({exc.verify_message}); "
            "check the host name in the URL, or pass tls_ca_file= for a private CA",
            platform=PLATFORM,
        ) from exc
    except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
        raise PlatformUnavailable(
            f"{what}: {type(exc).__name__}: {exc}", platform=PLATFORM
        ) from exc


class Inbox:
    """One IMAP connection to ``folder``. Used by one task at a time (the adapter's watcher)."""

    def __init__(
        self,
        url: MailUrl,
        username: str,
        password: str,
        *,
        ssl_context: ssl.SSLContext,
        folder: str = "INBOX",
        timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.username = username
        self._password = password
        self.ssl_context = ssl_context
        self.folder = folder
        self.timeout = timeout
        self.uidvalidity = 0
        self.idle = False
        self._client: Any = None
        self._lost = asyncio.Event()

    async def connect(self) -> None:
        """Connect (TLS or STARTTLS), log in and select the folder.

        Raises ``PlatformAuthError`` for rejected credentials or certificate,
        ``PlatformUnavailable`` when the server cannot be reached.
        """
        implicit = self.url.tls == "implicit"
        with map_imap_errors(f"IMAP {self.url}"):
            client = aioimaplib.IMAP4(
                host=self.url.host,
                port=self.url.port,
                timeout=self.timeout,
                conn_lost_cb=lambda exc: self._lost.set(),
                ssl_context=self.ssl_context if implicit else None,
            )
            self._client = client
            await client.wait_hello_from_server()
            if self.url.tls == "starttls":
                await self._starttls(client)
            response = await client.login(self.username, self._password)
        if response.result != "OK":
            raise PlatformAuthError(
                f"the IMAP server {self.url} refused the login of {self.username!r} "
                f"({_text(response)}); check EMAIL_ADDRESS and EMAIL_PASSWORD (many providers "
                "need an app password)",
                platform=PLATFORM,
            )
        with map_imap_errors(f"IMAP {self.url}"):
            if "CAPABILITY" not in _text(response).upper():  # not sent with the OK: ask
                await client.protocol.capability()
            selected = await client.select(self.folder)
        if selected.result != "OK":
            raise ConfigError(
                f"the IMAP folder {self.folder!r} cannot be opened: {_text(selected)}"
            )
        for line in selected.lines:
            for name, value in _CODE.findall(_decode(line)):
                if name == "UIDVALIDITY":
                    self.uidvalidity = int(value)
        self.idle = client.has_capability("IDLE")

    async def _starttls(self, client: Any) -> None:
        """RFC 3501 STARTTLS: aioimaplib sends the command; asyncio upgrades the transport."""
        protocol = client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise PlatformAuthError(
                f"the IMAP server {self.url} offers no STARTTLS; use imaps:// (port 993)",
                platform=PLATFORM,
            )
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        response = await protocol.execute(command)
        if response.result != "OK":
            raise PlatformUnavailable(f"STARTTLS refused: {_text(response)}", platform=PLATFORM)
        loop = asyncio.get_running_loop()
        protocol.transport = await loop.start_tls(
            protocol.transport, protocol, self.ssl_context, server_hostname=self.url.host
        )
        await protocol.capability()  # RFC 3501: forget what was said before TLS

    def _running(self) -> Any:
        if self._client is None or self._lost.is_set():
            raise ConnectionLost(f"the IMAP connection to {self.url} was lost", platform=PLATFORM)
        return self._client

    async def _uid(self, command: str, *args: str) -> Any:
        client = self._running()
        with map_imap_errors(f"IMAP UID {command}"):
            if command == "SEARCH":
                response = await client.uid_search(*args, charset=None)
            else:
                response = await client.uid(command, *args)
        if response.result != "OK":
            raise PlatformUnavailable(
                f"IMAP UID {command} failed: {_text(response)}", platform=PLATFORM
            )
        return response

    async def uids_after(self, last: int) -> list[int]:
        """UIDs greater than ``last``, in order (``n:*`` also names the highest UID: dropped)."""
        response = await self._uid("SEARCH", f"UID {last + 1}:*")
        return sorted(u for u in _search_uids(response.lines) if u > last)

    async def unprocessed(self) -> list[int]:
        """UIDs of mail without :data:`DONE_KEYWORD` (used when ``UIDVALIDITY`` changed)."""
        response = await self._uid("SEARCH", "UNKEYWORD", DONE_KEYWORD)
        return sorted(_search_uids(response.lines))

    async def info(self, uid: int) -> tuple[int, frozenset[str]] | None:
        """The size in bytes and the flags of mail ``uid`` (``None``: it is gone)."""
        response = await self._uid("FETCH", str(uid), "(UID RFC822.SIZE FLAGS)")
        for line in response.lines:
            if isinstance(line, bytes | bytearray) and _uid_of(line) == uid:
                size = _FETCH_SIZE.search(line)
                flags = _FETCH_FLAGS.search(line)
                if size:
                    found = flags.group(1).decode(errors="replace").split() if flags else []
                    return int(size.group(1)), frozenset(found)
        return None

    async def fetch(self, uid: int, part: str = "") -> bytes | None:
        """Mail ``uid``'s bytes (``part="HEADER"``: the header only), not marking it seen."""
        response = await self._uid("FETCH", str(uid), f"(UID BODY.PEEK[{part}])")
        lines = response.lines
        for i, line in enumerate(lines[:-1]):
            if isinstance(line, bytes | bytearray) and b"FETCH" in line and line.endswith(b"}"):
                if _uid_of(line) in (uid, None):
                    return bytes(lines[i + 1])
        return None

    async def mark(self, uid: int, *, seen: bool) -> None:
        """Flag mail ``uid`` processed: :data:`DONE_KEYWORD`, and ``\\Seen`` when ``seen``."""
        flags = f"(\\Seen {DONE_KEYWORD})" if seen else f"({DONE_KEYWORD})"
        await self._uid("STORE", str(uid), "+FLAGS.SILENT", flags)

    async def wait(self, timeout: float) -> None:
        """Return when new mail may have arrived: on an IDLE push, else after ``timeout``.

        Without IDLE it sleeps ``timeout`` (the polling interval). A lost
        connection ends the wait with ``ConnectionLost``.
        """
        client = self._running()
        if not self.idle:
            lost = asyncio.ensure_future(self._lost.wait())
            try:
                await asyncio.wait({lost}, timeout=timeout)
            finally:
                lost.cancel()
            self._running()
            return
        with map_imap_errors("IMAP IDLE"):
            idle = await client.idle_start(timeout=timeout)
            lost = asyncio.ensure_future(self._lost.wait())
            try:
                while True:
                    push = asyncio.ensure_future(client.wait_server_push(timeout=timeout + 5))
                    await asyncio.wait({push, lost}, return_when=asyncio.FIRST_COMPLETED)
                    if not push.done():  # the connection dropped while idling
                        push.cancel()
                        break
                    message = push.result()
                    if message == aioimaplib.STOP_WAIT_SERVER_PUSH:
                        break  # our own timeout: re-issue IDLE (servers drop it at 30 min)
                    if any(b"EXISTS" in line or b"RECENT" in line for line in _lines(message)):
                        break
            finally:
                lost.cancel()
                if client.has_pending_idle() and not self._lost.is_set():
                    client.idle_done()
                    await asyncio.wait_for(idle, self.timeout)
                elif not idle.done():
                    idle.cancel()
        self._running()  # ConnectionLost when that is why the wait ended

    async def close(self) -> None:
        """Log out (briefly) and drop the connection. Idempotent."""
        client, self._client = self._client, None
        if client is None:
            return
        if not self._lost.is_set():
            with contextlib.suppress(Exception):  # the server may be gone: we leave anyway
                await asyncio.wait_for(client.logout(), 2.0)
        transport = getattr(client.protocol, "transport", None)
        if transport is not None:
            transport.close()
        for task in list(getattr(client, "tasks", ())) + list(client.protocol.tasks):
            task.cancel()


def _decode(line: object) -> str:
    return bytes(line).decode("utf-8", "replace") if isinstance(line, bytes | bytearray) else ""


def _text(response: Any) -> str:
    return " ".join(_decode(line) for line in response.lines)[:200]


def _lines(push: object) -> list[bytes]:
    if isinstance(push, list):
        return [bytes(x) for x in push if isinstance(x, bytes | bytearray)]
    return [bytes(push)] if isinstance(push, bytes | bytearray) else []


def _uid_of(line: bytes | bytearray) -> int | None:
    match = _FETCH_UID.search(line)
    return int(match.group(1)) if match else None


def _search_uids(lines: list[Any]) -> list[int]:
    found: list[int] = []
    for line in lines:
        text = _decode(line).strip()
        if text.startswith("SEARCH"):
            text = text[len("SEARCH") :]
        if text and all(word.isdigit() for word in text.split()):
            found += [int(word) for word in text.split()]
    return found
