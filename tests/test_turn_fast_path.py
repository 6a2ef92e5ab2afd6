"""The turn's fast paths stay exact: what they keep is checked against what changed.

- SQLite reads ``PRAGMA data_version`` once per loop iteration: a summary
  written by another store of the same file (another process, another host's
  manager) is still in the next turn, and a change made by another store of the
  same file on the same loop, with no await in between, is seen at once.
- Folds follow the token budget, not the entry count: a long session of short
  messages (past ``max_history``) is not summarised every few turns, and is
  summarised once everything unsummarised, including what ``max_history`` hides,
  outgrows the budget, whichever manager wrote it.
- The budget's fixed parts are kept while the objects they came from are the
  same: a new instruction text or a new context window table entry counts at once.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

from helpers import RecordingAgent
from onethread.agent import Agent, tokens
from onethread.agent.summary import SUMMARY_ROLE, summary_entry
from onethread.bots import BotSessionManager
from onethread.session.history.base import HistoryEntry
from onethread.session.history.memory import MemoryHistoryStore
from onethread.session.history.sqlite import SQLiteHistoryStore
from onethread.session.keys import summary_key

KEY = "bot_web_u"


async def _settle(manager: BotSessionManager) -> None:
    while manager.compaction.pending:
        await asyncio.gather(*manager.compaction.pending.values(), return_exceptions=True)


async def test_a_summary_written_by_another_manager_on_the_same_file_is_used(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.db"
    one = BotSessionManager(SQLiteHistoryStore(path))
    other = BotSessionManager(SQLiteHistoryStore(path))
    agent = RecordingAgent()
    for i in range(3):
        await one.chat(agent, "u", f"m{i}", platform="web")
    folded = (await one.store.load(KEY))[:4]
    assert [h.content for h in agent.calls[-1][0]] == ["m0", "reply:m0", "m1", "reply:m1"]
    # The other host folds the first four entries (its own store object, same file).
    entry = summary_entry("the person said m0 and m1", folded, None, kind="summary")
    await other.store.append(summary_key(KEY), [entry])
    await one.chat(agent, "u", "m3", platform="web")
    seen = agent.calls[-1][0]
    assert seen[0].role == SUMMARY_ROLE and seen[0].content == "the person said m0 and m1"
    assert [h.content for h in seen[1:]] == ["m2", "reply:m2"]
    await one.close()
    await other.close()


async def test_a_summary_written_by_another_process_is_used(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    one = BotSessionManager(SQLiteHistoryStore(path))
    agent = RecordingAgent()
    for i in range(3):
        await one.chat(agent, "u", f"m{i}", platform="web")
    script = textwrap.dedent(
        f"""
        import asyncio
        from onethread.agent.summary import summary_entry
        from onethread.session.history.sqlite import SQLiteHistoryStore
        from onethread.session.keys import summary_key

        async def main():
            store = SQLiteHistoryStore({str(path)!r})
            folded = (await store.load({KEY!r}))[:4]
            entry = summary_entry("written elsewhere", folded, None, kind="summary")
            await store.append(summary_key({KEY!r}), [entry])
            await store.close()

        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    assert await proc.wait() == 0
    await one.chat(agent, "u", "m3", platform="web")
    seen = agent.calls[-1][0]
    assert seen[0].content == "written elsewhere"
    assert [h.content for h in seen[1:]] == ["m2", "reply:m2"]
    await one.close()


async def test_a_change_by_another_store_in_the_same_loop_iteration_is_seen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.db"
    one, other = SQLiteHistoryStore(path), SQLiteHistoryStore(path)
    entries = [HistoryEntry(role="user", content=f"e{i}", timestamp=float(i)) for i in range(3)]
    await one.append(KEY, entries)
    assert len(await other.load(KEY)) == 3  # both loop connections are open now
    assert len(await one.load(KEY, 3)) == 3  # cached, data_version read this iteration
    # No await that suspends between these: the same loop iteration.
    assert await other.clear(KEY) == 3
    assert await one.load(KEY, 3) == []
    await one.close()
    await other.close()


async def test_no_fold_on_entry_count_alone() -> None:
    manager = BotSessionManager(MemoryHistoryStore(), max_history=4)
    agent = RecordingAgent()
    for i in range(40):
        await manager.chat(agent, "u", f"short {i}", platform="web")
        await _settle(manager)
    assert manager.compaction.folds == 0
    assert await manager.store.load(summary_key(KEY)) == []
    # max_history still bounds what the model sees.
    assert [h.content for h in agent.calls[-1][0]] == [
        "short 37",
        "reply:short 37",
        "short 38",
        "reply:short 38",
    ]
    await manager.close()


async def test_what_max_history_hides_counts_toward_the_budget() -> None:
    # 300 tokens of budget leave ~230 for history (fold past 85 %); a turn's two entries
    # cost ~22, so the four shown (max_history) fit, and the whole session outgrows it
    # around turn 9.
    manager = BotSessionManager(MemoryHistoryStore(), max_history=4, context_tokens=300)
    agent = RecordingAgent()
    await manager.chat(agent, "u", "my lucky number is 7, remember it", platform="web")
    turn = 1
    while manager.compaction.folds == 0 and turn < 40:
        await manager.chat(agent, "u", f"and here is message {turn:03}", platform="web")
        await _settle(manager)
        turn += 1
    assert manager.compaction.folds == 1 and 4 < turn < 20
    summaries = await manager.store.load(summary_key(KEY))
    first = (await manager.store.load(KEY))[0]
    # The fold starts at the very first entry, long hidden by max_history.
    assert summaries[0].metadata["folded"][0] == first.timestamp
    assert summaries[-1].metadata["covers"][0] == first.timestamp
    await manager.close()


async def test_entries_written_by_another_manager_count_toward_the_budget() -> None:
    store = MemoryHistoryStore()
    one = BotSessionManager(store, max_history=4, context_tokens=300)
    other = BotSessionManager(store, max_history=4, context_tokens=300)
    one.compaction.enabled = True
    other.compaction.enabled = False  # only ``one`` may fold: it must count both hosts' turns
    agent = RecordingAgent()
    turns = 0
    while one.compaction.folds == 0 and turns < 40:
        turns += 1
        await other.chat(agent, "u", f"other host says {turns:03}", platform="web")
        await other.chat(agent, "u", f"other host again {turns:03}", platform="web")
        await one.chat(agent, "u", f"this host says {turns:03}", platform="web")
        await _settle(one)
    # Only a third of the entries are this host's: counting those alone would take 3x longer.
    assert one.compaction.folds == 1 and turns < 6
    await one.close()
    await other.close()


async def test_a_new_instruction_text_or_window_table_entry_counts_at_once() -> None:
    manager = BotSessionManager(MemoryHistoryStore())
    agent = Agent("a", instructions="Be brief.")
    before = manager.compaction._history_room(agent, None, "hi")
    assert manager.compaction._history_room(agent, None, "hi") == before
    agent.instructions = "Be brief. " * 400
    assert manager.compaction._history_room(agent, None, "hi") < before - 900
    name = "onethread-test-model-x"
    assert tokens.default_budget(name) == 16_000 - 3_200
    tokens.CONTEXT_WINDOWS[name] = 4_000
    try:
        assert tokens.default_budget(name) == 4_000 - 800
    finally:
        del tokens.CONTEXT_WINDOWS[name]
    assert tokens.default_budget(name) == 16_000 - 3_200
    await manager.close()


async def test_history_merged_in_at_link_time_counts_toward_the_budget() -> None:
    from onethread.session import InMemoryIdentityResolver

    resolver = InMemoryIdentityResolver()
    resolver.link("discord", "9", "alice")
    manager = BotSessionManager(
        MemoryHistoryStore(), identity_resolver=resolver, max_history=4, context_tokens=300
    )
    agent = RecordingAgent()
    long = "a message before linking, long enough to weigh: " + "words " * 5
    for i in range(3):  # ~150 tokens in the Telegram account's own session
        await manager.chat(agent, "1", f"{long}{i}", platform="telegram")
    for i in range(4):  # the person's session on Discord: short, over max_history
        await manager.chat(agent, "9", f"hi {i}", platform="discord")
        await _settle(manager)
    assert manager.compaction.folds == 0
    resolver.link("telegram", "1", "alice")
    await manager.chat(agent, "1", "linked now", platform="telegram")  # merges, then the turn
    await _settle(manager)
    assert manager.compaction.folds == 1  # the merged entries counted toward the budget
    await manager.close()


async def test_a_text_file_and_an_image_of_the_message_count_toward_the_budget() -> None:
    """content_parts() puts a small text file's text (and image parts) into the message
    being answered: the budget makes room for them by showing less history."""
    from onethread.session.attachments import Attachment

    manager = BotSessionManager(MemoryHistoryStore(), context_tokens=3000)
    agent = RecordingAgent()
    for i in range(30):  # ~30 tokens a turn: the whole session fits 3,000 tokens
        await manager.chat(agent, "u", f"message number {i:03} " + "word " * 20, platform="web")
    assert len(agent.calls[-1][0]) == 58
    notes = Attachment("file", "text/plain", "notes.txt", 6000, blob="sha256:" + "a" * 64)
    await manager.chat(agent, "u", "read this", platform="web", attachments=[notes])
    with_file = len(agent.calls[-1][0])
    photo = Attachment("image", "image/png", "cat.png", 50_000, blob="sha256:" + "b" * 64)
    await manager.chat(agent, "u", "and this", platform="web", attachments=[notes, photo])
    with_both = len(agent.calls[-1][0])
    # 6,000 bytes of text are ~1,500 tokens: about half the history makes way; the
    # image's 765 more push out more again.
    assert with_both < with_file < 40
    await manager.close()
