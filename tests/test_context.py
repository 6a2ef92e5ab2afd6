from __future__ import annotations

import asyncio
import threading

import pytest

from onethread.session import (
    SessionContext,
    clear_session_context,
    get_session_context,
    set_session_context,
)


def test_empty_outside_a_turn() -> None:
    ctx = get_session_context()
    assert ctx == SessionContext() and ctx.is_empty


def test_set_and_reset_with_token() -> None:
    token = set_session_context(platform="telegram", user_id="1")
    try:
        assert get_session_context().platform == "telegram"
        inner = set_session_context(get_session_context(), chat_id="c")
        assert get_session_context().chat_id == "c"
        clear_session_context(inner)
        assert get_session_context().chat_id == ""
        assert get_session_context().platform == "telegram"
    finally:
        clear_session_context(token)
    assert get_session_context().is_empty


def test_clear_without_token_empties() -> None:
    set_session_context(platform="x")
    clear_session_context()
    assert get_session_context().is_empty


def test_unknown_field_and_bad_type() -> None:
    with pytest.raises(TypeError, match="unknown SessionContext field"):
        set_session_context(platfrom="x")
    with pytest.raises(TypeError, match="must be a str"):
        set_session_context(user_id=12345)


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        SessionContext().platform = "x"  # type: ignore[misc]


async def test_hundreds_of_concurrent_turns_never_see_each_other() -> None:
    seen: dict[int, list[str]] = {}

    def sync_tool() -> str:  # runs in a worker thread with the context copied
        return get_session_context().user_id

    async def turn(i: int) -> None:
        token = set_session_context(platform="p", user_id=f"u{i}", chat_id=f"c{i}")
        try:
            values = []
            for _ in range(5):
                await asyncio.sleep(0)
                values.append(get_session_context().user_id)
                values.append(await asyncio.to_thread(sync_tool))
                child = asyncio.create_task(asyncio.sleep(0, get_session_context().chat_id))
                values.append("u" + (await child)[1:])
            seen[i] = values
        finally:
            clear_session_context(token)
        assert get_session_context().is_empty

    await asyncio.gather(*(turn(i) for i in range(300)))
    for i, values in seen.items():
        assert set(values) == {f"u{i}"}
    assert get_session_context().is_empty


def test_plain_thread_starts_empty() -> None:
    token = set_session_context(user_id="main")
    got: list[SessionContext] = []
    try:
        t = threading.Thread(target=lambda: got.append(get_session_context()))
        t.start()
        t.join()
    finally:
        clear_session_context(token)
    assert got[0].is_empty
