"""Platform adapters by name: everything about a platform in one ``PlatformSpec``.

Adding a platform is one module plus one entry here. The config (which
credentials to read), the CLI (titles, the ``init`` template, which SDK loggers
to keep quiet), the access policy (local platforms) and the log masking (ids
that are credentials) all read these entries; no other module names a
platform, except that the CLI's ``chat`` command is the ``console`` platform
and ``--host``/``--port`` are the built-in web chat's.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, MissingDependencyError
from ..session._conn.shared import declare_secret_ids
from .base import Adapter

__all__ = ["PLATFORMS", "PlatformSpec", "credentials", "load_adapter_class", "spec"]


@dataclass(frozen=True, slots=True)
class PlatformSpec:
    """What onethread knows about one platform.

    ``module``/``cls``: where the adapter lives. ``extra``: the install extra
    that brings its SDK (``None``: nothing to install); ``sdk_module`` is
    imported first to tell "SDK missing" from a bug. ``title``: the name shown
    to people. ``credentials``: ``(option, ENV_VAR)`` pairs; the platform is
    served without a config file when every variable is set. ``mode_credentials``:
    ``(mode, credentials)`` pairs for an option ``mode:`` that needs others
    (Slack's ``http`` mode takes a signing secret, not an app token).
    ``one_of``: ``(option, ENV_VAR)`` pairs of which at least one must be set
    as well, in every mode (Matrix: an access token or a password); the
    platform is served without a config file when every ``credentials``
    variable and one of these is set. Read them through the methods below
    (:meth:`served_from`, :meth:`missing_from`, :meth:`credentials_text`),
    not field by field. ``loggers``: SDK
    loggers that write credentials or message text, held at WARNING whatever
    ``-v`` says. ``init_lines``: the lines ``onethread init`` writes under
    ``platforms:`` (commented out unless the platform is local). ``local``:
    served to whoever runs it (this machine's user), so open by default.
    ``secret_ids``: a user id is a bearer credential, so logs show a short
    hash of it. ``forgeable_sender``: the platform cannot prove who sent a
    message (email's ``From:``), so its default access policy is an allowlist
    (refused senders are not answered: the reply would go to whoever was
    impersonated), and its accounts may issue ``/link`` codes but never
    redeem one.
    """

    module: str
    cls: str
    extra: str | None
    sdk_module: str | None = None
    title: str = ""
    credentials: tuple[tuple[str, str], ...] = ()
    loggers: tuple[str, ...] = ()
    init_lines: tuple[str, ...] = ()
    local: bool = False
    secret_ids: bool = False
    forgeable_sender: bool = False
    mode_credentials: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    one_of: tuple[tuple[str, str], ...] = ()

    def credentials_for(self, options: Mapping[str, Any]) -> dict[str, str]:
        """``{option: ENV_VAR}`` the platform needs, every one, with these ``options``
        (its ``mode``); the alternatives of which one will do are ``one_of``."""
        mode = options.get("mode")
        for name, needed in self.mode_credentials:
            if name == mode:
                return dict(needed)
        return dict(self.credentials)

    def variables(self) -> tuple[str, ...]:
        """Every credential variable of the default mode: the needed ones, then ``one_of``'s."""
        return tuple(var for _, var in self.credentials + self.one_of)

    def served_from(self, env: Mapping[str, str]) -> bool:
        """Whether ``env`` holds enough to serve the platform without a config file:
        every ``credentials`` variable and (if any) one ``one_of`` variable."""
        if not self.credentials and not self.one_of:
            return False
        return not self.missing_from(env)

    def missing_from(self, env: Mapping[str, str]) -> list[str]:
        """What ``env`` lacks to serve the platform: each unset variable, and
        ``"A or B"`` when no ``one_of`` variable is set. Empty: nothing."""
        missing = [var for _, var in self.credentials if not env.get(var)]
        if self.one_of and not any(env.get(var) for _, var in self.one_of):
            missing.append(" or ".join(var for _, var in self.one_of))
        return missing

    def credentials_text(self) -> str:
        """The credential variables for people: ``A + B + (C or D)``."""
        parts = [var for _, var in self.credentials]
        if self.one_of:
            either = " or ".join(var for _, var in self.one_of)
            parts.append(f"({either})" if parts else either)
        return " + ".join(parts)


PLATFORMS: dict[str, PlatformSpec] = {
    "telegram": PlatformSpec(
        "onethread.platforms.telegram",
        "TelegramAdapter",
        "telegram",
        "telegram",
        title="Telegram",
        credentials=(("token", "TELEGRAM_BOT_TOKEN"),),
        loggers=("telegram",),
        init_lines=(
            'telegram:                   # pip install "onethread[telegram]"',
            "  token: ${TELEGRAM_BOT_TOKEN}",
            "  # mode: webhook           # Telegram POSTs to http.public_url/webhooks/telegram",
        ),
    ),
    "discord": PlatformSpec(
        "onethread.platforms.discord",
        "DiscordAdapter",
        "discord",
        "discord",
        title="Discord",
        credentials=(("token", "DISCORD_BOT_TOKEN"),),
        loggers=("discord",),
        init_lines=(
            'discord:                    # pip install "onethread[discord]"',
            "  token: ${DISCORD_BOT_TOKEN}",
        ),
    ),
    "slack": PlatformSpec(
        "onethread.platforms.slack",
        "SlackAdapter",
        "slack",
        "slack_bolt",
        title="Slack",
        credentials=(("token", "SLACK_BOT_TOKEN"), ("app_token", "SLACK_APP_TOKEN")),
        mode_credentials=(
            ("http", (("token", "SLACK_BOT_TOKEN"), ("signing_secret", "SLACK_SIGNING_SECRET"))),
        ),
        loggers=("slack_sdk", "slack_bolt"),
        init_lines=(
            'slack:                      # pip install "onethread[slack]" (Socket Mode)',
            "  token: ${SLACK_BOT_TOKEN}",
            "  app_token: ${SLACK_APP_TOKEN}",
            "  # mode: http              # Events API at http.public_url/webhooks/slack instead;",
            "  # signing_secret: ${SLACK_SIGNING_SECRET}   # then no app_token",
        ),
    ),
    "signal": PlatformSpec(
        "onethread.platforms.signal",
        "SignalAdapter",
        None,  # signal-cli runs as its own program; nothing to install here
        title="Signal",
        credentials=(("account", "SIGNAL_ACCOUNT"),),
        init_lines=(
            "signal:                     # signal-cli -a NUMBER daemon --tcp 127.0.0.1:7583",
            "  account: ${SIGNAL_ACCOUNT}",
            "  url: tcp://127.0.0.1:7583",
        ),
    ),
    "whatsapp": PlatformSpec(
        "onethread.platforms.whatsapp",
        "WhatsAppAdapter",
        None,  # the Graph API over aiohttp: nothing to install
        title="WhatsApp",
        credentials=(
            ("token", "WHATSAPP_ACCESS_TOKEN"),
            ("phone_number_id", "WHATSAPP_PHONE_NUMBER_ID"),
            ("app_secret", "WHATSAPP_APP_SECRET"),
            ("verify_token", "WHATSAPP_VERIFY_TOKEN"),
        ),
        init_lines=(
            "whatsapp:                   # Cloud API; webhook at <public_url>/webhooks/whatsapp",
            "  token: ${WHATSAPP_ACCESS_TOKEN}",
            "  phone_number_id: ${WHATSAPP_PHONE_NUMBER_ID}",
            "  app_secret: ${WHATSAPP_APP_SECRET}",
            "  verify_token: ${WHATSAPP_VERIFY_TOKEN}",
        ),
        secret_ids=False,
    ),
    "web": PlatformSpec(
        "onethread.platforms.web",
        "WebAdapter",
        None,
        title="web chat",
        init_lines=(
            "web:                          # the built-in web chat",
            "  host: 127.0.0.1             # any other host also needs access_token: "
            "${ONETHREAD_WEB_TOKEN}",
            "  port: 8080",
        ),
        local=True,
        secret_ids=True,
    ),
    "webhook": PlatformSpec(
        "onethread.platforms.webhook",
        "WebhookAdapter",
        None,
        title="webhook",
        credentials=(("secret", "WEBHOOK_SECRET"),),
        init_lines=(
            "webhook:                    # signed JSON POSTs to http.public_url/webhooks/webhook",
            "  secret: ${WEBHOOK_SECRET}",
            "  mode: sync                # sync: reply in the response; async: to callback_url",
            "  # callback_hosts: [hooks.example.com]   # where async replies may go",
        ),
    ),
    "email": PlatformSpec(
        "onethread.platforms.email",
        "EmailAdapter",
        "email",
        "aioimaplib",
        title="email",
        credentials=(
            ("address", "EMAIL_ADDRESS"),
            ("password", "EMAIL_PASSWORD"),
            ("imap_url", "EMAIL_IMAP_URL"),
            ("smtp_url", "EMAIL_SMTP_URL"),
        ),
        loggers=("aioimaplib",),
        init_lines=(
            'email:                      # pip install "onethread[email]"; allowlist by default',
            "  address: ${EMAIL_ADDRESS}",
            "  password: ${EMAIL_PASSWORD}",
            "  imap_url: ${EMAIL_IMAP_URL}       # imaps://imap.example.org:993",
            "  smtp_url: ${EMAIL_SMTP_URL}       # smtps://smtp.example.org:465",
        ),
        forgeable_sender=True,
    ),
    "console": PlatformSpec(
        "onethread.platforms.console", "ConsoleAdapter", None, title="terminal", local=True
    ),
    "matrix": PlatformSpec(
        "onethread.platforms.matrix",
        "MatrixAdapter",
        "matrix",
        "nio",
        title="Matrix",
        credentials=(("homeserver", "MATRIX_HOMESERVER"), ("user_id", "MATRIX_USER_ID")),
        one_of=(("token", "MATRIX_ACCESS_TOKEN"), ("password", "MATRIX_PASSWORD")),
        loggers=("nio",),
        init_lines=(
            'matrix:                     # pip install "onethread[matrix]"',
            "  homeserver: ${MATRIX_HOMESERVER}",
            "  user_id: ${MATRIX_USER_ID}",
            "  token: ${MATRIX_ACCESS_TOKEN}   # or password: ${MATRIX_PASSWORD}",
        ),
    ),
}

declare_secret_ids(name for name, entry in PLATFORMS.items() if entry.secret_ids)


def spec(name: str) -> PlatformSpec:
    """The entry of platform ``name``; ``ConfigError`` listing the known ones if none."""
    entry = PLATFORMS.get(name)
    if entry is None:
        raise ConfigError(
            f"unknown platform {name!r}; known platforms: {', '.join(sorted(PLATFORMS))}"
        )
    return entry


def credentials() -> dict[str, dict[str, str]]:
    """``{platform: {option: ENV_VAR}}`` for every platform that needs credentials:
    the needed ones and the ``one_of`` alternatives together (Matrix lists both
    ``token`` and ``password``); ask :meth:`PlatformSpec.served_from` whether an
    environment serves a platform, not "every variable set"."""
    return {
        name: dict(e.credentials + e.one_of)
        for name, e in PLATFORMS.items()
        if e.credentials or e.one_of
    }


def load_adapter_class(name: str) -> type[Adapter]:
    """Import the adapter class for platform ``name``.

    Raises ``ConfigError`` for an unknown name (listing the known ones) and
    ``MissingDependencyError`` (with the ``pip install`` line) when the
    platform's SDK is not installed.
    """
    entry = spec(name)
    if entry.sdk_module is not None and entry.extra is not None:
        try:
            importlib.import_module(entry.sdk_module)
        except ImportError as exc:
            raise MissingDependencyError(f"the {name} platform", entry.extra) from exc
    module = importlib.import_module(entry.module)
    cls = getattr(module, entry.cls)
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise TypeError(f"{entry.module}.{entry.cls} is not an Adapter subclass")
    return cls
