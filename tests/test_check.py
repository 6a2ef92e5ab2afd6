"""``onethread run --check``: every mistake in one run, tokens of impossible shapes.

The parts in-process (pydantic model, config checks, each adapter's
``check_options``), then the command as a user runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from onethread.config import ConfigFileError, Problem, parse_config
from onethread.config_check import config_problems

FILE = "onethread.yaml"
TELEGRAM = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"  # shapes of real tokens
DISCORD = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GfAkE1.abcdefghijklmnopqrstuvwxyz012345678"


def every_problem(text: str, **env: str) -> list[Problem]:
    """What ``run --check`` lists for config ``text``: load problems, then check problems."""
    try:
        config = parse_config(textwrap.dedent(text), FILE, env)
        known: list[Problem] = []
    except ConfigFileError as exc:
        assert exc.config is not None, exc
        config, known = exc.config, exc.problems
    return config_problems(config, env, known=known)[1]


def keys(problems: list[Problem]) -> list[str]:
    return [key for key, _ in problems]


# -- every mistake in one run ---------------------------------------------------------


def test_a_misspelt_section_does_not_hide_a_platform_option() -> None:
    problems = every_problem("agnet:\n  name: x\nplatforms:\n  web: {prot: 1}\n")
    assert keys(problems) == ["agnet", "platforms.web.prot"]
    assert "did you mean 'agent'?" in problems[0][1]
    assert "did you mean 'port'?" in problems[1][1]


def test_a_wrong_type_does_not_hide_a_bad_port() -> None:
    problems = every_problem("max_history: lots\nplatforms:\n  web: {port: 99999}\n")
    assert keys(problems) == ["max_history", "platforms.web.port"]
    assert "0 to 65535" in problems[1][1]


def test_mistakes_at_every_level_at_once() -> None:
    problems = every_problem(
        """
        agent:
          nme: x
          tools: ["not a path", "json:dumps"]
        platforms:
          web: {prot: 1}
          telegrm: {}
          telegram: {token: obviously-fake}
        history: nope
        access:
          default: everyone
        max_history: -3
        unknown_top: 1
        """
    )
    assert sorted(keys(problems)) == sorted(
        [
            "agent.nme",
            "agent.tools[0]",
            "access.default",
            "max_history",
            "unknown_top",
            "platforms.telegrm",
            "history",
            "platforms.web.prot",
            "platforms.telegram.token",
        ]
    )


def test_an_unset_variable_is_reported_once() -> None:
    problems = every_problem("platforms:\n  telegram: {token: '${TG}'}\nmax_history: x\n")
    assert keys(problems) == ["platforms.telegram.token", "max_history"]
    assert "${TG} is not set" in problems[0][1]


def test_a_faulty_platforms_section_is_not_replaced_by_the_defaults() -> None:
    # `platforms: 5` is left out; the web chat and tokens in the environment are not
    # then checked in its place.
    problems = every_problem("platforms: 5\n", TELEGRAM_BOT_TOKEN="obviously-fake")
    assert keys(problems) == ["platforms"]


# -- token shapes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "env", "option", "expected"),
    [
        ("telegram", {"TELEGRAM_BOT_TOKEN": "obviously-fake"}, "token", "@BotFather"),
        ("telegram", {"TELEGRAM_BOT_TOKEN": "1:wrong"}, "token", "not a Telegram bot token"),
        ("telegram", {"TELEGRAM_BOT_TOKEN": "123:" + "a" * 35 + "\n"}, "token",
         "spaces or a line break"),
        ("telegram", {"TELEGRAM_BOT_TOKEN": "bot123:" + "a" * 35}, "token", "123456789:AAH"),
        ("discord", {"DISCORD_BOT_TOKEN": "obviously-fake"}, "token", "three parts"),
        ("discord", {"DISCORD_BOT_TOKEN": "aGVsbG8.GfAkE1.abc"}, "token", "three parts"),
        ("discord", {"DISCORD_BOT_TOKEN": "Bot " + DISCORD}, "token", "give the token alone"),
        ("slack", {"SLACK_BOT_TOKEN": "xapp-1-A", "SLACK_APP_TOKEN": "xapp-1-A"}, "token",
         "is an app-level token; it needs the Bot User OAuth Token (xoxb-"),
        ("slack", {"SLACK_BOT_TOKEN": "xoxp-1", "SLACK_APP_TOKEN": "xapp-1-A"}, "token",
         "is a user token"),
        ("slack", {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "obviously-fake"},
         "app_token", "does not start with 'xapp-'"),
    ],
)  # fmt: skip
def test_a_token_of_an_impossible_shape_is_named(
    platform: str, env: dict[str, str], option: str, expected: str
) -> None:
    problems = every_problem("", **env)
    key = f"platforms.{platform}.{option}"
    assert keys(problems) == [key], problems
    message = problems[0][1]
    assert expected in message
    variable = f"{platform.upper()}_{'APP' if option == 'app_token' else 'BOT'}_TOKEN"
    assert message.startswith(variable + " ")  # names where the value came from ...
    assert env[variable].strip() not in message  # ... and never the secret itself


def test_tokens_of_the_real_shapes_pass() -> None:
    env = {"TELEGRAM_BOT_TOKEN": TELEGRAM, "DISCORD_BOT_TOKEN": DISCORD,
           "SLACK_BOT_TOKEN": "xoxb-1-2-abc", "SLACK_APP_TOKEN": "xapp-1-A0-1-abc"}  # fmt: skip
    assert every_problem("", **env) == []


def test_a_token_in_the_file_is_named_as_the_option() -> None:
    problems = every_problem("platforms:\n  telegram: {token: obviously-fake}\n")
    assert problems[0][1].startswith("the token option is not a Telegram bot token")


# -- the command -------------------------------------------------------------------------


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onethread", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip


@pytest.mark.multiprocess
def test_check_lists_every_mistake_in_one_run(tmp_path: Path) -> None:
    (tmp_path / FILE).write_text(
        "agnet:\n  name: x\nmax_history: lots\nplatforms:\n  web: {prot: 1, port: 99999}\n"
        "  telegram: {}\n"
    )
    result = cli(tmp_path, "run", "--check", TELEGRAM_BOT_TOKEN="obviously-fake")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert sorted(result.stderr.splitlines()) == sorted([
        "error: onethread.yaml: agnet: unknown key; did you mean 'agent'?",
        "error: onethread.yaml: max_history: Input should be a valid integer, unable to parse "
        "string as an integer (got 'lots')",
        "error: onethread.yaml: platforms.web.prot: unknown option; did you mean 'port'?",
        "error: onethread.yaml: platforms.web.port: must be a port number from 0 to 65535 "
        "(0: any free port), got 99999",
        "error: onethread.yaml: platforms.telegram.token: TELEGRAM_BOT_TOKEN is not a Telegram "
        "bot token, which looks like 123456789:AAH... (the bot's id, a colon, then about 35 "
        "letters, digits, '_' or '-'); copy it again from @BotFather (/token)",
    ])  # fmt: skip
    assert "obviously-fake" not in result.stderr


@pytest.mark.multiprocess
def test_check_names_both_ways_to_log_in_to_matrix(tmp_path: Path) -> None:
    env = {"MATRIX_HOMESERVER": "https://m.example.org", "MATRIX_USER_ID": "@bot:example.org"}
    result = cli(tmp_path, "run", "--check", **env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "MATRIX_ACCESS_TOKEN=... (or MATRIX_PASSWORD=...) to serve matrix" in result.stderr


@pytest.mark.multiprocess
def test_check_tries_the_signal_daemon(tmp_path: Path) -> None:
    import socket

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        url = f"tcp://127.0.0.1:{listening.getsockname()[1]}"
        env = {"SIGNAL_ACCOUNT": "+4915112345678", "SIGNAL_CLI_URL": url}
        result = cli(tmp_path, "run", "--check", **env)
        assert result.returncode == 0, result.stderr
        assert "platforms: web, signal" in result.stdout
    result = cli(tmp_path, "run", "--check", **env)  # nothing listens there any more
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        f"error: platforms.signal.url: cannot reach signal-cli's daemon at {url} ("
    )
    assert "start it (signal-cli -a ACCOUNT daemon --tcp" in result.stderr


@pytest.mark.multiprocess
def test_run_refuses_an_impossible_token_before_serving(tmp_path: Path) -> None:
    result = cli(tmp_path, "run", "--port", "0", TELEGRAM_BOT_TOKEN="obviously-fake")
    assert result.returncode == 2 and result.stdout == ""
    assert "platforms.telegram.token: TELEGRAM_BOT_TOKEN is not a Telegram bot token" in (
        result.stderr
    )


# -- OPENAI_BASE_URL without ONETHREAD_MODEL ---------------------------------------------
# Chosen: say so (banner, --check, and the offline reply), listing what the server
# offers; never guess one of its models.


def test_a_server_without_a_model_name_is_said_not_guessed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from onethread import Agent
    from onethread.agent import OfflineModel

    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    model = Agent("a").model
    assert isinstance(model, OfflineModel)
    assert "OPENAI_BASE_URL is set but ONETHREAD_MODEL is not" in model.note
    assert "ONETHREAD_MODEL" in model.reason
    monkeypatch.setenv("ONETHREAD_MODEL", "m")
    assert not isinstance(Agent("a").model, OfflineModel)


async def test_list_models_asks_the_server() -> None:
    from fake_openai import FakeOpenAI
    from onethread.agent.models_openai import list_models
    from onethread.errors import ModelError

    async with FakeOpenAI(models=["llama3", "qwen2"], api_key="k") as fake:
        assert await list_models(fake.base_url, "k") == ["llama3", "qwen2"]
        with pytest.raises(ModelError) as info:
            await list_models(fake.base_url, "wrong")
        assert info.value.status_code == 401


async def _cli_async(cwd: Path, *args: str, stdin: bytes = b"", **env: str) -> tuple[int, str, str]:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "onethread", *args,
        cwd=cwd, env={**os.environ, **env},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.multiprocess
async def test_check_and_chat_say_which_model_to_name(tmp_path: Path) -> None:
    from fake_openai import FakeOpenAI

    async with FakeOpenAI(models=["llama3", "qwen2"]) as fake:
        code, out, err = await _cli_async(tmp_path, "run", "--check", OPENAI_BASE_URL=fake.base_url)
        assert code == 0, err
        assert (
            "model: offline (OPENAI_BASE_URL is set but ONETHREAD_MODEL is not; export "
            "ONETHREAD_MODEL=<a model the server serves> (or set agent.model); it offers: "
            "llama3, qwen2)" in out
        )
        code, out, err = await _cli_async(
            tmp_path, "chat", stdin=b"hello\n", OPENAI_BASE_URL=fake.base_url
        )
        assert code == 0, err
        banner, reply = out.split("\n", 1)
        assert "ONETHREAD_MODEL is not" in banner and "it offers: llama3, qwen2" in banner
        assert "OPENAI_BASE_URL is set, but ONETHREAD_MODEL" in reply
        assert fake.model_listings == 2
        assert fake.requests == []  # no chat completion was attempted with a guessed name


@pytest.mark.multiprocess
async def test_check_says_when_the_server_cannot_list_its_models(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, err = await _cli_async(
        tmp_path, "run", "--check", OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1"
    )
    assert code == 0, err
    assert "ONETHREAD_MODEL is not" in out and "could not ask it which models it has" in out
