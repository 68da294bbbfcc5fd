"""I10 as an operator lives it: riskd 0.1.0 installed by its own release, its daemon running,
trading going on, then `riskd migrate` of this release and its daemon started.

No trading write fails or waits longer than the migration's lock timeout; every event, close
request, limit and account state is kept; an account breached while the upgrade ran is caught;
every account traded during the upgrade is checked afterwards; the old daemon stops with one
line (the version fence) and exit 2, and the new one takes over.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemonproc import DaemonProcess, wait_until
from release import run as run_release
from release import unpack
from test_upgrades import database

from riskd import migrate
from riskd.migrate import LOCK_TIMEOUT

pytestmark = pytest.mark.slow

ACCOUNTS = 60
TRADERS = 4


@dataclass
class Trading:
    """Fills on a set of accounts from a few sessions, each write timed."""

    dsn: str
    accounts: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    # account -> the server time of its last committed write
    last_write: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def trader(self, n: int) -> None:
        mine = self.accounts[n::TRADERS]
        with psycopg.connect(self.dsn, autocommit=False) as conn:
            conn.execute("SET statement_timeout = '30s'")
            conn.commit()
            i = 0
            while not self.stop.is_set():
                account = mine[i % len(mine)]
                quantity = Decimal(10 + (i // len(mine)) % 2)
                started = time.monotonic()
                try:
                    conn.execute(
                        'UPDATE positions SET quantity = %s WHERE "tradingAccountId" = %s',
                        (quantity, account),
                    )
                    conn.execute(
                        "UPDATE trading_accounts SET balance = balance + 1 WHERE id = %s",
                        (account,),
                    )
                    row = conn.execute("SELECT clock_timestamp()").fetchone()
                    conn.commit()
                except psycopg.Error as exc:
                    conn.rollback()
                    with self.lock:
                        self.failures.append(f"{account}: {type(exc).__name__}: {exc}")
                    continue
                with self.lock:
                    self.latencies.append(time.monotonic() - started)
                    assert row is not None
                    self.last_write[account] = row[0]
                i += 1

    def __enter__(self) -> Trading:
        self.threads = [threading.Thread(target=self.trader, args=(n,)) for n in range(TRADERS)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def writes(self) -> int:
        with self.lock:
            return len(self.latencies)


def riskd_rows(conn: psycopg.Connection[Any]) -> dict[str, set[tuple[Any, ...]]]:
    def rows(query: str) -> set[tuple[Any, ...]]:
        return set(conn.execute(query).fetchall())  # type: ignore[arg-type]

    return {
        "events": rows("SELECT id, account_id, from_level, to_level FROM riskd.risk_events"),
        "close_requests": rows("SELECT id, account_id, status FROM riskd.close_requests"),
        "limits": rows(
            "SELECT account_id, warning_threshold, auto_close_threshold FROM riskd.account_limits"
        ),
        "states": rows("SELECT account_id, level FROM riskd.account_state"),
    }


def upgrade_waits(conn: psycopg.Connection[Any]) -> bool:
    """The migration asks for riskd.daemons (to add the version fence) and waits."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE NOT granted"
        " AND relation = 'riskd.daemons'::regclass AND mode = 'ShareRowExclusiveLock'"
    ).fetchone()
    return bool(row and row[0])


def test_upgrade_from_riskd_0_1_0_with_its_daemon_running_and_trading_going_on(
    server: Any, tmp_path: Path
) -> None:
    old = unpack("0.1.0", tmp_path)
    with database(server, "reference") as db:
        assert run_release(old, "migrate", dsn=db.dsn).returncode == 0
        accounts = [f"a{i:03d}" for i in range(ACCOUNTS)]
        db.conn.execute("INSERT INTO instruments VALUES ('i1', 'I1', 100, 0.1)")
        for account in [*accounts, "hot", "breached"]:
            db.conn.execute(
                "INSERT INTO trading_accounts VALUES (%s, %s, 10000)", (account, f"u-{account}")
            )
            db.conn.execute(
                'INSERT INTO positions (id, "tradingAccountId", "instrumentId", quantity)'
                " VALUES (%s, %s, 'i1', 10)",
                (f"p-{account}", account),
            )
        db.conn.execute("UPDATE trading_accounts SET balance = 100 WHERE id = 'breached'")
        db.conn.execute("INSERT INTO riskd.account_limits VALUES ('a001', 0.5, 0.6)")

        old_daemon = DaemonProcess(db.dsn, tmp_path / "old.log", cwd=old).start()
        new_daemon = DaemonProcess(db.dsn, tmp_path / "new.log")
        try:
            old_daemon.wait_ready()
            # the old daemon's first sweep found the breached account: an event, a request
            wait_until(
                lambda: db.scalar("SELECT count(*) FROM riskd.close_requests") == 1,
                30,
                "the old daemon's close request",
            )
            before = riskd_rows(db.conn)
            with Trading(db.dsn, accounts) as trading:
                wait_until(lambda: trading.writes() > 200, 30, "trading to get going")
                # a heartbeat held in flight keeps the upgrade waiting on its lock (and
                # retrying) while a breach is made
                blocker = db.connect(autocommit=False)
                blocker.execute("LOCK TABLE riskd.daemons IN ROW EXCLUSIVE MODE")
                during = time.monotonic()
                upgrade = threading.Thread(target=migrate.migrate, args=(db.settings,))
                upgrade.start()
                wait_until(lambda: upgrade_waits(db.conn), 30, "the upgrade to wait on its lock")
                db.conn.execute("UPDATE positions SET quantity = 95 WHERE id = 'p-hot'")
                db.conn.execute("UPDATE trading_accounts SET balance = 1000 WHERE id = 'hot'")
                blocker.rollback()
                blocker.close()
                upgrade.join(120)
                assert migrate.current(db.settings) == migrate.head()
                upgraded = time.monotonic()
                # the old daemon meets the fence at its next heartbeat
                old_exit = old_daemon.proc.wait(30) if old_daemon.proc else None
                # before the new daemon (whose first sweep would cover anything): the breach
                # made during the upgrade is either acted on by the old daemon already or
                # still marked in the dirty set (drained and handed back at its stop)
                assert (
                    db.scalar(
                        "SELECT count(*) FROM riskd.risk_events"
                        " WHERE account_id = 'hot' AND to_level = 'critical'"
                    )
                    + db.scalar(
                        "SELECT count(*) FROM riskd.dirty_accounts WHERE account_id = 'hot'"
                    )
                    >= 1
                ), "the mark made during the upgrade was lost"
                new_daemon.start()
                new_daemon.wait_ready()
                writes_at_restart = trading.writes()
                wait_until(
                    lambda: trading.writes() > writes_at_restart + 200, 30, "trading to go on"
                )
            last_write = dict(trading.last_write)

            assert trading.failures == []
            assert max(trading.latencies) < float(LOCK_TIMEOUT.removesuffix("s"))
            assert old_exit == 2, old_daemon.log()
            errors = [line for line in old_daemon.log().splitlines() if " ERROR " in line]
            assert len(errors) == 1, old_daemon.log()
            assert f"schema is at revision {migrate.head()}" in errors[0]
            assert "Traceback" not in old_daemon.log()

            # the breach made during the upgrade is acted on, once
            wait_until(
                lambda: (
                    db.scalar(
                        "SELECT count(*) FROM riskd.risk_events"
                        " WHERE account_id = 'hot' AND to_level = 'critical'"
                    )
                    == 1
                ),
                30,
                "the breach made during the upgrade to be caught",
            )

            # every account traded has the figures of its last write recorded (by its figures:
            # checked_at is the check's start, which may precede a write its read then saw)
            def unchecked() -> list[str]:
                rows = db.conn.execute(
                    "SELECT a.id FROM trading_accounts AS a"
                    ' JOIN positions AS p ON p."tradingAccountId" = a.id'
                    ' JOIN instruments AS i ON i.id = p."instrumentId"'
                    " LEFT JOIN riskd.account_state AS s ON s.account_id = a.id"
                    " WHERE a.id = ANY(%s) AND (s.account_id IS NULL OR s.equity <> a.balance"
                    '   OR s.used_margin <> abs(p.quantity) * i.price * i."marginRate")',
                    (list(last_write),),
                ).fetchall()
                return [r[0] for r in rows]

            wait_until(lambda: unchecked() == [], 30, "every traded account to be checked")

            after = riskd_rows(db.conn)
            for table in ("events", "close_requests", "limits"):
                assert before[table] <= after[table], table
            assert {a for a, _ in before["states"]} <= {a for a, _ in after["states"]}
            print(
                f"\nupgrade under load: {len(trading.latencies)} writes, 0 failed, "
                f"max {max(trading.latencies) * 1000:.0f} ms; migrate took "
                f"{upgraded - during:.2f} s"
            )
            assert new_daemon.stop() == 0
        finally:
            old_daemon.close()
            new_daemon.close()
