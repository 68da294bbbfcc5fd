"""``riskd run`` as a real subprocess against a real PostgreSQL: the loop, then the faults.

Accounts hold one position on an instrument priced 100 with a 10 % margin rate and a balance
of 1 000, so a quantity of 50 is 50 % utilisation, 85 is a warning and 95 is critical.
Assertions are on rows (events, close requests, states, the heartbeat), never on log text
alone; waits poll a condition against a deadline.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Db
from daemonproc import DaemonProcess, wait_until

from riskd import migrate
from riskd.sqlfiles import LOCK_CLASS

Start = Callable[..., DaemonProcess]


@pytest.fixture
def start(db: Db, tmp_path: Path) -> Iterator[Start]:
    started: list[DaemonProcess] = []

    def start(dsn: str | None = None, **daemon: Any) -> DaemonProcess:
        proc = DaemonProcess(
            dsn or db.dsn, tmp_path / f"riskd-{len(started)}.log", **daemon
        ).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


def add_accounts(db: Db, n: int, quantity: str = "50") -> list[str]:
    db.conn.execute(
        "INSERT INTO instruments (id, symbol, price, \"marginRate\") VALUES ('i1', 'I1', 100, 0.1)"
        " ON CONFLICT DO NOTHING"
    )
    ids = [f"acc{i:05d}" for i in range(n)]
    with db.conn.cursor() as cur:
        cur.executemany(
            'INSERT INTO trading_accounts (id, "userId", balance) VALUES (%s, %s, 1000)',
            [(a, f"user-{a}") for a in ids],
        )
        cur.executemany(
            'INSERT INTO positions (id, "tradingAccountId", "instrumentId", quantity,'
            " \"unrealizedPnL\") VALUES (%s, %s, 'i1', %s, 0)",
            [(f"p-{a}", a, Decimal(quantity)) for a in ids],
        )
    return ids


def set_quantity(db: Db, account: str, quantity: str) -> None:
    db.conn.execute(
        'UPDATE positions SET quantity = %s WHERE "tradingAccountId" = %s',
        (Decimal(quantity), account),
    )


def events(db: Db, account: str | None = None) -> list[tuple[str, str, str]]:
    rows = db.conn.execute(
        "SELECT account_id::text, from_level, to_level FROM riskd.risk_events"
        " WHERE %(a)s::text IS NULL OR account_id::text = %(a)s ORDER BY id",
        {"a": account},
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def pending_requests(db: Db) -> dict[str, int]:
    rows = db.conn.execute(
        "SELECT account_id::text, count(*) FROM riskd.close_requests"
        " WHERE status = 'pending' GROUP BY 1"
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def test_breach_is_acted_on_within_max_delay(db: Db, start: Start) -> None:
    (account,) = add_accounts(db, 1)
    daemon = start(debounce="200ms", max_delay="1s")
    daemon.wait_ready()
    changed = time.monotonic()
    set_quantity(db, account, "95")
    wait_until(lambda: events(db, account), 10, "the critical event")
    took = time.monotonic() - changed
    assert events(db, account) == [(account, "ok", "critical")]
    assert pending_requests(db) == {account: 1}
    assert took <= 1.0 + 1.0, f"acted on after {took:.2f} s"
    assert daemon.stop() == 0


@pytest.mark.slow
def test_an_account_updated_every_100ms_is_checked_every_max_delay(db: Db, start: Start) -> None:
    (account,) = add_accounts(db, 1)
    daemon = start(debounce="500ms", max_delay="1s")
    daemon.wait_ready()
    checks: list[float] = []
    last_seen = None
    began = time.monotonic()
    pnl = 0
    while time.monotonic() - began < 10:
        pnl += 1
        db.conn.execute(
            'UPDATE positions SET "unrealizedPnL" = %s WHERE "tradingAccountId" = %s',
            (pnl, account),
        )
        seen = db.scalar(
            "SELECT checked_at FROM riskd.account_state WHERE account_id = %s", (account,)
        )
        if seen != last_seen:
            checks.append(time.monotonic() - began)
            last_seen = seen
        time.sleep(0.1)  # the update rate under test, not a synchronisation
    gaps = [b - a for a, b in zip(checks, checks[1:], strict=False)]
    assert len(checks) >= 6, checks
    assert max(gaps) <= 1.0 + 0.6, gaps  # max_delay, plus check time and our 100 ms polling
    assert daemon.stop() == 0


def test_sigterm_exits_zero_and_removes_the_heartbeat(db: Db, start: Start) -> None:
    accounts = add_accounts(db, 200)
    daemon = start(debounce="0s", max_delay="1s", shutdown_timeout="5s")
    daemon.wait_ready()
    for a in accounts:
        set_quantity(db, a, "95")
    began = time.monotonic()
    assert daemon.stop(timeout=10) == 0
    assert time.monotonic() - began <= 5 + 1
    assert db.scalar("SELECT count(*) FROM riskd.daemons") == 0
    # what it had not checked is back in the dirty set or done: nothing is lost (I2, I6)
    done = {a for a, _, _ in events(db)}
    waiting = {
        r[0]
        for r in db.conn.execute("SELECT account_id::text FROM riskd.dirty_accounts").fetchall()
    }
    assert set(accounts) <= done | waiting


def test_second_signal_exits_at_once(db: Db, start: Start) -> None:
    """A check held in flight (its account's lock taken by the test): the first SIGTERM waits
    for it (shutdown_timeout 30 s), the second exits at once, with 1."""
    (account,) = add_accounts(db, 1)
    daemon = start(debounce="0s", shutdown_timeout="30s")
    daemon.wait_ready()
    with psycopg.connect(db.dsn, autocommit=True) as blocker:
        blocker.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, account))
        set_quantity(db, account, "95")
        wait_until(
            lambda: db.scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ),
            10,
            "the check to wait on the lock",
        )
        daemon.signal(signal.SIGTERM)
        wait_until(
            lambda: "signal.received signal=SIGTERM" in daemon.log(), 10, "the first signal taken"
        )
        assert daemon.alive()  # waiting for the check in flight
        daemon.signal(signal.SIGTERM)
        assert daemon.proc is not None
        began = time.monotonic()
        assert daemon.proc.wait(10) == 1
        assert time.monotonic() - began < 5


def test_refuses_a_mapping_unlike_the_installed_one(db: Db, start: Start) -> None:
    daemon = start(extra_env={"RISKD_SCHEMA_POSITION_PNL": "averagePrice"})
    assert daemon.proc is not None and daemon.proc.wait(20) == 2
    lines = [line for line in daemon.log().splitlines() if line.startswith("riskd:")]
    assert len(lines) == 1 and "[schema]" in lines[0] and "riskd migrate" in lines[0], lines
    assert "Traceback" not in daemon.log()


def test_refuses_a_database_without_riskd(bare_db: Db, start: Start) -> None:
    daemon = start(dsn=bare_db.dsn)
    assert daemon.proc is not None and daemon.proc.wait(20) == 2
    lines = [line for line in daemon.log().splitlines() if line.startswith("riskd:")]
    assert lines == ["riskd: riskd is not installed in this database: run `riskd migrate` first"]


def test_a_dead_instance_row_is_pruned_after_a_while(db: Db, start: Start) -> None:
    db.conn.execute(
        "INSERT INTO riskd.daemons (instance, host, pid, version, heartbeat_at, stats)"
        " VALUES ('recent:1', 'h', 1, '0', now() - interval '1 min', %(stats)s),"
        " ('long-gone:2', 'h', 2, '0', now() - interval '6 min', %(stats)s)",
        {"stats": json.dumps({"schema_revision": migrate.head()})},
    )
    daemon = start()
    daemon.wait_ready()
    rows = db.conn.execute("SELECT instance FROM riskd.daemons ORDER BY 1").fetchall()
    assert [r[0] for r in rows if not r[0].startswith(("recent", "long"))]  # ours
    assert ("recent:1",) in rows and ("long-gone:2",) not in rows
    assert daemon.stop() == 0


def test_idle_instances_stay_idle(db: Db, start: Start) -> None:
    """Two idle instances, one of them not the sweep leader: a handful of transactions per
    second between them (timer drains, pings, heartbeats), not a busy loop on the lock."""
    daemons = [start(), start()]
    for d in daemons:
        d.wait_ready()
    query = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    db.conn.execute("SELECT pg_stat_clear_snapshot()")
    before = db.scalar(query)
    time.sleep(3.0)  # the measuring window, not a synchronisation
    db.conn.execute("SELECT pg_stat_clear_snapshot()")
    per_second = (db.scalar(query) - before) / 3.0
    assert per_second < 300, f"{per_second:.0f} transactions/s from two idle daemons"
    for d in daemons:
        assert d.stop() == 0


def test_a_trade_holding_one_account_does_not_hold_back_the_others(db: Db, start: Start) -> None:
    """Flatten mode: a trade holds one breached account's row; the flatten of that account
    gives up in 200 ms and is retried, and the other accounts of its batch go through."""
    busy, *others = add_accounts(db, 5)
    daemon = start(debounce="0s", extra_env={"RISKD_RISK_AUTO_CLOSE": "flatten"})
    daemon.wait_ready()
    with psycopg.connect(db.dsn) as trader:
        trader.execute(
            'UPDATE trading_accounts SET "userId" = "userId" WHERE id = %s', (busy,)
        )  # the trade's transaction holds the account row, which a flatten locks too
        with db.conn.transaction():  # all five breach in one statement: one batch
            db.conn.execute("UPDATE positions SET quantity = 95")
        wait_until(lambda: {a for a, _, _ in events(db)} >= set(others), 15, "the others flattened")
        assert busy not in {a for a, _, _ in events(db)}
        trader.commit()
    wait_until(lambda: busy in {a for a, _, _ in events(db)}, 15, "the busy one, after")
    flattened = db.scalar("SELECT count(*) FROM riskd.close_requests WHERE status = 'done'")
    assert flattened == 5
    assert daemon.stop() == 0
