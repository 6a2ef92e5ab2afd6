"""``/link``: verified, self-service linking of two accounts (DM only).

1. ``/link`` in a DM on platform A: the bot replies with a one-time code.
   ``/link NAME`` does the same and asks that a new person be called NAME.
2. ``/link CODE`` in a DM on platform B, from another account: both accounts
   now resolve to one unified id: A's existing one, else B's existing one (so
   a third platform can be added from either side), else a new person, named
   NAME, else after A's display name, else after B's, else ``person``,
   normalised to a valid unified id and made unique (``alice``, ``alice-2``).
   Both sides get a confirmation naming the person and the linked platforms.

Grammar of the argument (``/help`` says the same): nothing: issue a code; an
argument with a digit in it: a code (every code has one); while codes of
onethread 0.1 are live, an 8-character argument that reads as one of them: a
code; anything else: a NAME (letters, spaces, ``.``, ``_``, ``-``).

Unique names. An id counts as taken when an account other than the issuer's
is linked to it, or the id already has a conversation in the history store.
The resolver's ``claim`` makes the first check and the link one atomic step
(a lock, a transaction, the lock file, or a compare-and-set on Redis), so two
processes or hosts naming two new people at once never give them the same id.
The history check is a read just before: it misses only a conversation
written for an unlinked id at that very moment. A resolver without ``claim``
gets check-then-link (``links_for``), which is not atomic across processes;
one without ``links_for`` either gets a random suffix (``alice-3f9a1c``).

Refused, with a clear message: a code redeemed on a platform whose senders
can be forged (email, ``PlatformSpec.forgeable_sender``: such an account may
issue a code, which is mailed to it, but a code it sends is spent unused:
else anyone could attach someone's mailbox to their own account); a code sent
in a group; an expired, used or
unknown code; redeeming on the account or platform that issued it; an account
already linked to a different person (``/unlink`` first: no silent takeover);
more than 5 failed redemptions per account per hour (lockout); more than 3 live
codes per account; a full pairing store. Codes are never logged.

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
from ..platforms.registry import PLATFORMS
from ..session._conn.shared import masked, who
from ..session.identity.base import IdentityLink, unlinked_id
from ..session.keys import unified_key
from ..session.naming import candidates, name_from_display, requested_name
from ..session.pairing import (
    CODE_TTL,
    LEGACY_CODE_LENGTH,
    PairingCode,
    PairingStore,
    format_code,
    normalize_code,
)
from ._throttle import LogThrottle
from .manager import BotSessionManager

__all__ = ["LINK_PURPOSE", "LinkFlow", "link_help"]

log = logging.getLogger("onethread.linking")

LINK_PURPOSE = "link"
FALLBACK_NAME = "person"

# Sends a confirmation to the account that issued the code: (platform, chat_id, text).
Notifier = Callable[[str, str, str], Awaitable[None]]

_REFUSALS = {
    "invalid": "That code is not valid (codes look like K7QW-2MXP-H4RT). Check it, or send "
    "/link on your other account for a new one.",
    "expired": "That code has expired (codes last 10 minutes). Send /link on your other "
    "account for a new one.",
    "used": "That code was already used. Send /link on your other account for a new one.",
    "locked": "Too many wrong codes. Linking is locked for this account for an hour.",
    "busy": "Too many wrong codes were sent to me in the last hour, so linking is paused "
    "for everyone. Please try again later.",
}


def _display_name(platform: str, user_id: str, user_name: str) -> str:
    """A name from the display name, never from an id that is a credential (the web chat's)."""
    if user_name == user_id and masked(platform, user_id) != user_id:
        return ""
    return name_from_display(user_name)


def link_help() -> list[str]:
    """The ``/help`` lines of ``/link`` (its grammar)."""
    return [
        "/link: get a code to link another account of yours (in a DM)",
        "/link NAME: the same, and if you are new here you will be called NAME "
        "(letters only, e.g. /link alice)",
        "/link CODE: link this account with the code from your other account "
        "(codes have digits, e.g. /link K7QW-2MXP-H4RT)",
    ]


def _forgeable(platform: str) -> bool:
    entry = PLATFORMS.get(platform)
    return entry is not None and entry.forgeable_sender


class LinkFlow:
    """The ``/link`` command: issue and redeem pairing codes, and name new people.

    ``notify`` delivers the confirmation to the issuing account (BotOS wires
    it to the bot of that platform); without it only the redeemer is told.
    ``_busy`` serialises redemptions in this process (the store's transaction
    already makes one code usable once across processes, and the resolver's
    ``claim`` one name one person's); it is an ``asyncio.Lock`` owned by the
    event loop. Each attempt is counted in ``metrics`` (``issued``,
    ``linked``, ``refused``, ``locked_out``).
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
        self._warnings = LogThrottle(log)

    @property
    def store(self) -> PairingStore:
        """The pairing code store (``$ONETHREAD_HOME/pairing.db`` unless given)."""
        if self._store is None:
            self._store = PairingStore()
        return self._store

    async def __call__(self, msg: Inbound, arg: str) -> str:
        """Handle ``/link`` and ``/link NAME`` (issue a code) or ``/link CODE`` (redeem it)."""
        is_code = await self._is_code(arg)
        if msg.chat_type != "dm":
            self.metrics.link("refused")
            if is_code:
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
        if is_code and _forgeable(msg.platform):
            # Anyone can write a From: line. Redeeming here would let a forger attach
            # someone's mailbox (and its conversation) to the forger's own account.
            self.metrics.link("refused")
            await asyncio.to_thread(self.store.redeem, LINK_PURPOSE, arg)  # it crossed mail
            log.info("link code sent from %s refused: %s senders can be forged",
                     who(msg.platform, msg.user_id), msg.platform)  # fmt: skip
            return (
                f"Link codes cannot be redeemed by {msg.platform}: anyone can forge a sender "
                f"there. Send /link here instead: the code comes to this {msg.platform} "
                "address, and you send it from your other account. (The code you sent no "
                "longer works.)"
            )
        if is_code:
            reply, outcome = await self._redeem(msg, arg)
            self.metrics.link(outcome)
            return reply
        name = ""
        if arg:
            try:
                name = requested_name(arg)
            except ValueError as exc:
                self.metrics.link("refused")
                return str(exc)
        return await self._issue(msg, name)

    async def _is_code(self, arg: str) -> bool:
        """The grammar: an argument with a digit is a code; so is an 8-character one that
        reads as a code while codes of onethread 0.1 are live; anything else is a name."""
        if any(ch.isdigit() for ch in arg):
            return True
        code = normalize_code(arg)
        if code is None or len(code) != LEGACY_CODE_LENGTH:
            return False
        return await asyncio.to_thread(self.store.legacy_codes_live, LINK_PURPOSE)

    async def _issue(self, msg: Inbound, name: str) -> str:
        issued = await asyncio.to_thread(
            self.store.try_issue,
            LINK_PURPOSE,
            msg.platform,
            msg.user_id,
            chat_id=msg.chat_id,
            user_name=msg.user_name,
            name=name,
        )
        self.metrics.link("issued" if issued.code is not None else "refused")
        if issued.code is None:
            if issued.refused == "full":
                self._warnings.warn(
                    "full",
                    "link codes refused: the pairing store holds its maximum number of codes "
                    "(access.max_codes); a flood of /link?",
                )
                return (
                    "Too many link codes are waiting to be used on this bot right now. "
                    "Please try again in a few minutes."
                )
            return (
                "You already have 3 unused link codes. Use one of them, or wait until "
                "they expire (10 minutes)."
            )
        code = format_code(issued.code)
        minutes = int(CODE_TTL // 60)
        lines = [
            f"Your link code: {code}",
            f"On your other account, send me in a direct message: /link {code}",
            f"It works once, for {minutes} minutes. Never share it with anyone.",
        ]
        unified = self.session.resolve(msg.platform, msg.user_id)
        if unified is not None and unified != unlinked_id(msg.platform, msg.user_id):
            lines.append(f'The other account will join you, "{unified}".')
            if name:
                lines.append(f'(You are already "{unified}", so the name "{name}" is not used.)')
        else:
            base = name or _display_name(msg.platform, msg.user_id, msg.user_name)
            if base:
                lines.append(
                    f'If neither account is linked yet, you will be called "{base}" '
                    f'("{base}-2" if that is taken).'
                )
            if not name:
                lines.append("To choose your name, send /link NAME instead (e.g. /link alice).")
        return "\n".join(lines)

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
                if result.error == "busy":
                    self._warnings.warn(
                        "busy",
                        "links refused to everyone: too many wrong codes in the last hour, "
                        "from many accounts; a brute-force attempt?",
                    )
                # "locked": this account guessed too often; "busy": everyone is paused.
                outcome = "locked_out" if result.error in ("locked", "busy") else "refused"
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
            if not refusal and me_linked and issuer_linked and my_id != issuer_id:
                refusal = (
                    "This account is already linked to another identity. Send /unlink here "
                    "first, then redeem the code again with a new /link code."
                )
            if refusal:
                await asyncio.to_thread(self.store.release, arg)
                return refusal, "refused"
            # A's existing identity, else B's (adding a platform works from either
            # side), else a new person, named and linked to A in one step.
            # Resolver writes do file or network I/O: off the event loop.
            try:
                if issuer_linked:
                    unified = issuer_id
                elif me_linked:
                    unified = my_id
                    await asyncio.to_thread(resolver.link, issuer.platform, issuer.user_id, unified)
                else:
                    unified = await self._new_person(issuer, msg)
                if not me_linked:
                    await asyncio.to_thread(resolver.link, msg.platform, msg.user_id, unified)
            except Exception:
                # The store failed half-way: the code works again, and a retry finishes
                # the job (a person already named is found on the issuer's account).
                await asyncio.to_thread(self.store.release, arg)
                raise
        for platform, user_id in ((issuer.platform, issuer.user_id), (msg.platform, msg.user_id)):
            await self.session.merge_legacy(platform, user_id, unified)
        links = await asyncio.to_thread(self._links, unified)
        platforms = sorted({x.platform for x in links} | {issuer.platform, msg.platform})
        confirmation = (
            f'Linked as "{unified}": your {issuer.platform} and {msg.platform} accounts are '
            f"now one person ({', '.join(platforms)}). Your conversation continues on every "
            "one of them."
        )
        if self.notify is not None and issuer.chat_id:
            try:
                await self.notify(issuer.platform, issuer.chat_id, confirmation)
            except Exception:
                log.exception("could not confirm the link on %s", issuer.platform)
        log.info("linked %s and %s as %s", who(issuer.platform, issuer.user_id),
                 who(msg.platform, msg.user_id), unified)  # fmt: skip
        return confirmation, "linked"

    async def _new_person(self, issuer: PairingCode, msg: Inbound) -> str:
        """Name a new person and link the issuing account to the name (see the module doc)."""
        resolver = self.session.identity_resolver
        assert resolver is not None
        base = (
            issuer.name
            or _display_name(issuer.platform, issuer.user_id, issuer.user_name)
            or _display_name(msg.platform, msg.user_id, msg.user_name)
            or FALLBACK_NAME
        )
        claim = getattr(resolver, "claim", None)
        links_for = getattr(resolver, "links_for", None)
        names = candidates(base)
        if claim is None and links_for is None:
            # Nothing can say which names are taken: only a random suffix is safe.
            names = iter([f"{base}-{secrets.token_hex(3)}"])
        for candidate in names:
            if await self.session.store.count(unified_key(candidate)):
                continue  # somebody's conversation already lives under this id
            if claim is not None:
                if await asyncio.to_thread(claim, issuer.platform, issuer.user_id, candidate):
                    return candidate
            elif links_for is None or not await asyncio.to_thread(links_for, candidate):
                await asyncio.to_thread(resolver.link, issuer.platform, issuer.user_id, candidate)
                return candidate
        raise AssertionError("candidates() is endless")  # pragma: no cover

    def _links(self, unified: str) -> list[IdentityLink]:
        links_for = getattr(self.session.identity_resolver, "links_for", None)
        return list(links_for(unified)) if links_for is not None else []
