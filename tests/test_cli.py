"""The ``onethread`` command as a user runs it: real processes, exit codes, messages."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from helpers import RecordingAgent
from onethread.bots import BotSessionManager
from onethread.bots.policy import APPROVAL_PURPOSE
from onethread.session.identity.file import FileIdentityResolver
from onethread.session.pairing import PairingStore, format_code
from onethread.session.urls import open_history_store

pytestmark = pytest.mark.multiprocess

TELEGRAM_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"  # the shape of a real one


def cli(
    cwd: Path, *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m onethread ARGS`` in ``cwd`` with the test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "onethread", *args],
        cwd=cwd,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    for text in expected:
        assert text in result.stderr


# -- help, init, --check --------------------------------------------------------------


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = cli(tmp_path, "--help")
    assert result.returncode == 0
    for command in ("run", "chat", "init", "identity", "access", "history", "sessions"):
        assert command in result.stdout
    run_help = cli(tmp_path, "run", "--help")
    assert run_help.returncode == 0 and "--port" in run_help.stdout and "--check" in run_help.stdout
    # --host/--port are the one HTTP server's, webhooks included, not the web chat's only
    assert "web chat interface" not in run_help.stdout and "webhooks" in run_help.stdout
    # Matrix needs a token or a password besides the homeserver and user id.
    flat = " ".join(run_help.stdout.split())
    assert "Matrix: MATRIX_HOMESERVER + MATRIX_USER_ID + (MATRIX_ACCESS_TOKEN or " in flat
    assert "MATRIX_PASSWORD)" in flat


def test_usage_mistakes_exit_2(tmp_path: Path) -> None:
    result = cli(tmp_path, "fly")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = cli(tmp_path, "run", "--port", "99999")
    assert result.returncode == 2 and "not from 0 to 65535" in result.stderr


def test_init_writes_a_config_that_passes_check(tmp_path: Path, _isolated_env: Path) -> None:
    result = cli(tmp_path, "init")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "onethread.yaml").read_text()
    assert text.startswith("# onethread") and "# telegram:" in text
    check = cli(tmp_path, "run", "--check")
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("onethread.yaml: OK | platforms: web")
    assert f"history: sqlite:///{_isolated_env / 'history.db'}" in check.stdout
    again = cli(tmp_path, "init")
    assert_user_error(again, "onethread.yaml already exists; pass --force to overwrite it")
    assert cli(tmp_path, "init", "--force").returncode == 0


def test_check_without_a_config_uses_the_defaults(tmp_path: Path, _isolated_env: Path) -> None:
    result = cli(tmp_path, "run", "--check")
    assert result.returncode == 0, result.stderr
    assert "no config file, defaults: OK | platforms: web" in result.stdout
    assert f"identity: file:{_isolated_env / 'identity.json'}" in result.stdout


def test_tokens_in_the_environment_switch_platforms_on(tmp_path: Path) -> None:
    result = cli(tmp_path, "run", "--check", env={"TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN})
    assert result.returncode == 0, result.stderr
    assert "platforms: web, telegram" in result.stdout
    half = cli(tmp_path, "run", "--check", env={"SLACK_BOT_TOKEN": "xoxb-1"})
    assert_user_error(half, "SLACK_APP_TOKEN is not", "export SLACK_APP_TOKEN=")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            "platforms:\n  telegrm: {}\n",
            "error: onethread.yaml: platforms.telegrm: unknown platform; did you mean 'telegram'?",
        ),
        (
            "platforms:\n  telegram:\n    token: ${TELEGRAM_BOT_TOKEN}\n",
            "error: onethread.yaml: platforms.telegram.token: ${TELEGRAM_BOT_TOKEN} is not set; "
            "export TELEGRAM_BOT_TOKEN=... or remove the telegram platform",
        ),
        (
            "platforms:\n  discord: {}\n",
            "error: onethread.yaml: platforms.discord.token: not set; export DISCORD_BOT_TOKEN=",
        ),
        (
            "history: mysql://localhost/db\n",
            "error: onethread.yaml: history: bad store URL 'mysql://localhost/db'; "
            "accepted forms: memory://, file:PATH (identity only), sqlite:///PATH",
        ),
        (
            "identity: sqlite://identity.db\n",
            "error: onethread.yaml: identity: bad SQLite URL",
        ),
        (
            "agent:\n  name: a\n instructions: b\n",
            "error: onethread.yaml: line 3, column 2: YAML syntax error",
        ),
        (
            "histroy: memory://\n",
            "error: onethread.yaml: histroy: unknown key; did you mean 'history'?",
        ),
        (
            "agent:\n  tools: ['nowhere_mod:tool']\n",
            "error: onethread.yaml: agent.tools[0]: cannot import 'nowhere_mod:tool'",
        ),
        (
            "platforms:\n  web: {host: 0.0.0.0}\n",
            "error: onethread.yaml: platforms.web.access_token: required when host is 0.0.0.0",
        ),
    ],
    ids=[
        "unknown-platform",
        "unset-env-token",
        "missing-token",
        "bad-history-url",
        "bad-sqlite-url",
        "yaml-syntax",
        "unknown-key",
        "tool-import",
        "public-web",
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, config: str, expected: str) -> None:
    (tmp_path / "onethread.yaml").write_text(config)
    result = cli(tmp_path, "run", "--check")
    assert_user_error(result, expected)


def test_run_refuses_a_bad_config_before_serving(tmp_path: Path) -> None:
    (tmp_path / "onethread.yaml").write_text("platforms:\n  discord: {}\n")
    result = cli(tmp_path, "run")
    assert_user_error(result, "platforms.discord.token: not set; export DISCORD_BOT_TOKEN=")
    assert result.stdout == ""


def test_named_config_file_missing(tmp_path: Path) -> None:
    result = cli(tmp_path, "run", "--check", "--config", "elsewhere.yaml")
    assert_user_error(result, "elsewhere.yaml: no such file; create one with: onethread init")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "onethread.yaml").write_text("zzz: 1\n")
    result = cli(tmp_path, "--debug", "run", "--check")
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = cli(tmp_path, "run", "--port", str(port))
    assert_user_error(result, f"cannot listen on 127.0.0.1:{port}", "--port 0 picks a free port")


# -- identity ---------------------------------------------------------------------


def test_identity_round_trip(tmp_path: Path, _isolated_env: Path) -> None:
    assert cli(tmp_path, "identity", "list").stdout.strip() == "no links yet"
    linked = cli(tmp_path, "identity", "link", "telegram", "12345", "alice")
    assert linked.returncode == 0 and "linked telegram:12345 -> alice" in linked.stdout
    assert cli(tmp_path, "identity", "link", "discord", "snow-1", "alice").returncode == 0
    # A fresh process (and the library) sees both links.
    listing = cli(tmp_path, "identity", "list", "alice", "--json")
    rows = json.loads(listing.stdout)
    assert [(r["platform"], r["platform_user_id"], r["unified_user_id"]) for r in rows] == [
        ("discord", "snow-1", "alice"),
        ("telegram", "12345", "alice"),
    ]
    resolver = FileIdentityResolver(_isolated_env / "identity.json")
    assert resolver.resolve("telegram", "12345") == "alice"
    table = cli(tmp_path, "identity", "list").stdout
    assert "alice" in table and "snow-1" in table and "person" in table
    moved = cli(tmp_path, "identity", "link", "telegram", "12345", "bob")
    assert "(was alice)" in moved.stdout
    unlinked = cli(tmp_path, "identity", "unlink", "telegram", "12345")
    assert unlinked.returncode == 0 and "unlinked telegram:12345 (was bob)" in unlinked.stdout
    again = cli(tmp_path, "identity", "unlink", "telegram", "12345")
    assert again.returncode == 1 and "error: telegram:12345 is not linked" in again.stderr
    assert FileIdentityResolver(_isolated_env / "identity.json").resolve("telegram", "12345") == (
        "telegram:12345"
    )


def test_identity_mistakes(tmp_path: Path) -> None:
    bad_id = cli(tmp_path, "identity", "link", "telegram", "1", "a:b")
    assert_user_error(bad_id, "invalid unified user id")
    typo = cli(tmp_path, "identity", "link", "telegarm", "1", "alice")
    assert_user_error(typo, "unknown platform 'telegarm'; did you mean 'telegram'?")


def test_identity_import_praisonai_file(tmp_path: Path, _isolated_env: Path) -> None:
    source = tmp_path / "praison-identity.json"
    source.write_text(json.dumps({"links": {"telegram::12345": "alice", "discord::9": "alice"}}))
    result = cli(tmp_path, "identity", "import", str(source))
    assert result.returncode == 0, result.stderr
    assert "imported 2 link(s)" in result.stdout
    again = cli(tmp_path, "identity", "import", str(source))
    assert "imported 0 link(s)" in again.stdout and "2 already present" in again.stdout
    rows = json.loads(cli(tmp_path, "identity", "list", "--json").stdout)
    assert {(r["platform"], r["platform_user_id"]) for r in rows} == {
        ("telegram", "12345"),
        ("discord", "9"),
    }
    # A conflict is skipped unless --replace, and said so.
    source.write_text(json.dumps({"links": {"telegram::12345": "bob"}}))
    conflict = cli(tmp_path, "identity", "import", str(source))
    assert conflict.returncode == 1 and "telegram:12345 is linked to alice" in conflict.stderr
    assert cli(tmp_path, "identity", "import", str(source), "--replace").returncode == 0
    assert FileIdentityResolver(_isolated_env / "identity.json").resolve("telegram", "12345") == (
        "bob"
    )
    source.write_text('{"links": {"telegram12345": "x"}}')
    assert_user_error(cli(tmp_path, "identity", "import", str(source)), "'platform::account_id'")
    source.write_text("{not json")
    assert_user_error(cli(tmp_path, "identity", "import", str(source)), "line 1: not valid JSON")


def test_identity_uses_the_configured_store(tmp_path: Path) -> None:
    (tmp_path / "onethread.yaml").write_text("identity: sqlite:///links.db\n")
    assert cli(tmp_path, "identity", "link", "slack", "U1", "carol").returncode == 0
    assert (tmp_path / "links.db").exists()
    assert "carol" in cli(tmp_path, "identity", "list").stdout
    (tmp_path / "onethread.yaml").write_text("identity: sqlite:/links.db\n")
    assert_user_error(cli(tmp_path, "identity", "list"), "onethread.yaml: identity: bad SQLite URL")


def test_access_approve_revoke(tmp_path: Path, _isolated_env: Path) -> None:
    store = PairingStore(_isolated_env / "pairing.db")
    code = store.issue(APPROVAL_PURPOSE, "telegram", "555", max_live=1)
    store.close()
    assert code is not None
    wrong = cli(tmp_path, "access", "approve", "discord", code)
    assert_user_error(wrong, "issued on telegram, not discord")
    # As the sender was shown it (K7QW-2MXP-H4RT), typed in lower case.
    approved = cli(tmp_path, "access", "approve", "telegram", format_code(code).lower())
    assert approved.returncode == 0 and "approved telegram:555" in approved.stdout
    assert cli(tmp_path, "access", "list").stdout.strip() == "telegram:555"
    assert_user_error(cli(tmp_path, "access", "approve", "telegram", code), "approval code")
    assert cli(tmp_path, "access", "revoke", "telegram", "555").returncode == 0
    assert cli(tmp_path, "access", "list").stdout.strip() == "no approved senders"
    assert cli(tmp_path, "access", "revoke", "telegram", "555").returncode == 1


# -- history ----------------------------------------------------------------------


async def _prepare_history(home: Path) -> None:
    resolver = FileIdentityResolver(home / "identity.json")
    resolver.link("telegram", "12345", "alice")
    resolver.link("discord", "snow-1", "alice")
    manager = BotSessionManager(
        store=open_history_store(f"sqlite:///{home / 'history.db'}"), identity_resolver=resolver
    )
    agent = RecordingAgent()
    await manager.chat(agent, "12345", "hello from telegram", platform="telegram", user_name="Al")
    await manager.chat(agent, "snow-1", "hi from discord", platform="discord", user_name="Al")
    await manager.chat(agent, "777", "I am not linked", platform="telegram", user_name="Bo")
    await manager.close()


async def test_history_and_sessions(tmp_path: Path, _isolated_env: Path) -> None:
    assert "no sessions yet" in cli(tmp_path, "sessions").stdout
    assert not (_isolated_env / "history.db").exists()  # reading created nothing
    await _prepare_history(_isolated_env)

    sessions = cli(tmp_path, "sessions")
    assert sessions.returncode == 0, sessions.stderr
    assert re.search(r"alice\s+discord, telegram\s+\d{4}-\d\d-\d\d \d\d:\d\d\s+4", sessions.stdout)
    assert re.search(r"telegram:777\s+telegram\s+.*\s2\s*$", sessions.stdout, re.M)
    as_json = json.loads(cli(tmp_path, "sessions", "--json").stdout)
    assert {row["who"]: row["messages"] for row in as_json} == {"alice": 4, "telegram:777": 2}

    show = cli(tmp_path, "history", "show", "alice")
    assert show.returncode == 0
    lines = show.stdout.splitlines()
    assert "telegram  Al: hello from telegram" in lines[0]
    assert "assistant: reply:hello from telegram" in lines[1]
    assert "discord   Al: hi from discord" in lines[2]
    only = cli(tmp_path, "history", "show", "alice", "--platform", "discord", "--json")
    assert [e["content"] for e in json.loads(only.stdout)] == [
        "hi from discord",
        "reply:hi from discord",
    ]
    unlinked = cli(tmp_path, "history", "show", "telegram:777")
    assert "Bo: I am not linked" in unlinked.stdout
    assert "console:nobody" in cli(tmp_path, "history", "show", "nobody").stdout

    export = cli(tmp_path, "history", "export", "alice")
    data = json.loads(export.stdout)
    assert data["user"] == "alice" and len(data["sessions"]["user:alice"]) == 4

    refused = cli(tmp_path, "history", "forget", "alice", input="n\n")
    assert refused.returncode == 1 and "nothing was deleted" in refused.stderr
    assert "Delete 4 message(s) of alice" in refused.stdout
    assert len(json.loads(cli(tmp_path, "history", "export", "alice").stdout)["sessions"]) == 1
    forgot = cli(tmp_path, "history", "forget", "alice", "--yes")
    assert forgot.returncode == 0 and "forgot 4 message(s) of alice" in forgot.stdout
    assert "no history for alice" in cli(tmp_path, "history", "show", "alice").stdout
    # The unlinked account's session and the identity links are untouched.
    assert "telegram:777" in cli(tmp_path, "sessions").stdout
    assert "alice" in cli(tmp_path, "identity", "list").stdout


def test_forget_confirmed_on_stdin(tmp_path: Path, _isolated_env: Path) -> None:
    asyncio.run(_prepare_history(_isolated_env))
    result = cli(tmp_path, "history", "forget", "telegram:777", input="y\n")
    assert result.returncode == 0 and "forgot 2 message(s)" in result.stdout


# -- chat -------------------------------------------------------------------------


def test_chat_remembers_across_restarts(tmp_path: Path) -> None:
    first = cli(tmp_path, "chat", "--user", "alice", input="hello there\n/whoami\n")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("onethread chat as alice | model: offline")
    assert 'You said: "hello there"' in first.stdout
    assert "You are alice (console id alice)" in first.stdout
    second = cli(tmp_path, "chat", "--user", "alice", input="do you remember?\n/quit\nignored\n")
    assert second.returncode == 0, second.stderr
    assert "I remember this conversation: 2 earlier messages from console." in second.stdout
    assert "ignored" not in second.stdout
    shown = cli(tmp_path, "history", "show", "console:alice").stdout
    assert "alice: hello there" in shown and "alice: do you remember?" in shown
    assert "/whoami" not in shown  # commands never reach the history


class Terminal:
    """``onethread chat`` on a pseudo-terminal, as a person at a keyboard sees it."""

    def __init__(self, cwd: Path, *args: str) -> None:
        import pty

        self.master, slave = pty.openpty()
        env = {**os.environ, "TERM": "xterm", "COLUMNS": "500"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "onethread", "chat", *args],
            cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self.seen = b""

    def expect(self, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            assert time.monotonic() < deadline, f"{text!r} not in {self.seen!r}"
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    assert text.encode() in self.seen, self.seen
                    return

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=10)
        finally:
            os.close(self.master)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_chat_on_a_terminal(tmp_path: Path, _isolated_env: Path) -> None:
    term = Terminal(tmp_path, "--user", "bob")
    term.expect("> ")
    term.type("hello terminal")
    term.expect('You said: "hello terminal"')
    term.type("/quit")
    assert term.close() == 0
    # Readline's input history is kept for the next session.
    assert "hello terminal" in (_isolated_env / "chat_history").read_text()

    term = Terminal(tmp_path, "--user", "bob")
    term.expect("> ")
    term.type("still there?")
    term.expect("I remember this conversation: 2 earlier messages from console.")
    term.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert term.close() == 0


# -- run: the README's command, on a free port ------------------------------------


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_run_command() -> list[str]:
    """The README's install-and-run line, minus the install: ``onethread run``.

    Run through the installed console script when there is one (as a user
    would), else ``python -m onethread``.
    """
    line = next(x for x in README.read_text().splitlines() if x.rstrip().endswith("onethread run"))
    command = shlex.split(line.split("&&")[-1])
    assert command == ["onethread", "run"], line
    script = Path(sys.executable).with_name("onethread")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "onethread"]
    return [*prefix, *command[1:]]


def _read_banner(proc: subprocess.Popen[str], timeout: float) -> str:
    """The banner's lines, up to "Ctrl-C stops", read in a thread so the test cannot hang."""
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=0.2))
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if "Ctrl-C stops" in seen[-1]:
            return "".join(seen)
    raise AssertionError(f"no banner; got {seen!r}")


async def test_run_serves_the_web_chat_and_stops_on_ctrl_c(
    tmp_path: Path, _isolated_env: Path
) -> None:
    proc = subprocess.Popen(
        [*readme_run_command(), "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = _read_banner(proc, 20)
        match = re.search(r"web chat:\s+(http://127\.0\.0\.1:(\d+)/)", banner)
        assert match and match.group(2) != "0", banner
        url = match.group(1)
        assert "model:     offline" in banner
        assert f"history:   sqlite:///{_isolated_env / 'history.db'}" in banner
        assert "platforms: web" in banner and "add Telegram: export TELEGRAM_BOT_TOKEN=" in banner
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "healthz") as response:
                assert response.status == 200 and (await response.text()) == "ok"
            async with http.ws_connect(url + "ws?user=alice&name=Alice") as ws:
                await ws.send_json({"type": "message", "id": "m1", "text": "hello web"})
                reply = None
                while reply is None:
                    frame = await ws.receive_json(timeout=10)
                    if frame.get("type") == "message" and frame.get("role") == "assistant":
                        reply = frame["text"]
        assert "No language model is configured" in reply and "hello web" in reply
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    # The turn was stored where `onethread history` looks.
    shown = cli(tmp_path, "history", "show", "web:alice")
    assert "Alice: hello web" in shown.stdout


async def test_a_platform_refusing_its_token_exits_1(tmp_path: Path) -> None:
    async def unauthorized(request: web.Request) -> web.Response:
        body = {"ok": False, "error_code": 401, "description": "Unauthorized"}
        return web.json_response(body, status=401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", unauthorized)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    (tmp_path / "onethread.yaml").write_text("platforms: [telegram]\n")
    env = {
        **os.environ,
        "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,  # well-formed, refused by this server
        "TELEGRAM_API_BASE_URL": f"http://127.0.0.1:{port}",
    }
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "onethread", "run",
            cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await runner.cleanup()
    assert proc.returncode == 1
    text = stderr.decode()
    assert "error: telegram: the bot token was rejected" in text and "Traceback" not in text
    assert stdout == b""


# -- help texts ----------------------------------------------------------------------


def _parsers(
    parser: argparse.ArgumentParser, path: str = "onethread"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def test_every_command_has_a_description_and_every_argument_help() -> None:
    from onethread.cli.main import build_parser

    seen = []
    for path, parser in _parsers(build_parser()):
        seen.append(path)
        text = parser.format_help()
        assert parser.description, f"{path} --help has no description"
        assert "``" not in text and ":class:" not in text, f"{path} --help shows reST"
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{path}: the argument {action.dest} has no help"
            if action.option_strings and not isinstance(action, argparse._VersionAction):
                assert action.help, f"{path}: the option {action.option_strings[0]} has no help"
            if isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{path}: {action.metavar} has no help"
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                assert all(helps.values()) and set(helps) == set(action.choices), path
    assert "onethread history export" in seen and "onethread sessions" in seen


WEB_ID = "0f3cdf5c99942629753e63cd2f8c9b4f"  # what the web chat's page makes: 32 hex digits


def test_ids_are_printed_whole_and_export_has_the_links(tmp_path: Path) -> None:
    narrow = {"COLUMNS": "40"}
    assert (
        cli(tmp_path, "identity", "link", "web", WEB_ID, "alice-with-a-long-name").returncode == 0
    )
    assert (
        cli(tmp_path, "identity", "link", "telegram", "12345", "alice-with-a-long-name").returncode
        == 0
    )
    listing = cli(tmp_path, "identity", "list", env=narrow)
    assert listing.returncode == 0 and "…" not in listing.stdout
    row = next(
        line for line in listing.stdout.splitlines() if line.startswith("alice") and "web" in line
    )
    assert row.split()[:3] == ["alice-with-a-long-name", "web", WEB_ID]

    # No history yet (reading creates no file), and still the person's links.
    export = cli(tmp_path, "history", "export", "alice-with-a-long-name")
    data = json.loads(export.stdout)
    assert [(x["platform"], x["platform_user_id"]) for x in data["links"]] == [
        ("telegram", "12345"),
        ("web", WEB_ID),
    ]
    assert data["sessions"] == {}
    assert not (Path(os.environ["ONETHREAD_HOME"]) / "history.db").exists()


async def test_sessions_print_web_ids_whole(tmp_path: Path, _isolated_env: Path) -> None:
    store = open_history_store(f"sqlite:///{_isolated_env / 'history.db'}")
    manager = BotSessionManager(store=store)
    await manager.chat(RecordingAgent(), WEB_ID, "hi", platform="web", chat_id=f"web-{WEB_ID}")
    await manager.close()
    sessions = cli(tmp_path, "sessions", env={"COLUMNS": "40"})
    assert sessions.returncode == 0 and "…" not in sessions.stdout
    assert f"web:{WEB_ID}" in sessions.stdout.split()
    shown = cli(tmp_path, "history", "show", f"web:{WEB_ID}")
    assert "hi" in shown.stdout


def test_init_writes_one_final_newline(tmp_path: Path) -> None:
    assert cli(tmp_path, "init").returncode == 0
    text = (tmp_path / "onethread.yaml").read_text()
    assert text.endswith("\n") and not text.endswith("\n\n")
