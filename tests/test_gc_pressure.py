"""What keeps CPython's full garbage collections short while a bot serves
(docs/performance.md, *The latency tail*)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
from pathlib import Path

import pytest

import onethread.bots.heap as heap
from onethread import Agent
from onethread.bots import Bot, BotOS
from onethread.session.history.base import HistoryEntry
from onethread.session.history.memory import MemoryHistoryStore
from onethread.session.history.sqlite import SQLiteHistoryStore
from onethread.testing import EchoModel, FakeAdapter

needs_cpython_api = pytest.mark.skipif(
    not hasattr(getattr(ctypes, "pythonapi", None), "PyObject_GC_UnTrack"),
    reason="untracking needs CPython's C API (ctypes.pythonapi); elsewhere it does nothing",
)


def entries(n: int) -> list[HistoryEntry]:
    return [HistoryEntry(role="user", content=f"m{i}", timestamp=float(i)) for i in range(n)]


@needs_cpython_api
async def test_the_memory_store_keeps_its_entries_out_of_the_collectors_walk() -> None:
    store = MemoryHistoryStore()
    batch = entries(50)
    assert all(gc.is_tracked(x) for x in batch)
    await store.append("k", batch)
    assert not any(gc.is_tracked(x) for x in batch)
    assert await store.load("k", 50) == batch  # the same entries, still whole
    gc.collect()
    assert await store.load("k", 2) == batch[-2:]


@needs_cpython_api
async def test_the_sqlite_read_cache_keeps_its_entries_out_of_the_collectors_walk(
    tmp_path: Path,
) -> None:
    store = SQLiteHistoryStore(tmp_path / "h.db")
    try:
        await store.append("k", entries(10))
        loaded = await store.load("k", 20)  # read from the file, now cached
        assert [x.content for x in loaded] == [f"m{i}" for i in range(10)]
        assert not any(gc.is_tracked(x) for x in loaded)
        more = entries(12)[10:]
        await store.append("k", more)  # our own commit: added to the cache
        assert not any(gc.is_tracked(x) for x in more)
    finally:
        await store.close()


def test_freeze_startup_heap_runs_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen: list[int] = []
    monkeypatch.setattr(heap, "_done", False)
    monkeypatch.setattr(heap.gc, "freeze", lambda: frozen.append(1))
    assert heap.freeze_startup_heap() is True
    assert heap.freeze_startup_heap() is False
    assert frozen == [1]


@pytest.mark.parametrize(("option", "expected"), [({}, 1), ({"gc_freeze": False}, 0)])
async def test_botos_freezes_the_startup_heap_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch, option: dict[str, bool], expected: int
) -> None:
    calls: list[int] = []
    monkeypatch.setattr("onethread.bots.botos.freeze_startup_heap", lambda: calls.append(1))
    monkeypatch.setattr("onethread.bots.bot.freeze_startup_heap", lambda: calls.append(1))
    agent = Agent(name="t", model=EchoModel())
    platforms = {"telegram": {"adapter": FakeAdapter("telegram")}}
    botos = BotOS(agent=agent, platforms=platforms, store="memory://", **option)
    task = asyncio.create_task(botos.start())
    await botos.wait_ready(5)
    await botos.stop()
    await task
    # BotOS at its start, and its bot (a Bot started alone does it too); the real
    # function acts only the first time in a process
    assert len(calls) == 2 * expected
    assert botos.bots["telegram"].gc_freeze is bool(expected)


def test_botos_gc_freeze_false_holds_for_bots_added_ready_made() -> None:
    agent = Agent(name="t", model=EchoModel())
    botos = BotOS(agent=agent, store="memory://", gc_freeze=False)
    ready = Bot("telegram", agent, adapter=FakeAdapter("telegram"))
    assert ready.gc_freeze
    botos.add_bot(ready)
    assert not ready.gc_freeze


def test_freeze_startup_heap_raises_the_young_threshold_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 14: request-lived objects die before a collection sees them (fewer young
    collections, less promoted); a higher threshold set by the app, and collection
    turned off (0), are kept."""
    was = gc.get_threshold()
    monkeypatch.setattr(heap.gc, "freeze", lambda: None)
    try:
        cases = [
            ((700, 10, 10), (heap.YOUNG_THRESHOLD, 10, 10)),
            ((50_000, 5, 7), (50_000, 5, 7)),
            ((0, 10, 10), (0, 10, 10)),
        ]
        for before, after in cases:
            monkeypatch.setattr(heap, "_done", False)
            gc.set_threshold(*before)
            assert heap.freeze_startup_heap() is True
            assert gc.get_threshold() == after
    finally:
        gc.set_threshold(*was)
