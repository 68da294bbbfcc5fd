"""What the dashboard shows, from plain values: numbers as people read them, the levels'
change over the last hour, the feed's messages and cursors. Pure: no database, no clock of its
own (ages come from the server's clock, in the rows), so every figure is tested without one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from riskd import numbers
from riskd.levels import LEVELS
from riskd.rails import describe


def pct(ratio: Decimal | float | None) -> str:
    """A utilisation as riskd prints one (``85.30 %``); equity at or below zero says so
    (the ratio is NULL then)."""
    return "equity ≤ 0" if ratio is None else numbers.percent(Decimal(str(ratio)))


def money(value: Decimal | int | None) -> str:
    """Money as the account keeps it: its own scale, grouped thousands."""
    if value is None:
        return "-"
    amount = Decimal(value)
    exponent = amount.as_tuple().exponent
    if not isinstance(exponent, int):  # NaN or infinite: as it is
        return str(amount)
    return f"{amount:,.{max(0, -exponent)}f}"


def money_as(value: Decimal | int | None, like: Decimal | int | None) -> str:
    """A computed amount (used margin: quantity x price x rate, many places) at the scale of
    the account's own money (its equity), rounded half away from zero."""
    if value is None or like is None:
        return money(value)
    exponent = Decimal(like).as_tuple().exponent
    if not isinstance(exponent, int) or not Decimal(value).is_finite():
        return money(value)
    places = Decimal(1).scaleb(min(exponent, 0))
    return money(Decimal(value).quantize(places, rounding=ROUND_HALF_UP))


def ago(seconds: float | None) -> str:
    return numbers.ago(seconds)


def points(ratio: Decimal | float | None) -> str:
    """A distance to a threshold in percentage points (``1.03 points``); one already crossed,
    which the account's next check records, says so."""
    if ratio is None:
        return "-"
    distance = Decimal(str(ratio))
    text = numbers.points(distance)
    return f"over by {text}" if distance < 0 else text


def rate(value: object) -> str:
    """A margin rate as a percentage (``5.00 %``); anything that is not a finite number (data
    riskd could not trust, kept in the evidence as it was read) as it is."""
    if value is None:
        return "-"
    try:
        number = Decimal(str(value))
    except ArithmeticError:
        return str(value)
    return numbers.percent(number) if number.is_finite() else str(value)


def alert_text(alert: Mapping[str, Any]) -> str:
    """An alert in words, as ``riskd events --alerts`` says it."""
    return describe(alert["kind"], alert["detail"] or {})


def lasted(seconds: float | None) -> str:
    """How long something has lasted: ``3 s``, ``2 min``."""
    return "-" if seconds is None else numbers.duration(seconds)


def trouble_action(account: Mapping[str, Any], paused: bool) -> str:
    """What riskd did, or will do, about an account over a threshold, in words: the close
    request it opened, or why there is none."""
    if account["close_request_id"] is not None:  # a warning account too, until it is done
        waiting = lasted(account["close_request_age"])
        return f"close request {account['close_request_id']} sent, waiting {waiting}"
    if account["auto_close"] == "off":
        return "auto-close is off for it: events only"
    if account["level"] != "critical":
        held = " (held while paused)" if paused else ""
        return f"auto-close at {pct(account['auto_close_threshold'])}{held}"
    if paused:
        return "close held: auto-close is paused"
    if account["auto_close"] == "flatten":
        return "flattened what it could (see the account)"
    return "no close request open (see the account)"


def level_changes(rows: Iterable[tuple[str, str, int]]) -> dict[str, int]:
    """Each level's net change over the last hour, from the hour's transitions
    (from_level, to_level, count)."""
    change = dict.fromkeys(LEVELS, 0)
    for from_level, to_level, n in rows:
        if from_level in change:
            change[from_level] -= n
        if to_level in change:
            change[to_level] += n
    return change


def signed(n: int) -> str:
    return f"+{n:,}" if n > 0 else f"{n:,}" if n < 0 else "±0"


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a browser is in the feed: the last event and the last alert it has. The SSE id of
    every message, so that a browser that lost the stream says where it was (Last-Event-ID)."""

    event_id: int = 0
    alert_id: int = 0

    def __str__(self) -> str:
        return f"{self.event_id}-{self.alert_id}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor | None:
        """``"812-31"``; None for anything else (a header is never trusted, I4's spirit)."""
        if not text or len(text) > 40:
            return None
        head, sep, tail = text.partition("-")
        if not sep or not head.isdigit() or not tail.isdigit():
            return None
        return cls(int(head), int(tail))

    def after(self, kind: str, row_id: int) -> Cursor:
        if kind == "event":
            return Cursor(max(self.event_id, row_id), self.alert_id)
        return Cursor(self.event_id, max(self.alert_id, row_id))

    def covers_cursor(self, other: Cursor) -> bool:
        """Whether ``other`` is at or before this cursor (a browser's, against the tables')."""
        return other.event_id <= self.event_id and other.alert_id <= self.alert_id

    def covers(self, kind: str, row_id: int) -> bool:
        """Whether the browser at this cursor has that row already."""
        return row_id <= (self.event_id if kind == "event" else self.alert_id)


def settled(after: int, ids: list[int], gaps: dict[int, float], now: float, wait: float) -> int:
    """How many of ``ids`` (ascending, each after ``after``) the feed may hand on now: up to
    the first gap in the sequence younger than ``wait`` seconds. An id is taken when its row
    is inserted, and rows commit in any order: a gap may be a transaction still under way,
    whose row would come in below a cursor already past it (and so never be sent), or a
    value rolled back, which never comes. ``gaps`` remembers when each gap (the id missing)
    was first seen; it is kept up to date."""
    expected, taken = after + 1, 0
    for row_id in ids:
        if row_id != expected and now - gaps.setdefault(expected, now) < wait:
            break
        taken += 1
        expected = row_id + 1
    for gap in [g for g in gaps if g < expected]:  # passed: come in, or given up on
        del gaps[gap]
    return taken


def json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def dumps(document: object) -> str:
    """JSON with decimals as strings (money is never a float) and times in ISO 8601."""
    return json.dumps(document, default=json_default, separators=(",", ":"), ensure_ascii=False)


def event_message(row: Mapping[str, Any]) -> dict[str, Any]:
    """A risk event as the feed sends it (and the page shows it)."""
    return {
        "kind": "event",
        "id": row["id"],
        "account_id": row["account_id"],
        "from_level": row["from_level"],
        "to_level": row["to_level"],
        "utilization": row["utilization"],
        "utilization_text": pct(row["utilization"]),
        "equity": row["equity"],
        "used_margin": row["used_margin"],
        "close_request_id": row["close_request_id"],
        "created_at": row["created_at"],
    }


def alert_message(row: Mapping[str, Any]) -> dict[str, Any]:
    """An alert as the feed sends it, with its description in words."""
    return {
        "kind": "alert",
        "id": row["id"],
        "alert": row["kind"],
        "account_id": row["account_id"],
        "detail": row["detail"],
        "text": describe(row["kind"], row["detail"] or {}),
        "created_at": row["created_at"],
    }


def sse(message: Mapping[str, Any], cursor: Cursor) -> str:
    """One Server-Sent Event: its id the cursor after it, one ``data:`` JSON line."""
    return f"id: {cursor}\nevent: {message['kind']}\ndata: {dumps(message)}\n\n"
