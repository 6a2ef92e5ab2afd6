"""Access policy: who may talk to the agent at all.

- ``open``: anyone.
- ``allowlist``: listed platform user ids (and owners) only.
- ``approval``: unknown DM senders get a pairing code; an owner approves it with
  ``onethread access approve PLATFORM CODE``. One code per sender at a time and
  a bounded queue, so one spammer cannot block everyone.

Refused senders get one short reply at most and never reach the agent.
Default (:func:`default_policy`): ``open`` for the embedded web chat and the
terminal; ``allowlist`` (owners only, until others are listed) where a
sender can be forged (email: ``PlatformSpec.forgeable_sender``); ``approval``
for other public platforms when an owner is configured, else ``open`` with a
startup warning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from ..errors import ConfigError
from ..platforms.base import Inbound
from ..platforms.registry import PLATFORMS
from ..session._conn.shared import who
from ..session.pairing import PairingStore, format_code
from ._throttle import LogThrottle

_APPROVED_CACHE_MAX = 100_000  # cached approvals before expired ones are swept

__all__ = [
    "APPROVAL_PURPOSE",
    "AccessPolicy",
    "AllowlistPolicy",
    "ApprovalPolicy",
    "OpenPolicy",
    "approve_code",
    "default_policy",
    "make_policy",
]

log = logging.getLogger("onethread.access")

APPROVAL_PURPOSE = "approve"


@runtime_checkable
class AccessPolicy(Protocol):
    """Decides, before commands and the agent, whether a sender is served.

    ``check`` returns ``None`` to serve the message, ``""`` to drop it silently,
    or a short text to send back instead of the agent's answer. It must not
    suspend for senders already known to be allowed (turn order depends on it).
    """

    async def check(self, msg: Inbound) -> str | None:
        """``None``: serve; ``""``: drop; text: refuse with that reply."""
        ...


class _Told:
    """A bounded set of senders already given their one reply (LRU).

    Touched only on the event loop thread, which guards it.
    """

    def __init__(self, max_size: int = 10_000) -> None:
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.max_size = max_size

    def first(self, key: tuple[str, str]) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self.max_size:
            self._seen.popitem(last=False)
        return True


class OpenPolicy:
    """Everyone is served."""

    async def check(self, msg: Inbound) -> str | None:
        """Always ``None`` (serve)."""
        return None


class AllowlistPolicy:
    """Only listed platform user ids (and owners) are served."""

    def __init__(self, allowed: Iterable[str], *, owners: Iterable[str] = ()) -> None:
        self.allowed = frozenset(str(x) for x in allowed) | frozenset(str(x) for x in owners)
        self._told = _Told()

    async def check(self, msg: Inbound) -> str | None:
        """Serve listed senders; tell others once (in a DM) that this bot is private.

        Where a sender can be forged (``PlatformSpec.forgeable_sender``) others
        are never answered: the answer would go to whoever was impersonated.
        """
        if msg.user_id in self.allowed:
            return None
        if _forgeable(msg.platform):
            log.info("refused %s (not on the allowlist; not answered)",
                     who(msg.platform, msg.user_id))  # fmt: skip
            return ""
        if msg.chat_type == "dm" and self._told.first((msg.platform, msg.user_id)):
            log.info("refused %s (not on the allowlist)", who(msg.platform, msg.user_id))
            return "Sorry, this bot is private."
        return ""


class ApprovalPolicy:
    """Unknown senders need an owner's approval, given with a pairing code.

    ``_approved`` caches approvals seen by this process for ``recheck``
    seconds (default 10; touched on the loop thread only). A miss is checked
    against the shared store, so an approval made by the CLI in another
    process is honoured on the sender's next message, and ``onethread access
    revoke`` reaches a running server within ``recheck`` seconds.
    """

    def __init__(
        self,
        store: PairingStore | None = None,
        *,
        owners: Iterable[str] = (),
        max_pending: int = 100,
        recheck: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if recheck < 0:
            raise ValueError("recheck must be >= 0 seconds (0: ask the store on every message)")
        self._store = store
        self.owners = frozenset(str(x) for x in owners)
        self.max_pending = max_pending
        self.recheck = recheck
        self._clock = clock
        self._approved: dict[tuple[str, str], float] = {}  # account -> when to ask again
        self._told = _Told()
        self._warnings = LogThrottle(log)

    @property
    def store(self) -> PairingStore:
        """The shared pairing store (``$ONETHREAD_HOME/pairing.db`` unless given)."""
        if self._store is None:
            self._store = PairingStore()
        return self._store

    async def check(self, msg: Inbound) -> str | None:
        """Serve owners and approved senders; give an unknown DM sender one code."""
        account = (msg.platform, msg.user_id)
        if msg.user_id in self.owners:
            return None
        now = self._clock()
        if self._approved.get(account, 0.0) > now:
            return None
        if await asyncio.to_thread(self.store.is_approved, *account):
            if len(self._approved) >= _APPROVED_CACHE_MAX:
                self._approved = {a: t for a, t in self._approved.items() if t > now}
            self._approved[account] = now + self.recheck
            return None
        self._approved.pop(account, None)
        if msg.chat_type != "dm":
            return ""
        issued = await asyncio.to_thread(
            self.store.try_issue,
            APPROVAL_PURPOSE,
            msg.platform,
            msg.user_id,
            chat_id=msg.chat_id,
            user_name=msg.user_name,
            max_live=1,
            max_pending=self.max_pending,
            ttl=3600.0,
        )
        if issued.code is None:
            if issued.refused == "account":
                return ""  # this sender already holds a live code: one reply per code
            if self._told.first(account):
                if issued.refused == "full":
                    self._warnings.warn(
                        "full",
                        "approval codes refused to new senders: the pairing store holds its "
                        "maximum number of codes (access.max_codes); a flood of new senders?",
                    )
                return "This bot is not taking new users right now. Please try again later."
            return ""
        log.info("approval requested by %s", who(msg.platform, msg.user_id))
        return (
            "This bot answers approved people only. Ask its owner to run:\n"
            f"onethread access approve {msg.platform} {format_code(issued.code)}\n"
            "The code is valid for one hour."
        )


def _forgeable(platform: str) -> bool:
    entry = PLATFORMS.get(platform)
    return entry is not None and entry.forgeable_sender


def approve_code(store: PairingStore, platform: str, code: str) -> tuple[str, str]:
    """Approve the sender who was given ``code`` on ``platform``; return ``(platform, user_id)``.

    Raises ``ConfigError`` (a user mistake) for an unknown, used or expired
    code, or one issued on another platform.
    """
    result = store.redeem(APPROVAL_PURPOSE, code)
    if result.code is None:
        raise ConfigError(
            f"approval code {code!r} is {result.error}; ask the sender to write again"
        )
    if result.code.platform != platform:
        store.release(code)
        raise ConfigError(
            f"that code was issued on {result.code.platform}, not {platform}; run: "
            f"onethread access approve {result.code.platform} {code}"
        )
    store.approve(result.code.platform, result.code.user_id)
    return result.code.platform, result.code.user_id


def make_policy(
    kind: str,
    *,
    allowlist: Iterable[str] = (),
    owners: Iterable[str] = (),
    store: PairingStore | None = None,
    max_pending: int = 100,
) -> AccessPolicy:
    """Build a policy by name: ``open``, ``allowlist`` or ``approval``."""
    if kind == "open":
        return OpenPolicy()
    if kind == "allowlist":
        return AllowlistPolicy(allowlist, owners=owners)
    if kind == "approval":
        return ApprovalPolicy(store, owners=owners, max_pending=max_pending)
    raise ConfigError(f"unknown access policy {kind!r}; use open, allowlist or approval")


def default_policy(
    platform: str, *, owners: Iterable[str] = (), store: PairingStore | None = None
) -> AccessPolicy:
    """``open`` for local platforms (web chat, terminal: ``PlatformSpec.local``);
    ``allowlist`` of the owners where senders can be forged
    (``PlatformSpec.forgeable_sender``: email); ``approval`` when owners are
    set; else ``open`` + a warning."""
    owner_ids = list(owners)
    entry = PLATFORMS.get(platform)
    if entry is not None and entry.local:
        return OpenPolicy()
    if entry is not None and entry.forgeable_sender:
        if not owner_ids:
            log.warning(
                "%s: nobody is allowed yet (senders can be forged, so the default access "
                "policy is an allowlist); list addresses under access.allowlist.%s",
                platform, platform,
            )  # fmt: skip
        return AllowlistPolicy((), owners=owner_ids)
    if owner_ids:
        return ApprovalPolicy(store, owners=owner_ids)
    log.warning(
        "%s: anyone can talk to this bot (access policy 'open'); set an owner id to require "
        "approval, or use an allowlist",
        platform,
    )
    return OpenPolicy()
