"""What an operator asks of riskd's own tables without writing SQL: ``riskd accounts`` (the
accounts by level, or those nearest a threshold) and ``riskd close-requests``.

Everything here reads riskd's tables only (account_state, account_limits, close_requests), in
one read-only transaction, so the monitoring role of the grants runs it; nothing reads the
platform's tables. Figures are those of each account's latest check; ages are measured on the
server's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import set_json_loads

from riskd import migrate, numbers
from riskd.config import Settings
from riskd.db import connect
from riskd.errors import NotInstalled, flat
from riskd.sqlfiles import query

AT_RISK = ("warning", "critical")
STATUSES = ("pending", "done", "cancelled")
DEFAULT_LIMIT = 100


@dataclass(frozen=True, slots=True)
class AccountFigures:
    """One account as its latest check recorded it, with the thresholds that apply to it; for
    ``--nearest``, the next threshold up, the level it leads to and how far it is."""

    account_id: str
    level: str
    utilization: Decimal | None
    equity: Decimal
    used_margin: Decimal
    checked_at: datetime
    checked_age: float
    warning_threshold: Decimal
    auto_close_threshold: Decimal
    total: int
    next_level: str | None = None
    next_threshold: Decimal | None = None
    distance: Decimal | None = None

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "account_id": self.account_id,
            "level": self.level,
            "utilization": numbers.json_decimal(self.utilization),
            "equity": numbers.json_decimal(self.equity),
            "used_margin": numbers.json_decimal(self.used_margin),
            "checked_at": self.checked_at.isoformat(),
            "checked_age": self.checked_age,
            "warning_threshold": numbers.json_decimal(self.warning_threshold),
            "auto_close_threshold": numbers.json_decimal(self.auto_close_threshold),
        }
        if self.next_level is not None:
            doc |= {
                "next_level": self.next_level,
                "next_threshold": numbers.json_decimal(self.next_threshold),
                "distance": numbers.json_decimal(self.distance),
            }
        return doc

    def line(self) -> str:
        toward = ""
        if self.next_threshold is not None and self.distance is not None:
            side = "below" if self.distance > 0 else "over"
            toward = (
                f"  {numbers.points(self.distance)} {side} {self.next_level} "
                f"({numbers.percent(self.next_threshold)})"
            )
        return (
            f"{self.account_id}  {self.level}  utilisation {numbers.percent(self.utilization)}"
            f"{toward}  equity {numbers.money(self.equity)}  "
            f"used margin {numbers.money(self.used_margin)}  "
            f"figures as of {numbers.ago(self.checked_age)}"
        )


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """One row of riskd.close_requests, with its ages."""

    id: int
    account_id: str
    status: str
    utilization: Decimal | None
    created_at: datetime
    completed_at: datetime | None
    detail: Any
    age: float
    completed_age: float | None
    total: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account_id": self.account_id,
            "status": self.status,
            "utilization": numbers.json_decimal(self.utilization),
            "created_at": self.created_at.isoformat(),
            "completed_at": None if self.completed_at is None else self.completed_at.isoformat(),
            "age": self.age,
            "completed_age": self.completed_age,
            "detail": numbers.json_exact(self.detail),
        }

    def line(self) -> str:
        done = (
            f"  {self.status} {numbers.ago(self.completed_age)}"
            if self.completed_age is not None
            else ""
        )
        return (
            f"{self.id}  {self.account_id}  {self.status}  opened {numbers.ago(self.age)}{done}"
            f"  utilisation {numbers.percent(self.utilization)}{self._what()}"
        )

    def _what(self) -> str:
        """What the request asked for, or what a flatten did, from its detail."""
        detail = self.detail if isinstance(self.detail, dict) else {}
        failed = detail.get("flatten_failed")
        if failed is not None:  # riskd could not flatten it, and asked the platform instead
            return f"  flatten failed: {flat(str(failed))}"
        if detail.get("mode") == "flatten":
            closed = detail.get("closed")
            n = len(closed) if isinstance(closed, list) else 0
            booked = detail.get("booked_pnl")
            pnl = f", booked {numbers.money(booked)}" if isinstance(booked, Decimal) else ""
            return f"  flatten: closed {n} position{'' if n == 1 else 's'}{pnl}"
        positions = detail.get("positions")
        if isinstance(positions, list):
            n = len(positions)
            return f"  {n} open position{'' if n == 1 else 's'}"
        return ""


@dataclass(frozen=True, slots=True)
class Listing:
    """What a command found: the rows shown, and how many matched in all (the rest were cut
    by the limit)."""

    rows: list[Any]
    total: int

    @property
    def more(self) -> int:
        return max(0, self.total - len(self.rows))


def reader(settings: Settings) -> psycopg.Connection[Any]:
    """A read-only connection to a database riskd is installed in (NotInstalled if not), its
    numbers decoded exactly: what every listing of riskd's tables reads through."""
    conn = connect(settings)
    try:
        if not migrate.installed(conn):
            raise NotInstalled()
        conn.read_only = True
        # jsonb holds numerics: decode them exactly (a float would round money)
        set_json_loads(numbers.loads_exact, conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _thresholds(settings: Settings) -> dict[str, Decimal]:
    return {
        "warning": settings.risk.warning_threshold,
        "auto_close": settings.risk.auto_close_threshold,
    }


def by_level(
    settings: Settings, levels: tuple[str, ...] = AT_RISK, limit: int = DEFAULT_LIMIT
) -> Listing:
    """The accounts at these levels, critical first, then by utilisation, highest first."""
    return _listing(settings, "accounts_by_level", {"levels": list(levels), "limit": limit})


def nearest(settings: Settings, n: int) -> Listing:
    """The ``n`` accounts below critical nearest the next threshold up."""
    return _listing(settings, "accounts_nearest", {"limit": n})


def _listing(settings: Settings, name: str, params: dict[str, Any]) -> Listing:
    """A named query's accounts, each with the total the query counted."""
    with (
        reader(settings) as conn,
        conn.transaction(),
        conn.cursor(row_factory=class_row(AccountFigures)) as cur,
    ):
        rows = cur.execute(query(name), _thresholds(settings) | params).fetchall()
    return Listing(rows, rows[0].total if rows else 0)


def close_requests(
    settings: Settings, status: str | None = "pending", limit: int = DEFAULT_LIMIT
) -> Listing:
    """Close requests with this status (None: every one): pending oldest first, then the
    others newest first."""
    params = {"status": status, "limit": limit}
    with (
        reader(settings) as conn,
        conn.transaction(),
        conn.cursor(row_factory=class_row(CloseRequest)) as cur,
    ):
        rows = cur.execute(query("close_requests_list"), params).fetchall()
    return Listing(rows, rows[0].total if rows else 0)
