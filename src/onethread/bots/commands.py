"""Slash commands handled before the agent: /help, /whoami, /new, /unlink (and /link).

A command's reply goes straight back to the sender; it never reaches the
agent or the history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..platforms.base import Inbound
from ..session.identity.base import unlinked_id
from .linking import link_help
from .manager import BotSessionManager

__all__ = ["CommandRouter", "parse_command"]

Handler = Callable[[Inbound, str], Awaitable[str]]


def parse_command(text: str) -> tuple[str, str] | None:
    """``"/link ABC"`` -> ``("link", "ABC")``; ``"/new@mybot"`` -> ``("new", "")``; else None."""
    stripped = text.strip()
    if not stripped.startswith("/") or len(stripped) < 2:
        return None
    head, _, rest = stripped[1:].partition(" ")
    name = head.split("@", 1)[0].lower()
    if not name.isidentifier():
        return None
    return name, rest.strip()


@dataclass
class CommandRouter:
    """Dispatches slash commands. Unknown commands fall through to the agent.

    ``extra`` maps more command names to handlers (the pairing flow adds
    ``/link``); each handler gets the message and the argument text.
    ``platform_help`` maps a platform to the lines it adds to ``/help`` (its
    adapter's ``help_lines``, e.g. the terminal's ``/quit``).
    """

    session: BotSessionManager
    extra: dict[str, Handler] | None = None
    platform_help: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def _handlers(self) -> dict[str, Handler]:
        handlers: dict[str, Handler] = {
            "help": self._help,
            "start": self._help,
            "whoami": self._whoami,
            "new": self._new,
            "unlink": self._unlink,
        }
        handlers.update(self.extra or {})
        return handlers

    async def handle(self, msg: Inbound) -> str | None:
        """The command's reply, or None when ``msg`` is not a known command."""
        parsed = parse_command(msg.text)
        if parsed is None:
            return None
        handler = self._handlers().get(parsed[0])
        if handler is None:
            return None
        return await handler(msg, parsed[1])

    async def _help(self, msg: Inbound, _arg: str) -> str:
        lines = [
            "I am an AI assistant; just write to me.",
            "/whoami: who I think you are, and your linked accounts",
            "/new: start a fresh conversation",
        ]
        if "link" in (self.extra or {}):
            lines += link_help()
        lines.append("/unlink: detach this account from your linked identity")
        if "reminders" in (self.extra or {}):
            lines.append("/reminders: your reminders and scheduled messages (in a DM)")
        if "tz" in (self.extra or {}):
            lines.append("/tz ZONE: your time zone for reminders, e.g. /tz Europe/Berlin")
        lines.extend(self.platform_help.get(msg.platform, ()))
        return "\n".join(lines)

    async def _whoami(self, msg: Inbound, _arg: str) -> str:
        unified = self.session.resolve(msg.platform, msg.user_id)
        lines = [f"You are {msg.user_name or msg.user_id} ({msg.platform} id {msg.user_id})."]
        if unified is None or unified == unlinked_id(msg.platform, msg.user_id):
            lines.append("This account is not linked to other accounts.")
            return "\n".join(lines)
        lines.append(f'Linked as "{unified}" (your unified id: one conversation everywhere).')
        links_for = getattr(self.session.identity_resolver, "links_for", None)
        if links_for is not None:
            links = await asyncio.to_thread(links_for, unified)
            accounts = ", ".join(f"{x.platform}:{x.platform_user_id}" for x in links)
            lines.append(f"Linked accounts: {accounts}")
        return "\n".join(lines)

    async def _new(self, msg: Inbound, _arg: str) -> str:
        removed = await self.session.reset(
            msg.user_id,
            platform=msg.platform,
            chat_id=msg.chat_id,
            chat_type=msg.chat_type,
            thread_id=msg.thread_id if msg.chat_type != "dm" else "",
        )
        scope = "here" if msg.chat_type != "dm" else "on every linked platform"
        return f"Started a fresh conversation {scope} ({removed} earlier messages cleared)."

    async def _unlink(self, msg: Inbound, _arg: str) -> str:
        if msg.chat_type != "dm":
            return "Send /unlink in a direct message to me."
        resolver = self.session.identity_resolver
        unlink = getattr(resolver, "unlink", None)
        if resolver is None or unlink is None:
            return "Linking is not enabled on this bot."
        unified = resolver.resolve(msg.platform, msg.user_id)
        if unified == unlinked_id(msg.platform, msg.user_id) or not await asyncio.to_thread(
            unlink, msg.platform, msg.user_id
        ):
            return "This account is not linked."
        self.session.forget_merge(msg.platform, msg.user_id)
        return (
            f"This {msg.platform} account is no longer linked to {unified}. "
            "Its future messages start a separate conversation."
        )
