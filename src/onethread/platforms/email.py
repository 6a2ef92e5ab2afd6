"""Email adapter: IMAP in (IDLE, else polling), SMTP out; every sender is a DM.

Credentials: ``EMAIL_ADDRESS`` (the bot's address, also the login unless a
URL names a user), ``EMAIL_PASSWORD`` (often an app password),
``EMAIL_IMAP_URL`` (``imaps://imap.example.org:993``, or ``imap://...:143``
with STARTTLS) and ``EMAIL_SMTP_URL`` (``smtps://smtp.example.org:465``, or
``smtp://...:587`` with STARTTLS). TLS is required: ``?plaintext`` is accepted
on loopback addresses only, for local test servers.

In: the watcher (one task) keeps one IMAP connection on the folder. Every mail
after the last one processed is fetched, read (:mod:`.email_mime`) and handed
to the bot, then marked (``\\Seen`` plus the keyword ``OnethreadDone``); the
folder's ``UIDVALIDITY`` and the last UID processed are kept in a small JSON
file under ``$ONETHREAD_HOME/email/``, so a restart neither answers a mail
twice nor misses one that came while the bot was down. The first start
answers nothing already in the folder. If the server renumbers the folder
(a new ``UIDVALIDITY``), mail without the keyword is processed. Automatic
mail (auto-replies, mailing lists, bounces) is marked with the keyword only
and never answered.

Out: one mail per reply, to the ``From:`` address of the mail answered (never
``Reply-To:``: see :mod:`.email_mime`), as plain text plus HTML, with
``In-Reply-To``/``References`` of that mail and a ``Re:`` subject; each file
goes as a mail of its own in the same thread.

Email senders can be forged, so this platform's ``PlatformSpec`` says
``forgeable_sender``: its default access policy is an allowlist, and an email
account may issue a ``/link`` code (mailed to the address, which proves the
mailbox) but never redeem one (see ``onethread.bots.linking``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import aiosmtplib

from ..errors import (
    AttachmentRefused,
    BadRequest,
    ConfigError,
    ConnectionLost,
    OutcomeUnknown,
    PlatformAuthError,
    PlatformError,
    PlatformUnavailable,
)
from ..session.attachments import Attachment
from ..session.home import onethread_home
from .base import Adapter, Inbound, OnInbound, credential_in
from .delivery import RetryPolicy
from .email_imap import DONE_KEYWORD, Inbox, MailUrl
from .email_mime import (
    ParsedMail,
    ReplyTo,
    build_mail,
    dmarc_passed,
    ignore_reason,
    parse_mail,
)
from .email_state import MailState

__all__ = ["EmailAdapter", "map_smtp_errors", "normalize_mail"]

log = logging.getLogger("onethread.platforms.email")

PLATFORM = "email"
ADDRESS_ENV = "EMAIL_ADDRESS"
PASSWORD_ENV = "EMAIL_PASSWORD"
IMAP_ENV = "EMAIL_IMAP_URL"
SMTP_ENV = "EMAIL_SMTP_URL"
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+")
_WHOLE_MAIL = "message/rfc822"  # stands for a mail too large to fetch (its header only)


# -- errors --------------------------------------------------------------------


def _smtp_kind(code: int) -> type[PlatformError]:
    # 4xx: the server may take it later (retried); 5xx: it never will.
    return PlatformUnavailable if 400 <= code < 500 else BadRequest


@contextlib.contextmanager
def map_smtp_errors(*, sending: bool) -> Iterator[None]:
    """Translate aiosmtplib, TLS and network errors raised in the block into ``onethread.errors``.

    Rejected login -> ``PlatformAuthError``; a refused sender, recipient or
    message -> ``BadRequest`` for a 5xx, ``PlatformUnavailable`` (retried) for
    a 4xx; no connection -> ``PlatformUnavailable``. With ``sending`` (the
    message was being transferred), a dropped connection or a timeout is
    ``OutcomeUnknown``: the mail may have gone, so it is not sent again.
    """
    try:
        yield
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise PlatformAuthError(
            f"the SMTP server refused the login ({exc.code} {exc.message}); check "
            f"{ADDRESS_ENV} and {PASSWORD_ENV} (many providers need an app password)",
            platform=PLATFORM,
        ) from exc
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients] or [550]
        raise _smtp_kind(min(codes))(
            f"the recipient was refused: {'; '.join(str(r) for r in exc.recipients)}",
            platform=PLATFORM,
        ) from exc
    except aiosmtplib.SMTPResponseException as exc:
        raise _smtp_kind(exc.code)(f"SMTP {exc.code} {exc.message}", platform=PLATFORM) from exc
    except ssl.SSLCertVerificationError as exc:
        raise PlatformAuthError(
            f"the SMTP server's TLS certificate was not accepted ({exc.verify_message}); "
            "check the host name in the URL, or pass tls_ca_file= for a private CA",
            platform=PLATFORM,
        ) from exc
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPReadTimeoutError) as exc:
        kind = OutcomeUnknown if sending else PlatformUnavailable
        raise kind(f"SMTP: {type(exc).__name__}: {exc}", platform=PLATFORM) from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise PlatformUnavailable(f"SMTP: {type(exc).__name__}: {exc}", platform=PLATFORM) from exc


# -- normalising ---------------------------------------------------------------


def normalize_mail(mail: ParsedMail, *, own_address: str, fallback_id: str = "") -> Inbound:
    """Turn a parsed mail into an ``Inbound``: a DM from the ``From:`` address.

    ``chat_id`` and ``user_id`` are the lower-cased address; ``thread_id`` the
    thread's root ``Message-ID``; ``message_id`` the mail's (``fallback_id``
    when it has none). Pure: no I/O, no filtering.
    """
    return Inbound(
        platform=PLATFORM,
        chat_id=mail.address,
        chat_type="dm",
        user_id=mail.address,
        text=mail.text,
        message_id=mail.message_id or fallback_id,
        chat_name=mail.subject,
        thread_id=mail.thread_id or fallback_id,
        user_name=mail.name or mail.address,
        mentions_bot=True,
        from_self=mail.address == own_address.lower(),
        attachments=mail.attachments,
        raw=mail,
    )


# -- the adapter ---------------------------------------------------------------


class EmailAdapter(Adapter):
    """Email via IMAP (IDLE, else polling) in and SMTP out.

    Args:
        address: the bot's address (default ``EMAIL_ADDRESS``).
        password: the mailbox password or app password (``EMAIL_PASSWORD``).
        imap_url: ``imaps://host[:993]`` or ``imap://host[:143]`` (STARTTLS)
            (``EMAIL_IMAP_URL``); ``imaps://user@host`` logs in as ``user``.
        smtp_url: ``smtps://host[:465]`` or ``smtp://host[:587]`` (STARTTLS)
            (``EMAIL_SMTP_URL``).
        username: the login, when it is not the address.
        display_name: the name on ``From:`` of the bot's mail.
        subject: the subject of a mail that starts a thread (a reminder).
        folder: the IMAP folder to watch (default ``INBOX``).
        poll_interval: seconds between checks when the server has no IDLE.
        idle_timeout: seconds before an IDLE is renewed (servers end it at 30 min).
        tls_ca_file: a CA bundle to trust (a private mail server's CA).
        verified_by: the name your mail server writes at the start of its
            ``Authentication-Results`` header (e.g. ``mx.google.com``); when
            set, only mail that server says passed DMARC for its ``From:``
            domain is answered, so a forged sender is dropped.
        state_path: where the last processed UID is kept (default under
            ``$ONETHREAD_HOME/email/``).
        max_mail_bytes: larger mails are not fetched (the sender is told).
        timeout: seconds for one IMAP or SMTP exchange.
        max_failures: consecutive failed reconnections before the loss is
            reported to the supervisor.
    """

    name: ClassVar[str] = PLATFORM
    max_message_length: ClassVar[int] = 100_000  # one reply, one mail
    max_file_bytes: ClassVar[int] = 18 * 1024 * 1024  # ~25 MB once base64-encoded
    reconnect_delay: float = 1.0  # first wait after a lost IMAP connection; doubles

    _OPTIONS: ClassVar[tuple[str, ...]] = (
        "address", "password", "imap_url", "smtp_url", "username", "display_name", "subject",
        "folder", "poll_interval", "idle_timeout", "tls_ca_file", "verified_by", "state_path",
        "max_mail_bytes", "timeout", "max_failures", "retry_policy",
    )  # fmt: skip

    @classmethod
    def check_options(
        cls, options: Mapping[str, Any], env: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """The address's shape and both URLs' (scheme, host, TLS)."""
        problems: list[tuple[str, str]] = []
        address, where = credential_in(options, env, "address", ADDRESS_ENV)
        if address and not _ADDRESS.fullmatch(address.strip()):
            problems.append(("address", f"{where} is not an email address (name@example.org)"))
        for option, variable, kinds in (
            ("imap_url", IMAP_ENV, ("imaps", "imap")),
            ("smtp_url", SMTP_ENV, ("smtps", "smtp")),
        ):
            url, where = credential_in(options, env, option, variable)
            if url:
                try:
                    MailUrl.parse(url, kinds=kinds, variable=where)
                except ConfigError as exc:
                    problems.append((option, str(exc)))
        return problems

    def __init__(
        self,
        *,
        token: str | None = None,
        address: str | None = None,
        password: str | None = None,
        imap_url: str | None = None,
        smtp_url: str | None = None,
        username: str | None = None,
        display_name: str = "",
        subject: str = "A message from your assistant",
        folder: str = "INBOX",
        poll_interval: float = 60.0,
        idle_timeout: float = 25 * 60.0,
        tls_ca_file: str | None = None,
        verified_by: str = "",
        state_path: str | os.PathLike[str] | None = None,
        max_mail_bytes: int = 30 * 1024 * 1024,
        timeout: float = 30.0,
        max_failures: int = 5,
        retry_policy: RetryPolicy | None = None,
        **unknown: Any,
    ) -> None:
        if unknown or token is not None:
            names = sorted(unknown) + (["token"] if token is not None else [])
            raise ConfigError(
                f"unknown email option(s) {', '.join(names)}; accepted: {', '.join(self._OPTIONS)}"
            )
        super().__init__(retry_policy=retry_policy)
        if poll_interval <= 0 or idle_timeout <= 0 or timeout <= 0 or max_failures < 1:
            raise ConfigError(
                "email: poll_interval, idle_timeout and timeout must be > 0 and max_failures >= 1"
            )
        self._given = {"address": address, "password": password, "imap_url": imap_url,
                       "smtp_url": smtp_url}  # fmt: skip
        self.username = username
        self.display_name = display_name
        self.subject = subject
        self.folder = folder
        self.poll_interval = float(poll_interval)
        self.idle_timeout = float(idle_timeout)
        self.tls_ca_file = tls_ca_file
        self.verified_by = verified_by.strip()
        self.state_path = Path(state_path) if state_path is not None else None
        self.max_mail_bytes = int(max_mail_bytes)
        self.timeout = float(timeout)
        self.max_failures = max_failures
        self.address = ""
        self._password = ""
        self.imap: MailUrl | None = None
        self.smtp: MailUrl | None = None
        self._ssl: ssl.SSLContext | None = None
        self._state: MailState | None = None
        self._inbox: Inbox | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"EmailAdapter(address={self.address or '?'!r}, imap={self.imap}, smtp={self.smtp})"

    # -- configuration ---------------------------------------------------------

    def _configure(self) -> None:
        """Read options, else the environment; ``ConfigError`` naming what is missing or wrong."""
        env = os.environ
        values: dict[str, str] = {}
        where: dict[str, str] = {}
        for option, variable in (("address", ADDRESS_ENV), ("password", PASSWORD_ENV),
                                 ("imap_url", IMAP_ENV), ("smtp_url", SMTP_ENV)):  # fmt: skip
            values[option], where[option] = credential_in(self._given, env, option, variable)
        missing = [w for o, w in where.items() if not values[o]]
        if missing:
            raise ConfigError(f"email needs {', '.join(missing)} (set them, or pass the options)")
        problems = self.check_options(self._given, env)
        if problems:
            raise ConfigError("; ".join(message for _, message in problems))
        self.address = values["address"].strip().lower()
        self._password = values["password"]
        self.imap = MailUrl.parse(values["imap_url"], kinds=("imaps", "imap"), variable=IMAP_ENV)
        self.smtp = MailUrl.parse(values["smtp_url"], kinds=("smtps", "smtp"), variable=SMTP_ENV)
        try:
            self._ssl = ssl.create_default_context(cafile=self.tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"email: cannot read tls_ca_file {self.tls_ca_file!r}: {exc}"
            ) from exc
        if self._state is None:
            self._state = MailState(self.state_path or self._default_state_path())

    def _default_state_path(self) -> Path:
        assert self.imap is not None
        where = f"{self.address}|{self.imap.host}:{self.imap.port}|{self.folder}"
        digest = hashlib.sha256(where.encode()).hexdigest()[:16]
        return onethread_home() / "email" / f"{digest}.json"

    def _login(self, url: MailUrl) -> str:
        return url.username or self.username or self.address

    # -- lifecycle -------------------------------------------------------------

    async def start(self, on_inbound: OnInbound) -> None:
        """Log in to both servers, then watch the folder; return once watching.

        Raises ``ConfigError`` for missing or malformed settings,
        ``PlatformAuthError`` for a refused login or certificate and
        ``PlatformUnavailable`` when a server cannot be reached.
        """
        if self._task is not None:
            raise RuntimeError("email adapter is already started; stop() it first")
        self._configure()
        assert self._state is not None
        if not self._state.loaded:
            await asyncio.to_thread(self._state.load)
        try:
            await self._check_smtp()
            inbox = await self._connect()
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._watch(inbox, on_inbound), name="email-watch")
        self._task.add_done_callback(self._watch_done)
        log.info("email: watching %s %s as %s (%s)", self.imap, self.folder, self.address,
                 "IDLE" if inbox.idle else f"polling every {self.poll_interval:g}s")  # fmt: skip

    async def stop(self) -> None:
        """Stop watching and log out. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            await inbox.close()

    def _watch_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            if not isinstance(exc, PlatformError):
                log.error("email: the watcher stopped unexpectedly", exc_info=exc)
            lost = (
                exc
                if isinstance(exc, PlatformAuthError | ConnectionLost)
                else ConnectionLost(f"the IMAP watcher stopped: {exc!r}", platform=PLATFORM)
            )
            if lost is not exc:
                lost.__cause__ = exc
            self.report_failure(lost)

    async def _connect(self) -> Inbox:
        assert self.imap is not None and self._ssl is not None
        inbox = Inbox(self.imap, self._login(self.imap), self._password,
                      ssl_context=self._ssl, folder=self.folder, timeout=self.timeout)  # fmt: skip
        self._inbox = inbox
        try:
            await inbox.connect()
        except BaseException:
            self._inbox = None
            await inbox.close()
            raise
        return inbox

    async def _watch(self, inbox: Inbox, on_inbound: OnInbound) -> None:
        failures = 0
        while True:
            try:
                await self._process_new(inbox, on_inbound)
                failures = 0
                await inbox.wait(self.idle_timeout if inbox.idle else self.poll_interval)
            except PlatformAuthError:
                raise
            except (PlatformUnavailable, ConnectionLost) as exc:
                failures += 1
                if failures > self.max_failures:
                    raise ConnectionLost(
                        f"IMAP failed {failures} times in a row, last: {exc}", platform=PLATFORM
                    ) from exc
                delay = self.reconnect_delay * 2 ** (failures - 1)
                log.warning("email: IMAP trouble (%s); reconnecting in %.1fs", exc, delay)
                await inbox.close()
                await asyncio.sleep(delay)
                with contextlib.suppress(PlatformUnavailable):
                    inbox = await self._connect()

    async def _process_new(self, inbox: Inbox, on_inbound: OnInbound) -> None:
        """Hand every mail not yet processed to ``on_inbound``, in UID order.

        Ends with a search that found nothing new, so that a mail arriving after
        it is announced by the server when the next IDLE begins.
        """
        state = self._state
        assert state is not None
        if state.uidvalidity != inbox.uidvalidity:
            top = (await inbox.uids_after(0) or [0])[-1]
            if state.uidvalidity == 0:
                # First start: what is already in the folder (maybe years of mail) is not ours.
                log.info("email: first start: %s mail(s) already in %s left alone",
                         "the" if top else "no", self.folder)  # fmt: skip
                pending = []
            else:
                log.warning(
                    "email: %s was renumbered (UIDVALIDITY %s -> %s); answering the mail "
                    "without the OnethreadDone keyword", self.folder, state.uidvalidity,
                    inbox.uidvalidity,
                )  # fmt: skip
                pending = await inbox.unprocessed()
            state.uidvalidity, state.last_uid = inbox.uidvalidity, 0
            for uid in pending:
                await self._process(inbox, uid, on_inbound)
            state.last_uid = max([top, *pending])
            await state.save()
        while uids := await inbox.uids_after(state.last_uid):
            for uid in uids:
                await self._process(inbox, uid, on_inbound)
                state.last_uid = max(state.last_uid, uid)
                await state.save()

    async def _process(self, inbox: Inbox, uid: int, on_inbound: OnInbound) -> None:
        info = await inbox.info(uid)
        if info is None:
            return  # deleted meanwhile
        size, flags = info
        if DONE_KEYWORD in flags:
            return  # processed just before a crash, whose state file missed it
        too_large = size > self.max_mail_bytes
        raw = await inbox.fetch(uid, "HEADER" if too_large else "")
        if raw is None:
            return
        fallback = f"{inbox.uidvalidity}.{uid}"
        try:
            message, mail = parse_mail(raw)
        except Exception:  # a mail the parser cannot read must not stop the watcher
            log.exception("email: cannot read mail UID %s; marked and skipped", uid)
            await inbox.mark(uid, seen=False)
            return
        reason = ignore_reason(message)
        if reason is None and not mail.address:
            reason = "no From address"
        if reason is None and self.verified_by and not dmarc_passed(message, self.verified_by):
            reason = f"{self.verified_by} does not say it passed DMARC (a forged sender?)"
        if reason is not None:
            log.info("email: not answering mail UID %s: %s", uid, reason)
            await inbox.mark(uid, seen=False)
            return
        if too_large:
            whole = Attachment("file", _WHOLE_MAIL, "the whole mail", size)
            mail = _with_files(mail, (whole,), (b"",), text="")
        inbound = normalize_mail(mail, own_address=self.address, fallback_id=fallback)
        if not inbound.from_self:
            state = self._state
            assert state is not None
            state.remember(inbound.chat_id, inbound.thread_id, mail.reply)
            try:
                await on_inbound(inbound)
            except Exception:  # one bad mail must not stop the watcher
                log.exception("email: handling mail UID %s failed", uid)
        await inbox.mark(uid, seen=True)

    # -- sending ---------------------------------------------------------------

    async def _send_mail(self, to: str, markdown: str, thread_id: str, *, formatted: bool,
                         files: tuple[tuple[Attachment, bytes], ...] = ()) -> str:  # fmt: skip
        if self.smtp is None or self._state is None:
            raise PlatformUnavailable("not connected: start() the adapter first", platform=PLATFORM)
        if not _ADDRESS.fullmatch(to):
            raise BadRequest(f"{to!r} is not an email address", platform=PLATFORM)
        reply = self._state.reply_to(to, thread_id) or (ReplyTo(thread_id) if thread_id else None)
        mail = build_mail(
            sender=self.address, sender_name=self.display_name, to=to, markdown=markdown,
            reply=reply, subject=self.subject, formatted=formatted, files=files,
        )  # fmt: skip
        smtp = self._smtp_client()
        with map_smtp_errors(sending=False):
            await smtp.connect()
        try:
            with map_smtp_errors(sending=False):
                await smtp.login(self._login(self.smtp), self._password)
            with map_smtp_errors(sending=True):
                await smtp.send_message(mail, sender=self.address, recipients=[to])
        finally:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await smtp.quit()
            smtp.close()
        return str(mail["Message-ID"])

    def _smtp_client(self) -> aiosmtplib.SMTP:
        assert self.smtp is not None
        return aiosmtplib.SMTP(
            hostname=self.smtp.host,
            port=self.smtp.port,
            use_tls=self.smtp.tls == "implicit",
            start_tls=self.smtp.tls == "starttls",
            tls_context=self._ssl,
            timeout=self.timeout,
        )

    async def _check_smtp(self) -> None:
        """Connect and log in once, so a wrong password fails ``start()``, not the first reply."""
        assert self.smtp is not None
        smtp = self._smtp_client()
        try:
            with map_smtp_errors(sending=False):
                await smtp.connect()
                await smtp.login(self._login(self.smtp), self._password)
        finally:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await smtp.quit()
            smtp.close()

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        """Mail ``text`` to ``chat_id`` (plain text and HTML), answering the thread's last mail."""
        return await self._send_mail(chat_id, text, thread_id, formatted=formatted)

    async def do_send_file(
        self, chat_id: str, attachment: Attachment, data: bytes, *, thread_id: str = ""
    ) -> str:
        """Mail one file as an attachment, in the thread; its caption (or name) is the text."""
        text = attachment.caption or attachment.name or f"(a {attachment.kind})"
        return await self._send_mail(
            chat_id, text, thread_id, formatted=True, files=((attachment, data),)
        )

    async def do_download(self, msg: Inbound, index: int) -> bytes:
        """The bytes of attachment ``index``, kept from the fetched mail."""
        if not isinstance(msg.raw, ParsedMail) or index >= len(msg.raw.parts):
            raise BadRequest("this message carries no email attachment", platform=PLATFORM)
        if msg.attachments[index].mime == _WHOLE_MAIL and not msg.raw.parts[index]:
            raise AttachmentRefused(  # only its header was fetched
                "too_large",
                f"That mail is larger than the {self.max_mail_bytes // 1_000_000} MB I read.",
                limit=self.max_mail_bytes,
            )
        return msg.raw.parts[index]


def _with_files(
    mail: ParsedMail, attachments: tuple[Attachment, ...], parts: tuple[bytes, ...], *, text: str
) -> ParsedMail:
    return ParsedMail(mail.address, mail.name, mail.subject, text, mail.message_id,
                      mail.thread_id, mail.reply, attachments, parts)  # fmt: skip
