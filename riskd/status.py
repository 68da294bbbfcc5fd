"""``riskd status``: what an on-call engineer needs at a glance, and a monitoring check.

Collected in one read-only transaction (:func:`collect`), judged by a pure function
(:func:`assess`) against :class:`Limits`, shown as text (:func:`render`) or one JSON document
(:meth:`Status.as_json`). Ages are measured on the database server's clock.

Health rules, each failing one a line in ``problems``:

* riskd is installed, at the revision this riskd's migrations call head;
* at least one live instance: a heartbeat row younger than ``stale_after``;
* no stale instance: a heartbeat row older than that (an instance killed, hung or cut off
  from the database; a clean stop removes its row);
* ``pg_notification_queue_usage()`` at most ``max_queue_usage``;
* the lag of every live instance (its oldest change not yet checked) at most ``max_lag``;
* not paused: the kill switch (``riskd pause``, or the circuit breaker) holds every
  auto-close, which an operator must lift;
* every live instance runs with the same risk settings (warning and auto-close thresholds,
  hysteresis, auto_close mode, as its heartbeat carries them): two instances that disagree
  undo each other's events and close requests.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg
from psycopg.rows import dict_row
from rich import box
from rich.console import Console
from rich.table import Table

from riskd import __version__, capture, migrate, numbers, rails
from riskd import events as risk_events
from riskd import mapping as schema_mapping
from riskd.config import RISK_KEYS, Settings, mask_dsn, parse_duration
from riskd.daemon.stats import HEARTBEAT_INTERVAL
from riskd.db import connect
from riskd.errors import ConfigError
from riskd.levels import LEVELS
from riskd.sqlfiles import query

# A heartbeat is written every HEARTBEAT_INTERVAL (2 s); a slow one may take the pool's wait
# (2 s) plus the write's timeout (5 s). Older than five intervals, the instance is not working.
STALE_AFTER = 5 * HEARTBEAT_INTERVAL
MAX_QUEUE_USAGE = 0.5
MAX_LAG = 30.0
# a webhook delivery pending longer: the endpoint keeps failing, or no instance delivers (the
# schedule's first two steps are 5 s and 5 min)
MAX_DELIVERY_AGE = 600.0
RECENT_EVENTS = 10
COUNTERS = (
    "notifications",
    "drained_accounts",
    "checks",
    "events",
    "close_requests",
    "sweeps",
    "reconnects",
    "errors",
    "malformed_payloads",
)

COUNTER_LABELS = {
    "notifications": "wake-ups",
    "drained_accounts": "drained",
    "close_requests": "closes",
    "malformed_payloads": "malformed",
}


@dataclass(frozen=True, slots=True)
class Limits:
    stale_after: float = STALE_AFTER
    max_queue_usage: float = MAX_QUEUE_USAGE
    max_lag: float = MAX_LAG
    max_delivery_age: float = MAX_DELIVERY_AGE


@dataclass(frozen=True, slots=True)
class Instance:
    """One row of riskd.daemons, with its ages in seconds."""

    instance: str
    host: str
    pid: int
    version: str
    started_at: datetime
    heartbeat_at: datetime
    uptime: float
    heartbeat_age: float
    stats: dict[str, Any]

    def number(self, key: str) -> float | None:
        """A numeric counter from ``stats`` (written by the daemon, read defensively)."""
        value = self.stats.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            return None
        return float(value)

    @property
    def lag(self) -> float | None:
        return self.number("lag")

    @property
    def risk(self) -> dict[str, str] | None:
        """The risk settings it runs with; None from an older riskd, which does not say."""
        value = self.stats.get("risk")
        if not isinstance(value, dict):
            return None
        return {k: str(value[k]) for k in RISK_KEYS if value.get(k) is not None}

    def as_json(self, stale: bool) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "uptime": round(self.uptime, 3),
            "heartbeat_age": round(self.heartbeat_age, 3),
            "stale": stale,
            "state": self.stats.get("state"),
            "lag": self.lag,
            "dirty": self.stats.get("dirty"),
            "leader": self.stats.get("leader") is True,
            "last_sweep_at": self.stats.get("last_sweep_at"),
            "last_sweep_duration": self.stats.get("last_sweep_duration"),
            "counters": {k: self.stats.get(k) for k in COUNTERS},
            "risk": self.risk,
            "stats": self.stats,
        }


@dataclass(slots=True)
class Status:
    database: str  # the DSN, password masked
    head: str
    installed: bool
    revision: str | None = None
    instances: list[Instance] = field(default_factory=list)
    queue_usage: float = 0.0
    dirty_marks: int = 0
    dirty_accounts: int = 0
    # the instrument marks and the instruments they name; None: this role cannot count them
    dirty_instrument_marks: int | None = 0
    dirty_instruments: int | None = 0
    levels: dict[str, int] = field(default_factory=dict)
    pending_close_requests: int = 0
    oldest_close_request_age: float | None = None
    # the webhook outbox (issue 13); None: this role cannot read it
    pending_deliveries: int | None = 0
    oldest_delivery_age: float | None = None
    failed_deliveries: int | None = 0
    recent_events: list[risk_events.Event] = field(default_factory=list)
    # the safety rails (issue 14); switch None: this database or role has none to read
    switch: rails.Switch | None = None
    recent_alerts: list[rails.Alert] = field(default_factory=list)
    capture_problems: list[str] = field(default_factory=list)
    # what slows riskd down without making it unhealthy (a missing index), one line each
    warnings: list[str] = field(default_factory=list)
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def live(self, limits: Limits) -> list[Instance]:
        return [i for i in self.instances if i.heartbeat_age <= limits.stale_after]

    def stale(self, limits: Limits) -> list[Instance]:
        return [i for i in self.instances if i.heartbeat_age > limits.stale_after]

    def as_json(self, limits: Limits) -> dict[str, Any]:
        problems = assess(self, limits)
        return {
            "healthy": not problems,
            "problems": problems,
            "summary": summary(self, limits, problems),
            "checked_at": self.checked_at.isoformat(),
            "database": self.database,
            "installed": self.installed,
            "revision": self.revision,
            "head": self.head,
            "at_head": self.revision == self.head,
            "limits": {
                "stale_after": limits.stale_after,
                "max_queue_usage": limits.max_queue_usage,
                "max_lag": limits.max_lag,
                "max_delivery_age": limits.max_delivery_age,
            },
            "instances": [i.as_json(stale=False) for i in self.live(limits)],
            "stale_instances": [i.as_json(stale=True) for i in self.stale(limits)],
            "queue_usage": self.queue_usage,
            "dirty_marks": self.dirty_marks,
            "dirty_accounts": self.dirty_accounts,
            "dirty_instrument_marks": self.dirty_instrument_marks,
            "dirty_instruments": self.dirty_instruments,
            "levels": {level: self.levels.get(level, 0) for level in LEVELS},
            "pending_close_requests": self.pending_close_requests,
            "oldest_close_request_age": self.oldest_close_request_age,
            "pending_deliveries": self.pending_deliveries,
            "oldest_delivery_age": self.oldest_delivery_age,
            "failed_deliveries": self.failed_deliveries,
            "recent_events": [e.as_json() for e in self.recent_events],
            "paused": None if self.switch is None else self.switch.as_json(),
            "recent_alerts": [a.as_json() for a in self.recent_alerts],
            "capture_problems": self.capture_problems,
            "warnings": self.warnings,
        }


def collect(settings: Settings, recent: int = RECENT_EVENTS) -> Status:
    """Everything ``riskd status`` shows, read in one read-only transaction."""
    status = Status(
        database=mask_dsn(settings.database.dsn or ""),
        head=migrate.head(settings),
        installed=False,
    )
    with connect(settings) as conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot for all
        with conn.transaction():
            status.installed = migrate.installed(conn)  # the revision: status_summary
            if not status.installed:
                return status
            _summary(conn, status)
            _dirty_instruments(conn, status)
            _deliveries(conn, status)
            cur = conn.cursor(row_factory=dict_row).execute(query("status_instances"))
            status.instances = [
                Instance(**(row | {"stats": _as_dict(row["stats"])})) for row in cur.fetchall()
            ]
            status.recent_events = risk_events.recent(conn, risk_events.EventFilter(), recent)
            status.switch = rails.read_switch(conn)
            status.recent_alerts = rails.recent(conn, recent)
            status.capture_problems = capture.problems(conn, settings.schema)
            status.warnings = schema_mapping.account_index_warnings(conn, settings.schema)
    return status


def _as_dict(value: object) -> dict[str, Any]:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _summary(conn: psycopg.Connection[Any], status: Status) -> None:
    row = conn.cursor(row_factory=dict_row).execute(query("status_summary")).fetchone()
    assert row is not None  # one row, always
    status.revision = row["revision"]
    status.queue_usage = float(row["queue_usage"])
    status.dirty_marks = int(row["dirty_marks"])
    status.dirty_accounts = int(row["dirty_accounts"])
    status.levels = {str(k): int(v) for k, v in row["levels"].items()}
    status.pending_close_requests = int(row["pending_close_requests"])
    status.oldest_close_request_age = row["oldest_close_request_age"]


def _optional(conn: psycopg.Connection[Any], probe: str, read: str) -> dict[str, Any] | None:
    """The one row of ``read``, or None when ``probe`` says this role cannot read its table
    (a schema from before it, a role granted before it): status still runs."""
    readable = conn.execute(query(probe)).fetchone()
    if not readable or not readable[0]:
        return None
    row = conn.cursor(row_factory=dict_row).execute(query(read)).fetchone()
    assert row is not None  # one row, always
    return row


def _deliveries(conn: psycopg.Connection[Any], status: Status) -> None:
    """The webhook outbox, when this role may read it (else None)."""
    row = _optional(conn, "status_reads_deliveries", "status_deliveries")
    if row is None:
        status.pending_deliveries = status.failed_deliveries = None
        return
    status.pending_deliveries = int(row["pending_deliveries"])
    status.oldest_delivery_age = row["oldest_delivery_age"]
    status.failed_deliveries = int(row["failed_deliveries"])


def _dirty_instruments(conn: psycopg.Connection[Any], status: Status) -> None:
    """The instrument marks, when this role may count them (else None)."""
    row = _optional(conn, "status_reads_dirty_instruments", "status_dirty_instruments")
    if row is None:
        status.dirty_instrument_marks = status.dirty_instruments = None
        return
    status.dirty_instrument_marks = int(row["dirty_instrument_marks"])
    status.dirty_instruments = int(row["dirty_instruments"])


def assess(status: Status, limits: Limits) -> list[str]:
    """Every reason the installation is unhealthy; [] when healthy."""
    if not status.installed:
        return ["riskd is not installed in this database (run `riskd migrate`)"]
    problems: list[str] = []
    if status.switch is not None and status.switch.paused:
        problems.append(status.switch.line())
    if status.revision != status.head:
        problems.append(migrate.compare(status.revision)[0])
    problems += [f"{p} (run `riskd migrate`)" for p in status.capture_problems]
    live = status.live(limits)
    if not live:
        problems.append(
            f"no live riskd instance (no heartbeat in the last {_secs(limits.stale_after)})"
        )
    for i in status.stale(limits):
        problems.append(
            f"instance {i.instance} (host {i.host}, pid {i.pid}): last heartbeat "
            f"{_secs(i.heartbeat_age)} ago, stale after {_secs(limits.stale_after)} "
            "(killed, hung or cut off from the database; once it is gone for good: "
            f"DELETE FROM riskd.daemons WHERE instance = '{_quote(i.instance)}')"
        )
    if status.queue_usage > limits.max_queue_usage:
        problems.append(
            f"notification queue {_share(status.queue_usage)} full, "
            f"over {_share(limits.max_queue_usage)} "
            "(a session that LISTENs and never reads holds it)"
        )
    for i in live:
        if i.lag is not None and i.lag > limits.max_lag:
            problems.append(
                f"instance {i.instance}: lag {_secs(i.lag)}, over {_secs(limits.max_lag)} "
                "(checks fall behind the changes)"
            )
    age = status.oldest_delivery_age
    if age is not None and age > limits.max_delivery_age:
        problems.append(
            f"webhook backlog: {status.pending_deliveries} pending, the "
            f"oldest {_secs(age)} old, over {_secs(limits.max_delivery_age)} (the endpoint "
            "keeps failing, or no instance delivers: `riskd deliveries`)"
        )
    disagreement = _risk_disagreement(live)
    if disagreement:
        problems.append(disagreement)
    return [" ".join(p.split()) for p in problems]  # one line each, whatever a row held


def _risk_disagreement(live: list[Instance]) -> str | None:
    """One line naming each risk setting the live instances disagree on, and who runs which
    value; numbers compare as numbers (0.8 is 0.80). An instance that does not say is left
    out: it cannot be compared."""
    differing: list[str] = []
    for key in RISK_KEYS:
        holders: dict[object, tuple[str, list[str]]] = {}  # value -> (as written, instances)
        for i in sorted(live, key=lambda i: i.instance):
            value = (i.risk or {}).get(key)
            if value is not None:
                holders.setdefault(_comparable(value), (value, []))[1].append(i.instance)
        if len(holders) > 1:
            runs = ", ".join(
                f"{value} on {' and '.join(names)}" for value, names in holders.values()
            )
            differing.append(f"[risk] {key}: {runs}")
    if not differing:
        return None
    return (
        f"live instances run different risk settings: {'; '.join(differing)} (each undoes the "
        "other's events and close requests: give every instance the same configuration)"
    )


def _comparable(value: str) -> object:
    try:
        number = Decimal(value)
    except InvalidOperation:
        return value
    return number if number.is_finite() else value


def risk_settings_line(live: list[Instance]) -> str | None:
    """The risk settings every live instance runs with, when they agree and say."""
    known = [i.risk for i in live if i.risk]
    if not known or _risk_disagreement(live):
        return None
    return "risk settings: " + ", ".join(f"{k} {v}" for k, v in known[0].items())


def summary(status: Status, limits: Limits, problems: list[str]) -> str:
    """The first line: a verdict and the essentials, for a monitoring check."""
    if not status.installed:
        return f"riskd UNHEALTHY: {problems[0]}"
    live = status.live(limits)
    lags = [i.lag for i in live if i.lag is not None]
    behind = "" if status.revision == status.head else " (not head)"
    facts = (
        _count(len(live), "live instance")
        + (f", {len(status.stale(limits))} stale" if status.stale(limits) else "")
        + f"; schema {status.revision or 'none'}{behind}"
        + f"; lag {_secs(max(lags)) if lags else 'n/a'}"
        + f"; queue {_share(status.queue_usage)}"
        + f"; {_count(status.pending_close_requests, 'pending close request')}"
    )
    verdict = "OK" if not problems else f"UNHEALTHY ({_count(len(problems), 'problem')})"
    return f"riskd {verdict}: {facts}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _ago(stamp: object, now: datetime) -> str:
    """``last_sweep_at`` (ISO text from the daemon's clock) as an age."""
    if not isinstance(stamp, str):
        return "-"
    try:
        then = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    return f"{_secs(max(0.0, (now - then).total_seconds()))} ago" if then.tzinfo else stamp


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _share(ratio: float) -> str:
    """A share (the notification queue's usage) as every percentage is printed."""
    return numbers.percent(Decimal(repr(ratio)))


def _secs(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _table(title: str) -> Table:
    return Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)


def _instances_table(title: str, instances: list[Instance], now: datetime) -> Table:
    table = _table(title)
    for name in (
        "instance",
        "version",
        "state",
        "uptime",
        "heartbeat",
        "lag",
        "dirty",
        "leader",
        "last sweep",
        "took",
    ):
        table.add_column(name, no_wrap=name in ("instance", "version"))
    for i in instances:
        table.add_row(
            i.instance,
            i.version,
            _show(i.stats.get("state")),
            _secs(i.uptime),
            f"{_secs(i.heartbeat_age)} ago",
            _secs(i.lag),
            _show(i.stats.get("dirty")),
            _show(i.stats.get("leader") is True),
            _ago(i.stats.get("last_sweep_at"), now),
            _secs(i.number("last_sweep_duration")),
        )
    return table


def _counters_table(instances: list[Instance]) -> Table:
    table = _table("counters since start")
    table.add_column("instance", no_wrap=True)
    for name in COUNTERS:
        table.add_column(COUNTER_LABELS.get(name, name), justify="right")
    for i in instances:
        table.add_row(i.instance, *(_show(i.stats.get(k)) for k in COUNTERS))
    return table


def _events_table(events: list[risk_events.Event]) -> Table:
    table = _table("recent events")
    for name in ("id", "at", "account", "transition", "utilisation", "by"):
        table.add_column(name, justify="right" if name == "id" else "left")
    for e in events:
        table.add_row(
            str(e.id),
            e.created_at.isoformat(timespec="seconds"),
            e.account_id,
            f"{e.from_level} -> {e.to_level}",
            numbers.percent(e.utilization),
            e.instance,
        )
    return table


def render(status: Status, limits: Limits, console: Console) -> None:
    """The text report: a one-line summary, one ``UNHEALTHY:`` line per problem, tables."""
    problems = assess(status, limits)
    if status.switch is not None and status.switch.paused:
        console.print(f"*** {status.switch.line()} ***")
    console.print(summary(status, limits, problems))
    for problem in problems:
        console.print(f"UNHEALTHY: {problem}")
    for warning in status.warnings:
        console.print(f"warning: {warning}")
    console.print(f"database: {status.database}")
    if not status.installed:
        return
    console.print(
        f"schema: revision {status.revision or 'none'} (riskd {__version__} needs {status.head})"
    )
    levels = ", ".join(f"{level} {status.levels.get(level, 0)}" for level in LEVELS)
    console.print(f"accounts: {levels}")
    oldest = (
        f", oldest {_secs(status.oldest_close_request_age)} old"
        if status.oldest_close_request_age is not None
        else ""
    )
    console.print(f"close requests pending: {status.pending_close_requests}{oldest}")
    if status.pending_deliveries or status.failed_deliveries:
        waited = (
            f", oldest {_secs(status.oldest_delivery_age)} old"
            if status.oldest_delivery_age is not None
            else ""
        )
        console.print(
            f"webhook deliveries: {status.pending_deliveries} pending{waited}, "
            f"{status.failed_deliveries} failed (riskd deliveries)"
        )
    instruments = (
        f"{status.dirty_instrument_marks} marks for {status.dirty_instruments} instruments"
        if status.dirty_instruments is not None and status.dirty_instrument_marks is not None
        else "instrument marks unknown (riskd.dirty_instruments missing or not readable)"
    )
    console.print(
        f"dirty set: {status.dirty_marks} marks for {status.dirty_accounts} accounts, "
        f"{instruments}; notification queue {_share(status.queue_usage)} "
        f"(limit {_share(limits.max_queue_usage)})"
    )
    live, stale = status.live(limits), status.stale(limits)
    if live:
        console.print(_instances_table("live instances", live, status.checked_at))
        if line := risk_settings_line(live):
            console.print(line)
    if stale:
        title = f"stale instances (heartbeat older than {_secs(limits.stale_after)})"
        console.print(_instances_table(title, stale, status.checked_at))
    if status.instances:
        console.print(_counters_table(status.instances))
    if status.recent_events:
        console.print(_events_table(status.recent_events))
    else:
        console.print("recent events: none")
    if status.recent_alerts:
        console.print("recent alerts (riskd events --alerts):")
        for alert in status.recent_alerts:
            console.print(f"  {alert.line()}")


def limits_from_options(
    stale_after: str, max_queue_usage: float, max_lag: str, max_delivery_age: str = "600s"
) -> Limits:
    """Limits from the command line's text, with one line naming a bad option."""
    try:
        stale = parse_duration(stale_after)
    except ValueError as exc:
        raise ConfigError(f"--stale-after: {exc}") from None
    try:
        lag = parse_duration(max_lag)
    except ValueError as exc:
        raise ConfigError(f"--max-lag: {exc}") from None
    try:
        delivery_age = parse_duration(max_delivery_age)
    except ValueError as exc:
        raise ConfigError(f"--max-delivery-age: {exc}") from None
    return Limits(stale, max_queue_usage, lag, delivery_age)


def console() -> Console:
    """Standard output for the text report: no markup read from data, no colour codes when
    piped, lines never wrapped (a monitoring check reads the first one)."""
    return Console(
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=True,
        width=None if sys.stdout.isatty() else 120,
    )
