"""``riskd events``: the risk events riskd wrote, the latest ones or live.

Following is LISTEN first, then read (DESIGN §6): an event that commits between the two is in
the backlog and its notification is dropped as a duplicate; one that commits after is named
by its notification. A notification is only a hint (I4): its ``event_id`` is read back from
``riskd.risk_events``, never printed from the payload, and every wake-up also reads whatever
came after the last event read, so an event whose NOTIFY the check skipped (notification queue
over ``riskd.notify_queue_limit``) is found by the next wake-up or the poll timer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from riskd.config import parse_duration
from riskd.errors import ConfigError
from riskd.sqlfiles import query

EVENTS_CHANNEL = "riskd_events"
LEVELS = ("ok", "warning", "critical")
POLL_INTERVAL = 5.0  # --follow reads new rows at least this often, notified or not
MAX_PAYLOAD_HINTS = 1000  # ids taken from one burst of notifications; the rest: by id order
MAX_SEEN = 100_000  # ids remembered to drop duplicate notifications; the oldest half goes


@dataclass(frozen=True, slots=True)
class Event:
    """One row of riskd.risk_events (account_id as text, whatever its SQL type)."""

    id: int
    account_id: str
    user_id: str | None
    from_level: str
    to_level: str
    utilization: Decimal | None
    equity: Decimal
    used_margin: Decimal
    detail: Any
    created_at: datetime
    instance: str

    def as_json(self) -> dict[str, Any]:
        """Every column; Decimal as a string, timestamps in ISO 8601."""
        return {
            "id": self.id,
            "account_id": self.account_id,
            "user_id": self.user_id,
            "from_level": self.from_level,
            "to_level": self.to_level,
            "utilization": None if self.utilization is None else str(self.utilization),
            "equity": str(self.equity),
            "used_margin": str(self.used_margin),
            "detail": self.detail,
            "created_at": self.created_at.isoformat(),
            "instance": self.instance,
        }

    def line(self) -> str:
        """One human line."""
        util = "n/a" if self.utilization is None else f"{self.utilization * 100:.2f} %"
        user = f"  user {self.user_id}" if self.user_id is not None else ""
        return (
            f"{self.created_at.isoformat(timespec='seconds')}  event {self.id}  "
            f"{self.account_id}  {self.from_level} -> {self.to_level}  utilisation {util}  "
            f"equity {self.equity}  used margin {self.used_margin}{user}  by {self.instance}"
        )


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events: one account, one level reached (``to_level``), created since when."""

    account: str | None = None
    level: str | None = None
    since: datetime | None = None
    ago: float | None = None  # "since" as seconds before now, on the server's clock

    def params(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "level": self.level,
            "since": self.since,
            "ago": self.ago,
        }


def parse_since(text: str) -> tuple[datetime | None, float | None]:
    """``--since``: a duration before now (``10m``) or an ISO 8601 timestamp (a timestamp
    without a zone is local time). Returns (timestamp, None) or (None, seconds)."""
    try:
        return None, parse_duration(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--since: {text!r} is neither a duration (e.g. 10m) nor an ISO timestamp"
        ) from None
    return (stamp if stamp.tzinfo else stamp.astimezone()), None


def _event(row: dict[str, Any]) -> Event:
    return Event(**{k: v for k, v in row.items() if k != "wanted"})


def _execute(
    conn: psycopg.Connection[Any], name: str, params: dict[str, Any]
) -> psycopg.Cursor[dict[str, Any]]:
    try:
        return conn.cursor(row_factory=dict_row).execute(query(name), params)
    except psycopg.errors.InvalidTextRepresentation as exc:
        raise ConfigError(f"--account: not an account id: {' '.join(str(exc).split())}") from exc


def recent(conn: psycopg.Connection[Any], filt: EventFilter, limit: int) -> list[Event]:
    """The latest ``limit`` events passing ``filt``, oldest first."""
    if limit <= 0:
        return []
    cur = _execute(conn, "recent_events", filt.params() | {"limit": limit})
    return [_event(row) for row in reversed(cur.fetchall())]


def hinted_id(payload: str) -> int | None:
    """The ``event_id`` a riskd_events payload names, or None when it names none we trust."""
    if len(payload) > 8000:
        return None
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    value = doc.get("event_id") if isinstance(doc, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
        return value
    return None


class EventTail:
    """``--follow``, in steps a test can interleave with commits: listen, backlog, wait.

    ``conn`` must be in autocommit mode (a LISTEN counts from its commit) and used by nothing
    else while following.
    """

    def __init__(self, conn: psycopg.Connection[Any], filt: EventFilter) -> None:
        if not conn.autocommit:
            raise ValueError("EventTail needs an autocommit connection")
        self.conn = conn
        self.filt = filt
        self.after = 0  # every event with a larger id is still to be read
        self.floor = 0  # ids at or below were history the backlog chose not to show
        self.seen: set[int] = set()

    def listen(self) -> None:
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(EVENTS_CHANNEL)))

    def backlog(self, limit: int) -> list[Event]:
        """The latest ``limit`` events; everything committed after this call comes from
        :meth:`wait`. Call after :meth:`listen`."""
        last = self.conn.execute(query("last_event_id")).fetchone()
        self.after = int(last[0]) if last else 0
        events = [e for e in recent(self.conn, self.filt, limit) if e.id <= self.after]
        self.seen.update(e.id for e in events)
        if limit > 0 and len(events) >= limit:
            # The backlog was cut at ``limit``: an older event a notification names now was
            # left out on purpose, unless it is inside the window shown (a late commit).
            self.floor = events[0].id
        else:
            self.floor = 0
        return events

    def wait(self, timeout: float) -> list[Event]:
        """New events, in id order: read on every notification and when ``timeout`` seconds
        pass; returns the first time something new is found, or [] at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            hints: set[int] = set()
            for notify in self.conn.notifies(timeout=remaining, stop_after=1):
                if (event_id := hinted_id(notify.payload)) is not None:
                    hints.add(event_id)
            for notify in self.conn.notifies(timeout=0):  # the rest of the burst
                if len(hints) < MAX_PAYLOAD_HINTS and (event_id := hinted_id(notify.payload)):
                    hints.add(event_id)
            new = self._read(hints)
            if new or time.monotonic() >= deadline:
                return new

    def _read(self, hints: set[int]) -> list[Event]:
        params = self.filt.params() | {
            "after": self.after,
            "ids": sorted(i for i in hints if i not in self.seen),
        }
        rows = _execute(self.conn, "events_after", params).fetchall()
        new: list[Event] = []
        for row in rows:
            event_id: int = row["id"]
            self.after = max(self.after, event_id)
            if event_id in self.seen or event_id <= self.floor or not row["wanted"]:
                continue
            self.seen.add(event_id)
            new.append(_event(row))
        if len(self.seen) > MAX_SEEN:  # forget the oldest half, and ignore them from now on
            ordered = sorted(self.seen)
            self.floor = max(self.floor, ordered[MAX_SEEN // 2 - 1])
            self.seen = set(ordered[MAX_SEEN // 2 :])
        return new

    def follow(self, limit: int, poll_interval: float = POLL_INTERVAL) -> Iterator[Event]:
        """The backlog, then every new event, for ever (end it with KeyboardInterrupt)."""
        self.listen()
        yield from self.backlog(limit)
        while True:
            yield from self.wait(poll_interval)
