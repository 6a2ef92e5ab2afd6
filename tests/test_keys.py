from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onethread.session.keys import legacy_key, session_key


def test_legacy_key_bit_for_bit() -> None:
    assert session_key(platform="telegram", user_id="12345") == "bot_telegram_12345"
    assert legacy_key("discord", "snowflake-1") == "bot_discord_snowflake-1"


def test_unlinked_user_keeps_legacy_key_with_resolver() -> None:
    key = session_key(platform="telegram", user_id="12345", unified_user_id="telegram:12345")
    assert key == "bot_telegram_12345"


def test_linked_dm_uses_unified_key() -> None:
    assert session_key(platform="telegram", user_id="1", unified_user_id="alice") == "user:alice"


def test_group_and_thread_keys() -> None:
    assert session_key(platform="slack", user_id="U1", chat_type="group", chat_id="C1") == (
        "chat:slack:C1"
    )
    assert (
        session_key(
            platform="slack", user_id="U1", chat_type="channel", chat_id="C1", thread_id="1.2"
        )
        == "chat:slack:C1:thread:1.2"
    )


def test_group_ignores_unified_id() -> None:
    key = session_key(
        platform="telegram", user_id="1", chat_type="group", chat_id="-100", unified_user_id="alice"
    )
    assert key == "chat:telegram:-100"


def test_bad_chat_type_and_missing_chat_id() -> None:
    with pytest.raises(ValueError, match="chat_type"):
        session_key(platform="x", user_id="1", chat_type="room")
    with pytest.raises(ValueError, match="chat_id"):
        session_key(platform="x", user_id="1", chat_type="group")


ids = st.text(min_size=1, max_size=20)


@given(
    platform=st.from_regex(r"[a-z0-9_-]{1,10}", fullmatch=True),
    user=ids,
    unified=st.text(min_size=1, max_size=20).filter(lambda s: ":" not in s),
    chat=ids,
)
def test_dm_and_group_keys_never_collide(platform: str, user: str, unified: str, chat: str) -> None:
    dm_legacy = session_key(platform=platform, user_id=user)
    dm_unified = session_key(platform=platform, user_id=user, unified_user_id=unified)
    group = session_key(platform=platform, user_id=user, chat_type="group", chat_id=chat)
    assert len({dm_legacy, dm_unified, group}) == 3
    assert group.startswith("chat:") and dm_unified.startswith("user:")
