"""The safety rails, as operators see them: the kill switch (``riskd pause`` / ``riskd resume``,
riskd.controls) and the alerts the rails record (riskd.alerts; ``riskd events --alerts``,
``riskd status``).

The rails themselves act inside the check (sql/act.sql): this module reads what they did and
flips the switch through riskd.pause and riskd.resume, which wait for every check that is
closing, so that once ``riskd pause`` returns no instance makes a close until ``riskd resume``.
"""

from __future__ import annotations

import getpass
import json
import socket
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import class_row

from riskd import migrate, numbers
from riskd.accounts import reader
from riskd.config import Settings
from riskd.db import connect
from riskd.errors import NotInstalled
from riskd.sqlfiles import query

KINDS = ("paused", "resumed", "circuit_open", "close_held", "data_error", "endpoint_gone")
RECENT_ALERTS = 10


def operator() -> str:
    """Who flips the switch from this machine, as riskd.controls records it: user@host (the
    database role goes with it in the alert)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class Switch:
    """The kill switch as riskd.controls holds it, with how long it has been paused."""

    paused: bool
    paused_by: str | None = None
    reason: str | None = None
    since: datetime | None = None
    paused_for: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "by": self.paused_by,
            "reason": self.reason,
            "since": None if self.since is None else self.since.isoformat(),
            "paused_for": self.paused_for,
        }

    def line(self) -> str:
        if not self.paused:
            return "auto-close running (not paused)"
        since = self.since.isoformat(timespec="seconds") if self.since else "?"
        why = f": {self.reason}" if self.reason else ""
        return (
            f"PAUSED by {self.paused_by} since {since} ({numbers.ago(self.paused_for)}){why}; "
            "no close is made until `riskd resume`"
        )


@dataclass(frozen=True, slots=True)
class Alert:
    """One row of riskd.alerts."""

    id: int
    kind: str
    account_id: str | None
    detail: dict[str, Any]
    created_at: datetime
    age: float

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "account_id": self.account_id,
            "detail": numbers.json_exact(self.detail),
            "created_at": self.created_at.isoformat(),
        }

    def line(self) -> str:
        when = self.created_at.isoformat(timespec="seconds")
        about = f"  account {self.account_id}" if self.account_id is not None else ""
        return f"{when}  alert {self.id}  {self.kind}{about}  {describe(self.kind, self.detail)}"


def describe(kind: str, detail: dict[str, Any]) -> str:
    """An alert's detail in words, one line."""
    d = detail
    if kind == "paused":
        return f"by {d.get('by')}" + (f": {d['reason']}" if d.get("reason") else "")
    if kind == "resumed":
        return f"by {d.get('by')}, paused {numbers.duration(_seconds(d.get('paused_seconds')))}" + (
            f" ({d['paused_reason']})" if d.get("paused_reason") else ""
        )
    if kind == "circuit_open":
        return (
            f"{d.get('reason')}; closed {d.get('closing')}, held {d.get('held')}: riskd paused "
            "itself until `riskd resume`"
        )
    if kind == "close_held" and d.get("reason") == "stale_price":
        age, limit = _seconds(d.get("price_age")), _seconds(d.get("max_price_age"))
        return (
            f"no close: the price of {d.get('instrument')} is {numbers.duration(age)} old, over "
            f"max_price_age {numbers.duration(limit)}"
        )
    if kind == "close_held":
        return f"no close: data riskd cannot trust {json.dumps(d.get('data_errors'))}"
    return json.dumps(numbers.json_exact(d), sort_keys=True)


def _seconds(value: object) -> float | None:
    """A number of seconds as an alert's detail holds it (decoded exactly: a Decimal)."""
    return float(value) if isinstance(value, int | float | Decimal) else None


def read_switch(conn: psycopg.Connection[Any]) -> Switch | None:
    """The kill switch; None when this database has none (an older revision) or this role
    cannot read it."""
    readable = conn.execute(query("reads_controls")).fetchone()
    if not readable or not readable[0]:
        return None
    with conn.cursor(row_factory=class_row(Switch)) as cur:
        return cur.execute(query("controls")).fetchone()


def switch(settings: Settings) -> Switch:
    with reader(settings) as conn, conn.transaction():
        found = read_switch(conn)
    if found is None:
        raise NotInstalled()
    return found


def recent(
    conn: psycopg.Connection[Any], limit: int = RECENT_ALERTS, account: str | None = None
) -> list[Alert]:
    """The latest ``limit`` alerts (of this account), oldest first; [] when this role cannot
    read them."""
    readable = conn.execute(query("reads_alerts")).fetchone()
    if limit <= 0 or not readable or not readable[0]:
        return []
    with conn.cursor(row_factory=class_row(Alert)) as cur:
        rows = cur.execute(query("recent_alerts"), {"limit": limit, "account": account})
        return list(reversed(rows.fetchall()))


def alerts(settings: Settings, limit: int, account: str | None = None) -> list[Alert]:
    with reader(settings) as conn, conn.transaction():
        return recent(conn, limit, account)


def _flip(settings: Settings, name: str, reason: str | None) -> tuple[bool, Switch]:
    with connect(settings) as conn:
        if migrate.installed_revision(conn) is None:
            raise NotInstalled()
        row = conn.execute(query(name), {"by": operator(), "reason": reason}).fetchone()
        now = read_switch(conn)
    assert row is not None and now is not None  # one row; riskd at head has the switch
    return bool(row[0]), now


def pause(settings: Settings, reason: str | None) -> tuple[bool, Switch]:
    """Pause every auto-close on every instance; (whether this call paused, the switch). Returns
    once every check that was closing has committed."""
    return _flip(settings, "pause", reason)


def resume(settings: Settings, reason: str | None) -> tuple[bool, Switch]:
    """Lift the pause; the accounts still critical are checked again at once, worst first."""
    return _flip(settings, "resume", reason)
