"""``riskd run`` as a subprocess: what its stop says about the accounts it had not checked yet
(handed back to the dirty set, or not, and then never claimed to be), and an account whose rows
a trade keeps locked, which must not slow down the checks of the others.

Accounts as in test_daemon: one position on an instrument priced 100 with a 10 % margin rate
and a balance of 1 000. Waits poll a condition against a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Db
from daemonproc import DaemonProcess, wait_until
from test_daemon import add_accounts, set_quantity

from riskd import migrate

Start = Callable[..., DaemonProcess]

# marks wait in the debouncer far longer than any of these tests: the stop finds them there
HOLD = {"debounce": "60s", "max_delay": "120s"}
HANDED_BACK = "handed_back=true"
NOT_HANDED_BACK = 'daemon.stopped left=3 handed_back=false then="the next sweep checks them"'


@pytest.fixture
def start(db: Db, tmp_path: Path) -> Iterator[Start]:
    started: list[DaemonProcess] = []

    def start(**daemon: Any) -> DaemonProcess:
        proc = DaemonProcess(db.dsn, tmp_path / f"riskd-{len(started)}.log", **daemon).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


def holding(db: Db, start: Start, n: int) -> tuple[DaemonProcess, list[str]]:
    """A running daemon whose debouncer holds ``n`` accounts, marked after its start."""
    daemon = start(**HOLD)
    daemon.wait_ready()
    accounts = add_accounts(db, n)  # inserting their positions marks them
    daemon.wait_stats(lambda s: s["dirty"] == n, 15, f"{n} accounts held by the debouncer")
    return daemon, accounts


def dirty(db: Db) -> set[str]:
    rows = db.conn.execute("SELECT account_id::text FROM riskd.dirty_accounts").fetchall()
    return {r[0] for r in rows}


def stop_lines(daemon: DaemonProcess) -> list[str]:
    """The daemon's last words, as logged (text format: time level logger: event fields)."""
    prefix = "riskd.daemon: "
    lines = daemon.log().splitlines()
    return [line.split(prefix, 1)[1] for line in lines if f"{prefix}daemon.stopped" in line]


def test_a_stop_with_nothing_left_says_stopped(db: Db, start: Start) -> None:
    daemon = start()
    daemon.wait_ready()
    assert daemon.stop() == 0
    assert stop_lines(daemon) == ["daemon.stopped left=0"]


def test_accounts_held_at_the_stop_are_handed_back(db: Db, start: Start) -> None:
    daemon, accounts = holding(db, start, 3)
    assert dirty(db) == set()  # drained: the debouncer has them
    assert daemon.stop() == 0
    assert dirty(db) == set(accounts)
    assert stop_lines(daemon) == [f"daemon.stopped left=3 {HANDED_BACK}"]


def test_a_refused_hand_back_is_not_claimed(db: Db, start: Start) -> None:
    """The dirty set refuses the hand-back (a trigger the test adds raises): the daemon still
    stops cleanly, says the accounts could not be handed back, and never that they were."""
    daemon, _ = holding(db, start, 3)
    db.conn.execute(
        "CREATE FUNCTION public.refuse_hand_back() RETURNS trigger LANGUAGE plpgsql"
        " AS $$BEGIN RAISE EXCEPTION 'the test refuses the hand-back'; END$$"
    )
    db.conn.execute(
        "CREATE TRIGGER refuse_hand_back BEFORE INSERT ON riskd.dirty_accounts"
        " FOR EACH STATEMENT EXECUTE FUNCTION public.refuse_hand_back()"
    )
    assert daemon.stop() == 0
    assert dirty(db) == set()
    log = daemon.log()
    assert "handback.failed accounts=3 " in log and "the test refuses the hand-back" in log
    assert HANDED_BACK not in log, log
    assert stop_lines(daemon) == [NOT_HANDED_BACK]


def test_riskd_removed_under_the_daemon_leaves_nothing_claimed(db: Db, start: Start) -> None:
    """`riskd migrate --revision base` under a running daemon: it stops by itself (exit 2),
    and its last line does not pretend the accounts it held went back to a dirty set that no
    longer exists."""
    daemon, _ = holding(db, start, 3)
    migrate.migrate(db.settings, "base")
    assert daemon.proc is not None and daemon.proc.wait(30) == 2
    log = daemon.log()
    assert HANDED_BACK not in log, log
    assert "Traceback" not in log, log  # a worker failing on the way out says so in a line
    assert stop_lines(daemon) == [NOT_HANDED_BACK]


def used_margin(db: Db, account: str) -> Decimal | None:
    row = db.conn.execute(
        "SELECT used_margin FROM riskd.account_state WHERE account_id = %s", (account,)
    ).fetchone()
    return None if row is None else row[0]


def check_of(db: Db, account: str, quantity: int) -> Callable[[], bool]:
    """Whether ``account`` was checked at ``quantity`` (used margin = quantity × 100 × 0.1)."""
    return lambda: used_margin(db, account) == Decimal(quantity * 10)


def test_an_account_a_trade_keeps_locked_does_not_slow_the_others(db: Db, start: Start) -> None:
    """Flatten mode: a trade holds a critical account's row, so every check of it fails on the
    lock. It waits alone, longer each time; the checker does not pause for it, so the other
    account's changes are checked one after the other at once (the checker paused 200 ms on
    every failure of the busy account: 10 changes then took 2 s and more). Measured against the
    same 10 changes with no lock held, in the same run, so a loaded machine slows both."""
    busy, other = add_accounts(db, 2)
    daemon = start(debounce="0s", max_delay="1s", extra_env={"RISKD_RISK_AUTO_CLOSE": "flatten"})
    daemon.wait_ready()

    def ten_changes() -> float:
        began = time.monotonic()
        for i in range(10):
            quantity = 60 if i % 2 == 0 else 50
            set_quantity(db, other, str(quantity))
            wait_until(check_of(db, other, quantity), 10, "the other account checked", 0.005)
        return time.monotonic() - began

    set_quantity(db, other, "40")
    wait_until(check_of(db, other, 40), 10, "the other account checked", 0.005)
    unlocked = ten_changes()
    with psycopg.connect(db.dsn) as trader:
        trader.execute('UPDATE trading_accounts SET "userId" = "userId" WHERE id = %s', (busy,))
        set_quantity(db, busy, "95")  # critical: each check of it tries to flatten it
        wait_until(lambda: "LockNotAvailable" in daemon.log(), 10, "a check to meet the lock")
        set_quantity(db, other, "40")
        wait_until(check_of(db, other, 40), 10, "the other account checked", 0.005)
        took = ten_changes()
        assert took < unlocked + 1.0, f"10 checks took {took:.2f} s, {unlocked:.2f} s unlocked"
        done = "SELECT count(*) FROM riskd.close_requests WHERE status = 'done'"
        assert db.scalar(done) == 0  # the busy one could not be flattened meanwhile
        trader.commit()
    wait_until(lambda: db.scalar(done) == 1, 10, "the busy account flattened once released")
    assert daemon.stop() == 0
