"""What a check reads and writes (issue 11, DESIGN §2.4 and §4): index lookups in every plan,
account_state written only where something in it changed, and current after every check and
every sweep. The speed itself is bench/check_cost.py's to show, not a test's."""

from __future__ import annotations

from decimal import Decimal

from conftest import Db

from riskd.check import check_accounts, sweep
from riskd.sandbox.seed import seed

# What riskd.account_state must hold for every account: its figures as of now.
FIGURES = """
SELECT a.id, a.balance + COALESCE(sum(p."unrealizedPnL"), 0),
       COALESCE(sum(abs(p.quantity) * i.price * i."marginRate"), 0)
FROM trading_accounts a
LEFT JOIN positions p ON p."tradingAccountId" = a.id AND p.quantity <> 0
LEFT JOIN instruments i ON i.id = p."instrumentId"
GROUP BY a.id, a.balance ORDER BY a.id
"""

RECORDED = "SELECT account_id, equity, used_margin FROM riskd.account_state ORDER BY account_id"

SEQ_SCANS = """
SELECT relname, seq_scan FROM pg_stat_xact_user_tables
WHERE relname IN ('positions', 'trading_accounts', 'account_state') AND seq_scan > 0
"""

INDEX_SCANS = """
SELECT COALESCE(sum(idx_scan), 0) FROM pg_stat_xact_user_tables
WHERE relname IN ('positions', 'trading_accounts', 'account_state')
"""


def state_row(db: Db, account: str) -> tuple[str, Decimal, object, object]:
    row = db.conn.execute(
        "SELECT xmin::text, equity, checked_at, changed_at FROM riskd.account_state"
        " WHERE account_id = %s",
        (account,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3]


def test_a_check_that_finds_an_account_as_recorded_writes_no_row(db: Db) -> None:
    seed(db.conn, accounts=20, positions=60, instruments=10)
    check_accounts(db.conn, db.settings, ["acc-000001", "acc-000002"])
    before = state_row(db, "acc-000001")
    again = check_accounts(db.conn, db.settings, ["acc-000001", "acc-000002"])
    assert [r.account_id for r in again] == ["acc-000001", "acc-000002"]
    assert state_row(db, "acc-000001") == before  # same row version: nothing rewritten


def test_a_check_that_finds_new_figures_records_them_though_the_level_holds(db: Db) -> None:
    seed(db.conn, accounts=20, positions=60, instruments=10)
    (first,) = check_accounts(db.conn, db.settings, ["acc-000003"])
    xmin, equity, checked_at, changed_at = state_row(db, "acc-000003")
    db.conn.execute("UPDATE trading_accounts SET balance = balance + 1 WHERE id = 'acc-000003'")
    (second,) = check_accounts(db.conn, db.settings, ["acc-000003"])
    assert second.level == first.level and second.equity == first.equity + 1
    new_xmin, new_equity, new_checked_at, new_changed_at = state_row(db, "acc-000003")
    assert new_xmin != xmin and new_equity == equity + 1
    assert new_checked_at >= checked_at  # type: ignore[operator]
    assert new_changed_at == changed_at  # the level held


def test_after_a_sweep_every_recorded_figure_is_current(db: Db) -> None:
    seed(db.conn, accounts=300, positions=900, instruments=10)
    sweep(db.conn, db.settings, take_marks=True)
    assert db.conn.execute(RECORDED).fetchall() == db.conn.execute(FIGURES).fetchall()
    # figures move for every account, levels mostly hold; nothing but the sweep checks them
    db.conn.execute('UPDATE positions SET "unrealizedPnL" = "unrealizedPnL" + 0.5')
    db.conn.execute("UPDATE trading_accounts SET balance = balance + 0.25")
    db.conn.execute("UPDATE instruments SET price = price * 1.001")
    sweep(db.conn, db.settings, take_marks=True)
    assert db.conn.execute(RECORDED).fetchall() == db.conn.execute(FIGURES).fetchall()
    # and one more sweep over unchanged data finds nothing to check
    assert db.conn.execute(
        "SELECT count(*) FROM riskd.sweep(0.8, 0.9, 0.02) WHERE level = previous_level"
    ).fetchone() == (0,)


def test_a_small_batch_looks_its_accounts_up_by_index_even_under_a_generic_plan(db: Db) -> None:
    seed(db.conn, accounts=4_000, positions=40_000, instruments=20)
    sweep(db.conn, db.settings, take_marks=True)
    db.conn.execute("ANALYZE")
    for batch in (["acc-000007"], [f"acc-{n:06d}" for n in range(100, 1100, 100)]):
        # a new session: its pending statistics are this test's alone
        with db.connect() as conn:
            conn.execute("SET plan_cache_mode = force_generic_plan")
            with conn.transaction():
                for _ in range(3):  # the function's cached plans, reused
                    results = check_accounts(conn, db.settings, batch)
                    assert len(results) == len(batch)
                assert conn.execute(SEQ_SCANS).fetchall() == []
                assert conn.execute(INDEX_SCANS).fetchone()[0] > 0  # type: ignore[index]


def test_the_sweep_passes_by_a_row_a_check_holds_and_refreshes_the_rest(db: Db) -> None:
    """The sweep's in-place refresh is compare-and-set under SKIP LOCKED: it never waits for a
    check (nor can it deadlock with one), and that check's figures stand."""
    seed(db.conn, accounts=50, positions=150, instruments=10)
    sweep(db.conn, db.settings, take_marks=True)
    db.conn.execute("UPDATE trading_accounts SET balance = balance + 1")
    before = dict(db.conn.execute("SELECT account_id, equity FROM riskd.account_state").fetchall())
    with db.connect(autocommit=False) as check:  # a check holding one account's row
        check.execute(
            "SELECT 1 FROM riskd.account_state WHERE account_id = 'acc-000007' FOR NO KEY UPDATE"
        )
        with db.connect() as sweeper:
            sweeper.execute("SET lock_timeout = '2s'")  # waiting would fail the test
            sweep(sweeper, db.settings, take_marks=True)
        check.rollback()
    after = dict(db.conn.execute("SELECT account_id, equity FROM riskd.account_state").fetchall())
    assert after.pop("acc-000007") == before.pop("acc-000007")  # passed by
    assert after == {account: equity + 1 for account, equity in before.items()}
