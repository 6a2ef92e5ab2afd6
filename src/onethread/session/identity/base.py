"""The identity resolver contract: which platform accounts are one person."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "IdentityLink",
    "IdentityResolverProtocol",
    "unlinked_id",
]


def unlinked_id(platform: str, platform_user_id: str) -> str:
    """The id ``resolve()`` returns for an account that is not linked."""
    return f"{platform}:{platform_user_id}"


@dataclass(frozen=True, slots=True)
class IdentityLink:
    """One platform account bound to one person.

    ``linked_at`` is a Unix timestamp (seconds) of when the link was made.
    """

    platform: str
    platform_user_id: str
    unified_user_id: str
    linked_at: float = 0.0


@runtime_checkable
class IdentityResolverProtocol(Protocol):
    """Maps platform accounts to a unified user id.

    Required: ``resolve`` and ``link`` (the shape of a user's own resolver, such
    as the seed's ``DatabaseIdentityResolver``; onethread accepts it everywhere).
    The built-in resolvers also have ``unlink(platform, platform_user_id) -> bool``,
    ``links_for(unified_user_id) -> list[IdentityLink]`` and
    ``claim(platform, platform_user_id, unified_user_id) -> bool`` (link only
    if no other account has that id, atomically); features that need them
    (``/unlink``, ``/whoami``, export of every linked account) say so when a
    resolver lacks them, and ``/link`` names new people less safely without
    ``claim`` (see ``onethread.bots.linking``).

    ``resolve`` is on the hot path of every turn and is synchronous: it must not
    do network I/O on the event loop (built-ins answer from memory).
    """

    def resolve(self, platform: str, platform_user_id: str) -> str:
        """Return the unified id, or ``f"{platform}:{platform_user_id}"`` when unlinked."""
        ...

    def link(self, platform: str, platform_user_id: str, unified_user_id: str) -> None:
        """Bind the account to ``unified_user_id``; ``ValueError`` for an invalid id."""
        ...
