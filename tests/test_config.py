"""The config file: defaults, ${ENV} substitution, and one clear message per mistake."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from onethread.config import (
    Config,
    ConfigFileError,
    load_config,
    parse_config,
    store_url_problem,
)
from onethread.config_check import check_config, import_tool, tool_functions
from onethread.errors import ConfigError
from onethread.platforms.registry import PLATFORMS, PlatformSpec
from onethread.session.urls import ACCEPTED_FORMS

FILE = "onethread.yaml"
DISCORD_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GfAkE1.abcdefghijklmnopqrstuvwxyz012345678"


def parse(text: str, **env: str) -> Config:
    return parse_config(textwrap.dedent(text), FILE, env)


def problem(text: str, **env: str) -> str:
    with pytest.raises(ConfigFileError) as info:
        parse(text, **env)
    assert info.value.path == FILE
    return str(info.value)


def check_problem(text: str, **env: str) -> str:
    config = parse(text, **env)
    with pytest.raises(ConfigFileError) as info:
        check_config(config, env)
    return str(info.value)


# -- defaults and the environment -----------------------------------------------------


def test_defaults_serve_the_web_chat_only() -> None:
    config = Config()
    assert config.agent.name == "assistant" and config.agent.model is None
    assert config.max_history == 100 and config.identity is None and config.history is None
    assert config.platform_options({}) == {"web": {"host": "127.0.0.1", "port": 8080}}
    assert check_config(config, {}) == {"web": {"host": "127.0.0.1", "port": 8080}}


def test_an_empty_file_means_defaults() -> None:
    assert parse("").model_dump() == Config().model_dump()
    assert parse("# just a comment\n").platform_options({}) == Config().platform_options({})


def test_tokens_in_the_environment_switch_platforms_on() -> None:
    env = {"TELEGRAM_BOT_TOKEN": "t", "DISCORD_BOT_TOKEN": "d", "SLACK_BOT_TOKEN": "xoxb"}
    # Slack needs both of its tokens.
    assert list(Config().platform_options(env)) == ["web", "telegram", "discord"]
    env["SLACK_APP_TOKEN"] = "xapp"
    assert list(Config().platform_options(env)) == ["web", "telegram", "discord", "slack"]


def test_half_of_slacks_tokens_is_a_mistake_naming_the_other() -> None:
    with pytest.raises(ConfigFileError, match="export SLACK_APP_TOKEN=") as info:
        check_config(Config(), {"SLACK_BOT_TOKEN": "xoxb"})
    assert "SLACK_BOT_TOKEN is set but SLACK_APP_TOKEN is not" in str(info.value)


def test_half_of_emails_settings_names_every_missing_one() -> None:
    with pytest.raises(ConfigFileError) as info:
        check_config(Config(), {"EMAIL_ADDRESS": "bot@example.org"})
    assert (
        "EMAIL_ADDRESS is set but EMAIL_PASSWORD, EMAIL_IMAP_URL and EMAIL_SMTP_URL are not; "
        "export EMAIL_PASSWORD=... EMAIL_IMAP_URL=... EMAIL_SMTP_URL=... to serve email, "
        "or unset EMAIL_ADDRESS"
    ) in str(info.value)


def test_email_from_the_environment_alone_with_nobody_allowed_is_refused() -> None:
    """Email's default policy is an allowlist: with nobody on it the bot would
    answer no one, silently. --check and run say so, and how to fix it."""
    env = {
        "EMAIL_ADDRESS": "bot@example.org",
        "EMAIL_PASSWORD": "pw",
        "EMAIL_IMAP_URL": "imaps://imap.example.org",
        "EMAIL_SMTP_URL": "smtps://smtp.example.org",
    }
    with pytest.raises(ConfigFileError) as info:
        check_config(Config(), env)
    msg = str(info.value)
    assert "access.allowlist.email: email answers only the senders listed" in msg
    assert "under owners.email" in msg and "onethread init" in msg
    listed = parse("access:\n  allowlist: {email: [me@example.org]}\n")
    check_config(listed, env)  # no error
    check_config(parse("owners: {email: me@example.org}\n"), env)
    check_config(parse("access:\n  platforms: {email: open}\n"), env)


def test_a_platforms_section_means_exactly_those() -> None:
    config = parse("platforms: [telegram]\n")
    assert config.platform_options({"DISCORD_BOT_TOKEN": "d"}) == {"telegram": {}}
    config = parse("platforms:\n  web:\n  discord:\n")
    assert list(config.platform_options({})) == ["web", "discord"]


def test_host_and_port_overrides_add_the_web_chat() -> None:
    config = parse("platforms: {discord: {}}\n")
    options = config.platform_options({}, web={"port": 0})
    assert options["web"] == {"host": "127.0.0.1", "port": 0} and "discord" in options


def test_env_substitution() -> None:
    config = parse(
        """\
        agent:
          name: ${BOT_NAME}
          instructions: "Call me ${BOT_NAME:-x}, costs $${NOT_A_VAR}"
          model: ${MODEL:-gpt-4o-mini}
        platforms:
          web:
            port: ${PORT}
          telegram:
            token: ${TELEGRAM_BOT_TOKEN}
        """,
        BOT_NAME="ada",
        PORT="9000",
        TELEGRAM_BOT_TOKEN="123:abc",
    )
    assert config.agent.name == "ada"
    assert config.agent.instructions == "Call me ada, costs ${NOT_A_VAR}"
    assert config.agent.model == "gpt-4o-mini"
    options = config.platform_options({})
    assert options["telegram"] == {"token": "123:abc"}
    assert options["web"]["port"] == 9000


def test_owners_and_allowlists_take_numbers_and_single_ids() -> None:
    config = parse(
        "owners: {telegram: 12345, discord: [1, '2']}\naccess:\n  allowlist: {telegram: [7]}\n"
    )
    assert config.owner_ids("telegram") == ["12345"]
    assert config.owner_ids("discord") == ["1", "2"]
    assert config.owner_ids("slack") == []
    assert config.access.allowlist == {"telegram": ["7"]}


def test_access_modes() -> None:
    config = parse("access: {default: approval, platforms: {web: open}}\n")
    assert config.access.mode("web") == "open"
    assert config.access.mode("telegram") == "approval"
    assert Config().access.mode("telegram") is None  # the built-in default applies


# -- structural mistakes (load_config) ------------------------------------------------


def test_unknown_platform_did_you_mean() -> None:
    msg = problem("platforms:\n  telegrm: {}\n")
    assert msg == "onethread.yaml: platforms.telegrm: unknown platform; did you mean 'telegram'?"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("histroy: memory://\n", "onethread.yaml: histroy: unknown key; did you mean 'history'?"),
        ("agent:\n  nme: x\n", "onethread.yaml: agent.nme: unknown key; did you mean 'name'?"),
        (
            "access:\n  defualt: open\n",
            "onethread.yaml: access.defualt: unknown key; did you mean 'default'?",
        ),
        ("zzz: 1\n", "onethread.yaml: zzz: unknown key; expected one of: access, agent,"),
    ],
)
def test_unknown_keys_did_you_mean(text: str, expected: str) -> None:
    assert problem(text).startswith(expected)


def test_unset_token_variable_names_the_variable_and_the_fix() -> None:
    msg = problem("platforms:\n  telegram:\n    token: ${TELEGRAM_BOT_TOKEN}\n")
    assert msg == (
        "onethread.yaml: platforms.telegram.token: ${TELEGRAM_BOT_TOKEN} is not set; "
        "export TELEGRAM_BOT_TOKEN=... or remove the telegram platform"
    )


def test_unset_variable_elsewhere() -> None:
    msg = problem("history: ${HISTORY_URL}\n")
    assert msg == (
        "onethread.yaml: history: ${HISTORY_URL} is not set; "
        "export HISTORY_URL=... or write the value in the file"
    )


@pytest.mark.parametrize("key", ["history", "identity"])
def test_bad_store_url_lists_the_accepted_forms(key: str) -> None:
    msg = problem(f"{key}: mysql://db/x\n")
    assert (
        msg
        == f"onethread.yaml: {key}: bad store URL 'mysql://db/x'; accepted forms: {ACCEPTED_FORMS}"
    )


def test_store_url_rules() -> None:
    assert store_url_problem("sqlite:///h.db", "history") is None
    assert store_url_problem("file:/x/identity.json", "identity") is None
    assert store_url_problem("redis://127.0.0.1:6379/0", "history") is None
    assert store_url_problem("postgresql://u@h:5432/db", "identity") is None
    assert "identity only" in (store_url_problem("file:/x.json", "history") or "")
    assert "sqlite:///relative.db" in (store_url_problem("sqlite://h.db", "history") or "")
    assert "accepted forms" in (store_url_problem("nonsense", "identity") or "")


def test_yaml_syntax_error_has_the_line() -> None:
    msg = problem("agent:\n  name: a\n  instructions: [unclosed\nmax_history: 3\n")
    assert msg.startswith("onethread.yaml: line ") and "YAML syntax error" in msg


def test_yaml_tab_indentation_line() -> None:
    msg = problem("agent:\n\tname: a\n")
    assert "line 2" in msg


def test_top_level_must_be_a_mapping() -> None:
    assert "top level must be a mapping" in problem("- web\n- telegram\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_history: -1\n", "max_history: Input should be greater than or equal to 0"),
        ("max_history: lots\n", "max_history: Input should be a valid integer"),
        ("access: {default: alowlist}\n", "access.default: Input should be 'open', 'allowlist'"),
        (
            "agent:\n  tools: [whoami]\n",
            "agent.tools[0]: not an import path; write module:function",
        ),
        (
            "owners: {telegarm: '1'}\n",
            "owners.telegarm: unknown platform; did you mean 'telegram'?",
        ),
        (
            "access: {platforms: {dicsord: open}}\n",
            "access.platforms.dicsord: unknown platform; did you mean 'discord'?",
        ),
    ],
)
def test_value_mistakes(text: str, expected: str) -> None:
    assert expected in problem(text)


def test_no_platforms_at_all() -> None:
    assert "platforms: no platforms listed; add web:" in problem("platforms: {}\n")


def test_every_problem_is_reported_at_once() -> None:
    err = None
    try:
        parse("histroy: x\nagent: {nme: a}\n")
    except ConfigFileError as exc:
        err = exc
    assert err is not None
    assert sorted(key for key, _ in err.problems) == ["agent.nme", "histroy"]
    assert len(str(err).splitlines()) == 2


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="no such file; create one with: onethread init"):
        load_config(tmp_path / "nope.yaml")


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bot.yaml"
    path.write_text("agent: {name: ada}\nmax_history: 5\n")
    config = load_config(path)
    assert config.agent.name == "ada" and config.max_history == 5
    assert config.source == str(path)


# -- checks that need imports or the environment (check_config) ---------------------


def test_missing_token_names_the_variable() -> None:
    msg = check_problem("platforms:\n  telegram: {}\n")
    assert msg.startswith(
        "onethread.yaml: platforms.telegram.token: not set; export TELEGRAM_BOT_TOKEN="
    )
    assert "remove the telegram platform" in msg


def test_token_from_the_environment_is_enough() -> None:
    config = parse("platforms:\n  discord:\n")
    assert check_config(config, {"DISCORD_BOT_TOKEN": DISCORD_TOKEN}) == {"discord": {}}


def test_unknown_platform_option_did_you_mean() -> None:
    msg = check_problem("platforms:\n  telegram: {tokn: abc}\n", TELEGRAM_BOT_TOKEN="t")
    assert "onethread.yaml: platforms.telegram.tokn: unknown option; did you mean 'token'?" in msg
    msg = check_problem("platforms:\n  web: {prot: 8000}\n")
    assert "platforms.web.prot: unknown option; did you mean 'port'?" in msg


def test_streaming_is_an_option_of_every_platform() -> None:
    config = parse("platforms:\n  telegram: {streaming: false}\n  web: {streaming: true}\n")
    chosen = check_config(config, {"TELEGRAM_BOT_TOKEN": "123456789:" + "A" * 35})
    assert chosen["telegram"]["streaming"] is False and chosen["web"]["streaming"] is True
    msg = check_problem("platforms:\n  web: {streeming: false}\n")
    assert "platforms.web.streeming: unknown option; did you mean 'streaming'?" in msg


def test_web_on_a_public_interface_needs_an_access_token() -> None:
    msg = check_problem("platforms:\n  web: {host: 0.0.0.0}\n")
    assert "platforms.web.access_token: required when host is 0.0.0.0" in msg
    config = parse("platforms:\n  web: {host: 0.0.0.0, access_token: s3cret}\n")
    assert check_config(config, {})["web"]["host"] == "0.0.0.0"


def test_web_port_must_be_a_port() -> None:
    assert "platforms.web.port: must be a port number" in check_problem(
        "platforms:\n  web: {port: 70000}\n"
    )


def test_allowlist_with_nobody_on_it() -> None:
    msg = check_problem("platforms: [web]\naccess: {default: allowlist}\n")
    assert "access.allowlist.web: web uses the allowlist but nobody is on it" in msg
    config = parse("platforms: [web]\naccess: {default: allowlist}\nowners: {web: me}\n")
    assert "web" in check_config(config, {})


def test_missing_sdk_gives_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = PlatformSpec("onethread.platforms.nothere", "X", "nothere", "no_such_sdk_zz")
    monkeypatch.setitem(PLATFORMS, "nothere", spec)
    msg = check_problem("platforms: [nothere]\n")
    assert "platforms.nothere: the nothere platform needs an optional dependency" in msg
    assert 'pip install "onethread[nothere]"' in msg


def test_tools_are_imported_from_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "my_cfg_tools.py").write_text(
        "def whoami() -> str:\n    '''Who is talking.'''\n    return 'me'\n"
    )
    path = tmp_path / "onethread.yaml"
    path.write_text("agent:\n  tools: ['my_cfg_tools:whoami']\n")
    try:
        config = load_config(path)
        check_config(config, {})
        assert [f.__name__ for f in tool_functions(config)] == ["whoami"]
    finally:
        sys.modules.pop("my_cfg_tools", None)


def test_tool_import_errors_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "onethread.yaml"
    path.write_text("agent:\n  tools: ['no_such_module_q:f', 'os.path:nope']\n")
    with pytest.raises(ConfigFileError) as info:
        check_config(load_config(path), {})
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{path}: agent.tools[0]: cannot import 'no_such_module_q:f'")
    assert lines[1] == f"{path}: agent.tools[1]: 'os.path' has no 'nope'; check the name after ':'"


def test_import_tool_refuses_non_callables() -> None:
    with pytest.raises(ConfigError, match="is not a function"):
        import_tool("os:sep")
    assert import_tool("os.path:join") is not None


def test_the_pairing_code_cap_is_configurable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onethread.cli.run import open_pairing
    from onethread.session.pairing import MAX_CODES

    assert parse("").access.max_codes == MAX_CODES
    assert "access.max_codes: Input should be greater than or equal to 1" in problem(
        "access: {max_codes: 0}\n"
    )
    monkeypatch.setenv("ONETHREAD_HOME", str(tmp_path))
    store = open_pairing(parse("access: {max_codes: 2}\n"))
    try:
        assert store.path == str(tmp_path / "pairing.db") and store.max_codes == 2
        assert store.issue("link", "telegram", "1") and store.issue("link", "telegram", "2")
        assert store.try_issue("link", "telegram", "3").refused == "full"
    finally:
        store.close()
