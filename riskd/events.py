"""``riskd events``: the risk events riskd wrote, the latest ones or live.

Following is LISTEN first, then read (DESIGN §6): an event that commits between the two is in
the backlog and its notification is dropped as a duplicate; one that commits after is named
by its notification. A notification is only a hint (I4): its ``event_id`` is read back from
``riskd.risk_events``, never printed from the payload, and every wake-up also reads whatever
came after the last event read, so an event whose NOTIFY the check skipped (notification queue
over ``riskd.notify_queue_limit``) is found by the next wake-up or the poll timer.

A lost connection (a server restart, a killed backend) does not end ``--follow``: like ``tail
-F`` it says so on stderr in one line, reconnects with a growing delay, LISTENs again and
catches up from the last event it read — nothing lost, nothing printed twice. It ends, as
``tail -f`` does, when its reader has gone (``riskd events -f | head -1``, riskd.pipes).

Each event shows the action its check took (the close request it opened, flattened into or
cancelled, or none), read from ``riskd.close_requests``: the check writes both in one
transaction, so they share its ``now()``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from riskd import numbers
from riskd.check import FLATTENED, NO_ACTION, REQUEST_CANCELLED, REQUEST_OPENED
from riskd.config import parse_duration
from riskd.errors import ConfigError, reason
from riskd.pipes import reader_gone
from riskd.sqlfiles import EVENTS_CHANNEL, query

POLL_INTERVAL = 5.0  # --follow reads new rows at least this often, notified or not
MAX_PAYLOAD_HINTS = 1000  # ids taken from one burst of notifications; the rest: by id order
MAX_SEEN = 100_000  # ids remembered to drop duplicate notifications; the oldest half goes
RECONNECT_INITIAL = 1.0  # --follow: the first wait after a lost connection; doubled each time
RECONNECT_MAX = 10.0
# After a reconnect, --follow reads again this many ids back from the last one it read: an event
# whose transaction took its id before and committed during the gap had its notification lost
# with the connection (those already printed are remembered, not printed again).
RECONNECT_LOOKBACK = 1000
# What a lost connection raises: a server restart or crash, a killed backend, a network cut.
LOST = (psycopg.OperationalError, psycopg.InterfaceError)


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
    # the action the check took with this event (riskd.check's names), and the close request
    # it concerns, with that request's status now
    action: str = NO_ACTION
    close_request_id: int | None = None
    close_request_status: str | None = None

    def as_json(self) -> dict[str, Any]:
        """Every column and the action; Decimal as a string, timestamps in ISO 8601."""
        return {
            "id": self.id,
            "account_id": self.account_id,
            "user_id": self.user_id,
            "from_level": self.from_level,
            "to_level": self.to_level,
            "utilization": numbers.json_decimal(self.utilization),
            "equity": numbers.json_decimal(self.equity),
            "used_margin": numbers.json_decimal(self.used_margin),
            "detail": numbers.json_exact(self.detail),
            "created_at": self.created_at.isoformat(),
            "instance": self.instance,
            "action": self.action,
            "close_request_id": self.close_request_id,
            "close_request_status": self.close_request_status,
        }

    def action_text(self) -> str | None:
        """The action in words, as ``riskd check`` says it; None when there is nothing to say
        (no action, and the event does not reach critical)."""
        rid, now = self.close_request_id, self.close_request_status
        if self.action == REQUEST_OPENED:
            return f"close request {rid} opened (now {now})"
        if self.action == FLATTENED:
            return f"flattened (close request {rid}, {now})"
        if self.action == REQUEST_CANCELLED:
            return f"close request {rid} cancelled (no longer critical)"
        if self.to_level != "critical":
            return None
        if isinstance(self.detail, dict) and self.detail.get("data_errors"):
            return "none (close held: data riskd cannot trust)"
        return "none"

    def line(self) -> str:
        """One human line."""
        util = numbers.percent(self.utilization)
        user = f"  user {self.user_id}" if self.user_id is not None else ""
        said = self.action_text()
        action = f"  action: {said}" if said else ""
        return (
            f"{self.created_at.isoformat(timespec='seconds')}  event {self.id}  "
            f"{self.account_id}  {self.from_level} -> {self.to_level}  utilisation {util}  "
            f"equity {numbers.money(self.equity)}  used margin {numbers.money(self.used_margin)}"
            f"{action}{user}  "
            f"by {self.instance}"
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


def _action(opened: bool, mode: str | None) -> str:
    if not opened:
        return REQUEST_CANCELLED
    return FLATTENED if mode == "flatten" else REQUEST_OPENED


def with_actions(conn: psycopg.Connection[Any], events: list[Event]) -> list[Event]:
    """``events`` with the action each one's check took. Only an event that reaches or leaves
    critical can have one: the others cost no query."""
    ids = [e.id for e in events if "critical" in (e.from_level, e.to_level)]
    if not ids:
        return events
    rows = conn.cursor(row_factory=dict_row).execute(query("event_actions"), {"ids": ids})
    found = {row["event_id"]: row for row in rows.fetchall()}
    return [
        replace(
            e,
            action=_action(row["opened"], row["mode"]),
            close_request_id=row["close_request_id"],
            close_request_status=row["status"],
        )
        if (row := found.get(e.id)) is not None
        else e
        for e in events
    ]


def _execute(
    conn: psycopg.Connection[Any], name: str, params: dict[str, Any]
) -> psycopg.Cursor[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    set_json_loads(numbers.loads_exact, cur)  # an event's detail: its numbers exact
    try:
        return cur.execute(query(name), params)
    except psycopg.errors.InvalidTextRepresentation as exc:
        raise ConfigError(f"--account: not an account id: {' '.join(str(exc).split())}") from exc


def recent(conn: psycopg.Connection[Any], filt: EventFilter, limit: int) -> list[Event]:
    """The latest ``limit`` events passing ``filt``, oldest first."""
    if limit <= 0:
        return []
    cur = _execute(conn, "recent_events", filt.params() | {"limit": limit})
    return with_actions(conn, [_event(row) for row in reversed(cur.fetchall())])


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


def _say(line: str) -> None:
    print(f"riskd: {line}", file=sys.stderr, flush=True)


def same_server(conn: psycopg.Connection[Any]) -> Callable[[], psycopg.Connection[Any]]:
    """A new autocommit connection made as ``conn`` was (its parameters, read now: a closed
    connection no longer tells them). The password is only kept in memory, as the DSN it
    came from is."""
    params: dict[str, Any] = dict(conn.info.get_parameters())
    if conn.info.password:
        params["password"] = conn.info.password

    def connect() -> psycopg.Connection[Any]:
        return psycopg.Connection.connect(**params, autocommit=True)

    return connect


class EventTail:
    """``--follow``, in steps a test can interleave with commits: listen, backlog, wait.

    ``conn`` must be in autocommit mode (a LISTEN counts from its commit) and used by nothing
    else while following. When it is lost, :meth:`follow` goes on with connections from
    ``reconnect`` (by default: made as ``conn`` was), which it closes itself.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        filt: EventFilter,
        *,
        reconnect: Callable[[], psycopg.Connection[Any]] | None = None,
        say: Callable[[str], None] = _say,
    ) -> None:
        if not conn.autocommit:
            raise ValueError("EventTail needs an autocommit connection")
        self.conn = conn
        self.filt = filt
        self.reconnect = reconnect or same_server(conn)
        self.say = say
        self.after = 0  # every event with a larger id is still to be read
        self.floor = 0  # ids at or below were history the backlog chose not to show
        self.seen: set[int] = set()
        self._own: psycopg.Connection[Any] | None = None  # a connection of ours, to close

    def listen(self) -> None:
        self.conn.execute(query("listen").format(channel=sql.Identifier(EVENTS_CHANNEL)))

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

    def _read(self, hints: set[int], after: int | None = None) -> list[Event]:
        """The events after ``after`` (by default the last one read) and those ``hints``
        names, each once."""
        params = self.filt.params() | {
            "after": self.after if after is None else after,
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
        return with_actions(self.conn, new)

    def recover(self, lost: BaseException) -> list[Event]:
        """After ``lost``: reconnect (waiting longer after each failure, each said in one
        line), LISTEN, and read what came during the gap."""
        delay, cause = RECONNECT_INITIAL, lost
        while True:
            self.say(f"lost the connection ({reason(cause)}), reconnecting in {delay:g} s")
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)
            try:
                conn = self.reconnect()
            except LOST as exc:
                cause = exc
                continue
            self._close_own()
            self.conn = self._own = conn
            try:
                self.listen()  # first LISTEN, then read (DESIGN §6)
                caught = self._read(set(), after=max(self.floor, self.after - RECONNECT_LOOKBACK))
            except LOST as exc:
                cause = exc
                continue
            self.say(f"reconnected; caught up after event {self.after}")
            return caught

    def _close_own(self) -> None:
        if self._own is not None:
            own, self._own = self._own, None
            own.close()

    def follow(self, limit: int, poll_interval: float = POLL_INTERVAL) -> Iterator[Event]:
        """The backlog, then every new event, until the reader of standard output has gone
        (or KeyboardInterrupt); a lost connection is recovered, not fatal."""
        try:
            self.listen()
            events = self.backlog(limit)
            while True:
                for event in events:
                    yield event
                    if reader_gone():
                        return
                try:
                    events = self.wait(poll_interval)
                except LOST as exc:
                    events = self.recover(exc)
        finally:
            self._close_own()
