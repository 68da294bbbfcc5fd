"""The dashboard's pure parts: numbers as people read them, the hour's level changes, the feed's
cursor and messages (riskd/dashboard/present.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from riskd.dashboard.present import (
    Cursor,
    alert_message,
    event_message,
    level_changes,
    money,
    money_as,
    pct,
    signed,
    sse,
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
