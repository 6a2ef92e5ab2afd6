"""``/link``: verified, self-service linking of two accounts (DM only).

1. ``/link`` in a DM on platform A: the bot replies with a one-time code.
2. ``/link CODE`` in a DM on platform B, from another account: both accounts
   now resolve to one unified id (A's existing one, else B's existing one, so
   a third platform can be added from either side, else a new one). Both
   sides get a confirmation naming the linked platforms.

Refused, with a clear message: a code sent in a group; an expired, used or
unknown code; redeeming on the account or platform that issued it; an account
already linked to a different person (``/unlink`` first: no silent takeover);
more than 5 failed redemptions per account per hour (lockout); more than 3 live
codes per account. Codes are never logged.

On a successful link the legacy DM history of each newly linked account is
merged into the person's session, ordered by time, once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

from ..metrics import NULL_METRICS, NullMetrics
from ..platforms.base import Inbound
from ..session._conn.shared import who
from ..session.identity.base import IdentityLink, unlinked_id
from ..session.pairing import CODE_TTL, PairingStore
from .manager import BotSessionManager

__all__ = ["LINK_PURPOSE", "LinkFlow"]

log = logging.getLogger("onethread.linking")

LINK_PURPOSE = "link"

# Sends a confirmation to the account that issued the code: (platform, chat_id, text).
Notifier = Callable[[str, str, str], Awaitable[None]]

_REFUSALS = {
    "invalid": "That code is not valid. Check it, or send /link on your other account "
    "for a new one.",
    "expired": "That code has expired (codes last 10 minutes). Send /link on your other "
    "account for a new one.",
    "used": "That code was already used. Send /link on your other account for a new one.",
    "locked": "Too many wrong codes. Linking is locked for this account for an hour.",
}


def new_unified_id() -> str:
    """A fresh unified id for a person linking for the first time (no ``:``)."""
    return f"person-{secrets.token_hex(6)}"


class LinkFlow:
    """The ``/link`` command: issue and redeem pairing codes.

    ``notify`` delivers the confirmation to the issuing account (BotOS wires
    it to the bot of that platform); without it only the redeemer is told.
    ``_busy`` serialises redemptions in this process (the store's transaction
    already makes one code usable once across processes); it is an
    ``asyncio.Lock`` owned by the event loop. Each attempt is counted in
    ``metrics`` (``issued``, ``linked``, ``refused``, ``locked_out``).
    """

    def __init__(
        self,
        session: BotSessionManager,
        store: PairingStore | None = None,
        *,
        notify: Notifier | None = None,
        metrics: NullMetrics = NULL_METRICS,
    ) -> None:
        self.session = session
        self._store = store
        self.notify = notify
        self.metrics = metrics
        self._busy = asyncio.Lock()

    @property
    def store(self) -> PairingStore:
        """The pairing code store (``$ONETHREAD_HOME/pairing.db`` unless given)."""
        if self._store is None:
            self._store = PairingStore()
        return self._store

    async def __call__(self, msg: Inbound, arg: str) -> str:
        """Handle ``/link`` (issue a code) or ``/link CODE`` (redeem it)."""
        if msg.chat_type != "dm":
            self.metrics.link("refused")
            if arg:
                # Everyone in the group has now seen the code: spend it so nobody can
                # redeem it from their own DM and take over the issuer's identity.
                await asyncio.to_thread(self.store.redeem, LINK_PURPOSE, arg)
                return (
                    "For your safety, send /link only in a direct message to me. That code "
                    "was shown to the group, so it no longer works: send /link in a DM "
                    "for a new one."
                )
            return "For your safety, send /link only in a direct message to me."
        resolver = self.session.identity_resolver
        if resolver is None:
            return "Linking is not enabled on this bot (it has no identity resolver)."
        if not arg:
            return await self._issue(msg)
        reply, outcome = await self._redeem(msg, arg)
        self.metrics.link(outcome)
        return reply

    async def _issue(self, msg: Inbound) -> str:
        code = await asyncio.to_thread(
            self.store.issue,
            LINK_PURPOSE,
            msg.platform,
            msg.user_id,
            chat_id=msg.chat_id,
            user_name=msg.user_name,
        )
        self.metrics.link("issued" if code is not None else "refused")
        if code is None:
            return (
                "You already have 3 unused link codes. Use one of them, or wait until "
                "they expire (10 minutes)."
            )
        minutes = int(CODE_TTL // 60)
        return (
            f"Your link code: {code}\n"
            f"On your other account, send me in a direct message: /link {code}\n"
            f"It works once, for {minutes} minutes. Never share it with anyone."
        )

    async def _redeem(self, msg: Inbound, arg: str) -> tuple[str, str]:
        """The reply and the outcome for metrics (``linked``, ``refused``, ``locked_out``)."""
        resolver = self.session.identity_resolver
        assert resolver is not None
        async with self._busy:
            result = await asyncio.to_thread(
                self.store.redeem,
                LINK_PURPOSE,
                arg,
                by_platform=msg.platform,
                by_user_id=msg.user_id,
            )
            if result.code is None:
                log.info("link refused for %s (%s)", who(msg.platform, msg.user_id), result.error)
                outcome = "locked_out" if result.error == "locked" else "refused"
                return _REFUSALS[result.error], outcome
            issuer = result.code
            refusal = ""
            if (issuer.platform, issuer.user_id) == (msg.platform, msg.user_id):
                refusal = "Send the code from your OTHER account, not the one that asked for it."
            elif issuer.platform == msg.platform:
                refusal = (
                    f"Both accounts are on {msg.platform}; link accounts on different platforms."
                )
            issuer_id = resolver.resolve(issuer.platform, issuer.user_id)
            my_id = resolver.resolve(msg.platform, msg.user_id)
            issuer_linked = issuer_id != unlinked_id(issuer.platform, issuer.user_id)
            me_linked = my_id != unlinked_id(msg.platform, msg.user_id)
            # A's existing identity, else B's (adding a platform works from either
            # side), else a new one. Two different identities: no silent takeover.
            unified = issuer_id if issuer_linked else my_id if me_linked else new_unified_id()
            if not refusal and me_linked and issuer_linked and my_id != issuer_id:
                refusal = (
                    "This account is already linked to another identity. Send /unlink here "
                    "first, then redeem the code again with a new /link code."
                )
            if refusal:
                await asyncio.to_thread(self.store.release, arg)
                return refusal, "refused"
            # Resolver writes do file or network I/O: off the event loop.
            if not issuer_linked:
                await asyncio.to_thread(resolver.link, issuer.platform, issuer.user_id, unified)
            if not me_linked:
                await asyncio.to_thread(resolver.link, msg.platform, msg.user_id, unified)
        for platform, user_id in ((issuer.platform, issuer.user_id), (msg.platform, msg.user_id)):
            await self.session.merge_legacy(platform, user_id, unified)
        links = await asyncio.to_thread(self._links, unified)
        platforms = sorted({x.platform for x in links} | {issuer.platform, msg.platform})
        confirmation = (
            f"Linked: your {issuer.platform} and {msg.platform} accounts are now one identity "
            f"({', '.join(platforms)}). Your conversation continues on every one of them."
        )
        if self.notify is not None and issuer.chat_id:
            try:
                await self.notify(issuer.platform, issuer.chat_id, confirmation)
            except Exception:
                log.exception("could not confirm the link on %s", issuer.platform)
        log.info("linked %s and %s", who(issuer.platform, issuer.user_id),
                 who(msg.platform, msg.user_id))  # fmt: skip
        return confirmation, "linked"

    def _links(self, unified: str) -> list[IdentityLink]:
        links_for = getattr(self.session.identity_resolver, "links_for", None)
        return list(links_for(unified)) if links_for is not None else []
