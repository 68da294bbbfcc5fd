"""Capture (DESIGN §2.1) against a real server: what marks an account dirty, what wakes the
daemon, and I1 — a trading write never fails because of riskd.

Every test seeds a few rows with plain INSERTs into the reference tables, empties the dirty log
(seeding marks too) and then looks at ``riskd.dirty_accounts`` as a multiset of account ids.
Notifications are counted up to a fence: after the change under test, the test's own
autocommit connection sends ``NOTIFY riskd_changes, '<fence>'``; notifications are delivered in
commit order, so every wake-up the change sent arrives before the fence, and an absent wake-up
is proven without waiting on a timeout.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from conftest import Db
from daemonproc import wait_until
from psycopg import sql
from psycopg.conninfo import make_conninfo

from riskd.sqlfiles import query

CHANNEL = "riskd_changes"
FENCE = "capture-test-fence"
WAIT = 10.0  # seconds; only ever reached when a fence is lost, i.e. on failure


# --- seeding -----------------------------------------------------------------------------------


def add_accounts(db: Db, *ids: str, balance: int = 10_000) -> None:
    for account in ids:
        db.conn.execute(
            'INSERT INTO public.trading_accounts (id, "userId", balance) VALUES (%s, %s, %s)',
            (account, f"user-{account}", balance),
        )


def add_instrument(
    db: Db, instrument: str, price: int | None = 100, margin_rate: str | None = "0.1"
) -> None:
    db.conn.execute(
        'INSERT INTO public.instruments (id, symbol, price, "marginRate") '
        "VALUES (%s, %s, %s, %s::numeric)",
        (instrument, instrument.upper(), price, margin_rate),
    )


def add_position(
    db: Db,
    position: str,
    account: str,
    instrument: str = "btc",
    quantity: int = 1,
    pnl: int | None = 0,
) -> None:
    db.conn.execute(
        "INSERT INTO public.positions "
        '(id, "tradingAccountId", "instrumentId", quantity, "averagePrice", "unrealizedPnL") '
        "VALUES (%s, %s, %s, %s, 100, %s)",
        (position, account, instrument, quantity, pnl),
    )


def basic(db: Db, pnl: int | None = 0) -> None:
    """Accounts a and b, instrument btc, position p1 of a (quantity 1)."""
    add_accounts(db, "a", "b")
    add_instrument(db, "btc")
    add_position(db, "p1", "a", pnl=pnl)
    clear(db)


# --- the dirty log and the wake-up ---------------------------------------------------------------


def dirty(db: Db) -> Counter[str]:
    """The account ids in the dirty log, with how often each was marked."""
    rows = db.conn.execute("SELECT account_id FROM riskd.dirty_accounts").fetchall()
    return Counter(row[0] for row in rows)


def clear(db: Db) -> None:
    db.conn.execute("DELETE FROM riskd.dirty_accounts")
    db.conn.execute("DELETE FROM riskd.dirty_instruments")


def rearm(db: Db) -> None:
    """What the daemon does before it drains: the next mark draws 1 and notifies."""
    db.conn.execute("SELECT setval('riskd.wakeup', 1, false)")


@contextmanager
def listening(db: Db) -> Iterator[psycopg.Connection[Any]]:
    conn = db.connect()
    try:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        yield conn
    finally:
        conn.close()


def wakeups(db: Db, listener: psycopg.Connection[Any]) -> int:
    """The riskd wake-ups ``listener`` received up to now, counted up to a fresh fence."""
    db.conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, FENCE))
    seen: list[str] = []
    for note in listener.notifies(timeout=WAIT):
        if note.payload == FENCE:
            assert seen == [""] * len(seen), f"unexpected payloads on {CHANNEL}: {seen}"
            return len(seen)
        seen.append(note.payload)
    raise AssertionError(f"the fence notification did not arrive within {WAIT} s")


def marks(db: Db, statement: str, params: Any = None) -> Counter[str]:
    """Run one statement in its own transaction on a fresh session; what it marked."""
    clear(db)
    with db.connect() as conn:
        conn.execute(statement, params)
    return dirty(db)


PNL_UP = 'UPDATE public.positions SET "unrealizedPnL" = coalesce("unrealizedPnL", 0) + 1'


# --- positions -----------------------------------------------------------------------------------


def test_position_insert_marks_its_account(db: Db) -> None:
    basic(db)
    add_position(db, "p2", "b", quantity=3)
    assert dirty(db) == Counter({"b": 1})


def test_position_insert_with_zero_quantity_does_not_mark(db: Db) -> None:
    basic(db)
    add_position(db, "p2", "b", quantity=0)
    assert dirty(db) == Counter()
    add_position(db, "p3", "b", quantity=-2)  # control: the same path with an open position
    assert dirty(db) == Counter({"b": 1})


def test_multi_row_insert_marks_each_account_once(db: Db) -> None:
    basic(db)
    got = marks(
        db,
        "INSERT INTO public.positions "
        '(id, "tradingAccountId", "instrumentId", quantity) '
        "VALUES ('x1', 'a', 'btc', 1), ('x2', 'a', 'btc', 2), ('x3', 'b', 'btc', 0)",
    )
    assert got == Counter({"a": 1})


def test_position_delete_marks(db: Db) -> None:
    basic(db)
    assert marks(db, "DELETE FROM public.positions WHERE id = 'p1'") == Counter({"a": 1})


@pytest.mark.parametrize(
    ("seed_pnl", "assignment"),
    [
        pytest.param(0, "quantity = 2", id="quantity"),
        pytest.param(0, "quantity = 0", id="quantity-closed"),
        pytest.param(0, '"unrealizedPnL" = 5', id="pnl"),
        pytest.param(None, '"unrealizedPnL" = 5', id="pnl-null-to-value"),
        pytest.param(5, '"unrealizedPnL" = NULL', id="pnl-value-to-null"),
        pytest.param(0, "\"instrumentId\" = 'eth'", id="instrument"),
    ],
)
def test_position_update_marks(db: Db, seed_pnl: int | None, assignment: str) -> None:
    basic(db, pnl=seed_pnl)
    add_instrument(db, "eth")
    got = marks(db, f"UPDATE public.positions SET {assignment} WHERE id = 'p1'")
    assert got == Counter({"a": 1})


@pytest.mark.parametrize(
    ("seed_pnl", "assignment"),
    [
        pytest.param(0, 'quantity = quantity, "unrealizedPnL" = "unrealizedPnL"', id="same"),
        pytest.param(None, '"unrealizedPnL" = NULL', id="null-to-null"),
        pytest.param(0, "quantity = 1.000", id="same-numeric-value"),
        pytest.param(0, "\"updatedAt\" = now() + interval '1 minute'", id="updatedAt"),
        pytest.param(0, '"averagePrice" = 123', id="averagePrice"),
    ],
)
def test_position_update_without_risk_change_does_not_mark(
    db: Db, seed_pnl: int | None, assignment: str
) -> None:
    basic(db, pnl=seed_pnl)
    assert marks(db, f"UPDATE public.positions SET {assignment} WHERE id = 'p1'") == Counter()
    assert marks(db, PNL_UP + " WHERE id = 'p1'") == Counter({"a": 1})  # control


def test_position_moved_to_another_account_marks_both(db: Db) -> None:
    basic(db)
    got = marks(db, "UPDATE public.positions SET \"tradingAccountId\" = 'b' WHERE id = 'p1'")
    assert got == Counter({"a": 1, "b": 1})


def test_multi_row_update_marks_each_account_once(db: Db) -> None:
    add_accounts(db, "a", "b", "c", "idle")
    add_instrument(db, "btc")
    for account in ("a", "b", "c"):
        for n in range(3):
            add_position(db, f"{account}{n}", account, quantity=n + 1)
    add_position(db, "idle0", "idle")
    got = marks(db, PNL_UP + " WHERE \"tradingAccountId\" <> 'idle'")
    assert got == Counter({"a": 1, "b": 1, "c": 1})


def test_upsert_that_updates_marks(db: Db) -> None:
    basic(db)
    got = marks(
        db,
        'INSERT INTO public.positions (id, "tradingAccountId", "instrumentId", quantity) '
        "VALUES ('p1', 'a', 'btc', 4) "
        "ON CONFLICT (id) DO UPDATE SET quantity = EXCLUDED.quantity",
    )
    # the BEFORE INSERT row trigger sees the proposed row before the conflict is found, the
    # BEFORE UPDATE one the update: a second mark of the same account, which the drain folds
    assert set(got) == {"a"} and got["a"] <= 2


def test_merge_that_updates_marks(db: Db) -> None:
    basic(db)
    got = marks(
        db,
        "MERGE INTO public.positions AS p USING (VALUES ('p1', 4)) AS s (id, quantity) "
        "ON p.id = s.id WHEN MATCHED THEN UPDATE SET quantity = s.quantity",
    )
    assert got == Counter({"a": 1})


# --- balances ----------------------------------------------------------------------------------


def transaction_marks(db: Db, *statements: str) -> Counter[str]:
    """Run ``statements`` as one transaction on a fresh session; what it marked."""
    clear(db)
    with db.connect(autocommit=False) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]
        conn.commit()
    return dirty(db)


FILL = (
    'INSERT INTO public.executions ("tradingAccountId", "instrumentId", quantity, price)'
    " VALUES ('a', 'btc', 1, 100)",
    "UPDATE public.positions SET quantity = quantity + 1, \"unrealizedPnL\" = 5 WHERE id = 'p1'",
    "UPDATE public.trading_accounts SET balance = balance - 1 WHERE id = 'a'",
)


def test_a_fill_marks_its_account(db: Db) -> None:
    basic(db)
    # the position and the balance each mark it; the drain folds the two
    assert transaction_marks(db, *FILL) == Counter({"a": 2})


def test_a_balance_of_another_account_in_the_same_transaction_is_marked(db: Db) -> None:
    basic(db)
    got = transaction_marks(
        db, FILL[1], "UPDATE public.trading_accounts SET balance = balance - 1 WHERE id = 'b'"
    )
    assert got == Counter({"a": 1, "b": 1})


def test_a_mark_rolled_back_with_its_savepoint_does_not_hide_the_balance(db: Db) -> None:
    basic(db)
    got = transaction_marks(
        db,
        "SAVEPOINT s",
        FILL[1],
        "ROLLBACK TO SAVEPOINT s",
        "UPDATE public.trading_accounts SET balance = balance - 1 WHERE id = 'a'",
    )
    assert got == Counter({"a": 1})


def test_balance_update_marks(db: Db) -> None:
    basic(db)
    got = marks(db, "UPDATE public.trading_accounts SET balance = balance - 1 WHERE id = 'a'")
    assert got == Counter({"a": 1})


def test_same_balance_update_does_not_mark(db: Db) -> None:
    basic(db)
    same = "UPDATE public.trading_accounts SET balance = balance, \"userId\" = 'u2'"
    assert marks(db, same) == Counter()
    got = marks(db, "UPDATE public.trading_accounts SET balance = balance + 1")  # control
    assert got == Counter({"a": 1, "b": 1})


def test_balance_update_to_the_same_numeric_value_does_not_mark(db: Db) -> None:
    """The balance trigger compares in its body (no WHEN clause), numerics by value."""
    basic(db)
    same = "UPDATE public.trading_accounts SET balance = 10000.000 WHERE id = 'a'"
    assert marks(db, same) == Counter()
    other = "UPDATE public.trading_accounts SET balance = 10000.001 WHERE id = 'a'"  # control
    assert marks(db, other) == Counter({"a": 1})


# --- instruments -------------------------------------------------------------------------------
# The triggers record the instrument and read nothing else; the daemon's drain fans it out to
# the accounts holding it open, after commit (riskd.drain_instruments).


def holders(db: Db) -> None:
    """btc held open by a (twice), long, and b, short; c holds btc closed; d holds eth only;
    nobody holds xrp."""
    add_accounts(db, "a", "b", "c", "d", "e")
    add_instrument(db, "btc", price=None)
    add_instrument(db, "eth")
    add_instrument(db, "xrp")
    add_position(db, "a1", "a", "btc", quantity=2)
    add_position(db, "a2", "a", "btc", quantity=1)
    add_position(db, "b1", "b", "btc", quantity=-1)
    add_position(db, "c1", "c", "btc", quantity=0)
    add_position(db, "d1", "d", "eth", quantity=5)
    clear(db)


def instrument_marks(db: Db, statement: str) -> Counter[str]:
    """Run one statement on a fresh session; the instruments it marked (and it marked no
    account itself: the fan-out is the drain's)."""
    clear(db)
    with db.connect() as conn:
        conn.execute(statement)  # type: ignore[arg-type]
    rows = db.conn.execute("SELECT instrument_id FROM riskd.dirty_instruments").fetchall()
    assert dirty(db) == Counter()
    return Counter(row[0] for row in rows)


def drain(db: Db) -> dict[str, float]:
    """The daemon's drain: every account it takes, with the age of its oldest mark."""
    return {a: age for a, age, _ in db.conn.execute(query("drain")).fetchall()}


@pytest.mark.parametrize(
    "assignment",
    [
        pytest.param("price = 101", id="price-from-null"),
        pytest.param('"marginRate" = 0.2', id="marginRate"),
        pytest.param('price = 1, "marginRate" = NULL', id="both"),
    ],
)
def test_instrument_change_marks_the_instrument(db: Db, assignment: str) -> None:
    holders(db)
    got = instrument_marks(db, f"UPDATE public.instruments SET {assignment} WHERE id = 'btc'")
    assert got == Counter({"btc": 1})


def test_instrument_update_of_two_instruments_marks_each_once(db: Db) -> None:
    holders(db)
    got = instrument_marks(
        db, "UPDATE public.instruments SET price = coalesce(price, 0) + 1 WHERE id <> 'xrp'"
    )
    assert got == Counter({"btc": 1, "eth": 1})


@pytest.mark.parametrize(
    "assignment",
    [
        pytest.param("symbol = symbol || '-X'", id="symbol"),
        pytest.param('price = price, "marginRate" = "marginRate"', id="same"),
        pytest.param("price = 100.000", id="same-numeric-value"),
        pytest.param("price = NULL WHERE id = 'btc'", id="null-to-null"),
    ],
)
def test_instrument_update_without_risk_change_marks_nothing(db: Db, assignment: str) -> None:
    holders(db)
    where = "" if "WHERE" in assignment else " WHERE id <> 'btc'"
    assert instrument_marks(db, f"UPDATE public.instruments SET {assignment}{where}") == Counter()
    got = instrument_marks(db, "UPDATE public.instruments SET price = 7 WHERE id = 'eth'")
    assert got == Counter({"eth": 1})  # control


def test_instrument_id_change_marks_both_ids(db: Db) -> None:
    holders(db)
    got = instrument_marks(db, "UPDATE public.instruments SET id = 'xrp2' WHERE id = 'xrp'")
    assert got == Counter({"xrp": 1, "xrp2": 1})


def test_instrument_insert_and_delete_mark_it(db: Db) -> None:
    holders(db)
    got = instrument_marks(
        db, "INSERT INTO public.instruments (id, symbol, price) VALUES ('sol', 'SOL', 5)"
    )
    assert got == Counter({"sol": 1})
    assert instrument_marks(db, "DELETE FROM public.instruments WHERE id = 'xrp'") == Counter(
        {"xrp": 1}
    )


def test_drain_fans_instrument_marks_out_to_open_holders(db: Db) -> None:
    holders(db)
    with db.connect() as conn:
        conn.execute("UPDATE public.instruments SET price = 1 WHERE id IN ('btc', 'xrp')")
    assert set(drain(db)) == {"a", "b"}  # not c (closed), not d (eth), nobody for xrp
    assert db.scalar("SELECT count(*) FROM riskd.dirty_instruments") == 0  # taken
    assert drain(db) == {}


def test_drain_takes_account_and_instrument_marks_in_one_row_per_account(db: Db) -> None:
    """One round trip, one row per account, aged from its oldest mark, whichever it was."""
    holders(db)
    with db.connect() as conn:
        conn.execute("UPDATE public.instruments SET price = 1 WHERE id = 'btc'")
    with db.connect() as conn:
        conn.execute("UPDATE public.trading_accounts SET balance = 1 WHERE id IN ('a', 'd')")
    rows = db.conn.execute(query("drain")).fetchall()
    assert sorted(a for a, _, _ in rows) == ["a", "b", "d"]
    ages = {a: age for a, age, _ in rows}
    assert ages["a"] > ages["d"] and ages["b"] > ages["d"]  # a's oldest mark is the price's


def test_instrument_marks_go_to_one_of_two_concurrent_drains(db: Db) -> None:
    holders(db)
    with db.connect() as conn:
        conn.execute("UPDATE public.instruments SET price = 1 WHERE id = 'btc'")
    first = db.connect(autocommit=False)
    second = db.connect()
    try:
        taken = {a for a, _, _ in first.execute(query("drain")).fetchall()}
        assert taken == {"a", "b"}
        pid = second.info.backend_pid
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            other = pool.submit(lambda: second.execute(query("drain")).fetchall())
            wait_until(  # the second drain waits on the first one's deleted rows
                lambda: db.scalar(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                    (pid,),
                ),
                WAIT,
                "the second drain to wait for the first",
            )
            first.commit()
            assert other.result(WAIT) == []
    finally:
        first.close()
        second.close()


# --- TRUNCATE: no row to mark, a sweep request ----------------------------------------------


@pytest.mark.parametrize(
    ("statement", "reasons"),
    [
        pytest.param("TRUNCATE public.positions", ["positions"], id="positions"),
        # CASCADE empties positions too: a request each, which one sweep honours
        pytest.param(
            "TRUNCATE public.trading_accounts CASCADE",
            ["positions", "trading_accounts"],
            id="accounts",
        ),
        pytest.param(
            "TRUNCATE public.instruments CASCADE", ["instruments", "positions"], id="instruments"
        ),
    ],
)
def test_truncate_asks_for_a_sweep_and_wakes(db: Db, statement: str, reasons: list[str]) -> None:
    basic(db)
    with listening(db) as listener:
        rearm(db)
        with db.connect() as writer:
            writer.execute(statement)  # type: ignore[arg-type]
        got = db.conn.execute("SELECT reason FROM riskd.sweep_requests ORDER BY reason").fetchall()
        assert [r for (r,) in got] == [f"TRUNCATE public.{table}" for table in reasons]
        assert wakeups(db, listener) == 1


# --- bulk: one statement, 100 000 rows (I5) ------------------------------------------------------


def test_100k_row_statement_marks_each_account_once_and_wakes_once(db: Db) -> None:
    db.conn.execute(
        'INSERT INTO public.trading_accounts (id, "userId", balance) '
        "SELECT 'acc-' || g, 'user-' || g, 10000 FROM generate_series(1, 1000) AS g"
    )
    add_instrument(db, "btc")
    db.conn.execute(
        "INSERT INTO public.positions "
        '(id, "tradingAccountId", "instrumentId", quantity, "averagePrice", "unrealizedPnL") '
        "SELECT 'pos-' || g, 'acc-' || (g % 1000 + 1), 'btc', 1, 100, 0 "
        "FROM generate_series(1, 100000) AS g"
    )
    clear(db)
    rearm(db)
    with listening(db) as listener:
        with db.connect() as writer:
            result = writer.execute(PNL_UP)
            assert result.rowcount == 100_000
        got = dirty(db)
        assert len(got) == 1000
        assert set(got.values()) == {1}
        assert wakeups(db, listener) == 1


# --- the wake-up ---------------------------------------------------------------------------------


def test_wake_up_once_per_rearm(db: Db) -> None:
    basic(db)
    with listening(db) as listener:
        rearm(db)
        with db.connect(autocommit=False) as writer:  # one transaction, three marks
            writer.execute(PNL_UP)
            writer.execute("UPDATE public.trading_accounts SET balance = balance + 1")
            writer.execute("INSERT INTO public.positions VALUES ('p2', 'b', 'btc', 1, 1, 1)")
        assert wakeups(db, listener) == 1
        marks(db, PNL_UP)  # a second change, not re-armed: silent
        assert wakeups(db, listener) == 0
        rearm(db)
        marks(db, PNL_UP)
        assert wakeups(db, listener) == 1


def test_pending_wake_up_is_read_not_drawn(db: Db) -> None:
    """Between a wake-up and the daemon's re-arm, marks only read the wakeup sequence: a draw
    per mark would take its one buffer exclusively in every trading backend."""
    basic(db)
    rearm(db)
    last = "SELECT pg_sequence_last_value('riskd.wakeup')"
    assert db.scalar(last) is None  # armed
    marks(db, PNL_UP)
    assert db.scalar(last) == 1  # the first mark drew 1 (and notified)
    marks(db, PNL_UP)
    marks(db, "UPDATE public.trading_accounts SET balance = balance + 1 WHERE id = 'a'")
    marks(db, "INSERT INTO public.positions VALUES ('p2', 'b', 'btc', 1, 1, 1)")
    assert db.scalar(last) == 1  # three more marks, no draw


def test_rolled_back_change_sends_nothing(db: Db) -> None:
    basic(db)
    with listening(db) as listener:
        rearm(db)
        with db.connect(autocommit=False) as writer:
            writer.execute(PNL_UP)
            writer.rollback()
        assert wakeups(db, listener) == 0
        assert dirty(db) == Counter()
        rearm(db)
        marks(db, PNL_UP)  # control
        assert wakeups(db, listener) == 1


def test_queue_limit_zero_marks_without_notify(db: Db) -> None:
    basic(db)
    with listening(db) as listener:
        rearm(db)
        with db.connect() as writer:
            writer.execute("SET riskd.notify_queue_limit = '0'")
            writer.execute(PNL_UP)
        assert dirty(db) == Counter({"a": 1})
        assert wakeups(db, listener) == 0
        rearm(db)
        with db.connect() as writer:  # control: same change, default limit
            writer.execute(PNL_UP)
        assert wakeups(db, listener) == 1


@pytest.mark.parametrize("value", ["off", "50%"])
def test_malformed_queue_limit_does_not_fail_trading_write(db: Db, value: str) -> None:
    """I1: a bad riskd.notify_queue_limit (set by a DBA, per database or role) is a riskd fault,
    and must not turn into an error on the trading path."""
    basic(db)
    rearm(db)
    clear(db)
    with db.connect() as writer:
        writer.execute(sql.SQL("SET riskd.notify_queue_limit = {}").format(sql.Literal(value)))
        writer.execute(PNL_UP)
    assert dirty(db) == Counter({"a": 1})


# --- I1: a trading write never fails because of riskd --------------------------------------------


TRADING_WRITES = {  # written so that the hostile search_path below cannot bite them
    "position-insert": 'INSERT INTO public.positions (id, "tradingAccountId", "instrumentId", '
    "quantity) VALUES ('p2', 'b', 'btc', 1)",
    "position-update": "UPDATE public.positions SET quantity = quantity OPERATOR(pg_catalog.+) 1 "
    "WHERE id OPERATOR(pg_catalog.=) 'p1'",
    "balance-update": "UPDATE public.trading_accounts SET balance = balance "
    "OPERATOR(pg_catalog.+) 1 WHERE id OPERATOR(pg_catalog.=) 'a'",
    "instrument-update": "UPDATE public.instruments SET price = price OPERATOR(pg_catalog.+) 1 "
    "WHERE id OPERATOR(pg_catalog.=) 'btc'",
    "position-delete": "DELETE FROM public.positions WHERE id OPERATOR(pg_catalog.=) 'p1'",
}


@pytest.fixture
def trader(db: Db) -> Iterator[psycopg.Connection[Any]]:
    """A session of a login role with DML on the three trading tables and nothing on riskd."""
    role = f"trader_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(role)
    db.conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    try:
        db.conn.execute(
            sql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE "
                "ON public.trading_accounts, public.instruments, public.positions TO {}"
            ).format(ident)
        )
        with psycopg.connect(make_conninfo(db.dsn, user=role), autocommit=True) as conn:
            yield conn
    finally:
        db.conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        db.conn.execute(sql.SQL("DROP ROLE {}").format(ident))


def test_trader_without_riskd_privileges_writes_and_marks(
    db: Db, trader: psycopg.Connection[Any]
) -> None:
    basic(db)
    row = trader.execute(
        "SELECT current_user, has_schema_privilege('riskd', 'USAGE'), "
        "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
    ).fetchone()
    assert row is not None and row[0].startswith("trader_")
    assert row[1:] == (False, False)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        trader.execute("SELECT 1 FROM riskd.dirty_accounts")

    with listening(db) as listener:
        rearm(db)
        # in this order, on the same data: p2 of b is open when the instrument changes, and
        # the instrument's holders are the drain's to find
        expected = {"position-insert": "b", "instrument-update": "", "position-delete": "a"}
        for name, statement in TRADING_WRITES.items():
            clear(db)
            trader.execute(statement)
            assert dirty(db) == Counter(expected.get(name, "a")), name
            if name == "instrument-update":
                assert set(drain(db)) == {"a", "b"}
        assert wakeups(db, listener) == 1


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_concurrent_transactions_on_one_account_both_commit(db: Db, isolation: str) -> None:
    basic(db)
    add_position(db, "p2", "a", quantity=2)
    clear(db)
    rearm(db)
    first, second = db.connect(autocommit=False), db.connect(autocommit=False)
    try:
        for conn in (first, second):
            # The trading statements must not conflict by themselves: index lookups, no
            # relation-wide predicate lock; and a riskd lock would be an error, not a hang.
            conn.execute(sql.SQL("SET TRANSACTION ISOLATION LEVEL {}").format(sql.SQL(isolation)))
            conn.execute("SET LOCAL enable_seqscan = off")
            conn.execute("SET LOCAL lock_timeout = '3s'")
        first.execute(PNL_UP + " WHERE id = 'p1'")
        second.execute(PNL_UP + " WHERE id = 'p2'")
        first.commit()
        second.commit()
    finally:
        first.close()
        second.close()
    assert set(dirty(db)) == {"a"}
    assert db.scalar('SELECT array_agg("unrealizedPnL" ORDER BY id) FROM positions') == [1, 1]


@pytest.fixture
def evil(db: Db) -> str:
    """Schema ``evil``: a raising look-alike of every unqualified name a trigger could resolve."""
    functions = {
        "nextval(regclass)": "bigint",
        "pg_sequence_last_value(regclass)": "bigint",
        "pg_notify(text, text)": "void",
        "current_setting(text, boolean)": "text",
        "pg_notification_queue_usage()": "double precision",
        "float8(text)": "double precision",
        "now()": "timestamptz",
    }
    operators = [
        ("=", "text", "text"),
        ("=", "numeric", "numeric"),
        ("=", "bigint", "integer"),
        ("<>", "numeric", "integer"),
        ("<>", "numeric", "numeric"),
        ("<", "double precision", "double precision"),
        ("+", "numeric", "integer"),
    ]
    body = "$$BEGIN RAISE EXCEPTION 'search_path hijack reached'; END$$"
    statements = ["CREATE SCHEMA evil"]
    statements += [
        f"CREATE FUNCTION evil.{sig} RETURNS {ret} LANGUAGE plpgsql AS {body}"
        for sig, ret in functions.items()
    ]
    for n, (op, left, right) in enumerate(operators):
        statements.append(
            f"CREATE FUNCTION evil.op{n}({left}, {right}) RETURNS boolean "
            f"LANGUAGE plpgsql AS {body}"
        )
        statements.append(
            f"CREATE OPERATOR evil.{op} (LEFTARG = {left}, RIGHTARG = {right}, "
            f"FUNCTION = evil.op{n})"
        )
    for statement in statements:
        db.conn.execute(statement)
    return "evil, pg_catalog, public"


@pytest.mark.parametrize(
    ("write", "limit"),
    [pytest.param(write, None, id=write) for write in TRADING_WRITES]
    # riskd.notify_queue_limit set, as a DBA would per database or role: NULLIF compares it
    + [pytest.param("position-update", "0.5", id="position-update-limit-set")],
)
def test_hostile_search_path_cannot_hijack_capture(
    db: Db, evil: str, write: str, limit: str | None
) -> None:
    add_accounts(db, "a", "b")
    add_instrument(db, "btc")
    add_position(db, "p1", "a")
    clear(db)
    rearm(db)
    expected = {"b" if write == "position-insert" else "a"}
    with listening(db) as listener, db.connect() as writer:
        writer.execute(sql.SQL("SET search_path = {}").format(sql.SQL(evil)))
        if limit is not None:
            writer.execute("SELECT set_config('riskd.notify_queue_limit', %s, false)", (limit,))
        with pytest.raises(psycopg.errors.RaiseException):  # premise: the hostile schema bites
            writer.execute("SELECT 'x'::text = 'x'::text")
        writer.execute(TRADING_WRITES[write])
        assert set(drain(db)) == expected
        assert wakeups(db, listener) == 1
