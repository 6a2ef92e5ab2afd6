"""The Signal adapter's pure parts: envelopes as signal-cli writes them -> ``Inbound``, and
signal-cli's JSON-RPC errors -> ``onethread.errors``."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from onethread.errors import (
    BadRequest,
    ConfigError,
    OutcomeUnknown,
    PlatformUnavailable,
    RetryAfter,
)
from onethread.platforms.signal_events import (
    SignalMessage,
    envelope_of,
    is_group_id,
    normalize_envelope,
)
from onethread.platforms.signal_rpc import map_rpc_error, parse_endpoint

BOT = "+15550000001"
BOT_UUID = "0c5e7a3b-1111-4c1e-9a57-5f0d8d0b0001"
ALICE = {"number": "+15550001111", "uuid": "7d9a1a52-2222-4b7e-8d1b-3c2f0e9a0002", "name": "Alice"}
GROUP = base64.b64encode(bytes(range(32))).decode()


def envelope(data: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """An envelope as ``JsonMessageEnvelope`` serialises it (nulls included)."""
    env: dict[str, Any] = {
        "source": ALICE["number"], "sourceNumber": ALICE["number"], "sourceUuid": ALICE["uuid"],
        "sourceName": ALICE["name"], "sourceDevice": 1, "timestamp": 1700000000123,
        "serverReceivedTimestamp": 1700000000200, "serverDeliveredTimestamp": 1700000000300,
    }  # fmt: skip
    if data is not None:
        env["dataMessage"] = {"timestamp": 1700000000123, "message": None, "expiresInSeconds": 0,
                              "isExpirationUpdate": False, "viewOnce": False, **data}  # fmt: skip
    env.update(extra)
    return env


def norm(env: dict[str, Any]) -> Any:
    return normalize_envelope(env, account=BOT, self_uuid=BOT_UUID)


def test_a_dm_with_text() -> None:
    msg = norm(envelope({"message": "hi there"}))
    assert (msg.platform, msg.chat_type, msg.chat_id) == ("signal", "dm", ALICE["uuid"])
    assert (msg.user_id, msg.user_name, msg.chat_name) == (ALICE["uuid"], "Alice", "Alice")
    assert (msg.text, msg.message_id, msg.mentions_bot) == ("hi there", "1700000000123", True)
    assert not msg.from_self and isinstance(msg.raw, SignalMessage)


def test_a_hidden_number_and_no_profile_name() -> None:
    env = envelope({"message": "x"}, source=ALICE["uuid"], sourceNumber=None, sourceName=None)
    msg = norm(env)
    assert msg.user_id == ALICE["uuid"] and msg.user_name == ""


@pytest.mark.parametrize(
    "extra",
    [
        {"receiptMessage": {"when": 1, "isDelivery": True, "isRead": False, "isViewed": False,
                            "timestamps": [1]}},
        {"typingMessage": {"action": "STARTED", "timestamp": 1}},
        {"syncMessage": {"sentMessage": {"destination": None, "destinationNumber": None,
                                         "destinationUuid": None, "timestamp": 1,
                                         "message": "from my phone", "expiresInSeconds": 0,
                                         "isExpirationUpdate": False, "viewOnce": False}}},
        {"editMessage": {"targetSentTimestamp": 1, "dataMessage": {"timestamp": 2,
                                                                   "message": "edited"}}},
        {"callMessage": {"offerMessage": {"id": 1, "type": "AUDIO_CALL"}}},
    ],
    ids=["receipt", "typing", "sync", "edit", "call"],
)  # fmt: skip
def test_envelopes_that_are_no_message(extra: dict[str, Any]) -> None:
    assert norm(envelope(None, **extra)) is None


@pytest.mark.parametrize(
    "data",
    [
        {"reaction": {"emoji": "👍", "targetAuthor": BOT, "targetAuthorNumber": BOT,
                      "targetAuthorUuid": BOT_UUID, "targetSentTimestamp": 5, "isRemove": False}},
        {"remoteDelete": {"timestamp": 5}},
        {"groupInfo": {"groupId": GROUP, "groupName": "g", "revision": 4, "type": "UPDATE"}},
        {"message": "   "},
    ],
    ids=["reaction", "delete", "group-update", "blank"],
)  # fmt: skip
def test_data_messages_that_are_no_message(data: dict[str, Any]) -> None:
    assert norm(envelope(data)) is None


def test_own_account_is_marked() -> None:
    env = envelope({"message": "me"}, sourceNumber=BOT, source=BOT, sourceUuid=BOT_UUID)
    assert norm(env).from_self
    env = envelope({"message": "me"}, sourceNumber=None, source=BOT_UUID, sourceUuid=BOT_UUID)
    assert norm(env).from_self


def group(data: dict[str, Any]) -> dict[str, Any]:
    info = {"groupId": GROUP, "groupName": "Book club", "revision": 3, "type": "DELIVER"}
    return envelope({"groupInfo": info, **data})


def test_group_message_not_addressed() -> None:
    msg = norm(group({"message": "hello all"}))
    assert (msg.chat_type, msg.chat_id, msg.chat_name) == ("group", GROUP, "Book club")
    assert not msg.mentions_bot


def mention(uuid: str, number: str | None, start: int) -> dict[str, Any]:
    return {"name": number or uuid, "number": number, "uuid": uuid, "start": start, "length": 1}


def test_mentions_are_counted_in_utf16_and_a_leading_bot_mention_is_removed() -> None:
    # "🎉" is two UTF-16 code units: Signal's offsets count those, not code points.
    text = "\ufffc 🎉 ask \ufffc about it"
    mentions = [mention(BOT_UUID, None, 0), mention(ALICE["uuid"], ALICE["number"], 9)]
    msg = norm(group({"message": text, "mentions": mentions}))
    assert msg.mentions_bot
    assert msg.text == f"🎉 ask @{ALICE['number']} about it"


def test_a_mention_by_number_when_the_uuid_is_unknown() -> None:
    env = group({"message": "hey \ufffc", "mentions": [mention("x-y", BOT, 4)]})
    msg = normalize_envelope(env, account=BOT, self_uuid="")
    assert msg.mentions_bot and msg.text == f"hey @{BOT}"


def test_a_reply_to_the_bot_addresses_it_and_a_command_does_too() -> None:
    quote = {"id": 5, "author": BOT, "authorNumber": BOT, "authorUuid": BOT_UUID,
             "text": "earlier", "attachments": []}  # fmt: skip
    assert norm(group({"message": "and then?", "quote": quote})).mentions_bot
    other = {**quote, "author": ALICE["number"], "authorNumber": ALICE["number"],
             "authorUuid": ALICE["uuid"]}  # fmt: skip
    assert not norm(group({"message": "and then?", "quote": other})).mentions_bot
    assert norm(group({"message": "/whoami"})).mentions_bot


def test_attachments_are_described_and_the_long_text_one_skipped() -> None:
    def att(content_type: str, filename: str | None, ident: str) -> dict[str, Any]:
        return {"contentType": content_type, "filename": filename, "id": ident, "size": 10,
                "width": None, "height": None, "caption": None, "uploadTimestamp": 1}  # fmt: skip

    msg = norm(envelope({
        "message": "look",
        "attachments": [att("image/jpeg", None, "a.jpg"), att("text/x-signal-plain", None, "b.txt"),
                        att("video/mp4", "clip.mp4", "c.mp4"), att("audio/mpeg", "song.mp3", "d")],
    }))  # fmt: skip
    assert [(a.kind, a.mime, a.name) for a in msg.attachments] == [
        ("image", "image/jpeg", ""), ("video", "video/mp4", "clip.mp4"),
        ("audio", "audio/mpeg", "song.mp3"),
    ]  # fmt: skip
    assert [f[0] for f in msg.raw.files] == ["a.jpg", "c.mp4", "d"]


def test_notification_shapes() -> None:
    env = envelope({"message": "x"})
    assert envelope_of({"envelope": env, "account": BOT}) == (env, BOT, None)
    wrapped = {"subscription": 0, "result": {"envelope": env, "account": BOT}}
    assert envelope_of(wrapped) == (env, BOT, None)
    assert envelope_of({"subscription": 0, "result": None}) is None
    assert envelope_of(["not", "a", "mapping"]) is None


def test_group_ids_and_people_are_told_apart() -> None:
    assert is_group_id(GROUP)
    assert is_group_id(base64.b64encode(bytes(16)).decode())  # an old (v1) group
    for person in (ALICE["uuid"], "+4915112345678", "+491511234567890", "PNI:" + ALICE["uuid"],
                   "u:alice.01"):  # fmt: skip
        assert not is_group_id(person)


def test_endpoints() -> None:
    assert str(parse_endpoint("tcp://127.0.0.1:7583")) == "tcp://127.0.0.1:7583"
    assert str(parse_endpoint("unix:///run/signal-cli/socket")) == "unix:///run/signal-cli/socket"
    for bad in ("127.0.0.1:7583", "http://127.0.0.1:7583", "tcp://host", "tcp://h:notaport"):
        with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
            parse_endpoint(bad)


def send_error(code: int, message: str, *types: tuple[str, int | None]) -> dict[str, Any]:
    results = []
    for kind, retry in types:
        r: dict[str, Any] = {"recipientAddress": {"uuid": ALICE["uuid"], "number": ALICE["number"],
                                                  "username": None}, "type": kind}  # fmt: skip
        if retry is not None:
            r["retryAfterSeconds"] = retry
        results.append(r)
    data = {"response": {"timestamp": 1, "results": results}} if results else None
    return {"code": code, "message": message, "data": data}


@pytest.mark.parametrize(
    ("error", "kind", "text"),
    [
        (send_error(-5, "Failed to send message due to rate limiting",
                    ("RATE_LIMIT_FAILURE", 7), ("RATE_LIMIT_FAILURE", 30)), RetryAfter, "30s"),
        (send_error(-5, "Failed to send message due to rate limiting"), RetryAfter, "10s"),
        (send_error(-1, "Failed to send message", ("UNREGISTERED_FAILURE", None)), BadRequest,
         "+15550001111 is not registered on Signal"),
        (send_error(-1, "Failed to send message", ("NETWORK_FAILURE", None)),
         PlatformUnavailable, "network failure"),
        (send_error(-4, "Failed to send message due to untrusted identities",
                    ("IDENTITY_FAILURE", None)), BadRequest, "safety number"),
        (send_error(-1, "The user +15550001111 is not registered."), BadRequest,
         "is not registered"),
        (send_error(-3, "Unable to check if users are registered"), PlatformUnavailable,
         "Unable to check"),
        (send_error(-32603, "Failed to send message: timeout (IOException)"), OutcomeUnknown,
         "IOException"),
        (send_error(-32601, "Method not implemented"), BadRequest, "upgrade signal-cli"),
        (send_error(-32602, "Method requires valid account parameter"), BadRequest,
         "account parameter"),
        (send_error(-6, "Captcha rejected"), BadRequest, "CAPTCHA"),
    ],
    ids=["rate-limit", "rate-limit-no-wait", "unregistered", "network", "untrusted",
         "unregistered-number", "io", "internal", "method", "params", "captcha"],
)  # fmt: skip
def test_errors_map_by_code_and_result_type(error: dict[str, Any], kind: type, text: str) -> None:
    mapped = map_rpc_error("send", error, platform="signal")
    assert type(mapped) is kind and text in str(mapped) and mapped.platform == "signal"
    if isinstance(mapped, RetryAfter):
        assert mapped.retry_after == float(text.rstrip("s"))
