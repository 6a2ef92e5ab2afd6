"""Console adapter: talk to the bot in a terminal, one line per message (no network).

Behaviour a caller should know:

- Each line read from ``input_stream`` (default: stdin) is one message from
  ``user`` in the DM ``console-<user>``; replies are written to
  ``output_stream`` (default: stdout). Empty lines are skipped.
- Input is read in a daemon thread, so a blocking read never blocks the event
  loop, and a read still waiting when the bot stops does not keep the process
  alive. Lines typed while the bot is stopped wait for the next ``start()``.
- ``/quit``, ``/exit`` or end of input (Ctrl-D, the end of a pipe) ends the
  conversation: the adapter calls ``adapter.on_eof()`` if set (sync or async;
  ``onethread chat`` sets it to stop the bot, which lets running turns finish
  first). Without ``on_eof`` the bot keeps running and only input stops.
- On a terminal (stdin and stdout both ttys, no streams given): a greeting,
  line editing and history through ``readline`` when available, a prompt, a
  subtle ``…`` while the bot is typing, and Markdown replies rendered with
  ``rich``, keeping every line break as written (as chat apps show them). With
  streams or pipes the output is the plain reply text, one block per reply.
- The prompt comes back once the reply to the line just typed has been
  written (or after ``prompt_wait`` seconds, default 30, when it is slower),
  so the prompt never lands in front of a reply's first line.
- Streamed replies (``reply_stream``): written as the model writes them, on a
  terminal re-rendered as Markdown in place (``rich.live``, a few times a
  second), on a pipe as plain text pieces; the block ends with a newline.
- ``token`` is accepted for the ``Bot`` interface and unused.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import queue
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any, ClassVar, TextIO

from ..errors import BadRequest
from .base import Adapter, Inbound, OnInbound
from .delivery import RetryPolicy
from .draft import ReplyStream

__all__ = ["ConsoleAdapter"]

log = logging.getLogger("onethread.platforms.console")

PLATFORM = "console"
QUIT_COMMANDS = frozenset({"/quit", "/exit"})
_CLEAR_LINE = "\r\x1b[K"


class ConsoleAdapter(Adapter):
    """A REPL on stdin/stdout (or the given text streams) for one local user.

    Args:
        token: unused; accepted so ``Bot`` can pass it.
        user: the platform user id (chat id ``console-<user>``).
        user_name: the display name (default: ``user``).
        input_stream: where lines come from (default: ``sys.stdin``).
        output_stream: where replies go (default: ``sys.stdout``).
        prompt: shown before each line on a terminal.
        greeting: shown once on a terminal when the chat starts (default:
            who you are and how to leave; ``""``: none, e.g. when the caller
            printed its own banner).

    ``on_eof``: called once on ``/quit`` or end of input, from the event loop;
    a coroutine function is run as a task that ``stop()`` does not cancel.

    ``prompt_wait``: on a terminal, how long (seconds) the input thread waits
    for the reply to a line before it prompts for the next one anyway.
    """

    name: ClassVar[str] = PLATFORM
    max_message_length: ClassVar[int] = 100_000
    help_lines: ClassVar[tuple[str, ...]] = ("/quit: leave the chat (Ctrl-D too)",)

    def __init__(
        self,
        *,
        token: str | None = None,
        user: str = "me",
        user_name: str | None = None,
        input_stream: TextIO | None = None,
        output_stream: TextIO | None = None,
        retry_policy: RetryPolicy | None = None,
        prompt: str = "> ",
        greeting: str | None = None,
    ) -> None:
        super().__init__(retry_policy=retry_policy)
        del token  # no credential on this platform
        if not isinstance(user, str) or not user.strip():
            raise ValueError("console user must be a non-empty string, e.g. 'me'")
        self.user = user
        self.user_name = user_name or user
        self.chat_id = f"console-{user}"
        self.prompt = prompt
        self.greeting = (
            f"Chatting as {self.user_name}. /help lists the commands; /quit leaves."
            if greeting is None
            else greeting
        )
        self.on_eof: Callable[[], Any] | None = None
        self._input = input_stream
        self._output = output_stream
        self._interactive: bool | None = None  # decided at the first start()
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _loop and _wake, read by the input thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._pump: asyncio.Task[None] | None = None
        self._eof_task: asyncio.Task[Any] | None = None
        self._ended = False
        self._rich: Any = None
        self._tty_state: list[Any] | None = None
        self._at_prompt = False  # the input thread waits in input(); read by the loop
        self.prompt_wait = 30.0
        # Set by the loop once a reply is written; the input thread waits for it
        # before prompting again (a threading.Event: its own lock guards it).
        self._replied = threading.Event()

    @property
    def output(self) -> TextIO:
        """The stream replies are written to."""
        return self._output if self._output is not None else sys.stdout

    @property
    def interactive(self) -> bool:
        """True when talking to a person at a terminal (prompt, typing dots, rich output)."""
        if self._interactive is None:
            self._interactive = (
                self._input is None
                and self._output is None
                and _isatty(sys.stdin)
                and _isatty(sys.stdout)
            )
        return self._interactive

    # -- lifecycle -------------------------------------------------------------

    async def start(self, on_inbound: OnInbound) -> None:
        """Start reading lines; returns at once."""
        if self._pump is not None:
            raise RuntimeError("the console adapter is already started")
        wake = asyncio.Event()
        wake.set()  # lines read while stopped are delivered now
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._wake = wake
        self._pump = asyncio.create_task(self._deliver_lines(on_inbound, wake))
        if self._thread is None and not self._ended:
            if self.interactive:
                self._tty_state = _save_terminal()
                with contextlib.suppress(ImportError):
                    import readline  # noqa: F401  # line editing and history for input()
                if self.greeting:
                    self._write(self.greeting + "\n")
            self._thread = threading.Thread(
                target=self._read_lines, name="onethread-console-input", daemon=True
            )
            self._thread.start()

    async def stop(self) -> None:
        """Stop delivering lines (a pending read keeps waiting in its thread). Idempotent."""
        with self._lock:
            self._loop = None
            self._wake = None
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if self._tty_state is not None and self._thread is not None and self._thread.is_alive():
            # readline left mid-line: give the terminal back its modes (echo, line mode).
            _restore_terminal(self._tty_state)
            self._write("\n")

    # -- input -----------------------------------------------------------------

    def _read_line(self) -> str | None:
        if self.interactive:
            self._at_prompt = True  # input() shows the prompt; a reply redraws it
            try:
                return input(self.prompt)
            except EOFError:
                return None
            finally:
                self._at_prompt = False
        stream = self._input if self._input is not None else sys.stdin
        line = stream.readline()
        return line.rstrip("\r\n") if line else None

    def _read_lines(self) -> None:
        """The input thread: read until end of input, hand each line to the loop.

        On a terminal it prompts for the next line only once the reply to this
        one is written (``_replied``, at most ``prompt_wait`` seconds): a prompt
        drawn by ``input()`` while the loop writes the reply would land in front
        of the reply's first line.
        """
        while True:
            try:
                line = self._read_line()
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                log.warning("console input failed: %r", exc)
                line = None
            self._replied.clear()  # before the loop can see the line, so no reply is missed
            self._lines.put(line)
            self._poke()
            if line is None or line.strip() in QUIT_COMMANDS:
                return
            if self.interactive and line.strip():
                self._replied.wait(self.prompt_wait)

    def _poke(self) -> None:
        with self._lock:
            loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # stopped: the line waits in the queue for the next start()
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:
            log.debug("console: the event loop closed; the line waits for the next start")

    async def _deliver_lines(self, on_inbound: OnInbound, wake: asyncio.Event) -> None:
        while True:
            await wake.wait()
            wake.clear()
            while True:
                try:
                    line = self._lines.get_nowait()
                except queue.Empty:
                    break
                if line is None or line.strip() in QUIT_COMMANDS:
                    self._end()
                    return
                if line.strip():
                    await on_inbound(self._inbound(line))

    def _inbound(self, text: str) -> Inbound:
        return Inbound(
            platform=PLATFORM,
            chat_id=self.chat_id,
            chat_type="dm",
            user_id=self.user,
            user_name=self.user_name,
            text=text,
            message_id=uuid.uuid4().hex,  # unique across runs: shared stores dedupe by id
            mentions_bot=True,
        )

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        callback = self.on_eof
        if callback is None:
            log.info("console input ended; the bot keeps running until stopped")
            return
        try:
            result = callback()
        except Exception:
            log.exception("console: on_eof failed")
            return
        if inspect.isawaitable(result):
            self._eof_task = asyncio.ensure_future(result)
            self._eof_task.add_done_callback(_log_failure)

    # -- output ----------------------------------------------------------------

    def _write(self, text: str) -> None:
        out = self.output
        out.write(text)
        out.flush()

    def _reply_written(self) -> None:
        """Let the input thread prompt again (see ``_read_lines``)."""
        self._replied.set()

    def _redraw_prompt(self) -> None:
        if not self._at_prompt:
            return  # the input thread shows the prompt itself when it asks next
        buffer = ""
        readline = sys.modules.get("readline")
        if readline is not None:
            buffer = readline.get_line_buffer()
        self._write(self.prompt + buffer)

    async def do_send(
        self, chat_id: str, text: str, *, thread_id: str = "", formatted: bool = True
    ) -> str:
        """Print the reply (Markdown rendered on a terminal).

        Raises ``BadRequest`` for a chat id other than ``console-<user>``.
        """
        if chat_id != self.chat_id:
            raise BadRequest(
                f"no console chat {chat_id!r} (this one is {self.chat_id!r})", platform=PLATFORM
            )
        try:
            if self.interactive:
                self._write(_CLEAR_LINE)
                self._print_rich(text, formatted)
                self._redraw_prompt()
            else:
                self._write(text if text.endswith("\n") else text + "\n")
        except (OSError, ValueError) as exc:
            raise BadRequest(f"cannot write the reply: {exc!r}", platform=PLATFORM) from exc
        finally:
            self._reply_written()
        return uuid.uuid4().hex

    def _rich_console(self) -> Any:
        """The ``rich`` console on the output, or False when rich cannot be imported."""
        if self._rich is None:
            try:
                from rich.console import Console
            except ImportError:
                self._rich = False
            else:
                self._rich = Console(file=self.output)
        return self._rich

    def _print_rich(self, text: str, formatted: bool) -> None:
        """Render Markdown with ``rich`` (a dependency); plain text if it cannot be imported."""
        if self._rich_console() is False:
            self._write(text if text.endswith("\n") else text + "\n")
            return
        self._rich.print(_markdown(text) if formatted else text, markup=False, highlight=False)

    def reply_stream(self, chat_id: str, thread_id: str = "") -> ReplyStream | None:
        """Deltas written to the output as they come (see the module docstring)."""
        return _ConsoleStream(self) if chat_id == self.chat_id else None

    async def do_typing(self, chat_id: str, thread_id: str = "") -> None:
        """On a terminal, show a dim ``…`` until the reply replaces it; otherwise nothing."""
        if self.interactive and chat_id == self.chat_id:
            self._write(f"{_CLEAR_LINE}\x1b[2m…\x1b[0m")


class _ConsoleStream:
    """One reply written to the console while the model writes it."""

    _REFRESH = 0.1  # seconds between re-renders on a terminal

    def __init__(self, adapter: ConsoleAdapter) -> None:
        self.adapter = adapter
        self.written = ""
        self._live: Any = None
        self._last = 0.0

    def _start_live(self) -> Any:
        adapter = self.adapter
        console = adapter._rich_console()
        if console is False:
            return False
        from rich.live import Live

        adapter._write(_CLEAR_LINE)
        live = Live(console=console, auto_refresh=False, vertical_overflow="visible")
        live.start()
        return live

    async def feed(self, piece: str) -> None:
        """Write ``piece`` (a terminal re-renders the reply so far, at most every 0.1 s)."""
        self.written += piece
        adapter = self.adapter
        try:
            if not adapter.interactive:
                adapter._write(piece)
                return
            if self._live is None:
                if self.written == piece:
                    return  # one piece may be the whole reply: finish prints it once
                self._live = self._start_live()
                if self._live is False:  # no rich: what was held back, then piece by piece
                    adapter._write(self.written)
                    return
            if self._live is False:
                adapter._write(piece)
                return
            now = asyncio.get_running_loop().time()
            if now - self._last >= self._REFRESH:
                self._last = now
                self._live.update(_markdown(self.written), refresh=True)
        except (OSError, ValueError) as exc:
            raise BadRequest(f"cannot write the reply: {exc!r}", platform=PLATFORM) from exc

    async def finish(self, text: str) -> dict[str, str] | None:
        """Write what is left of ``text`` and end the block."""
        try:
            return self._finish(text)
        finally:
            self.adapter._reply_written()

    def _finish(self, text: str) -> dict[str, str] | None:
        adapter = self.adapter
        try:
            if self._live not in (None, False):
                self._live.update(_markdown(text), refresh=True)
                self._live.stop()
                self._live = None
                adapter._redraw_prompt()
                return None
            if adapter.interactive and self._live is None:  # never shown: print it whole
                adapter._write(_CLEAR_LINE)
                adapter._print_rich(text, True)
                adapter._redraw_prompt()
                return None
            if text.startswith(self.written):
                rest = text[len(self.written) :]
            else:  # not what was streamed: write it whole below
                rest = "\n" + text
            adapter._write(rest if rest.endswith("\n") else rest + "\n")
            if adapter.interactive:
                adapter._redraw_prompt()
        except (OSError, ValueError) as exc:
            raise BadRequest(f"cannot write the reply: {exc!r}", platform=PLATFORM) from exc
        return None

    async def close(self) -> None:
        """End a live display left open by a failed turn."""
        if self._live not in (None, False):
            self._live.stop()
            self._live = None
        self.adapter._reply_written()


def _markdown(text: str) -> Any:
    """``text`` as a ``rich`` Markdown renderable whose single newlines are line breaks.

    CommonMark joins the lines of a paragraph (a "soft break"); a chat reply
    (``/help``, the model's short lines) means them as written, as Telegram and
    the web chat show them. So every soft break of the parsed tokens becomes a
    hard one.
    """
    from rich.markdown import Markdown

    rendered = Markdown(text)
    for block in rendered.parsed:
        for token in block.children or ():
            if token.type == "softbreak":
                token.type = "hardbreak"
    return rendered


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("console: on_eof failed", exc_info=task.exception())


def _save_terminal() -> list[Any] | None:
    try:
        import termios

        return termios.tcgetattr(sys.stdin.fileno())
    except (ImportError, OSError, ValueError) as exc:  # no termios on Windows
        log.debug("console: cannot save the terminal modes: %r", exc)
        return None


def _restore_terminal(state: list[Any]) -> None:
    try:
        import termios

        termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, state)
    except (ImportError, OSError, ValueError) as exc:
        log.debug("console: cannot restore the terminal modes: %r", exc)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False
