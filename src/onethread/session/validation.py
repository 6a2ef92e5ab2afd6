"""Validation of the names identity and session keys are built from."""

from __future__ import annotations

import re

__all__ = [
    "MAX_UNIFIED_ID_LENGTH",
    "validate_platform",
    "validate_platform_user_id",
    "validate_unified_id",
]

MAX_UNIFIED_ID_LENGTH = 128
_PLATFORM_RE = re.compile(r"[a-z0-9_-]+")


def validate_platform(platform: str) -> str:
    """Return ``platform`` if it is a valid platform name, else raise ``ValueError``.

    Rule: lowercase letters, digits, ``_`` and ``-`` only, at least one character.
    """
    if not isinstance(platform, str) or not _PLATFORM_RE.fullmatch(platform):
        raise ValueError(
            f"invalid platform name {platform!r}: use lowercase letters, digits, '_' or '-' "
            "(for example 'telegram')"
        )
    return platform


def validate_platform_user_id(platform_user_id: str) -> str:
    """Return the platform user id if it is a non-empty string, else raise ``ValueError``."""
    if not isinstance(platform_user_id, str) or not platform_user_id:
        raise ValueError(
            f"invalid platform user id {platform_user_id!r}: it must be a non-empty string "
            "(pass numeric ids as str, e.g. '12345')"
        )
    return platform_user_id


def validate_unified_id(unified_user_id: str) -> str:
    """Return ``unified_user_id`` if valid, else raise ``ValueError`` naming the rule.

    Rule: a non-empty string of at most 128 characters with no ``:`` (so it never
    collides with the unlinked form ``platform:user_id``) and no whitespace at
    either end.
    """
    if not isinstance(unified_user_id, str) or not unified_user_id:
        raise ValueError("invalid unified user id: it must be a non-empty string, e.g. 'alice'")
    if ":" in unified_user_id:
        raise ValueError(
            f"invalid unified user id {unified_user_id!r}: it must not contain ':' "
            "(that form is reserved for unlinked accounts, 'platform:user_id')"
        )
    if len(unified_user_id) > MAX_UNIFIED_ID_LENGTH:
        raise ValueError(
            f"invalid unified user id: at most {MAX_UNIFIED_ID_LENGTH} characters, "
            f"got {len(unified_user_id)}"
        )
    if unified_user_id != unified_user_id.strip() or not unified_user_id.isprintable():
        raise ValueError(
            f"invalid unified user id {unified_user_id!r}: no leading/trailing whitespace "
            "or control characters"
        )
    return unified_user_id
