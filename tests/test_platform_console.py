"""The console platform: a real Bot reading lines from in-memory streams and pipes."""

from __future__ import annotations

import asyncio
import io
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from helpers import RecordingAgent
from onethread.bots import Bot
from onethread.errors import BadRequest
from onethread.platforms.base import Inbound
from onethread.platforms.console import ConsoleAdapter


def console(bot: Bot) -> ConsoleAdapter:
    assert isinstance(bot.adapter, ConsoleAdapter)
    return bot.adapter


def agent(bot: Bot) -> RecordingAgent:
    assert isinstance(bot.agent, RecordingAgent)
    return bot.agent


async def run_to_eof(bot: Bot, timeout: float = 5.0) -> None:
    """Run the bot as ``onethread chat`` does: end of input stops it."""
    console(bot).on_eof = bot.stop
    await asyncio.wait_for(bot.start(), timeout)


@pytest.fixture
def pipe() -> Iterator[tuple[TextIO, TextIO]]:
    """A (reader, writer) pair of text streams, like stdin fed by a person."""
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "r", buffering=1)
    writer = os.fdopen(write_fd, "w", buffering=1)
    yield reader, writer
    for stream in (writer, reader):
        if not stream.closed:
            try:
                stream.close()
            except OSError as exc:  # the input thread may still hold the reader
                print(f"closing pipe: {exc!r}")


async def test_lines_are_answered_in_order_until_quit() -> None:
    out = io.StringIO()
    bot = Bot("console", RecordingAgent(), store="memory://",
              input_stream=io.StringIO("hello\n\n   \nsecond\n/quit\nnever read\n"),
              output_stream=out)  # fmt: skip
    await run_to_eof(bot)
    assert out.getvalue() == "reply:hello\nreply:second\n"
    texts = [message.content for _, message, _ in agent(bot).calls]
    assert texts == ["hello", "second"]  # blank lines skipped, nothing after /quit
    _, _, ctx = agent(bot).calls[0]
    assert (ctx.platform, ctx.chat_id, ctx.chat_type) == ("console", "console-me", "dm")
    assert (ctx.user_id, ctx.user_name) == ("me", "me")
    # the second turn saw the first one as history: one conversation
    assert [e.content for e in agent(bot).calls[1][0]] == ["hello", "reply:hello"]


async def test_end_of_input_calls_on_eof() -> None:
    out = io.StringIO()
    adapter = ConsoleAdapter(user="ada", user_name="Ada", input_stream=io.StringIO("hi"),
                             output_stream=out)  # fmt: skip
    bot = Bot("console", RecordingAgent(), store="memory://", adapter=adapter)
    ended = asyncio.Event()
    adapter.on_eof = ended.set  # a plain function works too
    task = asyncio.create_task(bot.start())
    await asyncio.wait_for(ended.wait(), 5)
    await bot.stop()
    await task
    assert out.getvalue() == "reply:hi\n"
    _, _, ctx = agent(bot).calls[0]
    assert (ctx.chat_id, ctx.user_id, ctx.user_name) == ("console-ada", "ada", "Ada")


async def test_same_line_twice_is_answered_twice() -> None:
    out = io.StringIO()
    bot = Bot("console", RecordingAgent(), store="memory://",
              input_stream=io.StringIO("again\nagain\n"), output_stream=out)  # fmt: skip
    await run_to_eof(bot)
    assert out.getvalue() == "reply:again\nreply:again\n"
    ids = {ctx.message_id for _, _, ctx in agent(bot).calls}
    assert len(ids) == 2 and "" not in ids


async def test_commands_reach_the_bot() -> None:
    out = io.StringIO()
    bot = Bot("console", RecordingAgent(), store="memory://",
              input_stream=io.StringIO("/whoami\n"), output_stream=out)  # fmt: skip
    await run_to_eof(bot)
    assert "console" in out.getvalue() and agent(bot).calls == []


async def test_interactive_pipe_gets_replies_before_eof(pipe: tuple[TextIO, TextIO]) -> None:
    reader, writer = pipe
    out = io.StringIO()
    bot = Bot("console", RecordingAgent(), store="memory://", input_stream=reader,
              output_stream=out)  # fmt: skip
    console(bot).on_eof = bot.stop
    task = asyncio.create_task(bot.start())
    writer.write("first\n")
    for _ in range(200):
        if out.getvalue():
            break
        await asyncio.sleep(0.01)
    assert out.getvalue() == "reply:first\n"  # answered while input is still open
    assert not task.done()
    writer.write("second\n")
    writer.close()  # end of input
    await asyncio.wait_for(task, 5)
    assert out.getvalue() == "reply:first\nreply:second\n"


async def test_stop_while_a_read_blocks_and_lines_wait_for_restart(
    pipe: tuple[TextIO, TextIO],
) -> None:
    reader, writer = pipe
    adapter = ConsoleAdapter(input_stream=reader, output_stream=io.StringIO())
    seen: list[Inbound] = []
    got = asyncio.Event()

    async def on_inbound(msg: Inbound) -> None:
        seen.append(msg)
        got.set()

    await adapter.start(on_inbound)
    await asyncio.wait_for(adapter.stop(), 1)  # the input thread is blocked in readline
    writer.write("typed while stopped\n")
    await asyncio.sleep(0.05)
    assert seen == []
    await adapter.start(on_inbound)
    await asyncio.wait_for(got.wait(), 5)
    assert [m.text for m in seen] == ["typed while stopped"]
    await adapter.stop()
    await adapter.stop()  # idempotent
    writer.close()


async def test_output_is_plain_without_a_terminal() -> None:
    out = io.StringIO()
    adapter = ConsoleAdapter(input_stream=io.StringIO(""), output_stream=out)
    assert not adapter.interactive
    await adapter.do_typing("console-me")  # nothing on a pipe
    await adapter.send("console-me", "**bold** stays as written\n")
    assert out.getvalue() == "**bold** stays as written\n"
    with pytest.raises(BadRequest):
        await adapter.do_send("console-someone-else", "no")


def test_user_must_be_given() -> None:
    with pytest.raises(ValueError, match="console user"):
        ConsoleAdapter(user=" ")
    adapter = ConsoleAdapter(user="bob")
    assert (adapter.name, adapter.chat_id, adapter.user_name) == ("console", "console-bob", "bob")


class _Pieces(io.StringIO):
    """An output stream that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[str] = []

    def write(self, s: str) -> int:
        self.pieces.append(s)
        return super().write(s)


async def test_a_streamed_reply_is_written_as_the_model_writes_it() -> None:
    from onethread import Agent
    from onethread.testing import ScriptedModel

    out = _Pieces()
    model = ScriptedModel(["one two three four"], stream_delay=0.01)
    bot = Bot("console", Agent("a", model=model), store="memory://",
              input_stream=io.StringIO("hi\n"), output_stream=out)  # fmt: skip
    await run_to_eof(bot)
    assert out.getvalue() == "one two three four\n"  # the reply once, whole
    assert out.pieces[:4] == ["one ", "two ", "three ", "four"]  # piece by piece


async def test_streaming_false_writes_the_reply_in_one_go() -> None:
    from onethread import Agent
    from onethread.testing import ScriptedModel

    out = _Pieces()
    model = ScriptedModel(["one two three four"], stream_delay=0.01)
    bot = Bot("console", Agent("a", model=model), store="memory://", streaming=False,
              input_stream=io.StringIO("hi\n"), output_stream=out)  # fmt: skip
    await run_to_eof(bot)
    assert out.pieces == ["one two three four\n"]


# -- `onethread chat` on a pseudo-terminal, as a person at a keyboard sees it ----------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


class Terminal:
    """``onethread chat`` (its real entry) on a pseudo-terminal."""

    def __init__(self, cwd: Path, *args: str) -> None:
        import pty

        self.master, slave = pty.openpty()
        env = {**os.environ, "TERM": "xterm", "COLUMNS": "200"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "onethread", "chat", *args],
            cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self.seen = b""

    @property
    def text(self) -> str:
        """What the screen shows so far, line by line: a cleared line ends one, escape
        sequences and the padding rich adds to the terminal's width are dropped."""
        raw = self.seen.decode(errors="replace").replace("\r\x1b[K", "\n")
        return "\n".join(line.rstrip() for line in _ANSI.sub("", raw).split("\n"))

    def expect(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text:
            assert time.monotonic() < deadline, f"{text!r} not in {self.text!r}"
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    assert text in self.text, self.text
                    return

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=10)
        finally:
            os.close(self.master)


@pytest.mark.multiprocess
@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_terminal_chat_keeps_lines_one_banner_and_help_names_quit(tmp_path: Path) -> None:
    term = Terminal(tmp_path, "--user", "ada")
    term.expect("Ctrl-D to leave\n>")  # the banner, then the prompt
    term.type("/help")
    term.expect("/quit: leave the chat")
    term.type("hello terminal")
    term.expect("To use a language model")
    term.type("second line please")
    term.expect('You said: "second line please"\nI remember this conversation')
    term.type("/quit")
    assert term.close() == 0
    screen = term.text
    assert screen.count("onethread chat as ada") == 1 and "Chatting as" not in screen
    help_lines = [
        "I am an AI assistant; just write to me.",
        "/whoami: who I think you are, and your linked accounts",
        "/new: start a fresh conversation",
        "/quit: leave the chat (Ctrl-D too)",
    ]
    # Every reply line stands on its own: no prompt in front of a reply's first line
    # (the input thread prompts again only once the reply is written).
    lines = [line.strip() for line in screen.splitlines()]
    for line in help_lines:
        assert line in lines, f"{line!r} is not a line of its own in {screen!r}"
    assert "No language model is configured, so this is an automatic reply." in lines
    assert 'You said: "hello terminal"' in lines
    assert screen.count("No language model is configured") == 1  # once per conversation


def test_help_names_quit_only_on_the_terminal() -> None:
    out = io.StringIO()
    bot = Bot("console", RecordingAgent(), store="memory://",
              input_stream=io.StringIO("/help\n"), output_stream=out)  # fmt: skip
    asyncio.run(run_to_eof(bot))
    assert "/quit: leave the chat" in out.getvalue()

    from onethread.testing import FakeAdapter

    other = Bot("web", RecordingAgent(), store="memory://", adapter=FakeAdapter("web"))
    reply = asyncio.run(other._commands.handle(Inbound("web", "w", "dm", "u", "/help")))
    assert reply is not None and "/whoami" in reply and "/quit" not in reply


def test_a_greeting_is_shown_once_and_can_be_turned_off() -> None:
    assert ConsoleAdapter(user="ada").greeting.startswith("Chatting as ada.")
    assert ConsoleAdapter(user="ada", greeting="").greeting == ""


class _Recorder(io.StringIO):
    """An output stream that logs each write in ``events`` (shared with a fake ``input``)."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def write(self, text: str) -> int:
        self.events.append(f"out:{text}")
        return super().write(text)


@pytest.mark.parametrize("streamed", [False, True], ids=["sent", "streamed"])
async def test_the_prompt_comes_back_only_after_the_reply_to_the_line(
    monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    """On a terminal the input thread asks for the next line (``input()`` draws the
    prompt) once the reply to the last one is written, not while the bot is answering:
    a prompt drawn then would land in front of the reply's first line."""
    events: list[str] = []
    lines = iter(["hello"])
    release = threading.Event()

    def fake_input(prompt: str = "") -> str:
        events.append(f"prompt:{prompt}")
        line = next(lines, None)
        if line is None:  # the second prompt: wait in "input()" until the test ends
            release.wait(10)
            raise EOFError
        return line

    monkeypatch.setattr("builtins.input", fake_input)
    adapter = ConsoleAdapter(user="ada", output_stream=_Recorder(events), greeting="")
    adapter._interactive = True  # a person at a terminal, without needing one
    got = asyncio.Event()

    async def on_inbound(msg: Inbound) -> None:
        got.set()

    await adapter.start(on_inbound)
    try:
        await asyncio.wait_for(got.wait(), 5)
        await asyncio.sleep(0.3)  # the model thinking
        assert [e for e in events if e.startswith("prompt:")] == ["prompt:> "], events
        if streamed:
            stream = adapter.reply_stream(adapter.chat_id)
            assert stream is not None
            await stream.feed("the ")
            await stream.feed("reply")
            await stream.finish("the reply")
        else:
            await adapter.send(adapter.chat_id, "the reply")
        deadline = time.monotonic() + 5
        while sum(e.startswith("prompt:") for e in events) < 2:
            assert time.monotonic() < deadline, f"no prompt after the reply: {events}"
            await asyncio.sleep(0.01)
    finally:
        release.set()
        await adapter.stop()
    replied = max(i for i, e in enumerate(events) if e.startswith("out:") and "reply" in e)
    prompts = [i for i, e in enumerate(events) if e.startswith("prompt:")]
    assert prompts[1] > replied, events


async def test_a_slow_reply_gets_the_prompt_back_after_prompt_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wait is bounded: with no reply within ``prompt_wait`` the prompt comes back."""
    events: list[str] = []
    lines = iter(["hello"])
    release = threading.Event()

    def fake_input(prompt: str = "") -> str:
        events.append(f"prompt:{prompt}")
        line = next(lines, None)
        if line is None:
            release.wait(10)
            raise EOFError
        return line

    monkeypatch.setattr("builtins.input", fake_input)
    adapter = ConsoleAdapter(user="ada", output_stream=io.StringIO(), greeting="")
    adapter._interactive = True
    adapter.prompt_wait = 0.2

    async def on_inbound(msg: Inbound) -> None:
        pass  # never answered

    await adapter.start(on_inbound)
    try:
        deadline = time.monotonic() + 5
        while len(events) < 2:
            assert time.monotonic() < deadline, f"the prompt never came back: {events}"
            await asyncio.sleep(0.01)
    finally:
        release.set()
        await adapter.stop()
    assert events == ["prompt:> ", "prompt:> "]
