"""The risk check against a real PostgreSQL: levels, transitions, hysteresis, actions, I3.

One account with one position on an instrument priced 100 with a 10 % margin rate: each unit
of quantity needs 10 of margin, so with a balance of 1 000 a quantity of 85 is 85 % utilisation.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from conftest import Db, settings_for

from riskd.check import CheckResult, check_accounts, sweep
from riskd.cli import main


def setup_account(
    db: Db, account: str = "a1", balance: str = "1000", quantity: str = "50", pnl: str = "0"
) -> None:
    db.conn.execute(
        "INSERT INTO instruments (id, symbol, price, \"marginRate\") VALUES ('i1', 'I1', 100, 0.1)"
        " ON CONFLICT DO NOTHING"
    )
    db.conn.execute(
        'INSERT INTO trading_accounts (id, "userId", balance) VALUES (%s, %s, %s)',
        (account, f"user-{account}", Decimal(balance)),
    )
    db.conn.execute(
        'INSERT INTO positions (id, "tradingAccountId", "instrumentId", quantity,'
        " \"unrealizedPnL\") VALUES (%s, %s, 'i1', %s, %s)",
        (f"p-{account}", account, Decimal(quantity), Decimal(pnl)),
    )


def set_quantity(db: Db, quantity: str, account: str = "a1") -> None:
    db.conn.execute(
        'UPDATE positions SET quantity = %s WHERE "tradingAccountId" = %s',
        (Decimal(quantity), account),
    )


def check_one(db: Db, account: str = "a1", **risk: Any) -> CheckResult:
    settings = settings_for(db.dsn, risk=risk) if risk else db.settings
    (result,) = check_accounts(db.conn, settings, [account])
    return result


def events(db: Db, account: str = "a1") -> list[tuple[str, str]]:
    rows = db.conn.execute(
        "SELECT from_level, to_level FROM riskd.risk_events WHERE account_id = %s ORDER BY id",
        (account,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def close_requests(db: Db, account: str = "a1") -> list[tuple[str, dict[str, Any]]]:
    rows = db.conn.execute(
        "SELECT status, detail FROM riskd.close_requests WHERE account_id = %s ORDER BY id",
        (account,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def walk(db: Db, quantities: list[str], **risk: Any) -> list[str]:
    levels = []
    for q in quantities:
        set_quantity(db, q)
        levels.append(check_one(db, **risk).level)
    return levels


def test_levels_go_up_and_come_down(db: Db) -> None:
    setup_account(db, quantity="50")
    assert walk(db, ["50", "85", "95", "87", "77"]) == [
        "ok",
        "warning",
        "critical",
        "warning",
        "ok",
    ]
    assert events(db) == [
        ("ok", "warning"),
        ("warning", "critical"),
        ("critical", "warning"),
        ("warning", "ok"),
    ]


def test_straight_from_ok_to_critical_and_back(db: Db) -> None:
    setup_account(db, quantity="10")
    assert walk(db, ["10", "120", "10"]) == ["ok", "critical", "ok"]
    assert events(db) == [("ok", "critical"), ("critical", "ok")]


def test_hysteresis_keeps_an_account_hovering_at_a_threshold_from_flapping(db: Db) -> None:
    setup_account(db, quantity="80")
    hover = ["80", "79", "80", "78.5", "80.2", "78"]
    assert walk(db, hover) == ["warning"] * len(hover)
    assert walk(db, ["77.9"]) == ["ok"]
    assert walk(db, ["90", "88.5", "90", "88"]) == ["critical"] * 4
    assert walk(db, ["87.9"]) == ["warning"]
    assert events(db) == [
        ("ok", "warning"),
        ("warning", "ok"),
        ("ok", "critical"),
        ("critical", "warning"),
    ]


def test_equity_at_or_below_zero_with_open_positions_is_critical(db: Db) -> None:
    setup_account(db, balance="100", quantity="1", pnl="-100")
    result = check_one(db)
    assert (result.level, result.utilization, result.equity) == ("critical", None, Decimal("0"))
    db.conn.execute('UPDATE positions SET "unrealizedPnL" = -500')
    assert check_one(db).equity == Decimal("-400")


def test_no_open_position_is_ok_whatever_the_balance(db: Db) -> None:
    setup_account(db, balance="-50", quantity="0")
    result = check_one(db)
    assert (result.level, result.utilization, result.used_margin) == ("ok", 0, 0)
    assert events(db) == []


def test_first_check_records_state_and_writes_an_event_only_off_ok(db: Db) -> None:
    setup_account(db, "calm", quantity="10")
    setup_account(db, "hot", quantity="95")
    results = {r.account_id: r for r in check_accounts(db.conn, db.settings, ["calm", "hot"])}
    assert results["calm"].event_id is None and results["hot"].event_id is not None
    assert db.scalar("SELECT count(*) FROM riskd.account_state") == 2
    detail = db.scalar("SELECT detail FROM riskd.risk_events WHERE account_id = 'hot'")
    assert detail["first_check"] is True
    assert detail["balance"] == 1000
    assert detail["positions"] == [
        {
            "position": "p-hot",
            "instrument": "i1",
            "quantity": 95,
            "price": 100,
            "margin_rate": 0.1,
            "pnl": 0,
        }
    ]


def test_per_account_limits_override_the_defaults(db: Db) -> None:
    setup_account(db, quantity="55")
    db.conn.execute("INSERT INTO riskd.account_limits VALUES ('a1', 0.5, 0.6)")
    assert walk(db, ["55", "65", "45"]) == ["warning", "critical", "ok"]
    setup_account(db, "other", quantity="55")
    assert check_one(db, "other").level == "ok"


def test_request_mode_keeps_at_most_one_pending_request(db: Db) -> None:
    setup_account(db, quantity="50")
    assert walk(db, ["95", "99", "120"]) == ["critical"] * 3
    assert [s for s, _ in close_requests(db)] == ["pending"]
    assert walk(db, ["50"]) == ["ok"]
    assert [s for s, _ in close_requests(db)] == ["cancelled"]
    assert walk(db, ["95"]) == ["critical"]
    assert [s for s, _ in close_requests(db)] == ["cancelled", "pending"]


def test_off_mode_writes_events_and_no_request(db: Db) -> None:
    setup_account(db, quantity="95")
    assert check_one(db, auto_close="off").level == "critical"
    assert events(db) == [("ok", "critical")]
    assert close_requests(db) == []


def test_flatten_closes_the_largest_loss_first_until_under_warning(db: Db) -> None:
    # balance 1000; margins 400 / 300 / 300 (used 1000); PnL -50 / -20 / +30: equity 960,
    # utilisation 104 %. Warning at 0.80 x 960 = 768: closing the -50 loss leaves 600 < 768.
    db.conn.execute(
        "INSERT INTO instruments VALUES ('i1','I1',100,0.1), ('i2','I2',100,0.1),"
        " ('i3','I3',100,0.1)"
    )
    db.conn.execute("INSERT INTO trading_accounts VALUES ('a1', 'u1', 1000)")
    db.conn.execute(
        'INSERT INTO positions (id, "tradingAccountId", "instrumentId", quantity,'
        " \"unrealizedPnL\") VALUES ('p1','a1','i1',40,-50), ('p2','a1','i2',-30,-20),"
        " ('p3','a1','i3',30,30)"
    )
    result = check_one(db, auto_close="flatten")
    assert (result.level, result.utilization) == ("critical", Decimal("1.0416666667"))
    assert result.close_request_id is not None
    positions = db.conn.execute(
        'SELECT id, quantity, "unrealizedPnL" FROM positions ORDER BY id'
    ).fetchall()
    assert positions == [("p1", 0, 0), ("p2", -30, -20), ("p3", 30, 30)]
    assert db.scalar("SELECT balance FROM trading_accounts WHERE id = 'a1'") == 950
    ((status, detail),) = close_requests(db)
    assert status == "done"
    assert detail["realised_pnl"] == -50
    assert detail["used_margin_before"] == 1000 and detail["used_margin_after"] == 600
    assert [c["instrument"] for c in detail["closed"]] == ["i1"]
    # the flatten itself marked the account dirty; its next check records the way down
    assert db.scalar("SELECT count(*) FROM riskd.dirty_accounts WHERE account_id = 'a1'") > 0
    after = check_one(db, auto_close="flatten")
    assert (after.level, after.equity, after.used_margin) == ("ok", 960, 600)
    assert events(db) == [("ok", "critical"), ("critical", "ok")]


def test_flatten_closes_everything_when_equity_is_gone(db: Db) -> None:
    setup_account(db, balance="100", quantity="5", pnl="-150")
    result = check_one(db, auto_close="flatten")
    assert result.level == "critical"
    assert db.scalar("SELECT sum(abs(quantity)) FROM positions") == 0
    assert db.scalar("SELECT balance FROM trading_accounts") == -50


def test_transition_notifies_riskd_events_with_json(db: Db) -> None:
    setup_account(db, quantity="50")
    with db.connect() as listener:
        listener.execute("LISTEN riskd_events")
        set_quantity(db, "95")
        result = check_one(db)
        (note,) = list(listener.notifies(timeout=5, stop_after=1))
    payload = json.loads(note.payload)
    assert payload["event_id"] == result.event_id
    assert (payload["account_id"], payload["from_level"], payload["to_level"]) == (
        "a1",
        "ok",
        "critical",
    )
    assert payload["close_request_id"] == result.close_request_id


def test_concurrent_checks_of_one_account_never_duplicate(db: Db) -> None:
    """I3: two checkers race on every transition; each transition is written exactly once."""
    setup_account(db, quantity="50")
    rounds = 15
    conns = [db.connect(), db.connect()]
    errors: list[BaseException] = []

    def race(conn: psycopg.Connection[Any], barrier: threading.Barrier) -> None:
        try:
            barrier.wait(timeout=30)
            check_accounts(conn, db.settings, ["a1"])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    try:
        for i in range(rounds):
            set_quantity(db, "95" if i % 2 == 0 else "50")
            barrier = threading.Barrier(len(conns))
            threads = [threading.Thread(target=race, args=(c, barrier)) for c in conns]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
    finally:
        for c in conns:
            c.close()
    assert errors == []
    expected = [("ok", "critical"), ("critical", "ok")] * (rounds // 2) + [("ok", "critical")]
    assert events(db) == expected
    assert db.scalar("SELECT count(*) FROM riskd.close_requests WHERE status = 'pending'") == 1


def test_sweep_finds_what_no_notification_said(db: Db) -> None:
    setup_account(db, "a1", quantity="50")
    setup_account(db, "a2", quantity="95")
    first = sweep(db.conn, db.settings)
    assert [(r.account_id, r.level) for r in first.transitions] == [("a2", "critical")]
    assert first.levels == {"ok": 1, "critical": 1}
    # change behind riskd's back: no trigger fires for a disabled trigger
    db.conn.execute("ALTER TABLE positions DISABLE TRIGGER USER")
    set_quantity(db, "85", "a1")
    db.conn.execute("ALTER TABLE positions ENABLE TRIGGER USER")
    second = sweep(db.conn, db.settings)
    assert [(r.account_id, r.previous_level, r.level) for r in second.transitions] == [
        ("a1", "ok", "warning"),
    ]
    assert sweep(db.conn, db.settings).transitions == []
    assert len(events(db, "a1")) == 1


def test_unknown_accounts_are_skipped(db: Db) -> None:
    setup_account(db, quantity="50")
    results = check_accounts(db.conn, db.settings, ["a1", "ghost", "'; DROP TABLE x; --"])
    assert [r.account_id for r in results] == ["a1"]


def test_flatten_never_waits_long_for_a_trading_lock(db: Db) -> None:
    """A fill holding the position: the flatten gives up in 200 ms (the trade is never the
    deadlock victim), the batch rolls back whole, and a retry after the fill succeeds."""
    setup_account(db, quantity="95")
    with psycopg.connect(db.dsn) as trader:
        trader.execute("UPDATE positions SET \"averagePrice\" = 1 WHERE id = 'p-a1'")  # locked
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            check_one(db, auto_close="flatten")
        assert time.monotonic() - started < 1.0
        assert events(db) == [] and close_requests(db) == []
        trader.commit()  # the trade goes through
    result = check_one(db, auto_close="flatten")
    assert result.level == "critical" and result.close_request_id is not None
    assert [s for s, _ in close_requests(db)] == ["done"]


def test_a_malformed_notify_queue_limit_never_stops_the_check(db: Db) -> None:
    setup_account(db, quantity="95")
    db.conn.execute("SET riskd.notify_queue_limit = 'off'")
    assert check_one(db).level == "critical"


# --- `riskd check` on the command line: the action taken, unknown and invalid ids (issue 10) ---


def cli(*args: str, dsn: str, env: dict[str, str] | None = None) -> Result:
    environment = {"RISKD_CONFIG": "", "DATABASE_URL": "", "RISKD_DSN": dsn}
    return CliRunner().invoke(main, list(args), env=environment | (env or {}))


def request_id(db: Db, account: str, status: str) -> int:
    return int(
        db.scalar(
            "SELECT id FROM riskd.close_requests WHERE account_id = %s AND status = %s",
            (account, status),
        )
    )


def test_check_names_the_pending_request_and_the_action_taken(db: Db) -> None:
    """Finding 4: a critical account whose request is pending showed close_request_id null and
    no action; each check now says what it did, in text and JSON."""
    setup_account(db, "hot", quantity="95")
    first = cli("check", "hot", dsn=db.dsn)
    assert first.exit_code == 0, first.output
    pending = request_id(db, "hot", "pending")
    event = db.scalar("SELECT id FROM riskd.risk_events WHERE account_id = 'hot'")
    assert first.stdout == (
        "hot  ok -> critical  utilisation 95.00 %  equity 1000.00  used margin 950.00  "
        f"event {event}  action: close request {pending} opened\n"
    )

    again = cli("check", "hot", dsn=db.dsn)
    assert again.stdout.endswith(f"action: close request {pending} already pending\n")
    (row,) = json.loads(cli("check", "--json", "hot", dsn=db.dsn).stdout)["results"]
    assert (row["close_request_id"], row["action"], row["action_note"]) == (
        pending,
        "request_pending",
        None,
    )
    assert (row["utilization"], row["equity"], row["used_margin"]) == (
        "0.9500000000",
        "1000",
        "950.0",
    )

    set_quantity(db, "50", "hot")
    down = cli("check", "--json", "hot", dsn=db.dsn)
    (row,) = json.loads(down.stdout)["results"]
    assert (row["level"], row["action"], row["close_request_id"]) == (
        "ok",
        "request_cancelled",
        pending,
    )
    assert close_requests(db, "hot")[0][0] == "cancelled"
    assert "action" not in cli("check", "hot", dsn=db.dsn).stdout  # ok, nothing to say

    setup_account(db, "off", quantity="95")
    off = cli("check", "off", dsn=db.dsn, env={"RISKD_RISK_AUTO_CLOSE": "off"})
    assert off.stdout.endswith("action: none (auto_close = off)\n"), off.output
    assert close_requests(db, "off") == []

    setup_account(db, "nan", quantity="95")
    db.conn.execute("""UPDATE positions SET "unrealizedPnL" = 'NaN' WHERE id = 'p-nan'""")
    held = cli("check", "nan", dsn=db.dsn)
    assert held.stdout.endswith(
        "action: none (close held: data riskd cannot trust (a NaN, infinite or NULL figure))\n"
    ), held.output
    assert close_requests(db, "nan") == []

    setup_account(db, "flat", quantity="95")
    flatten = {"RISKD_RISK_AUTO_CLOSE": "flatten"}
    flat = cli("check", "flat", dsn=db.dsn, env=flatten)
    done = request_id(db, "flat", "done")
    assert flat.stdout.endswith(f"action: flattened (close request {done}, done)\n"), flat.output

    # a flatten the platform's table refuses (a trigger skipping the row) becomes a request
    db.conn.execute(
        "CREATE FUNCTION public.keep() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RETURN NULL; END $$"
    )
    db.conn.execute(
        "CREATE TRIGGER keep BEFORE UPDATE ON positions FOR EACH ROW"
        """ WHEN (OLD."tradingAccountId" = 'stuck') EXECUTE FUNCTION public.keep()"""
    )
    setup_account(db, "stuck", quantity="95")
    stuck = cli("check", "stuck", dsn=db.dsn, env=flatten)
    asked = request_id(db, "stuck", "pending")
    assert stuck.stdout.endswith(
        f"action: close request {asked} opened (flatten failed: closed 0 rows for 1 positions)\n"
    ), stuck.output
    listed = cli("close-requests", dsn=db.dsn).stdout
    assert "stuck  pending" in listed and "flatten failed: closed 0 rows for 1 positions" in listed


def test_check_of_an_unknown_account_exits_1_with_a_line_for_each(db: Db) -> None:
    setup_account(db, "a1", quantity="50")
    result = cli("check", "ghost", "a1", "spectre", dsn=db.dsn)
    assert result.exit_code == 1
    assert result.stdout.startswith("a1  ok  utilisation 50.00 %  equity 1000.00"), result.output
    assert result.stderr.splitlines() == [
        "riskd: check: 'ghost': no such account",
        "riskd: check: 'spectre': no such account",
    ]
    assert json.loads(cli("check", "--json", "ghost", dsn=db.dsn).stdout)["unknown"] == ["ghost"]
    assert "1 when an id names no account" in " ".join(
        cli("check", "--help", dsn="").stdout.split()
    )


UUID_PLATFORM = """
CREATE SCHEMA prisma;
CREATE TABLE prisma.accounts (id uuid PRIMARY KEY, "userId" text, balance numeric);
CREATE TABLE prisma.instruments (id text PRIMARY KEY, symbol text, price numeric,
                                 "marginRate" numeric);
CREATE TABLE prisma.positions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    "tradingAccountId" uuid NOT NULL REFERENCES prisma.accounts,
    "instrumentId" text NOT NULL REFERENCES prisma.instruments,
    quantity numeric NOT NULL, "unrealizedPnL" numeric);
"""
UUID_ENV = {
    "RISKD_SCHEMA_ACCOUNTS_TABLE": "prisma.accounts",
    "RISKD_SCHEMA_POSITIONS_TABLE": "prisma.positions",
    "RISKD_SCHEMA_INSTRUMENTS_TABLE": "prisma.instruments",
}


def test_check_of_a_text_that_is_no_uuid_is_one_line_and_the_rest_is_checked(bare_db: Db) -> None:
    """On a uuid-keyed schema `riskd check not-a-uuid` printed a PL/pgSQL CONTEXT; a uuid in
    capitals named a real account and was still called unknown."""
    bare_db.conn.execute(UUID_PLATFORM)  # type: ignore[arg-type]
    migrated = cli("migrate", dsn=bare_db.dsn, env=UUID_ENV)
    assert migrated.exit_code == 0, migrated.output
    account = uuid.uuid4()
    bare_db.conn.execute("INSERT INTO prisma.instruments VALUES ('i1', 'I1', 100, 0.1)")
    bare_db.conn.execute("INSERT INTO prisma.accounts VALUES (%s, 'u', 1000)", (account,))
    bare_db.conn.execute(
        'INSERT INTO prisma.positions ("tradingAccountId", "instrumentId", quantity,'
        " \"unrealizedPnL\") VALUES (%s, 'i1', 95, 0)",
        (account,),
    )
    result = cli("check", "not-a-uuid", str(account).upper(), dsn=bare_db.dsn, env=UUID_ENV)
    assert result.exit_code == 1
    assert result.stderr == (
        "riskd: check: 'not-a-uuid' is not an account id (account ids here are uuid)\n"
    )
    assert result.stdout.startswith(f"{account}  ok -> critical  utilisation 95.00 %")
    assert "action: close request" in result.stdout
    alone = cli("check", "not-a-uuid", dsn=bare_db.dsn, env=UUID_ENV)
    assert (alone.exit_code, alone.stdout, alone.stderr.count("\n")) == (1, "", 1)
    assert "CONTEXT" not in alone.stderr
