"""Names for new people: a unified id made from a display name or a name someone asked for.

A person linked for the first time is named after the display name of the
account that asked for the code (``Alice Smith`` -> ``alice-smith``), or after
the name given with ``/link NAME``. :func:`candidates` then lists the forms to
try until one is free (``alice``, ``alice-2``, ...); which ones are free is the
resolver's business (``claim``), not this module's.

Every name made here is a valid unified id (see :mod:`.validation`): no ``:``,
no whitespace or control characters, at most :data:`MAX_NAME_LENGTH`
characters (so a suffix still fits), lower case.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Iterator

from .validation import validate_unified_id

__all__ = ["MAX_NAME_LENGTH", "candidates", "name_from_display", "requested_name"]

MAX_NAME_LENGTH = 32
_NUMBERED = 50  # alice, alice-2 ... alice-50; then random suffixes
_OTHER = re.compile(r"[^\w.-]+")  # \w is Unicode: letters of every script stay
_DASHES = re.compile(r"-{2,}")
_EDGES = "-._"


def _shape(text: str) -> str:
    name = unicodedata.normalize("NFKC", text).casefold()
    name = _OTHER.sub("-", name)
    name = _DASHES.sub("-", name).strip(_EDGES)
    return name[:MAX_NAME_LENGTH].strip(_EDGES)


def name_from_display(display_name: str) -> str:
    """A unified id made from a display name, or ``""`` when nothing usable is left.

    Case-folded (NFKC first, so full-width letters become plain ones); every
    run of characters other than letters, digits, ``.``, ``_`` and ``-``
    becomes one ``-``; cut to :data:`MAX_NAME_LENGTH`. ``"Alice Smith"`` ->
    ``"alice-smith"``, ``"Zoë"`` -> ``"zoë"``, ``"🙂"`` -> ``""``.
    """
    name = _shape(display_name)
    return name if name and name.isprintable() else ""


def requested_name(text: str) -> str:
    """The unified id for ``/link NAME``; ``ValueError`` with a message for the person.

    A name is letters (any script), spaces, ``.``, ``_`` and ``-``; no digits,
    because an argument with a digit is read as a code. Spaces become ``-``
    and the name is case-folded: ``"Mary Jane"`` -> ``"mary-jane"``.
    """
    stripped = text.strip()
    bad = sorted({ch for ch in stripped if not (ch.isalpha() or ch in " ._-")})
    if bad:
        shown = " ".join(repr(ch) for ch in bad[:5])
        raise ValueError(
            f"A name may hold letters, spaces, '.', '_' and '-' only, not {shown}. "
            "For example: /link alice"
        )
    if len(stripped) > MAX_NAME_LENGTH:
        raise ValueError(f"A name may be {MAX_NAME_LENGTH} characters at most.")
    name = _shape(stripped)
    if not name:
        raise ValueError("That name has no letters. For example: /link alice")
    return validate_unified_id(name)


def candidates(base: str) -> Iterator[str]:
    """The names to try, in order: ``base``, ``base-2`` ... ``base-50``, then random suffixes.

    Endless; the caller stops at the first free one. ``base`` must be a name
    from this module (or another valid unified id of at most
    :data:`MAX_NAME_LENGTH` characters).
    """
    yield base
    for n in range(2, _NUMBERED + 1):
        yield f"{base}-{n}"
    while True:
        yield f"{base}-{secrets.token_hex(3)}"
