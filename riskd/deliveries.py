"""``riskd deliveries``: what became of each webhook delivery (riskd.deliveries, the outbox of
issue 13), and ``riskd deliveries retry`` for the dead letters.

The listing reads riskd's tables only, in one read-only transaction (the monitoring role runs
it); a retry writes the outbox, as the daemon's role or the owner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row

from riskd import numbers, webhooks
from riskd.accounts import DEFAULT_LIMIT, reader
from riskd.config import Settings
from riskd.db import connect
from riskd.sqlfiles import query

STATUSES = ("pending", "delivered", "failed")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One row of riskd.deliveries, with its event and its ages."""

    id: int
    event_id: int | None
    alert_id: int | None
    status: str
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    account_id: str | None
    to_level: str | None
    age: float
    next_in: float | None
    total: int

    @property
    def webhook_id(self) -> str:
        if self.event_id is not None:
            return webhooks.message_id("event", self.event_id)
        return webhooks.message_id("alert", self.alert_id or 0)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "webhook_id": self.webhook_id,
            "event_id": self.event_id,
            "alert_id": self.alert_id,
            "account_id": self.account_id,
            "status": self.status,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "created_at": self.created_at.isoformat(),
            "delivered_at": None if self.delivered_at is None else self.delivered_at.isoformat(),
            "age": self.age,
            "next_in": self.next_in,
        }

    def line(self) -> str:
        answer = f"  last {self.last_status}" if self.last_status is not None else ""
        error = f"  {self.last_error}" if self.last_error else ""
        if self.status == "pending":
            when = "now" if (self.next_in or 0) <= 0 else f"in {numbers.duration(self.next_in)}"
            next_try = f"  next attempt {when}"
        else:
            next_try = ""
        about = f"  {self.account_id} -> {self.to_level}" if self.account_id else ""
        return (
            f"{self.id}  {self.webhook_id}  {self.status}  created {numbers.ago(self.age)}"
            f"  attempts {self.attempts}{answer}{error}{next_try}{about}"
        )


def listing(
    settings: Settings, status: str | None = None, limit: int = DEFAULT_LIMIT
) -> list[Delivery]:
    """The deliveries with this status (None: every one): pending oldest first, then the
    others newest first."""
    with (
        reader(settings) as conn,
        conn.transaction(),
        conn.cursor(row_factory=class_row(Delivery)) as cur,
    ):
        return cur.execute(query("deliveries_list"), {"status": status, "limit": limit}).fetchall()


def retry(settings: Settings, ids: Sequence[int], every_failed: bool) -> list[int]:
    """Failed deliveries pending again from the schedule's start; the ids that were."""
    with connect(settings) as conn:
        rows = conn.execute(
            query("retry_deliveries"), {"ids": list(ids), "all": every_failed}
        ).fetchall()
    return sorted(int(r[0]) for r in rows)
