"""The dashboard's pure parts: numbers as people read them, the hour's level changes, the feed's
cursor and messages (riskd/dashboard/present.py)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from riskd.dashboard.app import Shared
from riskd.dashboard.present import (
    Cursor,
    alert_message,
    event_message,
    level_changes,
    money,
    money_as,
    pct,
    points,
    rate,
    settled,
    signed,
    sse,
    trouble_action,
)


def test_utilisation_reads_as_riskd_prints_it_and_says_when_equity_is_gone() -> None:
    assert pct(Decimal("0.9531")) == "95.31 %"
    assert pct(None) == "equity ≤ 0"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (Decimal("1234567.5"), "1,234,567.5"),
        (Decimal("0.125"), "0.125"),
        (Decimal("-1049896.05"), "-1,049,896.05"),
        (Decimal("1E+3"), "1,000"),
        (None, "-"),
        (Decimal("NaN"), "NaN"),
    ],
)
def test_money_keeps_its_own_scale(value: Decimal | None, shown: str) -> None:
    assert money(value) == shown


def test_a_computed_amount_reads_at_the_scale_of_the_accounts_money() -> None:
    assert money_as(Decimal("23408.46649225"), Decimal("29262.56")) == "23,408.47"
    assert money_as(Decimal("950.0"), Decimal("1000")) == "950"
    assert money_as(Decimal("0.125"), Decimal("1.00")) == "0.13"  # half away from zero
    assert money_as(None, Decimal("1")) == "-"


def test_the_hours_changes_are_what_came_in_less_what_went_out() -> None:
    rows = [("ok", "warning", 5), ("warning", "critical", 2), ("critical", "ok", 1)]
    assert level_changes(rows) == {"ok": -4, "warning": 3, "critical": 1}
    assert [signed(n) for n in (3, 0, -4)] == ["+3", "±0", "-4"]


def test_the_cursor_is_where_a_browser_is_and_only_a_cursor_is_read_back() -> None:
    start = Cursor(812, 31)
    assert str(start) == "812-31" and Cursor.parse("812-31") == start
    assert start.after("event", 813) == Cursor(813, 31)
    assert start.after("alert", 30) == start  # never backwards
    assert start.covers("event", 812) and not start.covers("alert", 32)
    for hostile in (None, "", "812", "-1-2", "a-b", "1-2-3", "9" * 50):
        assert Cursor.parse(hostile) is None, hostile


def test_a_message_is_one_sse_block_with_the_cursor_as_its_id() -> None:
    at = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
    row = {
        "id": 7, "account_id": "a1", "user_id": "u1", "from_level": "ok",
        "to_level": "critical", "utilization": Decimal("0.95"), "equity": Decimal("1000.00"),
        "used_margin": Decimal("950"), "close_request_id": 3, "created_at": at,
    }  # fmt: skip
    text = sse(event_message(row), Cursor(7, 0))
    head, data = text.split("data: ")
    assert head == "id: 7-0\nevent: event\n" and text.endswith("\n\n")
    doc = json.loads(data)
    assert doc["equity"] == "1000.00" and doc["utilization_text"] == "95.00 %"
    assert doc["created_at"] == "2026-12-01T04:00:00+00:00"
    alert = alert_message(
        {"id": 2, "kind": "paused", "account_id": None, "created_at": at,
         "detail": {"by": "alice", "reason": "drill"}}
    )  # fmt: skip
    assert alert["text"] == "by alice: drill" and alert["kind"] == "alert"


def test_a_distance_to_a_threshold_is_in_points_and_one_crossed_says_so() -> None:
    assert points(Decimal("0.0103")) == "1.03 points"
    assert points(Decimal("-0.0050")) == "over by 0.50 points"
    assert points(None) == "-"


TROUBLE = {
    "level": "critical",
    "auto_close_threshold": Decimal("0.9"),
    "close_request_id": None,
    "close_request_age": None,
    "auto_close": "request",
}


@pytest.mark.parametrize(
    ("changes", "paused", "said"),
    [
        ({"level": "warning"}, False, "auto-close at 90.00 %"),
        ({"level": "warning"}, True, "auto-close at 90.00 % (held while paused)"),
        ({"level": "warning", "close_request_id": 7, "close_request_age": 125.0}, False,
         "close request 7 sent, waiting 2 min"),  # back below critical, the request still open
        ({"level": "warning", "auto_close": "off"}, False, "auto-close is off for it: events only"),
        ({"close_request_id": 7, "close_request_age": 125.0}, True,
         "close request 7 sent, waiting 2 min"),
        ({"auto_close": "off"}, True, "auto-close is off for it: events only"),
        ({}, True, "close held: auto-close is paused"),
        ({"auto_close": "flatten"}, False, "flattened what it could (see the account)"),
        ({}, False, "no close request open (see the account)"),
    ],
)  # fmt: skip
def test_what_riskd_does_about_an_account_in_trouble_in_words(
    changes: dict[str, object], paused: bool, said: str
) -> None:
    assert trouble_action(TROUBLE | changes, paused) == said


def test_a_slow_shared_read_is_kept_longer_so_that_it_takes_its_share_at_most() -> None:
    took = {"s": 0.0}

    async def read() -> float:
        started = time.monotonic()
        while time.monotonic() - started < took["s"]:  # a read that takes its time
            await asyncio.sleep(0.005)
        return took["s"]

    async def scenario() -> tuple[float, float, int]:
        quick = Shared(read, ttl=30.0, share=0.02)
        await quick.get()
        took["s"] = 0.8
        slow = Shared(read, ttl=30.0, share=0.02)
        await slow.get()
        await slow.get()  # kept: no second read
        return quick.kept_for, slow.kept_for, slow.reads

    quick, slow, reads = asyncio.run(scenario())
    assert quick == 30.0  # a quick read: kept for the floor
    assert slow >= 0.8 / 0.02 and reads == 1  # 0.8 s of reading: kept 40 s at least


def test_a_margin_rate_reads_as_a_percentage_unless_it_is_no_number() -> None:
    assert rate(Decimal("0.05")) == "5.00 %"
    assert rate("NaN") == "NaN" and rate("Infinity") == "Infinity"  # bad data, as it was read
    assert rate(None) == "-"


def test_what_is_forgotten_while_it_is_read_is_read_again() -> None:
    """An action forgets the overview while a page's read of it is in flight: that read's
    value (from before the action) is not kept, and the next page sees the new state."""
    state = {"paused": False}
    reading = asyncio.Event()
    go_on = asyncio.Event()

    async def read() -> bool:
        seen = state["paused"]
        reading.set()
        await go_on.wait()
        return seen

    async def scenario() -> tuple[bool, int]:
        shared = Shared(read, ttl=30.0)
        first = asyncio.create_task(shared.get())
        await reading.wait()
        state["paused"] = True  # the action, while the read is in flight
        shared.forget()
        go_on.set()
        return await first, shared.reads

    value, reads = asyncio.run(scenario())
    assert value is True and reads == 2


def test_the_feed_waits_a_moment_at_a_gap_in_the_ids_then_goes_on() -> None:
    gaps: dict[int, float] = {}
    assert settled(4, [5, 6, 7], gaps, now=100.0, wait=3.0) == 3 and gaps == {}
    # 8 missing: 9 and 10 wait, the gap remembered from when it was first seen
    assert settled(7, [9, 10], gaps, now=100.0, wait=3.0) == 0 and gaps == {8: 100.0}
    assert settled(7, [9, 10], gaps, now=102.0, wait=3.0) == 0 and gaps == {8: 100.0}
    # 8 committed: all three go, the gap forgotten
    assert settled(7, [8, 9, 10], gaps, now=102.5, wait=3.0) == 3 and gaps == {}
    # a gap that never fills (a rolled-back id) is given up on after the wait
    assert settled(10, [12], gaps, now=200.0, wait=3.0) == 0
    assert settled(10, [12, 14], gaps, now=203.0, wait=3.0) == 1 and gaps == {13: 203.0}
