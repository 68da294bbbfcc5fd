"""The table layouts, isolation levels and platform habits riskd supports.

One test per case, each on a real server (PostgreSQL 15 and 18), each proving that a trading
write on that layout commits as it would without riskd (I1) and that the change it made reaches
a check without waiting for the sweep (I2). A reader can take the list of tests as the list of
what riskd supports.

Accounts have a balance of 1 000; instrument ``btc`` is priced 100 with a 10 % margin rate, so a
position of quantity 50 is 50 % utilisation and 95 is critical. The daemon's side is driven
through its own queries (``drain``, ``check_accounts``), or through the daemon itself where the
case is about the daemon's loop.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Db, settings_for
from daemonproc import DaemonProcess, wait_until
from psycopg import sql
from psycopg.conninfo import make_conninfo

from riskd import migrate
from riskd.check import check_accounts
from riskd.sqlfiles import query

WAIT = 15.0  # seconds; well under the daemon's 60 s sweep_interval, which must not be needed


# --- seeding and the daemon's side ---------------------------------------------------------------


def seed(conn: psycopg.Connection[Any], **holders: float) -> None:
    """Instrument btc (100, 10 %); one account per keyword, holding that quantity of btc
    (0: the account and no position)."""
    conn.execute(
        'INSERT INTO public.instruments (id, symbol, price, "marginRate") '
        "VALUES ('btc', 'BTC', 100, 0.1)"
    )
    for account, quantity in holders.items():
        conn.execute(
            'INSERT INTO public.trading_accounts (id, "userId", balance) VALUES (%s, %s, 1000)',
            (account, f"user-{account}"),
        )
        if quantity:
            add_position(conn, f"p-{account}", account, quantity)


def add_position(
    conn: psycopg.Connection[Any],
    position: str,
    account: str,
    quantity: float,
    instrument: str = "btc",
) -> None:
    conn.execute(
        "INSERT INTO public.positions "
        '(id, "tradingAccountId", "instrumentId", quantity, "unrealizedPnL") '
        "VALUES (%s, %s, %s, %s::numeric, 0)",
        (position, account, instrument, str(quantity)),
    )


def drain(db: Db) -> set[str]:
    """What the daemon's drain takes now: the marked accounts and the holders of the marked
    instruments."""
    return {account for account, _, _ in db.conn.execute(query("drain")).fetchall()}


def levels(db: Db, *accounts: str) -> dict[str, str]:
    """Check these accounts now, through the daemon's own check path; their levels."""
    return {r.account_id: r.level for r in check_accounts(db.conn, db.settings, accounts)}


def level(db: Db, account: str) -> str | None:
    row = db.conn.execute(
        "SELECT level FROM riskd.account_state WHERE account_id = %s", (account,)
    ).fetchone()
    return None if row is None else str(row[0])


# --- isolation levels ----------------------------------------------------------------------------


def test_serializable_fill_and_price_tick_both_commit(db: Db) -> None:
    """A fill that read a price and a tick that changes it, both SERIALIZABLE: without riskd
    both commit, so with riskd too — the capture reads no row a fill writes (issue 9, 3)."""
    seed(db.conn, a=1, b=2)
    drain(db)
    for run in range(3):
        fill, tick = db.connect(autocommit=False), db.connect(autocommit=False)
        try:
            for conn in (fill, tick):
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                conn.execute("SET LOCAL enable_seqscan = off")  # index lookups, as on a real book
            fill.execute("SELECT price FROM public.instruments WHERE id = 'btc'")
            tick.execute("UPDATE public.instruments SET price = price + 1 WHERE id = 'btc'")
            fill.execute(
                'INSERT INTO public.executions ("tradingAccountId", "instrumentId", quantity, '
                "price) VALUES ('a', 'btc', 1, 100)"
            )
            fill.execute("UPDATE public.positions SET quantity = quantity + 1 WHERE id = 'p-a'")
            fill.commit()
            tick.commit()
        finally:
            fill.close()
            tick.close()
        assert drain(db) == {"a", "b"}, f"run {run + 1}"
    assert db.scalar("SELECT price FROM public.instruments WHERE id = 'btc'") == 103
    assert db.scalar("SELECT quantity FROM public.positions WHERE id = 'p-a'") == 4


def test_price_change_racing_a_new_position_is_checked_at_the_new_price(db: Db) -> None:
    """A price change in flight while a fill opens a position in it: once the price commits,
    the new holder is checked at the new price, not at the next sweep (issue 9, 4)."""
    seed(db.conn, x=0, y=1)
    drain(db)
    assert levels(db, "x", "y") == {"x": "ok", "y": "ok"}
    tick = db.connect(autocommit=False)
    try:
        tick.execute("UPDATE public.instruments SET price = price * 10 WHERE id = 'btc'")
        add_position(db.conn, "p-x", "x", 9.5)  # the fill commits while the tick is open
        assert drain(db) == {"x"}
        assert levels(db, "x") == {"x": "ok"}  # 9.5 % at the price it can see
        tick.commit()
    finally:
        tick.close()
    assert drain(db) == {"x", "y"}
    assert levels(db, "x", "y") == {"x": "critical", "y": "ok"}  # 95 % and 10 %


# --- row-level security --------------------------------------------------------------------------


@pytest.fixture
def owned(bare_db: Db) -> Iterator[tuple[Db, str]]:
    """The platform's tables owned by a role that is no superuser, riskd migrated by that role
    (its capture functions run with its rights), and a login role for the market-data feed
    allowed to update instruments; the database and the feed's role name."""
    tag = uuid.uuid4().hex[:8]
    owner, feed = f"platform_{tag}", f"feed_{tag}"
    conn = bare_db.conn
    for role in (owner, feed):
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(bare_db.name), sql.Identifier(owner)
            )
        )
        for table in ("trading_accounts", "instruments", "positions", "executions"):
            conn.execute(
                sql.SQL("ALTER TABLE {} OWNER TO {}").format(
                    sql.Identifier("public", table), sql.Identifier(owner)
                )
            )
        conn.execute(
            sql.SQL("GRANT SELECT, UPDATE ON public.instruments TO {}").format(sql.Identifier(feed))
        )
        migrate.migrate(settings_for(make_conninfo(bare_db.dsn, user=owner)))
        yield bare_db, feed
    finally:
        for role in (owner, feed):
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_force_row_level_security_does_not_fail_a_price_update(owned: tuple[Db, str]) -> None:
    """Positions under FORCE row-level security, with a policy that needs the session's
    ``app.account`` (unset in a market-data session): a price update commits, and its holders
    are found after commit (issue 9, 2)."""
    db, feed = owned
    seed(db.conn, a=5, b=1)
    db.conn.execute("ALTER TABLE public.positions ENABLE ROW LEVEL SECURITY")
    db.conn.execute("ALTER TABLE public.positions FORCE ROW LEVEL SECURITY")
    db.conn.execute(
        "CREATE POLICY own_account ON public.positions "
        """USING ("tradingAccountId" = current_setting('app.account'))"""
    )
    drain(db)
    with psycopg.connect(make_conninfo(db.dsn, user=feed), autocommit=True) as market:
        market.execute("UPDATE public.instruments SET price = 200 WHERE id = 'btc'")
    assert drain(db) == {"a", "b"}  # the daemon's role here is a superuser: it sees every row


# --- platform habits -----------------------------------------------------------------------------


def test_writes_in_replica_mode_are_captured(db: Db) -> None:
    """A logical-replication subscriber applies the publisher's changes with
    ``session_replication_role = replica``, where triggers enabled for origin do not fire."""
    seed(db.conn, a=1, b=1)
    drain(db)
    writes = {
        'INSERT INTO public.positions (id, "tradingAccountId", "instrumentId", quantity) '
        "VALUES ('p2', 'a', 'btc', 1)": {"a"},
        "UPDATE public.positions SET quantity = 3 WHERE id = 'p-b'": {"b"},
        "DELETE FROM public.positions WHERE id = 'p2'": {"a"},
        "UPDATE public.trading_accounts SET balance = 5 WHERE id = 'b'": {"b"},
        "UPDATE public.instruments SET price = 101 WHERE id = 'btc'": {"a", "b"},
    }
    with db.connect() as subscriber:
        subscriber.execute("SET session_replication_role = replica")
        for statement, accounts in writes.items():
            subscriber.execute(statement)  # type: ignore[arg-type]
            assert drain(db) == accounts, statement
        subscriber.execute("TRUNCATE public.positions")
    assert db.scalar("SELECT count(*) FROM riskd.sweep_requests") == 1


def test_instrument_inserted_or_deleted_reaches_its_holders(db: Db) -> None:
    """A platform without a foreign key from positions to instruments: a position may name an
    instrument listed later, or delisted. Its holders gain or lose the price."""
    db.conn.execute('ALTER TABLE public.positions DROP CONSTRAINT "positions_instrumentId_fkey"')
    seed(db.conn, a=1, x=0)
    add_position(db.conn, "p-x", "x", 10, instrument="sol")
    drain(db)
    db.conn.execute(
        'INSERT INTO public.instruments (id, symbol, price, "marginRate") '
        "VALUES ('sol', 'SOL', 100, 1)"
    )
    assert drain(db) == {"x"}
    assert levels(db, "x") == {"x": "critical"}  # 10 × 100 × 100 % of 1 000
    db.conn.execute("DELETE FROM public.instruments WHERE id = 'sol'")
    assert drain(db) == {"x"}


@pytest.mark.parametrize("limit", [None, "0"], ids=["woken", "silent"])
def test_truncate_asks_for_a_sweep(db: Db, tmp_path: Path, limit: str | None) -> None:
    """TRUNCATE changes accounts without a row to mark: the sweep leader sweeps at once, not at
    its next sweep_interval — woken by the TRUNCATE, or finding the request on its own when no
    wake-up came (riskd.notify_queue_limit = 0 in that session)."""
    seed(db.conn, a=95, b=1)
    daemon = DaemonProcess(db.dsn, tmp_path / "riskd.log", sweep_interval="60s").start()
    try:
        daemon.wait_ready()
        wait_until(lambda: level(db, "a") == "critical", WAIT, "a checked critical")
        with db.connect() as conn:
            if limit is not None:
                conn.execute("SELECT set_config('riskd.notify_queue_limit', %s, false)", (limit,))
            conn.execute("TRUNCATE public.positions")
        wait_until(lambda: level(db, "a") == "ok", WAIT, "a swept back to ok")
        daemon.wait_stats(lambda s: s["sweeps"] >= 2, WAIT, "the second sweep counted")
        assert 'sweep.requested requests=1 reason="TRUNCATE public.positions"' in daemon.log()
        # the TRUNCATE drew the wake-up without a mark to drain: the daemon re-armed it all
        # the same, so the next trade notifies instead of waiting for the timer drain
        armed = "SELECT pg_sequence_last_value('riskd.wakeup') IS NULL"
        wait_until(lambda: db.scalar(armed), WAIT, "the wake-up re-armed")
        assert daemon.stop() == 0
    finally:
        daemon.close()


# --- partitioned and inherited tables ------------------------------------------------------------
# The layout is the platform's before `riskd migrate`, which shapes the triggers after it.

PARTITIONED_POSITIONS = """
DROP TABLE public.positions;
CREATE TABLE public.positions (
    id                 text NOT NULL,
    "tradingAccountId" text NOT NULL REFERENCES public.trading_accounts (id),
    "instrumentId"     text NOT NULL,
    quantity           numeric NOT NULL DEFAULT 0,
    "averagePrice"     numeric,
    "unrealizedPnL"    numeric,
    "updatedAt"        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, "tradingAccountId")
) PARTITION BY LIST ("tradingAccountId");
CREATE TABLE public.positions_a PARTITION OF public.positions FOR VALUES IN ('a');
CREATE TABLE public.positions_b PARTITION OF public.positions FOR VALUES IN ('b');
"""


def migrated(db: Db, layout: str) -> Db:
    """``db`` (the reference schema, nothing of riskd) reshaped by ``layout``, then migrated."""
    db.conn.execute(layout)  # type: ignore[arg-type]
    migrate.migrate(db.settings)
    return db


def marks(db: Db, statement: str) -> dict[str, int]:
    """Run one statement on a fresh session; how often it marked each account, then drained."""
    with db.connect() as conn:
        conn.execute(statement)  # type: ignore[arg-type]
    rows = db.conn.execute(
        "SELECT account_id::text, count(*) FROM riskd.dirty_accounts GROUP BY 1"
    ).fetchall()
    drain(db)
    return {account: n for account, n in rows}


def test_writes_straight_into_a_partition_are_captured(bare_db: Db) -> None:
    db = migrated(bare_db, PARTITIONED_POSITIONS)
    seed(db.conn, a=0, b=0, c=0)
    drain(db)
    p = "public.positions_a"
    assert marks(db, f"INSERT INTO {p} VALUES ('p1', 'a', 'btc', 1), ('p2', 'a', 'btc', 2)") == {
        "a": 2  # a row trigger marks per row; the drain folds them
    }
    assert marks(db, f"UPDATE {p} SET quantity = 3 WHERE id = 'p1'") == {"a": 1}
    assert marks(db, f"UPDATE {p} SET quantity = 3.000 WHERE id = 'p1'") == {}
    pnl = f"UPDATE {p} SET \"unrealizedPnL\" = %s WHERE id = 'p1'"  # NULL-safe; it starts NULL
    got = [marks(db, pnl % value) for value in ("NULL", "5", "5", "NULL")]
    assert got == [{}, {"a": 1}, {}, {"a": 1}]
    assert marks(db, f"UPDATE {p} SET \"updatedAt\" = now() + interval '1 s'") == {}
    assert marks(db, f"DELETE FROM {p} WHERE id = 'p2'") == {"a": 1}
    copy = 'COPY public.positions_b (id, "tradingAccountId", "instrumentId", quantity) FROM STDIN'
    with db.connect() as conn, conn.cursor().copy(copy) as rows:  # COPY into a partition
        rows.write_row(("p3", "b", "btc", 4))
    assert drain(db) == {"b"}
    # through the parent, each row once (no second mark from the partition), and a position
    # moved to another partition marks both accounts
    assert marks(db, "UPDATE public.positions SET quantity = quantity + 1") == {"a": 1, "b": 1}
    got = marks(db, "UPDATE public.positions SET \"tradingAccountId\" = 'b' WHERE id = 'p1'")
    assert set(got) == {"a", "b"}
    # the drain finds a repriced instrument's holders in every partition
    assert marks(db, "INSERT INTO public.positions VALUES ('p4', 'a', 'btc', 1)") == {"a": 1}
    db.conn.execute("UPDATE public.instruments SET price = 200")
    assert drain(db) == {"a", "b"}


def test_partitions_created_or_attached_later_are_captured(bare_db: Db) -> None:
    db = migrated(bare_db, PARTITIONED_POSITIONS)
    seed(db.conn, a=0, b=0, c=0, d=0)
    db.conn.execute(
        "CREATE TABLE public.positions_c PARTITION OF public.positions FOR VALUES IN ('c')"
    )
    db.conn.execute("CREATE TABLE public.positions_d (LIKE public.positions INCLUDING DEFAULTS)")
    db.conn.execute(
        "ALTER TABLE public.positions ATTACH PARTITION public.positions_d FOR VALUES IN ('d')"
    )
    drain(db)
    for account in ("c", "d"):
        statement = (
            f'INSERT INTO public.positions_{account} (id, "tradingAccountId", "instrumentId", '
            f"quantity) VALUES ('p-{account}', '{account}', 'btc', 1)"
        )
        assert marks(db, statement) == {account: 1}
        assert marks(db, f"UPDATE public.positions_{account} SET quantity = 5") == {account: 1}
    with db.connect() as replica:  # the clones fire ALWAYS, as their parent's triggers do
        replica.execute("SET session_replication_role = replica")
        replica.execute("DELETE FROM public.positions_d")
    assert drain(db) == {"d"}


PARTITIONED_INSTRUMENTS = """
DROP TABLE public.instruments CASCADE;
CREATE TABLE public.instruments (
    id text PRIMARY KEY, symbol text NOT NULL, price numeric, "marginRate" numeric
) PARTITION BY HASH (id);
CREATE TABLE public.instruments_0 PARTITION OF public.instruments
    FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE public.instruments_1 PARTITION OF public.instruments
    FOR VALUES WITH (MODULUS 2, REMAINDER 1);
"""


def test_writes_straight_into_an_instrument_partition_reach_the_holders(bare_db: Db) -> None:
    db = migrated(bare_db, PARTITIONED_INSTRUMENTS)
    seed(db.conn, a=1, b=0)
    add_position(db.conn, "p-b", "b", 2, instrument="sol")
    drain(db)
    part = db.scalar("SELECT tableoid::regclass::text FROM public.instruments WHERE id = 'btc'")

    def instruments(statement: str) -> dict[str, int]:
        with db.connect() as conn:
            conn.execute(statement)  # type: ignore[arg-type]
        rows = db.conn.execute(
            "SELECT instrument_id, count(*) FROM riskd.dirty_instruments GROUP BY 1"
        ).fetchall()
        return {instrument: n for instrument, n in rows}

    assert instruments(f"UPDATE {part} SET price = 101") == {"btc": 1}
    assert drain(db) == {"a"}
    assert instruments(f"UPDATE {part} SET price = price, symbol = 'X'") == {}
    assert instruments(f'UPDATE {part} SET "marginRate" = NULL') == {"btc": 1}
    assert drain(db) == {"a"}
    zero = "SELECT satisfies_hash_partition('public.instruments'::regclass, 2, 0, 'sol'::text)"
    sol = "public.instruments_0" if db.scalar(zero) else "public.instruments_1"
    listed = f"INSERT INTO {sol} VALUES ('sol', 'SOL', 10, 1)"  # listed straight into it
    assert instruments(listed) == {"sol": 1}
    assert drain(db) == {"b"}
    assert instruments(f"DELETE FROM {sol} WHERE id = 'sol'") == {"sol": 1}
    assert drain(db) == {"b"}


INHERITED = """
ALTER TABLE public.positions DROP CONSTRAINT "positions_tradingAccountId_fkey";
CREATE TABLE public.positions_archive (PRIMARY KEY (id)) INHERITS (public.positions);
CREATE TABLE public.positions_archive_2025 (PRIMARY KEY (id)) INHERITS (public.positions_archive);
CREATE TABLE public.vip_accounts () INHERITS (public.trading_accounts);
"""


def test_writes_to_inheritance_children_are_captured_once(bare_db: Db) -> None:
    db = migrated(bare_db, INHERITED)
    seed(db.conn, a=0)
    db.conn.execute(
        "INSERT INTO public.vip_accounts (id, \"userId\", balance) VALUES ('v', 'v', 1000)"
    )
    drain(db)
    child, grandchild = "public.positions_archive", "public.positions_archive_2025"
    insert = 'INSERT INTO {} (id, "tradingAccountId", "instrumentId", quantity) VALUES {}'
    assert marks(db, insert.format(child, "('p1', 'a', 'btc', 1)")) == {"a": 1}
    assert marks(db, insert.format(grandchild, "('p2', 'v', 'btc', 1), ('p3', 'v', 'btc', 2)")) == {
        "v": 1
    }
    assert marks(db, f"UPDATE {grandchild} SET quantity = 7 WHERE id = 'p2'") == {"v": 1}
    # through the parent: the parent's transition tables hold the children's rows; no child's
    # statement trigger fires as well
    assert marks(db, "UPDATE public.positions SET quantity = quantity + 1") == {"a": 1, "v": 1}
    assert marks(db, f"DELETE FROM {child} WHERE id = 'p1'") == {"a": 1}
    # a balance held by a child table, updated through the parent: the child's row trigger
    assert marks(db, "UPDATE public.trading_accounts SET balance = balance + 1") == {"a": 1, "v": 1}
    with db.connect() as conn:
        conn.execute(f"TRUNCATE {grandchild}")
    assert db.scalar("SELECT count(*) FROM riskd.sweep_requests") == 1


# --- capture in place (I8) -----------------------------------------------------------------------


def _status_problems(db: Db) -> list[str]:
    from test_migrate import cli

    result = cli("status", dsn=db.dsn)
    return [line for line in result.stdout.splitlines() if "capture trigger" in line]


def test_a_disabled_or_missing_capture_trigger_is_named_and_migrate_repairs_it(db: Db) -> None:
    """A trigger disabled by hand, or lost with a table the platform's migration swapped:
    `riskd status` names each, `riskd migrate` puts the capture back in place."""
    from riskd import capture

    conn = db.conn
    assert capture.problems(conn, db.settings.schema) == []
    conn.execute("ALTER TABLE public.positions DISABLE TRIGGER riskd_positions_update")
    conn.execute("ALTER TABLE public.trading_accounts ENABLE TRIGGER riskd_account_balance")
    assert capture.problems(conn, db.settings.schema) == [
        "capture trigger riskd_positions_update on positions is disabled",
        "capture trigger riskd_account_balance on trading_accounts is not enabled ALWAYS"
        " (skipped under session_replication_role = replica)",
    ]
    assert len(_status_problems(db)) == 2
    # the platform swaps the instruments table for a new one
    conn.execute('ALTER TABLE public.positions DROP CONSTRAINT "positions_instrumentId_fkey"')
    conn.execute("ALTER TABLE public.instruments RENAME TO instruments_old")
    conn.execute("CREATE TABLE public.instruments (LIKE public.instruments_old INCLUDING ALL)")
    assert "capture trigger riskd_instruments_update on instruments is missing" in (
        capture.problems(conn, db.settings.schema)
    )
    # what the operator granted survives the repair (a running daemon keeps its privileges)
    conn.execute("CREATE ROLE capture_test_daemon")
    conn.execute("GRANT EXECUTE ON FUNCTION riskd.drain_instruments() TO capture_test_daemon")
    conn.execute("GRANT SELECT ON riskd.platform_positions TO capture_test_daemon")
    try:
        assert migrate.run(db.settings).action is migrate.Action.REMAP
        assert conn.execute(
            "SELECT has_function_privilege('capture_test_daemon',"
            " 'riskd.drain_instruments()', 'EXECUTE'),"
            " has_table_privilege('capture_test_daemon', 'riskd.platform_positions', 'SELECT')"
        ).fetchone() == (True, True)
    finally:
        conn.execute("DROP OWNED BY capture_test_daemon")
        conn.execute("DROP ROLE capture_test_daemon")
    assert capture.problems(conn, db.settings.schema) == []
    assert _status_problems(db) == []
    # the new table is the one captured and checked
    seed(conn, a1=95)
    conn.execute("TRUNCATE riskd.dirty_accounts, riskd.dirty_instruments")
    conn.execute("UPDATE public.instruments SET price = 50")
    assert conn.execute("SELECT count(*) FROM riskd.dirty_instruments").fetchone() == (1,)


def test_two_phase_commit_needs_the_notify_off_and_then_loses_no_mark(db: Db) -> None:
    """A transaction that NOTIFYs cannot be prepared, and the first mark after a quiet spell
    notifies: sessions that PREPARE TRANSACTION set riskd.notify_queue_limit = '0' (docs,
    riskd migrate's note) and their marks still reach the drain."""
    conn = db.conn
    seed(conn, a1=10)
    update = "UPDATE public.positions SET quantity = quantity + 1 WHERE id = 'p-a1'"
    for attempt, setting in enumerate((None, "0")):
        conn.execute("TRUNCATE riskd.dirty_accounts")
        conn.execute("SELECT setval('riskd.wakeup', 1, false)")  # armed: the next mark notifies
        with db.connect(autocommit=False) as trader:
            if setting is not None:
                trader.execute("SET riskd.notify_queue_limit = '0'")
            trader.execute(update)  # type: ignore[arg-type]
            if setting is None:
                with pytest.raises(psycopg.errors.FeatureNotSupported, match="NOTIFY"):
                    trader.execute(f"PREPARE TRANSACTION 'riskd-2pc-{attempt}'")  # type: ignore[arg-type]
                trader.rollback()
                continue
            trader.execute(f"PREPARE TRANSACTION 'riskd-2pc-{attempt}'")  # type: ignore[arg-type]
        conn.execute(f"COMMIT PREPARED 'riskd-2pc-{attempt}'")  # type: ignore[arg-type]
        assert drain(db) == {"a1"}


# --- the row as stored, and partitions below the TRUNCATE trigger --------------------------------


def test_capture_reads_the_row_after_the_platforms_before_triggers(bare_db: Db) -> None:
    """A platform BEFORE trigger that sets a figure (fired after riskd's, by name order) and a
    generated balance: capture compares the rows as stored, so a change made by the trigger is
    marked and a statement that changes nothing is not."""
    db = migrated(
        bare_db,
        PARTITIONED_POSITIONS
        + """
        CREATE FUNCTION public.reprice() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW."unrealizedPnL" := NEW.quantity * (110 - NEW."averagePrice");
            RETURN NEW;
        END $$;
        CREATE TRIGGER z_reprice BEFORE UPDATE ON public.positions
            FOR EACH ROW EXECUTE FUNCTION public.reprice();
        ALTER TABLE public.trading_accounts RENAME COLUMN balance TO deposits;
        ALTER TABLE public.trading_accounts
            ADD COLUMN balance numeric GENERATED ALWAYS AS (deposits * 2) STORED;
        """,
    )
    seed_generated = (
        "INSERT INTO public.trading_accounts (id, \"userId\", deposits) VALUES ('a', 'u', 500)"
    )
    db.conn.execute(seed_generated)
    db.conn.execute("INSERT INTO public.instruments VALUES ('btc', 'BTC', 100, 0.1)")
    add_position(db.conn, "p-a", "a", 1)
    db.conn.execute('UPDATE public.positions SET "averagePrice" = 100, "unrealizedPnL" = 10')
    drain(db)
    # the PnL set by the platform's trigger alone
    assert marks(db, 'UPDATE public.positions SET "averagePrice" = 90') == {"a": 1}
    assert marks(db, 'UPDATE public.positions SET "averagePrice" = 90') == {}
    # a generated balance: marked when what it is computed from changes, not otherwise
    assert marks(
        db, "UPDATE public.trading_accounts SET deposits = deposits + 1 WHERE id = 'a'"
    ) == {"a": 1}
    assert marks(db, "UPDATE public.trading_accounts SET deposits = deposits WHERE id = 'a'") == {}
    # a generated balance takes no realised PnL: flatten falls back to a close request
    db.conn.execute('UPDATE public.positions SET quantity = 95, "averagePrice" = 200')
    flatten = dataclasses.replace(
        db.settings, risk=dataclasses.replace(db.settings.risk, auto_close="flatten")
    )
    (result,) = check_accounts(db.conn, flatten, ["a"])
    assert result.level == "critical" and result.close_request_id is not None
    assert db.conn.execute("SELECT status FROM riskd.close_requests").fetchall() == [("pending",)]
    assert db.scalar("SELECT quantity FROM public.positions") == 95


def test_truncate_of_one_partition_asks_for_a_sweep_and_each_partition_is_watched(
    bare_db: Db,
) -> None:
    """The TRUNCATE trigger, a statement trigger, is not cloned to partitions: riskd copies it
    to each; one disabled on a single partition, or missing from a partition attached later,
    is named, and `riskd migrate` puts it in place."""
    from riskd import capture

    db = migrated(bare_db, PARTITIONED_POSITIONS)
    seed(db.conn, a=1, b=1)
    with db.connect() as conn:
        conn.execute("TRUNCATE public.positions_a")
    assert db.scalar("SELECT count(*) FROM riskd.sweep_requests") == 1
    mapping = db.settings.schema
    assert capture.problems(db.conn, mapping) == []
    db.conn.execute("ALTER TABLE public.positions_b DISABLE TRIGGER riskd_positions_update")
    db.conn.execute(
        "CREATE TABLE public.positions_c PARTITION OF public.positions FOR VALUES IN ('c')"
    )
    assert capture.problems(db.conn, mapping) == [
        "capture trigger riskd_positions_update on positions_b is disabled",
        "capture trigger riskd_positions_truncate on positions_c is missing",
    ]
    assert migrate.run(db.settings).action is migrate.Action.REMAP
    assert capture.problems(db.conn, mapping) == []
    db.conn.execute("TRUNCATE riskd.sweep_requests")
    with db.connect() as conn:
        conn.execute("TRUNCATE public.positions_c")
    assert db.scalar("SELECT count(*) FROM riskd.sweep_requests") == 1


def test_flatten_follows_a_platform_rename_before_riskd_migrate(db: Db) -> None:
    """I9: flatten reads and writes the platform's tables through functions PostgreSQL
    tracks, so a renamed column or table leaves it working until `riskd migrate` runs, and a
    dropped one is refused naming riskd."""
    seed(db.conn, hot=95, calm=10)
    db.conn.execute("UPDATE public.positions SET \"unrealizedPnL\" = -7 WHERE id = 'p-hot'")
    db.conn.execute("ALTER TABLE public.positions RENAME COLUMN quantity TO qty")
    db.conn.execute('ALTER TABLE public.positions RENAME COLUMN "unrealizedPnL" TO upnl')
    db.conn.execute("ALTER TABLE public.trading_accounts RENAME COLUMN balance TO cash")
    db.conn.execute("ALTER TABLE public.positions RENAME TO book")
    flatten = dataclasses.replace(
        db.settings, risk=dataclasses.replace(db.settings.risk, auto_close="flatten")
    )
    results = {r.account_id: r for r in check_accounts(db.conn, flatten, ["hot", "calm"])}
    assert results["hot"].level == "critical" and results["hot"].close_request_id is not None
    rows = db.conn.execute("SELECT id, qty, upnl FROM public.book ORDER BY id").fetchall()
    assert [(i, float(q), float(p) if p is not None else None) for i, q, p in rows] == [
        ("p-calm", 10.0, 0.0),
        ("p-hot", 0.0, 0.0),
    ]
    assert db.scalar("SELECT cash FROM public.trading_accounts WHERE id = 'hot'") == 993
    with pytest.raises(psycopg.errors.DependentObjectsStillExist, match="riskd.flatten_close"):
        db.conn.execute("ALTER TABLE public.book DROP COLUMN qty")


def test_a_remap_to_an_instrument_id_of_another_type_keeps_every_change(db: Db) -> None:
    """The platform moves instruments to a bigint key: `riskd migrate` with the new mapping
    retypes riskd's instrument marks; those not yet fanned out become a sweep request."""
    import dataclasses

    seed(db.conn, a=1)
    db.conn.execute("ALTER TABLE public.instruments ADD COLUMN num bigint UNIQUE")
    db.conn.execute("UPDATE public.instruments SET num = 7")
    db.conn.execute('ALTER TABLE public.positions ADD COLUMN "instrumentNum" bigint')
    db.conn.execute('UPDATE public.positions SET "instrumentNum" = 7')
    drain(db)
    db.conn.execute("UPDATE public.instruments SET price = 150")  # a mark left undrained
    schema = dataclasses.replace(
        db.settings.schema, instrument_id="num", position_instrument="instrumentNum"
    )
    moved = dataclasses.replace(db.settings, schema=schema)
    assert migrate.run(moved).action is migrate.Action.REMAP
    assert db.scalar("SELECT count(*) FROM riskd.sweep_requests") == 1
    assert (
        db.scalar(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'riskd.dirty_instruments'::regclass AND attname = 'instrument_id'"
        )
        == "bigint"
    )
    db.conn.execute("UPDATE public.instruments SET price = 200")
    assert drain(db) == {"a"}
