"""Real mail servers for the email tests: Debian's Dovecot (IMAP) and aiosmtpd (SMTP).

- :class:`Dovecot`: ``dovecot -F -c <temp config>`` as an unprivileged process
  (this user; ``nobody`` when the tests run as root, since Dovecot's login
  processes refuse root), listening on 127.0.0.1 with STARTTLS (``imap://``)
  and TLS (``imaps://``) from a certificate made by the test; any user logs in
  with :data:`PASSWORD`; mail lives in maildirs under a temp folder.
  ``idle=False`` leaves IDLE out of the capabilities the server announces.
- :class:`MailExchange`: an aiosmtpd server on 127.0.0.1 (port 0) with
  STARTTLS and AUTH, standing in for the Internet: mail to a mailbox of a
  :class:`Dovecot` it serves (``@bot.test``) is delivered into that maildir
  with a ``Return-Path:`` from the envelope, as a delivery agent does; any
  other recipient's mail is kept in :attr:`MailExchange.outboxes` for the test.

Dovecot is a Debian package (``apt-get install -y dovecot-imapd``, in
``.ci/run``); without it the tests skip, or fail under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.policy
import grp
import ipaddress
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

PASSWORD = "secret-pw"
BOT_DOMAIN = "bot.test"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVECOT_INSTALL = "apt-get install -y dovecot-imapd"


def dovecot_or_skip() -> None:
    """Skip (fail under ``CI=true``) when Dovecot is not installed."""
    if os.path.exists(DOVECOT):
        return
    message = f"Dovecot is not installed; run: {DOVECOT_INSTALL}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: a missing server is a failure, not a skip)")
    pytest.skip(message)


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onethread test mail")])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _runner() -> tuple[str, str, int, int]:
    """The unprivileged user and group Dovecot runs as: this one, or nobody under root."""
    if os.geteuid() != 0:
        user = pwd.getpwuid(os.geteuid())
    else:
        user = pwd.getpwnam("nobody")
    group = grp.getgrgid(user.pw_gid)
    return user.pw_name, group.gr_name, user.pw_uid, user.pw_gid


_CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = yes
auth_mechanisms = plain login
default_login_user = {user}
default_internal_user = {user}
default_internal_group = {group}
mail_location = maildir:{root}/mail/%u
{capability}
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""


class Dovecot:
    """One Dovecot instance in a temp folder; ``stop()`` ends it and removes the folder."""

    def __init__(self, *, cert: tuple[Path, Path] | None = None, idle: bool = True) -> None:
        self.idle = idle
        # Not under pytest's tmp_path: under root that is 0700, closed to "nobody".
        self.root = Path(tempfile.mkdtemp(prefix="onethread-dovecot-"))
        self.user, self.group, self.uid, self.gid = _runner()
        if cert is None:
            self.cert, self.key = make_cert(self.root)
        else:
            self.cert, self.key = self.root / "cert.pem", self.root / "key.pem"
            shutil.copyfile(cert[0], self.cert)
            shutil.copyfile(cert[1], self.key)
        self.imap_port, self.imaps_port = free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.root / "mail").mkdir()
        capability = (
            ""
            if self.idle
            else "imap_capability = IMAP4rev1 SASL-IR LITERAL+ ID ENABLE UIDPLUS NAMESPACE"
        )
        config = self.root / "dovecot.conf"
        config.write_text(
            _CONFIG.format(
                root=self.root, cert=self.cert, key=self.key, user=self.user, group=self.group,
                uid=self.uid, gid=self.gid, password=PASSWORD, imap_port=self.imap_port,
                imaps_port=self.imaps_port, capability=capability,
            )
        )  # fmt: skip
        self._chown(self.root)
        as_other = os.geteuid() == 0
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            user=self.user if as_other else None,
            group=self.group if as_other else None,
            extra_groups=[] if as_other else None,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.imaps_port), timeout=1):
                    with socket.create_connection(("127.0.0.1", self.imap_port), timeout=1):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dovecot did not listen in 15 s: {self.log()}")

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)

    def _chown(self, path: Path) -> None:
        if os.geteuid() != 0:
            return
        for folder, dirs, files in os.walk(path):
            os.chown(folder, self.uid, self.gid)
            for name in dirs + files:
                os.chown(os.path.join(folder, name), self.uid, self.gid)

    def maildir(self, address: str) -> Path:
        return self.root / "mail" / address

    def deliver(self, address: str, raw: bytes) -> None:
        """Put ``raw`` into ``address``'s INBOX as a delivery agent does (tmp/, then new/)."""
        box = self.maildir(address)
        for sub in ("tmp", "new", "cur"):
            (box / sub).mkdir(parents=True, exist_ok=True)
        name = f"{time.time():.6f}.{uuid.uuid4().hex}.onethread-test"
        tmp = box / "tmp" / name
        tmp.write_bytes(raw)
        if os.geteuid() == 0:
            for path in (box, box / "tmp", box / "new", box / "cur", tmp):
                os.chown(path, self.uid, self.gid)
        os.rename(tmp, box / "new" / name)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def mailbox_flags(server: Dovecot, address: str) -> dict[str, set[str]]:
    """``{Message-ID: flags}`` of ``address``'s INBOX, read with the stdlib IMAP client."""
    import imaplib
    import re

    with imaplib.IMAP4_SSL(
        "127.0.0.1", server.imaps_port, ssl_context=server.client_context()
    ) as imap:
        imap.login(address, PASSWORD)
        imap.select("INBOX", readonly=True)
        status, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert status == "OK", data
        found: dict[str, set[str]] = {}
        for item in data:
            if isinstance(item, tuple):
                flags = set(re.findall(rb"FLAGS \(([^)]*)\)", item[0])[0].decode().split())
                msgid = re.findall(rb"<[^>]+>", item[1])
                found[msgid[0].decode() if msgid else "?"] = flags
        return found


class _Handler:
    """aiosmtpd handler: deliver to Dovecot or keep in an outbox (guarded by ``lock``)."""

    def __init__(self, exchange: MailExchange) -> None:
        self.exchange = exchange

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower().startswith("refuse-"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode()
        self.exchange.record(envelope.mail_from or "", list(envelope.rcpt_tos), bytes(raw),
                             session.authenticated)  # fmt: skip
        return "250 Message accepted for delivery"


class MailExchange:
    """The SMTP side (see the module docstring). ``outboxes[address]`` holds parsed mail."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self.lock = threading.Lock()
        self.outboxes: dict[str, list[EmailMessage]] = {}
        self.envelopes: list[tuple[str, list[str], bool]] = []  # (mail from, rcpts, authenticated)
        self.controller: Any = None
        self.port = 0
        self.home: dict[str, Dovecot] = {}  # bot mailbox -> the Dovecot serving it

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert), str(self.key))

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                         auth_data: Any) -> Any:  # fmt: skip
            from aiosmtpd.smtp import AuthResult, LoginPassword

            ok = isinstance(auth_data, LoginPassword) and auth_data.password == PASSWORD.encode()
            return AuthResult(success=ok, handled=False)  # handled=False: answer 535

        class PortZeroController(Controller):  # type: ignore[misc]
            # aiosmtpd 1.4 connects to self.port to check the server is up: with
            # port 0 that is the port the system picked, read from the socket.
            def _trigger_server(self) -> None:
                self.port = self.server.sockets[0].getsockname()[1]
                super()._trigger_server()

        self.controller = PortZeroController(
            _Handler(self),
            hostname="127.0.0.1",
            port=0,
            tls_context=context,
            require_starttls=True,
            authenticator=authenticate,
            auth_require_tls=True,
        )
        self.controller.start()
        self.port = self.controller.port

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def serve(self, address: str, server: Dovecot) -> None:
        self.home[address.lower()] = server

    def record(self, mail_from: str, rcpts: list[str], raw: bytes, authenticated: bool) -> None:
        with self.lock:
            self.envelopes.append((mail_from, rcpts, authenticated))
        for rcpt in rcpts:
            server = self.home.get(rcpt.lower())
            if server is not None:
                server.deliver(rcpt.lower(), f"Return-Path: <{mail_from}>\r\n".encode() + raw)
                continue
            msg = BytesParser(policy=email.policy.default).parsebytes(raw)
            assert isinstance(msg, EmailMessage)
            with self.lock:
                self.outboxes.setdefault(rcpt.lower(), []).append(msg)

    def outbox(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return list(self.outboxes.get(address.lower(), []))

    async def wait_mail(
        self, address: str, count: int = 1, timeout: float = 15
    ) -> list[EmailMessage]:
        """``address``'s first ``count`` mails, waiting up to ``timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            mails = self.outbox(address)
            if len(mails) >= count:
                return mails
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{address} got {len(mails)} mail(s), expected {count}")
            await asyncio.sleep(0.05)

    async def send(self, raw: bytes | EmailMessage, *, mail_from: str, to: str) -> None:
        """Send as a person's mail server would: SMTP to this exchange (STARTTLS)."""
        import aiosmtplib

        await aiosmtplib.send(
            raw, sender=mail_from, recipients=[to], hostname="127.0.0.1", port=self.port,
            start_tls=True, tls_context=ssl.create_default_context(cafile=str(self.cert)),
        )  # fmt: skip
