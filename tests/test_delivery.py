from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onethread.errors import BadRequest, OutcomeUnknown, PlatformUnavailable, RetryAfter
from onethread.platforms.delivery import (
    CUT_NOTE,
    RetryPolicy,
    cap_messages,
    send_with_retry,
    split_message,
)


def _strip_fences(chunks: list[str]) -> str:
    return "".join(c.replace("```", "").replace("python", "") for c in chunks)


def test_short_text_is_one_chunk() -> None:
    assert split_message("hello", 100) == ["hello"]
    assert split_message("", 100) == []


def test_splits_at_paragraphs_first() -> None:
    text = ("a" * 30 + "\n\n") * 5
    chunks = split_message(text, 70)
    assert all(len(c) <= 70 for c in chunks)
    assert all(c.strip("a") == "" or "\n\n" in c for c in chunks)
    assert "".join(c.replace("\n", "") for c in chunks) == "a" * 150


def test_ten_thousand_characters_complete_and_within_limit() -> None:
    words = " ".join(f"w{i}" for i in range(2000))
    chunks = split_message(words, 2000)
    assert all(len(c) <= 2000 for c in chunks)
    assert " ".join(chunks).split() == words.split()


def test_code_fence_closed_and_reopened() -> None:
    code = "```python\n" + "\n".join(f"x{i} = {i}" for i in range(400)) + "\n```"
    chunks = split_message(code, 500)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(chunk) <= 500
        assert chunk.count("```") % 2 == 0, chunk
    assert chunks[1].startswith("```python\n")


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab \n`")), max_size=3000),
    limit=st.integers(min_value=16, max_value=400),
)
def test_property_chunks_fit_and_nothing_lost(text: str, limit: int) -> None:
    chunks = split_message(text, limit)
    assert all(len(c) <= limit for c in chunks)

    # Every non-whitespace, non-backtick character survives, in order.
    def core(s: str) -> str:
        return "".join(ch for ch in s if ch not in " \n`")

    assert core("".join(chunks)) == core(text)


def test_cap_keeps_ten_messages_whole_and_cuts_the_eleventh() -> None:
    ten = "\n\n".join("x" * 90 for _ in range(10))  # ten paragraphs, one per message
    assert cap_messages(ten, 100, 10) == (split_message(ten, 100), False)
    eleven = ten + "\n\n" + "q" * 90
    chunks, cut = cap_messages(eleven, 100, 10)
    assert cut and len(chunks) == 10
    assert all(len(c) <= 100 for c in chunks)
    assert chunks[-1].endswith(CUT_NOTE) and "q" not in "".join(chunks)
    assert chunks[:9] == split_message(eleven, 100)[:9]  # the first part, unchanged


def test_cap_inside_a_code_block_still_renders() -> None:
    text = "```python\n" + "\n".join(f"line_{i} = {i}" for i in range(2000)) + "\n```"
    chunks, cut = cap_messages(text, 300, 3)
    assert cut and len(chunks) == 3 and all(len(c) <= 300 for c in chunks)
    last = chunks[-1]
    assert last.startswith("```python\n") and last.endswith(f"```\n\n{CUT_NOTE}")


@settings(max_examples=500, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab \n`")), max_size=3000),
    limit=st.integers(min_value=16, max_value=400),
    max_messages=st.integers(min_value=1, max_value=12),
)
def test_property_capped_messages_fit(text: str, limit: int, max_messages: int) -> None:
    chunks, cut = cap_messages(text, limit, max_messages)
    assert len(chunks) <= max_messages
    assert all(len(c) <= limit for c in chunks)
    assert cut == (len(split_message(text, limit)) > max_messages)
    if cut:
        assert chunks[-1].endswith(CUT_NOTE[:limit])
        assert chunks[:-1] == split_message(text, limit)[: max_messages - 1]
    else:
        assert chunks == split_message(text, limit)


async def test_retry_after_honoured_then_success() -> None:
    calls: list[int] = []
    slept: list[float] = []

    async def call() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RetryAfter(1.5)
        return "ok"

    async def sleep(d: float) -> None:
        slept.append(d)

    assert await send_with_retry(call, RetryPolicy(), what="t", sleep=sleep) == "ok"
    assert slept == [1.5, 1.5]


async def test_retry_after_over_cap_gives_up() -> None:
    async def call() -> str:
        raise RetryAfter(120)

    async def sleep(d: float) -> None:
        raise AssertionError("must not wait two minutes")

    with pytest.raises(RetryAfter):
        await send_with_retry(call, RetryPolicy(max_delay=60), what="t", sleep=sleep)


async def test_5xx_retried_until_attempts_run_out() -> None:
    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        raise PlatformUnavailable("502")

    async def sleep(d: float) -> None:
        assert d <= 60

    with pytest.raises(PlatformUnavailable):
        await send_with_retry(call, RetryPolicy(attempts=4), what="t", sleep=sleep)
    assert len(calls) == 4


async def test_bad_request_not_retried() -> None:
    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        raise BadRequest("nope")

    with pytest.raises(BadRequest):
        await send_with_retry(call, RetryPolicy(), what="t")
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("error", "calls"),
    [
        (RetryAfter(0.0), 3),
        (PlatformUnavailable("503"), 3),
        (OutcomeUnknown("read timeout"), 1),  # may have arrived: never sent twice
        (BadRequest("chat not found"), 1),
    ],
)
async def test_only_what_certainly_did_not_arrive_is_retried(error: Exception, calls: int) -> None:
    made = 0

    async def call() -> str:
        nonlocal made
        made += 1
        raise error

    async def no_wait(_: float) -> None:
        return None

    with pytest.raises(type(error)):
        await send_with_retry(call, RetryPolicy(attempts=3), what="t", sleep=no_wait)
    assert made == calls
