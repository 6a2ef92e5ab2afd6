"""Names for new people (session/naming.py): always valid unified ids."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onethread.session.naming import (
    MAX_NAME_LENGTH,
    candidates,
    name_from_display,
    requested_name,
)
from onethread.session.validation import validate_unified_id


@given(st.text(max_size=200))
def test_a_display_name_gives_a_valid_id_or_nothing(display: str) -> None:
    name = name_from_display(display)
    if name:
        assert validate_unified_id(name) == name
        assert len(name) <= MAX_NAME_LENGTH and ":" not in name
        assert name == name.casefold() and name[0] not in "-._" and name[-1] not in "-._"


@pytest.mark.parametrize(
    ("display", "name"),
    [
        ("Alice", "alice"),
        ("Alice Smith", "alice-smith"),
        ("  alice   smith  ", "alice-smith"),
        ("Zoë", "zoë"),
        ("ＡＬＩＣＥ", "alice"),  # full-width letters
        ("李雷", "李雷"),
        ("bob:admin", "bob-admin"),
        ("R2-D2", "r2-d2"),
        ("🙂", ""),
        ("", ""),
        ("x" * 40, "x" * MAX_NAME_LENGTH),
    ],
)
def test_display_names(display: str, name: str) -> None:
    assert name_from_display(display) == name


@given(st.text(alphabet=st.characters(categories=["L"]) | st.sampled_from(" ._-"), max_size=32))
def test_a_requested_name_is_valid_or_refused_with_a_reason(text: str) -> None:
    try:
        name = requested_name(text)
    except ValueError as exc:
        assert "letters" in str(exc) or "characters at most" in str(exc)
    else:
        assert validate_unified_id(name) == name and not any(ch.isdigit() for ch in name)


@pytest.mark.parametrize("text", ["bob9", "a:b", "x/y", "@alice", "tab\there"])
def test_requested_names_with_other_characters_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="letters, spaces"):
        requested_name(text)


def test_requested_names() -> None:
    assert requested_name("Mary Jane") == "mary-jane"
    assert requested_name(" Alice ") == "alice"
    with pytest.raises(ValueError, match="no letters"):
        requested_name("-._")
    with pytest.raises(ValueError, match="at most"):
        requested_name("a" * (MAX_NAME_LENGTH + 1))


def test_candidates_count_up_then_go_random() -> None:
    names = list(itertools.islice(candidates("alice"), 53))
    assert names[:3] == ["alice", "alice-2", "alice-3"] and names[49] == "alice-50"
    assert all(len(n) == len("alice-") + 6 for n in names[50:]) and len(set(names)) == 53
    longest = list(itertools.islice(candidates("x" * MAX_NAME_LENGTH), 60))
    assert all(validate_unified_id(n) for n in longest)
