"""What the dashboard reads: riskd's own tables only, as the monitoring role, each page in one
read-only snapshot. The named queries of ``sql/dashboard.sql``, and those ``riskd status`` and
``riskd accounts`` already use (``sql/queries.sql``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from riskd import capture, migrate, numbers, rails, status
from riskd.config import Settings
from riskd.dashboard.present import Cursor, alert_message, event_message, level_changes
from riskd.levels import LEVELS
from riskd.sqlfiles import query

QUERIES = "dashboard.sql"
NEAREST = 20  # the accounts at ok nearest their warning threshold, on the overview
RANKED = 50  # the accounts the seldom ranking hands to every refresh, to follow by their keys
LISTED = 20  # pending close requests, recent events, instances...
ACCOUNT_ROWS = 50  # an account's events and close requests
FEED_BATCH = 200  # rows a feed read takes at most (a browser far behind reads on)


def _q(name: str) -> Any:
    return query(name, file=QUERIES)


async def _rows(
    conn: psycopg.AsyncConnection[Any], statement: Any, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        set_json_loads(numbers.loads_exact, cur)  # jsonb numbers exact: money is no float
        await cur.execute(statement, params)
        return await cur.fetchall()


async def _readable(conn: psycopg.AsyncConnection[Any], probe: str) -> bool:
    cur = await conn.execute(query(probe))
    row = await cur.fetchone()
    return bool(row and row[0])


def _thresholds(settings: Settings) -> dict[str, Any]:
    return {
        "warning": settings.risk.warning_threshold,
        "auto_close": settings.risk.auto_close_threshold,
    }


@dataclass(frozen=True, slots=True)
class Ranking:
    """The accounts at ok nearest their warning threshold, as the seldom read over every
    account ranked them, and how many accounts riskd keeps a level for."""

    ids: list[str]
    accounts: int
    at: float  # time.monotonic() when it was read


async def ranking(conn: psycopg.AsyncConnection[Any], settings: Settings) -> Ranking:
    """Every account at ok, ranked by its distance to its warning threshold: the overview's
    one read over every account, made seldom (riskd.dashboard.app); the ``RANKED`` nearest are
    followed at every refresh by their keys."""
    (row,) = await _rows(conn, _q("ok_ranking"), _thresholds(settings) | {"limit": RANKED})
    return Ranking([str(i) for i in row["ranked"]], int(row["accounts"]), time.monotonic())


async def overview(
    conn: psycopg.AsyncConnection[Any], settings: Settings, ranked: Ranking
) -> dict[str, Any]:
    """The overview page's figures, read in one snapshot, each through an index or a limit:
    the accounts over a threshold (all of them counted, the worst listed), the ranked accounts
    as they are now, the instances, the pending close requests, the feed."""
    thresholds = _thresholds(settings)
    async with conn.transaction():
        await conn.execute(_q("snapshot"))
        (summary,) = await _rows(conn, _q("overview_summary"))
        changes = level_changes(
            (r["from_level"], r["to_level"], r["n"]) for r in await _rows(conn, _q("level_changes"))
        )
        trouble = await _rows(
            conn,
            _q("accounts_in_trouble"),
            thresholds | {"mode": settings.risk.auto_close, "limit": LISTED},
        )
        nearest = await _rows(
            conn, _q("ok_nearest"), thresholds | {"ids": ranked.ids, "limit": NEAREST}
        )
        instances = await _rows(conn, query("status_instances"))
        pending = await _rows(conn, _q("pending_close_requests"), {"limit": LISTED})
        deliveries = (
            (await _rows(conn, query("status_deliveries")))[0]
            if settings.webhook.url or await _readable(conn, "status_reads_deliveries")
            else None
        )
        switch = (
            (await _rows(conn, query("controls")))[0]
            if await _readable(conn, "reads_controls")
            else None
        )
        capture_problems = await capture.aproblems(conn, settings.schema)
        (cursors,) = await _rows(conn, _q("feed_cursors"))
        start = Cursor(max(0, cursors["event_id"] - LISTED), max(0, cursors["alert_id"] - LISTED))
        feed = await feed_rows(conn, start, LISTED)
    health = _health(summary, instances, switch, deliveries, capture_problems, settings)
    over = {level: int(summary["in_trouble"].get(level, 0)) for level in LEVELS if level != "ok"}
    # the accounts at ok: those riskd keeps a level for (counted with the ranking, seldom)
    # less those over a threshold now
    levels = {"ok": max(0, ranked.accounts - sum(over.values()))} | over
    return {
        "read_at": summary["read_at"],
        "health": health,
        "levels": levels,
        "level_changes": changes,
        "in_trouble": trouble,
        "nearest": nearest,
        "nearest_ranked_age": time.monotonic() - ranked.at,
        "instances": [instance_row(i) for i in instances],
        "pending_close_requests": pending,
        "pending_close_requests_total": int(summary["pending_close_requests"]),
        "oldest_close_request_age": summary["oldest_close_request_age"],
        "deliveries": deliveries,
        "switch": switch,
        "feed": [message for message, _ in feed],
        "cursor": str(feed[-1][1] if feed else Cursor(cursors["event_id"], cursors["alert_id"])),
        "revision": summary["revision"],
        "queue_usage": summary["queue_usage"],
    }


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _health(
    summary: dict[str, Any],
    instances: list[dict[str, Any]],
    switch: dict[str, Any] | None,
    deliveries: dict[str, Any] | None,
    capture_problems: list[str],
    settings: Settings,
) -> dict[str, Any]:
    """riskd's health judged by the rules of ``riskd status`` (riskd.status.assess), from what
    the overview read: its verdict, its problems (one line each) and its summary line; and
    one more of the page's own: the thresholds it shows are its configuration's, so a live
    instance running others makes them wrong."""
    st = status.Status(
        database="",
        head=migrate.head(),
        installed=True,
        revision=summary["revision"],
        instances=[status.Instance(**(row | {"stats": _dict(row["stats"])})) for row in instances],
        queue_usage=float(summary["queue_usage"] or 0),
        switch=rails.Switch(**switch) if switch else None,
        pending_close_requests=int(summary["pending_close_requests"]),
        capture_problems=capture_problems,
        **(
            {
                "pending_deliveries": int(deliveries["pending_deliveries"]),
                "oldest_delivery_age": deliveries["oldest_delivery_age"],
            }
            if deliveries
            else {}
        ),
    )
    limits = status.Limits()
    live = st.live(limits)
    problems = status.assess(st, limits) + _settings_problems(live, settings)
    paused = " ".join(st.switch.line().split()) if st.switch and st.switch.paused else None
    return {
        "healthy": not problems,
        "problems": problems,
        "shown": [p for p in problems if p != paused],  # the page says PAUSED on its own
        "summary": status.summary(st, limits, problems),
        "live": len(live),
        "heartbeat_age": min((i.heartbeat_age for i in live), default=None),
        "lag": max((i.lag or 0.0 for i in live), default=0.0),
    }


# what the page computes with its own [risk] settings: the thresholds, the mode, the ranking
SHOWN_SETTINGS = ("warning_threshold", "auto_close_threshold", "auto_close")


def _settings_problems(live: list[status.Instance], settings: Settings) -> list[str]:
    """One line when a live instance runs risk settings other than the dashboard's own (the
    page's thresholds, modes and ranking are then not riskd's)."""
    mine = {key: str(getattr(settings.risk, key)) for key in SHOWN_SETTINGS}
    differing = sorted(
        {
            f"[risk] {key} {theirs[key]} on {i.instance}, {mine[key]} here"
            for i in live
            if (theirs := i.risk)
            for key in SHOWN_SETTINGS
            if key in theirs and _differs(theirs[key], mine[key])
        }
    )
    if not differing:
        return []
    return [
        "this dashboard's risk settings are not the daemon's: "
        + "; ".join(differing)
        + " (start it with the daemon's configuration: the thresholds shown are wrong)"
    ]


def _differs(theirs: str, mine: str) -> bool:
    try:
        return Decimal(theirs) != Decimal(mine)
    except ArithmeticError:
        return theirs != mine


STALE_AFTER = status.STALE_AFTER  # seconds without a heartbeat: the instance is not working


def instance_row(row: dict[str, Any]) -> dict[str, Any]:
    """An instance as the page shows it, from its heartbeat row (its stats decoded exactly:
    numbers are Decimals there)."""
    stats = row["stats"] if isinstance(row["stats"], dict) else {}
    uptime = float(row["uptime"] or 0)
    checks = float(stats.get("checks") or 0)
    return {
        "instance": row["instance"],
        "host": row["host"],
        "version": row["version"],
        "state": str(stats.get("state") or "?"),
        "heartbeat_age": float(row["heartbeat_age"]),
        "stale": float(row["heartbeat_age"]) > STALE_AFTER,
        "lag": float(stats.get("lag") or 0),
        "leader": stats.get("leader") is True,
        "checks_per_second": checks / uptime if uptime >= 1 else 0.0,
        "paused": stats.get("paused") is True,
    }


Rows = list[dict[str, Any]]


async def feed_rows(
    conn: psycopg.AsyncConnection[Any], cursor: Cursor, limit: int = FEED_BATCH
) -> list[tuple[dict[str, Any], Cursor]]:
    """The events and alerts after ``cursor``, oldest first (by time), each with the cursor
    after it."""
    return feed_merge(cursor, *await feed_tables(conn, cursor, limit))


async def feed_tables(
    conn: psycopg.AsyncConnection[Any], cursor: Cursor, limit: int = FEED_BATCH
) -> tuple[Rows, Rows]:
    """The events after ``cursor``, and its alerts, each by id (at most ``limit`` of each)."""
    events = await _rows(conn, _q("feed_events"), {"after": cursor.event_id, "limit": limit})
    alerts = await _rows(conn, _q("feed_alerts"), {"after": cursor.alert_id, "limit": limit})
    return events, alerts


def feed_merge(cursor: Cursor, events: Rows, alerts: Rows) -> list[tuple[dict[str, Any], Cursor]]:
    """Events and alerts as messages, oldest first (by time), each with the cursor after it."""
    tagged = [("event", r) for r in events] + [("alert", r) for r in alerts]
    tagged.sort(key=lambda t: (t[1]["created_at"], t[0] == "event", t[1]["id"]))
    out: list[tuple[dict[str, Any], Cursor]] = []
    for kind, row in tagged:
        cursor = cursor.after(kind, row["id"])
        out.append((event_message(row) if kind == "event" else alert_message(row), cursor))
    return out


async def cursors(conn: psycopg.AsyncConnection[Any]) -> Cursor:
    (row,) = await _rows(conn, _q("feed_cursors"))
    return Cursor(int(row["event_id"]), int(row["alert_id"]))


async def account(
    conn: psycopg.AsyncConnection[Any], settings: Settings, account_id: str
) -> dict[str, Any] | None:
    """The account page: its figures, thresholds, events with their evidence, close requests
    and alerts; None when riskd has never checked it (or the id is not one)."""
    params = {"account": account_id}
    try:
        async with conn.transaction():
            await conn.execute(_q("snapshot"))
            figures = await _rows(conn, _q("account_figures"), params | _thresholds(settings))
            if not figures:
                return None
            listed = params | {"limit": ACCOUNT_ROWS}
            events = await _rows(conn, _q("account_events"), listed)
            requests = await _rows(conn, _q("account_close_requests"), listed)
            alerts = await _rows(conn, _q("account_alerts"), listed)
    except (psycopg.errors.InvalidTextRepresentation, psycopg.errors.NumericValueOutOfRange):
        return None  # not an id of this installation's type: no such account
    latest = next((e for e in events if isinstance(e["detail"], dict)), None)
    return {
        "figures": figures[0],
        "events": events,
        "close_requests": requests,
        "alerts": alerts,
        # the positions as the latest event's check saw them (the monitoring role reads
        # nothing of the platform's tables)
        "positions": (latest or {}).get("detail", {}).get("positions") or [],
        "positions_at": latest["created_at"] if latest else None,
    }
