"""The Matrix adapter's pure parts: events normalised from real matrix-nio event objects
(parsed from the JSON a homeserver sends), contents built, errors mapped, the kept state
and the options checked. End to end against Synapse: tests/test_matrix_synapse.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from nio import ErrorResponse, Event

from onethread.errors import (
    BadRequest,
    ConfigError,
    CorruptStoreError,
    PlatformAuthError,
    PlatformUnavailable,
    RetryAfter,
)
from onethread.platforms.matrix import MatrixAdapter
from onethread.platforms.matrix_events import (
    check,
    edit_content,
    file_content,
    media_of,
    normalize_event,
    reply_target,
    text_content,
)
from onethread.platforms.matrix_state import MatrixState, state_path
from onethread.session.attachments import Attachment

BOT = "@helper:example.org"
ROOM = "!room:example.org"


def event(
    content: dict[str, Any],
    *,
    sender: str = "@alice:example.org",
    kind: str = "m.room.message",
    event_id: str = "$e1",
) -> dict[str, Any]:
    """The event as matrix-nio parses it from the homeserver's JSON; its ``source``."""
    raw = {
        "type": kind,
        "content": content,
        "sender": sender,
        "event_id": event_id,
        "origin_server_ts": 1700000000000,
    }
    parsed = Event.parse_event(raw)
    assert parsed.source == raw, parsed
    return dict(parsed.source)


def normalize(source: dict[str, Any], direct: bool = False) -> Any:
    return normalize_event(
        source,
        room_id=ROOM,
        bot_user_id=BOT,
        bot_names=["Helper Bot"],
        direct=direct,
        user_name="Alice",
        chat_name="Team",
    )


def text(body: str, **extra: Any) -> dict[str, Any]:
    return event({"msgtype": "m.text", "body": body, **extra})


def test_a_dm_is_always_addressed() -> None:
    msg = normalize(text("hello"), direct=True)
    assert (msg.platform, msg.chat_id, msg.chat_type, msg.user_id) == (
        "matrix",
        ROOM,
        "dm",
        "@alice:example.org",
    )
    assert (msg.text, msg.message_id, msg.mentions_bot) == ("hello", "$e1", True)
    assert not (msg.from_bot or msg.from_self or msg.thread_id)


@pytest.mark.parametrize(
    ("source", "addressed", "said"),
    [
        (text("hello all"), False, "hello all"),
        (text("Helper Bot: /whoami"), True, "/whoami"),
        (text("what does helper bot think?"), True, "what does helper bot think?"),
        (text("helper botany"), False, "helper botany"),
        (text(f"{BOT}, hi"), True, "hi"),
        (text("Helper: hi", **{"m.mentions": {"user_ids": [BOT]}}), True, "Helper: hi"),
        (text("hi", **{"m.mentions": {"user_ids": ["@bob:example.org"]}}), False, "hi"),
        (text("/link"), True, "/link"),
    ],
)
def test_a_group_message_addresses_the_bot_by_mention_name_or_command(
    source: dict[str, Any], addressed: bool, said: str
) -> None:
    msg = normalize(source)
    assert (msg.chat_type, msg.mentions_bot, msg.text) == ("group", addressed, said)


def test_threads_replies_edits_notices_and_own_messages() -> None:
    in_thread = text(
        "more",
        **{
            "m.relates_to": {
                "rel_type": "m.thread",
                "event_id": "$root",
                "is_falling_back": True,
                "m.in_reply_to": {"event_id": "$last"},
            }
        },
    )
    assert normalize(in_thread).thread_id == "$root"
    assert reply_target(in_thread) == ""  # a thread's fallback is not a reply
    reply = text(
        "> <@helper:example.org> earlier\n\nyes, that",
        **{"m.relates_to": {"m.in_reply_to": {"event_id": "$bots"}}},
    )
    assert reply_target(reply) == "$bots" and normalize(reply).text == "yes, that"
    edit = text(
        "* fixed",
        **{
            "m.new_content": {"msgtype": "m.text", "body": "fixed"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$e0"},
        },
    )
    assert normalize(edit) is None
    assert normalize(event({"msgtype": "m.notice", "body": "beep"})).from_bot
    assert normalize(event({"msgtype": "m.text", "body": "mine"}, sender=BOT)).from_self
    assert normalize(event({"membership": "join"}, kind="m.room.member")) is None
    assert normalize(event({"msgtype": "m.location", "body": "here", "geo_uri": "geo:1,2"})) is None


def test_files_become_attachments_with_their_caption() -> None:
    image = event(
        {
            "msgtype": "m.image",
            "body": "look",
            "filename": "cat.png",
            "url": "mxc://example.org/abc",
            "info": {"mimetype": "image/png", "size": 1234},
        }
    )
    msg = normalize(image, direct=True)
    assert msg.attachments == (Attachment("image", "image/png", "cat.png", 1234),)
    assert msg.text == "look"
    assert media_of(image)[0][1] == "mxc://example.org/abc"
    bare = event({"msgtype": "m.file", "body": "notes.txt", "url": "mxc://example.org/n"})
    assert normalize(bare, direct=True).text == ""  # the body is only the name
    voice = event(
        {
            "msgtype": "m.audio",
            "body": "voice",
            "url": "mxc://example.org/v",
            "org.matrix.msc3245.voice": {},
            "info": {"mimetype": "audio/ogg"},
        }
    )
    assert normalize(voice, direct=True).attachments[0].kind == "voice"
    sticker = event(
        {"body": "😀", "url": "mxc://example.org/s", "info": {"mimetype": "image/webp"}},
        kind="m.sticker",
    )
    assert normalize(sticker, direct=True).attachments[0].kind == "sticker"
    # An encrypted file (end-to-end encryption) has no url to fetch: not taken.
    secret = event(
        {"msgtype": "m.image", "body": "x.png", "file": {"url": "mxc://example.org/e", "v": "v2"}}
    )
    assert normalize(secret, direct=True) is None


def test_contents_sent() -> None:
    assert text_content("**hi**") == {
        "msgtype": "m.text",
        "body": "hi",
        "format": "org.matrix.custom.html",
        "formatted_body": "<p><strong>hi</strong></p>",
    }
    assert text_content("**hi**", formatted=False) == {"msgtype": "m.text", "body": "**hi**"}
    edit = edit_content("$draft", "done *now*")
    assert edit["m.relates_to"] == {"rel_type": "m.replace", "event_id": "$draft"}
    assert edit["m.new_content"]["body"] == "done now" and edit["body"] == "* done now"
    assert "m.relates_to" not in edit["m.new_content"]
    voice = file_content(
        Attachment("voice", "audio/ogg", "note.ogg", caption="listen"), "mxc://s/v", 10
    )
    assert voice["msgtype"] == "m.audio" and "org.matrix.msc3245.voice" in voice
    assert (voice["body"], voice["filename"], voice["info"]) == (
        "listen",
        "note.ogg",
        {"mimetype": "audio/ogg", "size": 10},
    )


def error(errcode: str | None, status: int, retry_after_ms: int | None = None) -> ErrorResponse:
    body: dict[str, Any] = {"errcode": errcode, "error": "nope"} if errcode else {}
    if retry_after_ms is not None:
        body["retry_after_ms"] = retry_after_ms
    resp = ErrorResponse.from_dict(body)
    resp.transport_response = SimpleNamespace(status=status)  # as nio's _send sets it
    return resp


@pytest.mark.parametrize(
    ("resp", "expected"),
    [
        (error("M_LIMIT_EXCEEDED", 429, 1500), RetryAfter),
        (error(None, 429), RetryAfter),
        (error("M_UNKNOWN_TOKEN", 401), PlatformAuthError),
        (error("M_MISSING_TOKEN", 401), PlatformAuthError),
        (error("M_USER_DEACTIVATED", 403), PlatformAuthError),
        (error("M_FORBIDDEN", 403), BadRequest),
        (error("M_TOO_LARGE", 413), BadRequest),
        (error("M_UNKNOWN", 500), PlatformUnavailable),
        (error(None, 502), PlatformUnavailable),  # a proxy's HTML error page
    ],
)
def test_error_responses_map_to_our_errors(resp: ErrorResponse, expected: type) -> None:
    with pytest.raises(expected) as raised:
        check(resp, "send")
    if expected is RetryAfter and resp.retry_after_ms:
        assert raised.value.retry_after == 1.5  # type: ignore[attr-defined]


def test_state_is_private_and_a_corrupt_file_is_never_overwritten(tmp_path: Path) -> None:
    path = state_path(BOT, tmp_path)
    assert path == tmp_path / "matrix" / "helper_example.org.json"
    state = MatrixState(path, device_id="DEV", next_batch="s1")
    assert state.add_room("direct_rooms", ROOM) and not state.add_room("direct_rooms", ROOM)
    state.save()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert MatrixState.load(path) == state
    path.write_text("{not json")
    with pytest.raises(CorruptStoreError, match="helper_example.org.json"):
        MatrixState.load(path)
    assert path.read_text() == "{not json"


def test_options_checked_with_the_fix() -> None:
    env = {"MATRIX_HOMESERVER": "matrix.example.org", "MATRIX_USER_ID": "helper"}
    problems = dict(MatrixAdapter.check_options({"invite_from": ["@bad"]}, env))
    assert "http(s) URL" in problems["homeserver"] and "@bot:example.org" in problems["user_id"]
    assert "token" not in problems  # a token or a password at all: the registry's one_of
    assert "@bad" in problems["invite_from"]
    good = {"MATRIX_HOMESERVER": "https://m.org", "MATRIX_USER_ID": BOT, "MATRIX_PASSWORD": "pw"}
    assert MatrixAdapter.check_options({"invite_from": ["example.org", BOT]}, good) == []
    with pytest.raises(ConfigError, match="unknown matrix option"):
        MatrixAdapter(homeserver="https://m.org", tokn="x")


async def test_start_without_credentials_names_the_variables() -> None:
    adapter = MatrixAdapter(homeserver="https://m.org")

    async def ignore(msg: object) -> None:
        return None

    with pytest.raises(ConfigError, match="MATRIX_USER_ID.*MATRIX_ACCESS_TOKEN"):
        await adapter.start(ignore)


def test_the_config_check_asks_for_a_token_or_a_password() -> None:
    from onethread.config import Config
    from onethread.config_check import config_problems

    env = {"MATRIX_HOMESERVER": "https://matrix.example.org", "MATRIX_USER_ID": BOT}
    # Without a config file: not served, and the one line names both ways in.
    platforms, problems = config_problems(Config(), env)
    assert "matrix" not in platforms
    assert problems == [
        (
            "",
            "MATRIX_HOMESERVER and MATRIX_USER_ID are set but MATRIX_ACCESS_TOKEN or "
            "MATRIX_PASSWORD is not; export MATRIX_ACCESS_TOKEN=... (or MATRIX_PASSWORD=...) "
            "to serve matrix, or unset MATRIX_HOMESERVER MATRIX_USER_ID",
        )
    ]
    for way in ("MATRIX_PASSWORD", "MATRIX_ACCESS_TOKEN"):
        platforms, problems = config_problems(Config(), {**env, way: "secret"})
        assert "matrix" in platforms and problems == [], way
    # Listed in the file: the token option names both variables.
    config = Config(platforms={"matrix": {}})
    [(key, message)] = config_problems(config, env)[1]
    assert key == "platforms.matrix.token"
    assert "MATRIX_ACCESS_TOKEN" in message and "MATRIX_PASSWORD" in message
    assert config_problems(Config(platforms={"matrix": {"password": "pw"}}), env)[1] == []


def test_matrix_is_served_from_the_environment_with_a_password_alone() -> None:
    from onethread.config import Config

    env = {"MATRIX_HOMESERVER": "https://m.org", "MATRIX_USER_ID": BOT, "MATRIX_PASSWORD": "pw"}
    assert "matrix" in Config().platform_options(env)
    assert "matrix" not in Config().platform_options({**env, "MATRIX_PASSWORD": ""})
