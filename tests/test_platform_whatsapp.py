"""WhatsApp: payload normalising, the signature, and the Graph API calls against the fake.

The adapter's real aiohttp client talks to :class:`fake_whatsapp.FakeGraph`
on 127.0.0.1; webhook payloads are in the Cloud API's shape.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fake_whatsapp import FakeGraph, message_payload, status_payload
from onethread.errors import (
    BadRequest,
    ConfigError,
    DeliveryWindowClosed,
    OutcomeUnknown,
    PlatformAuthError,
    PlatformUnavailable,
    RetryAfter,
)
from onethread.platforms.base import Inbound
from onethread.platforms.delivery import RetryPolicy
from onethread.platforms.ingress import Ingress
from onethread.platforms.whatsapp import WhatsAppAdapter
from onethread.platforms.whatsapp_events import (
    Aliases,
    parse_webhook,
    sign,
    signature_ok,
)
from onethread.platforms.whatsapp_graph import map_whatsapp_errors
from onethread.session.attachments import Attachment

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=1.0)


def only(payload: dict[str, Any], aliases: Aliases | None = None) -> Inbound:
    inbound, statuses = parse_webhook(payload, aliases=aliases)
    assert len(inbound) == 1 and not statuses
    return inbound[0]


# -- normalising -------------------------------------------------------------------


def test_text_message_names_the_sender_by_wa_id() -> None:
    msg = only(message_payload("15551234567", "hi there", name="Ana", message_id="wamid.A1"))
    assert (msg.platform, msg.chat_id, msg.user_id, msg.chat_type) == (
        "whatsapp", "15551234567", "15551234567", "dm")  # fmt: skip
    assert (msg.text, msg.user_name, msg.message_id, msg.mentions_bot) == (
        "hi there", "Ana", "wamid.A1", True)  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "content", "expected"),
    [
        ("image", {"id": "m1", "mime_type": "image/jpeg", "caption": "look"},
         ("image", "image/jpeg", "", "look")),
        ("audio", {"id": "m2", "mime_type": "audio/ogg; codecs=opus", "voice": True},
         ("voice", "audio/ogg", "", "")),
        ("audio", {"id": "m3", "mime_type": "audio/mpeg"}, ("audio", "audio/mpeg", "", "")),
        ("video", {"id": "m4", "mime_type": "video/mp4", "caption": "clip"},
         ("video", "video/mp4", "", "clip")),
        ("document", {"id": "m5", "mime_type": "application/pdf", "filename": "a.pdf"},
         ("file", "application/pdf", "a.pdf", "")),
        ("sticker", {"id": "m6", "mime_type": "image/webp", "animated": False},
         ("sticker", "image/webp", "", "")),
    ],
)  # fmt: skip
def test_media_messages_become_attachments(
    kind: str, content: dict[str, Any], expected: tuple[str, str, str, str]
) -> None:
    msg = only(message_payload("15551234567", kind=kind, content=content))
    (attachment,) = msg.attachments
    assert (attachment.kind, attachment.mime, attachment.name, msg.text) == expected
    assert msg.raw[kind]["id"] == content["id"]


def test_location_interactive_button_and_contacts_become_text() -> None:
    loc = only(message_payload("1", kind="location", content={
        "latitude": 52.52, "longitude": 13.405, "name": "Alex", "address": "Berlin"}))  # fmt: skip
    assert loc.text.startswith("[Location: Alex, Berlin (52.52, 13.405)")
    button = only(
        message_payload(
            "1",
            kind="interactive",
            content={
                "type": "button_reply",
                "button_reply": {"id": "yes-1", "title": "Yes please"},
            },
        )
    )
    assert button.text == "Yes please"
    listed = only(message_payload("1", kind="interactive", content={
        "type": "list_reply",
        "list_reply": {"id": "r2", "title": "Room 2", "description": "sea view"}}))  # fmt: skip
    assert listed.text == "Room 2 (sea view)"
    quick = only(message_payload("1", kind="button", content={"text": "Stop", "payload": "S"}))
    assert quick.text == "Stop"
    card = only(message_payload("1", kind="contacts", content=[
        {"name": {"formatted_name": "Bo"}, "phones": [{"phone": "+1 555"}]}]))  # fmt: skip
    assert card.text == "[Contact: Bo +1 555]"


def test_reactions_unsupported_and_empty_messages_start_nothing() -> None:
    for kind, content in [
        ("reaction", {"message_id": "wamid.X", "emoji": "👍"}),
        ("unsupported", {}),
        ("system", {"body": "changed number"}),
        ("text", {"body": ""}),
    ]:
        payload = message_payload("1", kind=kind, content=content)
        if kind == "text":
            payload["entry"][0]["changes"][0]["value"]["messages"][0]["text"] = {"body": ""}
        assert parse_webhook(payload) == ([], [])


def test_group_messages_are_never_answered_as_dms() -> None:
    payload = message_payload("1", "hi all")
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["group_id"] = "120363012345@g.us"
    assert parse_webhook(payload) == ([], [])


def test_statuses_are_parsed_never_messages() -> None:
    inbound, statuses = parse_webhook(status_payload("wamid.S", "failed", "1555",
                                                     error_code=131047))  # fmt: skip
    assert inbound == []
    (status,) = statuses
    assert (status.message_id, status.status, status.recipient, status.error_code) == (
        "wamid.S", "failed", "1555", 131047)  # fmt: skip


def test_another_phone_number_of_the_app_is_left_out() -> None:
    payload = message_payload("1", "hi", phone_number_id="999")
    assert parse_webhook(payload, phone_number_id="106540352242922") == ([], [])
    assert len(parse_webhook(payload, phone_number_id="999")[0]) == 1


def test_business_scoped_ids_keep_one_id_per_person() -> None:
    aliases = Aliases()
    bsuid = "US.13491208655302741918"
    # Before Meta knew the pair: a BSUID-only sender is the BSUID.
    assert only(message_payload(None, "a", user_id=bsuid)).user_id == bsuid
    # Both ids: the wa_id wins, and the pair is learned ...
    assert only(message_payload("15550001", "b", user_id=bsuid), aliases).user_id == "15550001"
    # ... so a later BSUID-only message (number hidden behind a username) is the same person.
    later = only(message_payload(None, "c", user_id=bsuid, name="@ana"), aliases)
    assert (later.user_id, later.chat_id, later.user_name) == ("15550001", "15550001", "@ana")


def test_signature_is_metas_hmac_of_the_raw_body() -> None:
    body = b'{"object":"whatsapp_business_account"}'
    good = sign(body, "s3cret")
    assert good.startswith("sha256=") and len(good) == 7 + 64
    assert signature_ok(body, good, "s3cret")
    assert not signature_ok(body + b" ", good, "s3cret")  # the raw bytes, not the JSON
    assert not signature_ok(body, sign(body, "other"), "s3cret")
    assert not signature_ok(body, None, "s3cret")
    assert not signature_ok(body, good.removeprefix("sha256="), "s3cret")
    assert not signature_ok(body, good, "")  # no secret configured: nothing passes


# -- Graph API against the fake ------------------------------------------------------


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    fake = FakeGraph()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def _noop(msg: Inbound) -> None:
    return None


def make(graph: FakeGraph | None = None, **options: Any) -> WhatsAppAdapter:
    """An adapter with an HTTP server to mount its webhook on (port 0)."""
    wa = WhatsAppAdapter(**{**(graph.options() if graph else {}), **options})
    wa.ingress = Ingress(port=0)
    return wa


@pytest.fixture
async def adapter(graph: FakeGraph) -> AsyncIterator[WhatsAppAdapter]:
    wa = make(graph, retry_policy=FAST)
    await wa.start(_noop)
    try:
        yield wa
    finally:
        await wa.stop()


async def test_missing_credentials_name_the_variables(graph: FakeGraph) -> None:
    wa = make(token="t")
    with pytest.raises(ConfigError, match="WHATSAPP_PHONE_NUMBER_ID.*WHATSAPP_APP_SECRET"):
        await wa.start(_noop)
    alone = WhatsAppAdapter(**graph.options())  # no HTTP server to take webhooks on
    with pytest.raises(ConfigError, match="webhook.*BotOS"):
        await alone.start(_noop)
    with pytest.raises(ConfigError, match="WHATSAPP_API_BASE_URL"):
        WhatsAppAdapter(base_url="graph.facebook.com")


async def test_wrong_token_is_an_auth_error_with_graph_data(graph: FakeGraph) -> None:
    wa = make(graph, token="EAAGwrong")
    with pytest.raises(PlatformAuthError) as info:
        await wa.start(_noop)
    assert wa.ingress is not None and not wa.ingress.serving and not wa.ingress.webhooks()
    assert (info.value.code, info.value.subcode) == (190, 463)
    assert info.value.trace_id.startswith("A")
    assert wa.graph is None  # nothing left open


async def test_text_send_is_whatsapp_markup_and_split_at_4096(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    ids = await adapter.send("15551234567", "**Hello** _you_, see [docs](https://x.y)")
    assert graph.texts() == ["*Hello* _you_, see docs (https://x.y)"]
    assert ids == [graph.sent[0].id] and graph.sent[0].to == "15551234567"
    long = ("word " * 2000).strip()  # 9,999 characters
    await adapter.send("15551234567", long)
    parts = graph.texts()[1:]
    assert len(parts) == 3 and all(len(p) <= 4096 for p in parts)
    assert " ".join(parts) == long


async def test_a_bsuid_is_sent_to_as_recipient(adapter: WhatsAppAdapter, graph: FakeGraph) -> None:
    await adapter.send("US.13491208655302741918", "hi")
    assert graph.sent[0].by_recipient and graph.sent[0].to == "US.13491208655302741918"
    await adapter.send("15551234567", "hi")
    assert not graph.sent[1].by_recipient


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [(130429, 400, RetryAfter), (131056, 400, RetryAfter), (190, 401, PlatformAuthError),
     (131047, 400, DeliveryWindowClosed), (100, 400, BadRequest),
     (131000, 500, PlatformUnavailable), (131026, 400, BadRequest)],
)  # fmt: skip
async def test_graph_errors_are_mapped_once(
    adapter: WhatsAppAdapter, graph: FakeGraph, code: int, status: int, error: type[Exception]
) -> None:
    graph.fail_next(code, 10, subcode=2494055, status=status, retry_after=5.0)
    with pytest.raises(error) as info:
        await adapter.do_send("15551234567", "hi")
    exc = info.value
    assert isinstance(exc, error)
    assert getattr(exc, "code", None) == code and getattr(exc, "subcode", None) == 2494055
    assert getattr(exc, "trace_id", "").startswith("A")
    assert isinstance(exc.__cause__, Exception)  # chained, from the one mapping place
    if isinstance(exc, RetryAfter):
        assert exc.retry_after == 5.0
    if isinstance(exc, DeliveryWindowClosed):
        assert exc.recipient == "15551234567"


async def test_rate_limit_is_retried_then_sent(adapter: WhatsAppAdapter, graph: FakeGraph) -> None:
    graph.fail_next(130429, 2, retry_after=0.01)
    await adapter.send("15551234567", "through at last")
    assert graph.texts() == ["through at last"]


async def test_a_send_that_times_out_is_not_repeated(graph: FakeGraph) -> None:
    wa = make(graph, retry_policy=FAST, timeout=0.3)
    await wa.start(_noop)
    graph.latency = 1.0  # Graph takes the message, answers too late
    try:
        with pytest.raises(OutcomeUnknown):
            await wa.send("15551234567", "once")
        await graph.wait_for(lambda: len(graph.sent) == 1, what="the late send")
    finally:
        graph.latency = 0.0
        await wa.stop()
    assert graph.texts() == ["once"]  # may have arrived: never sent twice


async def test_connection_refused_is_unavailable() -> None:
    wa = make(token="t", phone_number_id="1", app_secret="s", verify_token="v",
              base_url="http://127.0.0.1:9/v22.0")  # fmt: skip
    with pytest.raises(PlatformUnavailable, match=r"phone number id at http://127\.0\.0\.1:9/v22"):
        await wa.start(_noop)


async def test_while_graph_is_unreachable_the_webhook_says_not_connected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under `onethread run` the server already listens while the adapter retries
    its Graph check: Meta's verification GET gets 503 naming the cause, not a 404
    that reads like a wrong callback URL."""
    import aiohttp

    wa = make(token="t", phone_number_id="1", app_secret="s", verify_token="v",
              base_url="http://127.0.0.1:9/v22.0")  # fmt: skip
    assert wa.ingress is not None
    await wa.ingress.acquire()  # BotOS starts the server before the platforms
    try:
        with pytest.raises(PlatformUnavailable):
            await wa.start(_noop)
        url = wa.ingress.url + "webhooks/whatsapp"
        query = {"hub.mode": "subscribe", "hub.verify_token": "v", "hub.challenge": "42"}
        async with aiohttp.ClientSession() as http, http.get(url, params=query) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "30"
            error = (await resp.json())["error"]
        assert "whatsapp platform is configured but not connected" in error
        assert "server log" in error
        assert "refused GET /webhooks/whatsapp with 503" in caplog.text
    finally:
        await wa.ingress.release()


async def test_map_errors_keeps_other_exceptions() -> None:
    with pytest.raises(KeyError), map_whatsapp_errors("x"):
        raise KeyError("not ours")


async def test_media_download_fetches_the_graph_url_with_the_token(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    media_id = graph.add_media(b"\x89PNG fake", "image/png")
    msg = only(message_payload("15551234567", kind="image",
                               content={"id": media_id, "mime_type": "image/png"}))  # fmt: skip
    assert await adapter.download(msg, 0, max_bytes=1000) == b"\x89PNG fake"
    assert graph.downloads == [media_id]
    from onethread.errors import AttachmentRefused

    with pytest.raises(AttachmentRefused):
        await adapter.download(msg, 0, max_bytes=4)


async def test_media_url_on_a_foreign_host_is_not_fetched(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    media_id = graph.add_media(b"x", "image/png")
    adapter.base_url = adapter.base_url.replace("127.0.0.1", "localhost")  # Graph "elsewhere"
    assert adapter.graph is not None
    adapter.graph.base_url = graph.base_url
    msg = only(message_payload("1", kind="image", content={"id": media_id}))
    with pytest.raises(BadRequest, match="not Meta's"):
        await adapter.download(msg, 0, max_bytes=1000)
    assert graph.downloads == []


async def test_files_are_uploaded_then_sent_by_id(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    png = Attachment("image", "image/png", "chart.png", caption="the chart")
    pdf = Attachment("file", "application/pdf", "report.pdf")
    await adapter.send_files("15551234567", [(png, b"\x89PNG..."), (pdf, b"%PDF-1.7")])
    image, doc = graph.sent
    assert (image.type, image.media["caption"]) == ("image", "the chart")
    assert graph.uploads[image.media["id"]] == (b"\x89PNG...", "image/png", "chart.png")
    assert (doc.type, doc.media["filename"]) == ("document", "report.pdf")
    big = Attachment("image", "image/png", "huge.png")
    await adapter.send_files("15551234567", [(big, b"x" * (5 * 2**20 + 1))])
    assert graph.sent[-1].type == "document"  # over the 5 MB image limit


async def test_typing_marks_the_last_message_read(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    body, _ = graph.signed(message_payload("15551234567", "hi", message_id="wamid.IN1"))
    adapter.parse(body)
    await adapter.do_typing("15551234567")
    assert [(r.message_id, r.typing) for r in graph.reads] == [("wamid.IN1", True)]
    await adapter.do_typing("15550000000")  # never wrote: nothing to mark
    assert len(graph.reads) == 1


async def test_statuses_are_recorded_against_the_sent_message(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    (sent_id,) = await adapter.send("15551234567", "hello")
    for state in ("sent", "delivered", "read"):
        body, _ = graph.signed(status_payload(sent_id, state, "15551234567"))
        assert adapter.parse(body) == ([], adapter.parse(body)[1])
        status = adapter.delivery_status(sent_id)
        assert status is not None and status.status == state
    assert adapter.delivery_status("wamid.unknown") is None


# -- the 24-hour window (adapter level; the BotOS level is in test_whatsapp_e2e) -------


class _Session:
    """What the adapter reads of a session manager: ``resolve`` and ``last_seen``."""

    def __init__(self, when: float | None) -> None:
        self.when = when

    def resolve(self, platform: str, user_id: str) -> str | None:
        return None

    async def last_seen(self, user: str, platform: str | None = None) -> Any:
        from onethread.session.history.base import HistoryEntry

        if self.when is None:
            return None
        return HistoryEntry("user", "hi", self.when, platform="whatsapp", chat_id="1")


class _Bot:
    def __init__(self, when: float | None) -> None:
        self.session = _Session(when)


@pytest.mark.parametrize("when", [None, time.time() - 25 * 3600])
async def test_outside_the_window_sends_nothing_and_says_why(
    adapter: WhatsAppAdapter, graph: FakeGraph, when: float | None
) -> None:
    adapter.bind(_Bot(when))
    with pytest.raises(DeliveryWindowClosed, match="24-hour") as info:
        await adapter.send("1", "reminder")
    assert info.value.last_seen == when and info.value.recipient == "1"
    assert graph.sent == []


async def test_a_message_redelivered_days_later_opens_no_window(
    adapter: WhatsAppAdapter, graph: FakeGraph
) -> None:
    adapter.bind(_Bot(None))
    old = int(time.time() - 30 * 3600)  # Meta retried this webhook for 30 hours
    body, _ = graph.signed(message_payload("1", "late", message_id="wamid.OLD", timestamp=old))
    adapter.parse(body)
    with pytest.raises(DeliveryWindowClosed):
        await adapter.send("1", "answer to an old message")
    body, _ = graph.signed(message_payload("1", "fresh", message_id="wamid.NEW"))
    adapter.parse(body)
    await adapter.send("1", "answer")
    assert graph.texts() == ["answer"]


async def test_inside_the_window_sends_text(adapter: WhatsAppAdapter, graph: FakeGraph) -> None:
    adapter.bind(_Bot(time.time() - 23 * 3600))
    await adapter.send("1", "reminder")
    assert graph.texts() == ["reminder"]


async def test_outside_the_window_a_configured_template_goes_instead_once(
    graph: FakeGraph,
) -> None:
    wa = make(graph, template="reengage", template_language="de", template_param=True,
              retry_policy=FAST)  # fmt: skip
    wa.bind(_Bot(time.time() - 30 * 3600))
    await wa.start(_noop)
    try:
        ids = await wa.send("1", ("long\n\nline " * 1500).strip())  # several chunks
    finally:
        await wa.stop()
    (template,) = graph.sent
    assert template.type == "template" and template.template["name"] == "reengage"
    assert template.template["language"] == {"code": "de"}
    (param,) = template.template["components"][0]["parameters"]
    assert "\n" not in param["text"] and len(param["text"]) <= 1000
    assert set(ids) == {template.id}
    assert wa.delivery_marks(ids) == {"delivery": "template", "template": "reengage"}
