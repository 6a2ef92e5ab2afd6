"""build_messages: history entries -> chat messages that strict providers accept."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from onethread.agent.messages import EARLIER_CONVERSATION, build_messages, entry_text
from onethread.session.history.base import HistoryEntry


def user(text: str, **kw: object) -> HistoryEntry:
    return HistoryEntry(role="user", content=text, timestamp=0.0, **kw)  # type: ignore[arg-type]


def bot(text: str, **kw: object) -> HistoryEntry:
    return HistoryEntry(role="assistant", content=text, timestamp=0.0, **kw)  # type: ignore[arg-type]


def roles(messages: list[dict[str, object]]) -> list[object]:
    return [m["role"] for m in messages]


def test_plain_conversation() -> None:
    messages = build_messages("Be brief.", [user("hi"), bot("hello")], user("how are you?"))
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you?"},
    ]


def test_no_system_message_without_instructions() -> None:
    assert roles(build_messages("  ", [], user("hi"))) == ["user"]


def test_history_starting_with_assistant_gets_a_user_message_first() -> None:
    messages = build_messages("", [bot("Reminder: water the plants")], user("done"))
    assert messages[0] == {"role": "user", "content": EARLIER_CONVERSATION}
    assert roles(messages) == ["user", "assistant", "user"]


def test_mirrored_entries_are_labelled_assistant_messages() -> None:
    reminder = bot("Reminder: call mum", mirror=True, source="cron")
    # A mirror stored with role "user" is still text the bot sent.
    notify = user("Your build passed", mirror=True, source="notify")
    messages = build_messages("", [user("hi"), bot("hey"), reminder, notify], user("thanks"))
    assert messages[1] == {
        "role": "assistant",
        "content": "hey\n\n[sent by the bot on its own via cron] Reminder: call mum"
        "\n\n[sent by the bot on its own via notify] Your build passed",
    }
    assert entry_text(bot("x", mirror=True)) == "[sent by the bot on its own] x"


def test_consecutive_user_messages_are_merged_with_the_new_one() -> None:
    messages = build_messages("", [user("one"), user("two")], user("three"))
    assert messages == [{"role": "user", "content": "one\n\ntwo\n\nthree"}]


def test_group_messages_are_attributed() -> None:
    history = [user("hi all", user_name="ann"), user("yo", user_id="42"), bot("hello")]
    messages = build_messages("", history, user("me too", user_name="bob"), group=True)
    assert messages[0]["content"] == "[ann] hi all\n\n[42] yo"
    assert messages[-1] == {"role": "user", "content": "[bob] me too"}


def test_dm_messages_are_not_attributed() -> None:
    assert build_messages("", [], user("hi", user_name="ann"))[-1]["content"] == "hi"


def test_blank_entries_are_dropped_and_a_blank_message_is_marked() -> None:
    messages = build_messages("", [user(""), bot("  ")], user(""))
    assert messages == [{"role": "user", "content": "(empty message)"}]


def test_new_message_is_the_users_whatever_its_role_field() -> None:
    messages = build_messages("", [bot("a")], bot("b", mirror=True, source="cron"))
    assert messages[-1] == {"role": "user", "content": "b"}


def test_unknown_roles_become_assistant() -> None:
    messages = build_messages("", [user("q"), HistoryEntry("system", "note", 0.0)], user("x"))
    assert roles(messages) == ["user", "assistant", "user"]


entries = st.builds(
    HistoryEntry,
    role=st.sampled_from(["user", "assistant", "system"]),
    content=st.text(max_size=20),
    timestamp=st.just(0.0),
    user_name=st.sampled_from(["", "ann", "bob"]),
    mirror=st.booleans(),
    source=st.sampled_from(["", "cron", "notify"]),
)


@given(
    history=st.lists(entries, max_size=12),
    message=entries,
    group=st.booleans(),
    instructions=st.sampled_from(["", "Be kind."]),
)
def test_role_sequence_is_always_valid_and_no_content_is_lost(
    history: list[HistoryEntry], message: HistoryEntry, group: bool, instructions: str
) -> None:
    messages = build_messages(instructions, history, message, group=group)
    if instructions:
        assert messages[0] == {"role": "system", "content": instructions}
        messages = messages[1:]
    sequence = roles(messages)
    assert sequence[0] == "user"
    assert sequence[-1] == "user"
    assert all(a != b for a, b in zip(sequence, sequence[1:], strict=False))
    assert all(isinstance(m["content"], str) and m["content"].strip() for m in messages)
    joined = "\n\n".join(str(m["content"]) for m in messages)
    for entry in [*history, message]:
        if entry.content.strip():
            assert entry.content in joined
    if message.content.strip():
        assert message.content in str(messages[-1]["content"])
