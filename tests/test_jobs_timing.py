"""Time arithmetic of jobs with a fixed clock: parsing, cron in zones, DST both ways."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from onethread.session.jobs.timing import check_cron, latest_at_or_before, next_after, zone
from onethread.session.jobs.when import make_job, parse_every, parse_when

BERLIN = "Europe/Berlin"


def ts(*args: int, tz: str = "UTC") -> float:
    return datetime(*args, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]


def utc(t: datetime) -> tuple[int, int, int, int, int]:
    u = t.astimezone(UTC)
    return (u.year, u.month, u.day, u.hour, u.minute)


# -- reading times ------------------------------------------------------------------

NOW = ts(2026, 6, 10, 14, 0, tz=BERLIN)  # a Wednesday, 14:00 in Berlin (12:00 UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("in 10 minutes", (2026, 6, 10, 12, 10)),
        ("in 1 hour 30 minutes", (2026, 6, 10, 13, 30)),
        ("in an hour", (2026, 6, 10, 13, 0)),
        ("in 2 days", (2026, 6, 12, 12, 0)),
        ("tomorrow at 9", (2026, 6, 11, 7, 0)),
        ("tomorrow at 9:30am", (2026, 6, 11, 7, 30)),
        ("today at 17:30", (2026, 6, 10, 15, 30)),
        ("at 6pm", (2026, 6, 10, 16, 0)),
        ("at 9", (2026, 6, 11, 7, 0)),  # 09:00 has passed today: tomorrow
        ("monday at 9", (2026, 6, 15, 7, 0)),
        ("2026-07-01T09:00", (2026, 7, 1, 7, 0)),  # no offset: the person's zone
        ("2026-07-01 09:00+05:30", (2026, 7, 1, 3, 30)),
        ("2026-07-01T09:00:00Z", (2026, 7, 1, 9, 0)),
    ],
)
def test_parse_when_reads_the_promised_forms(
    text: str, expected: tuple[int, int, int, int, int]
) -> None:
    assert utc(parse_when(text, BERLIN, now=NOW)) == expected


@pytest.mark.parametrize(
    "text", ["", "soon", "in ten minutes", "tomorrow", "at 25:00", "in 5 parsecs"]
)
def test_parse_when_refuses_the_rest_and_lists_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="tomorrow at 9"):
        parse_when(text, BERLIN, now=NOW)


def test_parse_every() -> None:
    assert parse_every("10m") == timedelta(minutes=10)
    assert parse_every("every 1 day") == timedelta(days=1)
    assert parse_every("1h 30m") == timedelta(minutes=90)
    with pytest.raises(ValueError, match="10m"):
        parse_every("often")


def test_zone_and_cron_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="IANA"):
        zone("Mars/Olympus")
    with pytest.raises(ValueError, match="five fields"):
        check_cron("61 * * * *")
    assert check_cron("  0  9 * *   1-5 ") == "0 9 * * 1-5"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of at="),
        ({"at": timedelta(minutes=1), "cron": "* * * * *"}, "got at, cron"),
        ({"at": datetime(2030, 1, 1, 9)}, "no time zone"),
        ({"at": datetime(2000, 1, 1, tzinfo=UTC)}, "in the past"),
        ({"every": timedelta(seconds=59)}, "at least 1 minute"),
        ({"cron": "0 9 * *"}, "bad cron"),
    ],
)
def test_make_job_refuses_bad_schedules(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_job("alice", "hi", now=NOW, **kwargs)  # type: ignore[arg-type]


def test_make_job_first_runs() -> None:
    assert make_job("a", "x", at=timedelta(minutes=5), now=NOW).next_run.timestamp() == NOW + 300
    assert make_job("a", "x", every=timedelta(hours=1), now=NOW).next_run.timestamp() == NOW + 3600
    cron = make_job("a", "x", cron="0 9 * * *", tz="Asia/Kolkata", now=NOW)
    assert utc(cron.next_run) == (2026, 6, 11, 3, 30)  # 09:00 IST = 03:30 UTC
    with pytest.raises(ValueError, match="user"):
        make_job("", "x", at=timedelta(0), now=NOW)
    with pytest.raises(ValueError, match="text"):
        make_job("a", " ", at=timedelta(0), now=NOW)


# -- cron across daylight saving time (Europe/Berlin, 2026) ----------------------------


def walk(expr: str, tz: str, start: float, n: int) -> list[datetime]:
    job = make_job("a", "x", cron=expr, tz=tz, now=start)
    out = [job.next_run]
    for _ in range(n - 1):
        job = job.evolve(next_run=next_after(job, job.next_run.timestamp()))
        out.append(job.next_run)
    return out


def test_daily_nine_stays_nine_local_across_both_changes() -> None:
    spring = walk("0 9 * * *", BERLIN, ts(2026, 3, 28, 12, 0, tz=BERLIN), 2)
    assert [utc(t) for t in spring] == [(2026, 3, 29, 7, 0), (2026, 3, 30, 7, 0)]
    # 28 March 09:00 was CET (08:00 UTC); after the change CEST: 07:00 UTC.
    autumn = walk("0 9 * * *", BERLIN, ts(2026, 10, 24, 8, 0, tz=BERLIN), 2)
    assert [utc(t) for t in autumn] == [(2026, 10, 24, 7, 0), (2026, 10, 25, 8, 0)]
    assert all(t.astimezone(ZoneInfo(BERLIN)).hour == 9 for t in spring + autumn)


def test_spring_forward_a_time_in_the_gap_fires_once_after_the_gap() -> None:
    # 29 March 2026: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that night.
    runs = walk("30 2 * * *", BERLIN, ts(2026, 3, 28, 12, 0, tz=BERLIN), 2)
    assert [utc(t) for t in runs] == [(2026, 3, 29, 1, 0), (2026, 3, 30, 0, 30)]
    assert runs[0].astimezone(ZoneInfo(BERLIN)).strftime("%H:%M %Z") == "03:00 CEST"


def test_fall_back_a_time_in_the_repeated_hour_fires_once() -> None:
    # 25 October 2026: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    runs = walk("30 2 * * *", BERLIN, ts(2026, 10, 24, 12, 0, tz=BERLIN), 2)
    assert [utc(t) for t in runs] == [(2026, 10, 25, 0, 30), (2026, 10, 26, 1, 30)]


def test_hourly_cron_over_the_fall_back_night_skips_nothing_and_repeats_nothing() -> None:
    runs = walk("0 * * * *", BERLIN, ts(2026, 10, 25, 0, 30, tz=BERLIN), 5)
    hours = [(t - runs[0]).total_seconds() / 3600 for t in runs]
    assert hours == [0, 1, 2, 3, 4]  # one each real hour, through the repeated 02:xx


# -- occurrences, no bursts -------------------------------------------------------------


def test_latest_occurrence_and_next_one_never_burst() -> None:
    every = make_job("a", "x", every=timedelta(minutes=10), now=NOW)
    later = NOW + 600 + 3 * 3600 + 125  # three hours of occurrences missed
    latest = latest_at_or_before(every, later)
    assert latest.timestamp() == NOW + 600 + 3 * 3600  # the last one only
    assert next_after(every, later).timestamp() == latest.timestamp() + 600
    cron = make_job("a", "x", cron="*/15 * * * *", now=NOW)
    assert latest_at_or_before(cron, NOW + 7200 + 60).timestamp() == NOW + 7200
    assert latest_at_or_before(cron, NOW + 7200).timestamp() == NOW + 7200
    assert latest_at_or_before(cron, NOW).timestamp() == cron.next_run.timestamp()  # not yet due
