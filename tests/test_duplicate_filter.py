"""The in-process duplicate filter: once per key, bounded, time-limited, GC-free."""

from __future__ import annotations

import gc

import pytest

from onethread.session.locks import DuplicateFilter, LocalDuplicateFilter
from onethread.session.locks import base as locks


async def test_a_key_is_new_once() -> None:
    dedup = LocalDuplicateFilter()
    assert isinstance(dedup, DuplicateFilter)
    assert await dedup.first_time("telegram:1:42")
    assert not await dedup.first_time("telegram:1:42")
    assert await dedup.first_time("telegram:1:43")


async def test_keeps_at_least_half_and_at_most_max_size_recent_keys() -> None:
    dedup = LocalDuplicateFilter(max_size=10)
    for i in range(1000):
        assert await dedup.first_time(f"k{i}")
        # the 5 most recent keys are always remembered
        for j in range(max(0, i - 4), i + 1):
            assert not await dedup.first_time(f"k{j}"), (i, j)
    remembered = [i for i in range(1000) if f"k{i}" in dedup._current or f"k{i}" in dedup._previous]
    assert 5 <= len(remembered) <= 10
    assert await dedup.first_time("k0")  # long forgotten: new again


async def test_forgets_after_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(locks.time, "monotonic", lambda: now[0])
    dedup = LocalDuplicateFilter(ttl=60)
    assert await dedup.first_time("a")
    now[0] += 59
    assert not await dedup.first_time("a")
    now[0] += 2
    assert await dedup.first_time("a")


async def test_a_full_filter_is_invisible_to_the_cyclic_collector() -> None:
    dedup = LocalDuplicateFilter(max_size=2_000)
    for i in range(5_000):
        await dedup.first_time(f"slack:T1:C1:{i}")
    gc.collect()
    # Plain dicts of str -> float are untracked: a full collection never walks them.
    assert not gc.is_tracked(dedup._current)
    assert not gc.is_tracked(dedup._previous)


def test_max_size_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="max_size"):
        LocalDuplicateFilter(max_size=1)


async def test_a_key_kept_in_the_older_half_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(locks.time, "monotonic", lambda: now[0])
    dedup = LocalDuplicateFilter(max_size=4, ttl=60)
    assert await dedup.first_time("old")
    for key in ("a", "b"):  # "old" moves to the older half
        assert await dedup.first_time(key)
    assert "old" in dedup._previous and "old" not in dedup._current
    assert not await dedup.first_time("old")  # still remembered there
    now[0] += 61
    assert await dedup.first_time("old")  # expired: new again
