"""An identity resolver that lives in process memory: for tests and single runs."""

from __future__ import annotations

import threading
import time

from ._common import LinkTable, ResolverContextManager, validate_link_args
from .base import IdentityLink

__all__ = ["InMemoryIdentityResolver"]


class InMemoryIdentityResolver(ResolverContextManager):
    """Links kept in a dict; they are gone when the process exits.

    Concurrency: ``self._lock`` (a ``threading.Lock``) guards every mutation of
    the link table and every iteration over it (``links_for``, ``all_links``).
    ``resolve`` takes no lock: it is two atomic ``dict.get`` calls, and a link
    becomes visible to it in one atomic dict store.
    """

    def __init__(self, links: dict[tuple[str, str], str] | None = None) -> None:
        """Start empty, or with ``{(platform, platform_user_id): unified_user_id}``.

        Raises ``ValueError`` if any initial link is invalid.
        """
        self._lock = threading.Lock()
        self._table = LinkTable()
        self._resolved = self._table.resolved
        for (platform, platform_user_id), unified in (links or {}).items():
            self.link(platform, platform_user_id, unified)

    def resolve(self, platform: str, platform_user_id: str) -> str:
        """Return the unified id, or ``f"{platform}:{platform_user_id}"`` when unlinked.

        Lock-free and allocation-free on a hit; arguments are not validated.
        """
        accounts = self._resolved.get(platform)
        if accounts is not None:
            unified = accounts.get(platform_user_id)
            if unified is not None:
                return unified
        return f"{platform}:{platform_user_id}"

    def link(self, platform: str, platform_user_id: str, unified_user_id: str) -> None:
        """Bind the account to ``unified_user_id``; moves it if linked to someone else.

        Re-linking to the same id is a no-op (``linked_at`` is kept). Raises
        ``ValueError`` naming the rule for an invalid platform, account or id.
        Thread-safe.
        """
        validate_link_args(platform, platform_user_id, unified_user_id)
        with self._lock:
            old = self._table.get(platform, platform_user_id)
            if old is not None and old.unified_user_id == unified_user_id:
                return
            self._table.put(IdentityLink(platform, platform_user_id, unified_user_id, time.time()))

    def claim(self, platform: str, platform_user_id: str, unified_user_id: str) -> bool:
        """Link the account to ``unified_user_id`` unless another account has that id.

        ``True`` if the account is now linked to it (also when it already
        was), ``False`` if the id is taken (nothing changes). The check and the
        link are one step under the lock. Raises ``ValueError`` as :meth:`link`.
        """
        validate_link_args(platform, platform_user_id, unified_user_id)
        with self._lock:
            if self._table.taken(unified_user_id, platform, platform_user_id):
                return False
            old = self._table.get(platform, platform_user_id)
            if old is None or old.unified_user_id != unified_user_id:
                link = IdentityLink(platform, platform_user_id, unified_user_id, time.time())
                self._table.put(link)
            return True

    def unlink(self, platform: str, platform_user_id: str) -> bool:
        """Remove the account's link; ``True`` if there was one. Thread-safe."""
        with self._lock:
            return self._table.remove(platform, platform_user_id) is not None

    def links_for(self, unified_user_id: str) -> list[IdentityLink]:
        """Every account linked to ``unified_user_id``, sorted by (platform, account)."""
        with self._lock:
            return self._table.links_for(unified_user_id)

    def all_links(self) -> list[IdentityLink]:
        """Every link, sorted by (platform, platform_user_id)."""
        with self._lock:
            return self._table.all_links()
