"""The pairing store: code format, the bounds on its tables, and files from 0.1."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onethread.bots.policy import approve_code
from onethread.errors import CorruptStoreError, SchemaVersionError, StoreError
from onethread.session.pairing import (
    ALPHABET,
    CODE_LENGTH,
    EXPIRED_KEPT,
    LOCKOUT_WINDOW,
    PRUNE_BATCH,
    PairingStore,
    format_code,
    generate_code,
    normalize_code,
)

DATA = Path(__file__).parent / "data"
# The plaintext codes tests/data/make_pairing_0_1_0.py printed when it made the file.
LEGACY = {"live_link": "XWC43NR5", "expired_link": "8KQ633NV", "used_link": "V6RTXFSN",
          "live_approval": "KX2G9C4V"}  # fmt: skip
LEGACY_MADE_AT = 1796530096.26  # when the file was made (its rows' `created`)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def legacy_db(tmp_path: Path) -> Path:
    path = tmp_path / "pairing.db"
    shutil.copy(DATA / "pairing-0.1.0.db", path)
    return path


# -- the code format -------------------------------------------------------------


def test_generated_codes_have_twelve_characters_and_a_digit() -> None:
    codes = {generate_code() for _ in range(2000)}
    assert len(codes) == 2000
    assert all(len(c) == CODE_LENGTH == 12 and set(c) <= set(ALPHABET) for c in codes)
    assert all(any(ch.isdigit() for ch in c) for c in codes)


def test_codes_are_shown_in_groups_of_four() -> None:
    assert format_code("K7QW2MXPH4RT") == "K7QW-2MXP-H4RT"
    assert format_code("K7QW2MXP") == "K7QW-2MXP"


@given(
    st.text(alphabet=ALPHABET, min_size=12, max_size=12),
    st.sampled_from(["", "-", " ", " - "]),
    st.booleans(),
)
def test_normalize_forgives_dashes_spaces_and_case(code: str, sep: str, lower: bool) -> None:
    typed = sep.join(code[i : i + 4] for i in range(0, 12, 4))
    assert normalize_code(typed.lower() if lower else typed) == code
    assert normalize_code(format_code(code)) == code


@given(st.text(max_size=20))
def test_normalize_accepts_only_codes(text: str) -> None:
    code = normalize_code(text)
    if code is not None:
        assert len(code) in (12, 8) and set(code) <= set(ALPHABET)


def test_a_short_or_long_code_is_not_a_code() -> None:
    assert normalize_code("K7QW-2MXP-H4R") is None
    assert normalize_code("K7QW-2MXP-H4RTX") is None
    assert normalize_code("K7QW-2MXP-H4R0") is None  # 0 is not in the alphabet


def test_issued_code_redeems_typed_any_way(tmp_path: Path) -> None:
    store = PairingStore(tmp_path / "pairing.db")
    code = store.issue("link", "telegram", "t1")
    assert code is not None and len(code) == 12
    typed = " " + format_code(code).lower().replace("-", " - ") + " "
    result = store.redeem("link", typed, by_platform="discord", by_user_id="d1")
    assert result.code is not None and result.code.user_id == "t1"


# -- a file made by onethread 0.1 -----------------------------------------------------


def test_a_file_from_0_1_opens_and_its_live_codes_still_redeem(legacy_db: Path) -> None:
    store = PairingStore(legacy_db, clock=Clock(LEGACY_MADE_AT + 60))  # a minute after 0.1 ran
    assert store.legacy_codes_live("link") and store.legacy_codes_live("approve")
    live = store.redeem("link", LEGACY["live_link"], by_platform="discord", by_user_id="d1")
    assert live.code is not None
    assert (live.code.platform, live.code.user_id, live.code.user_name, live.code.name) == (
        "telegram", "t-legacy", "Legacy Lee", ""
    )  # fmt: skip
    assert not store.legacy_codes_live("link")  # that was the only one
    typed = format_code(LEGACY["expired_link"]).lower()
    assert store.redeem("link", typed, by_platform="d", by_user_id="2").error == "expired"
    assert store.redeem("link", LEGACY["used_link"], by_platform="d", by_user_id="3").error == (
        "used"
    )
    assert approve_code(store, "telegram", LEGACY["live_approval"]) == ("telegram", "stranger")
    assert store.is_approved("telegram", "friend") and store.is_approved("telegram", "stranger")
    # New codes on the old file are the new kind.
    code = store.issue("link", "telegram", "t9")
    assert code is not None and len(code) == 12
    store.close()
    meta = dict(sqlite3.connect(legacy_db).execute("SELECT k, v FROM meta").fetchall())
    assert meta["schema"] == "2"


def test_a_file_from_0_1_is_pruned_like_any_other(legacy_db: Path) -> None:
    clock = Clock(LEGACY_MADE_AT + 2 * LOCKOUT_WINDOW)
    store = PairingStore(legacy_db, clock=clock)
    assert store.counts() == (4, 2)
    assert store.issue("link", "telegram", "t9") is not None  # a write: prunes first
    # The expired code and the two old failures are gone; the live ones stay.
    assert store.counts() == (4, 0)
    assert store.redeem("link", LEGACY["expired_link"], by_platform="d", by_user_id="1").error == (
        "invalid"
    )


def test_opening_a_0_1_file_twice_migrates_once(legacy_db: Path) -> None:
    first, second = PairingStore(legacy_db), PairingStore(legacy_db)
    assert first.redeem("link", LEGACY["live_link"]).code is not None
    assert second.redeem("link", LEGACY["live_link"]).error == "used"


def test_a_file_from_a_newer_onethread_is_refused_untouched(legacy_db: Path) -> None:
    conn = sqlite3.connect(legacy_db)
    conn.execute("INSERT INTO meta (k, v) VALUES ('schema', '3')")
    conn.commit()
    conn.close()
    before = legacy_db.read_bytes()
    with pytest.raises(SchemaVersionError, match="upgrade onethread"):
        PairingStore(legacy_db)
    assert legacy_db.read_bytes() == before


def test_a_file_that_is_not_a_database_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "pairing.db"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(CorruptStoreError):
        PairingStore(path)


# -- bounds -----------------------------------------------------------------------------


def test_the_global_cap_refuses_new_codes_clearly() -> None:
    clock = Clock()
    store = PairingStore(":memory:", max_codes=5, clock=clock)
    for i in range(5):
        assert store.try_issue("link", "telegram", f"u{i}").code is not None
    refused = store.try_issue("link", "telegram", "late")
    assert refused.code is None and refused.refused == "full"
    # Expired codes count until EXPIRED_KEPT has passed, then they make room.
    clock.now += 600 + EXPIRED_KEPT + 1
    assert store.try_issue("link", "telegram", "late").code is not None


def test_per_account_and_pending_limits_are_named() -> None:
    store = PairingStore(":memory:")
    for _ in range(3):
        assert store.issue("link", "telegram", "t1") is not None
    assert store.try_issue("link", "telegram", "t1").refused == "account"
    assert store.try_issue("approve", "telegram", "a", max_live=1, max_pending=1).code
    assert store.try_issue("approve", "telegram", "b", max_live=1, max_pending=1).refused == (
        "pending"
    )


def test_too_many_failures_in_all_closes_redemption_for_accounts() -> None:
    clock = Clock()
    store = PairingStore(":memory:", max_failures_total=10, clock=clock)
    good = store.issue("link", "telegram", "t1", ttl=2 * LOCKOUT_WINDOW)
    assert good is not None
    for i in range(10):
        assert store.redeem("link", "AAAA-AAAA-AAA2", by_platform="d", by_user_id=f"x{i}").error
    # Fail closed: even a good code is not looked at, so guesses cannot continue.
    assert store.redeem("link", good, by_platform="discord", by_user_id="d1").error == "busy"
    assert store.counts()[1] == 10
    assert store.redeem("approve", "AAAA-AAAA-AAA2").error == "invalid"  # the owner's CLI
    clock.now += LOCKOUT_WINDOW + 1
    assert store.redeem("link", good, by_platform="discord", by_user_id="d1").code is not None


def test_pruning_is_bounded_per_write() -> None:
    clock = Clock()
    store = PairingStore(":memory:", clock=clock)
    rows = [(f"h{i}", "link", "t", f"u{i}", clock.now - 10_000, clock.now - 5_000)
            for i in range(3 * PRUNE_BATCH + 7)]  # fmt: skip
    store._conn.executemany(
        "INSERT INTO codes (hash, purpose, platform, user_id, created, expires) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    store._conn.executemany(
        "INSERT INTO failures VALUES ('d', ?, ?)",
        [(f"u{i}", clock.now - 2 * LOCKOUT_WINDOW) for i in range(2 * PRUNE_BATCH)],
    )
    store.redeem("link", "nothing")  # one write
    assert store.counts() == (2 * PRUNE_BATCH + 7, PRUNE_BATCH)
    for _ in range(3):
        store.approve("telegram", "x")  # any write prunes
    assert store.counts() == (0, 0)


def test_a_flood_from_10000_accounts_leaves_the_tables_bounded() -> None:
    """Every account asks for codes and guesses; the tables never pass their caps."""
    clock = Clock()
    max_codes, max_failures = 500, 2_000
    store = PairingStore(":memory:", max_codes=max_codes, max_failures_total=max_failures,
                         clock=clock)  # fmt: skip
    peak = (0, 0)
    for i in range(10_000):
        clock.now += 0.5  # 10,000 accounts over about 83 minutes
        store.issue("link", "telegram", f"attacker-{i}")
        store.redeem("link", "AAAA-BBBB-CCC2", by_platform="discord", by_user_id=f"a{i}")
        if i % 50 == 0:
            counts = store.counts()
            peak = (max(peak[0], counts[0]), max(peak[1], counts[1]))
    codes, failures = store.counts()
    assert max(peak[0], codes) <= max_codes and max(peak[1], failures) <= max_failures
    assert peak[0] == max_codes and peak[1] == max_failures  # the flood did reach the caps
    # Once it is over, ordinary writes drain both tables, PRUNE_BATCH rows at a time.
    clock.now += LOCKOUT_WINDOW + 2 * EXPIRED_KEPT
    for _ in range(max_failures // PRUNE_BATCH):
        store.approve("telegram", "owner")
    assert store.counts() == (0, 0)


def test_the_readme_shows_codes_as_the_bot_sends_them() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    shown = re.findall(r"\b[A-Z2-9]{4}(?:-[A-Z2-9]{4})+\b", readme)
    shape = re.compile(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}")
    assert shown and shape.fullmatch(format_code(generate_code()))
    for code in shown:
        assert shape.fullmatch(code) and normalize_code(code) == code.replace("-", "")
    assert "/link k7qw2mxph4rt" in readme and normalize_code("k7qw2mxph4rt") == "K7QW2MXPH4RT"


def test_a_file_that_cannot_be_opened_is_a_store_error(tmp_path: Path) -> None:
    folder = tmp_path / "pairing.db"
    folder.mkdir()  # a folder where the file should be
    with pytest.raises(StoreError, match="cannot open the pairing database"):
        PairingStore(folder)
