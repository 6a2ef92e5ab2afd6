"""Shared parts of the built-in identity resolvers: the in-memory link table.

Every built-in resolver answers ``resolve()`` from a :class:`LinkTable`. The
table itself holds no lock: each resolver says which lock guards its
mutations. Readers need none for ``resolve``, because a CPython ``dict.get``
is atomic and a mutation changes one entry at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Self

from ..validation import validate_platform, validate_platform_user_id, validate_unified_id
from .base import IdentityLink

__all__ = [
    "LinkTable",
    "ResolverContextManager",
    "validate_link_args",
]


def validate_link_args(platform: str, platform_user_id: str, unified_user_id: str) -> None:
    """Raise ``ValueError`` naming the rule if any of the three is invalid."""
    validate_platform(platform)
    validate_platform_user_id(platform_user_id)
    validate_unified_id(unified_user_id)


def _sort_key(link: IdentityLink) -> tuple[str, str]:
    return (link.platform, link.platform_user_id)


class LinkTable:
    """Links held in memory: a two-level dict for ``resolve`` plus an index by person.

    ``resolved[platform][platform_user_id]`` is the unified id: two lookups on
    strings whose hashes are cached, no allocation, so ``resolve`` stays near a
    bare dict lookup. Not thread-safe for writers; the owning resolver holds a
    lock around :meth:`put` and :meth:`remove` and around iteration.
    """

    __slots__ = ("_by_unified", "_links", "resolved")

    def __init__(self, links: Iterable[IdentityLink] = ()) -> None:
        self.resolved: dict[str, dict[str, str]] = {}
        self._links: dict[tuple[str, str], IdentityLink] = {}
        self._by_unified: dict[str, dict[tuple[str, str], None]] = {}
        for link in links:
            self.put(link)

    def __len__(self) -> int:
        return len(self._links)

    def resolve(self, platform: str, platform_user_id: str) -> str:
        """The unified id, or the unlinked form ``platform:platform_user_id``."""
        accounts = self.resolved.get(platform)
        if accounts is not None:
            unified = accounts.get(platform_user_id)
            if unified is not None:
                return unified
        return f"{platform}:{platform_user_id}"

    def get(self, platform: str, platform_user_id: str) -> IdentityLink | None:
        """The link of one account, or ``None``."""
        return self._links.get((platform, platform_user_id))

    def put(self, link: IdentityLink) -> None:
        """Add or replace the link of ``link``'s account (moving it between people)."""
        key = (link.platform, link.platform_user_id)
        old = self._links.get(key)
        if old is not None and old.unified_user_id != link.unified_user_id:
            self._drop_index(old.unified_user_id, key)
        self._links[key] = link
        self._by_unified.setdefault(link.unified_user_id, {})[key] = None
        # Written last, so a concurrent resolve() never sees a half-made link.
        self.resolved.setdefault(link.platform, {})[link.platform_user_id] = link.unified_user_id

    def remove(self, platform: str, platform_user_id: str) -> IdentityLink | None:
        """Remove one account's link; return it, or ``None`` if it was not linked."""
        key = (platform, platform_user_id)
        old = self._links.pop(key, None)
        if old is None:
            return None
        accounts = self.resolved.get(platform)
        if accounts is not None:
            accounts.pop(platform_user_id, None)
        self._drop_index(old.unified_user_id, key)
        return old

    def links_for(self, unified_user_id: str) -> list[IdentityLink]:
        """Every account of one person, sorted by (platform, platform_user_id)."""
        keys = self._by_unified.get(unified_user_id, {})
        return sorted((self._links[key] for key in keys), key=_sort_key)

    def taken(self, unified_user_id: str, platform: str, platform_user_id: str) -> bool:
        """True when an account other than this one is linked to ``unified_user_id``."""
        return any(key != (platform, platform_user_id)
                   for key in self._by_unified.get(unified_user_id, {}))  # fmt: skip

    def all_links(self) -> list[IdentityLink]:
        """Every link, sorted by (platform, platform_user_id)."""
        return sorted(self._links.values(), key=_sort_key)

    def _drop_index(self, unified_user_id: str, key: tuple[str, str]) -> None:
        keys = self._by_unified.get(unified_user_id)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._by_unified[unified_user_id]


class ResolverContextManager:
    """``with resolver: ...`` closes the resolver on exit."""

    def close(self) -> None:
        """Release held resources; the base holds none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
