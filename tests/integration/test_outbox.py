"""The webhook outbox (issue 13, sql/outbox.sql): with a [webhook] url, every event a check
writes has its pending delivery, written in the event's transaction; without one, none; a check
that rolls back leaves neither."""

from __future__ import annotations

import json

import psycopg
import pytest
from click.testing import CliRunner
from conftest import Db, settings_for

from riskd.check import check_accounts, sweep
from riskd.cli import main
from riskd.config import Settings
from riskd.db import connect
from riskd.sandbox.seed import seed

URL = "http://127.0.0.1:9/riskd"  # never called here: the delivery task is not under test
SECRET = "whsec_" + "A" * 32  # the base64 of 24 zero-ish bytes

DELIVERIES = """
SELECT d.event_id, d.status, d.attempts, d.next_attempt_at <= now()
FROM riskd.deliveries AS d ORDER BY d.event_id
"""


def breach(db: Db, account: str) -> None:
    """Every open position of the account at ten times its size: critical."""
    db.conn.execute(
        'UPDATE positions SET quantity = quantity * 10 WHERE "tradingAccountId" = %s', (account,)
    )


def webhook_settings(db: Db) -> Settings:
    return settings_for(db.dsn, webhook={"url": URL, "secret": SECRET})


def test_with_a_url_every_event_has_its_pending_delivery(db: Db) -> None:
    seed(db.conn, accounts=20, positions=60, instruments=10)
    settings = webhook_settings(db)
    breach(db, "acc-000004")
    breach(db, "acc-000007")
    with connect(settings) as conn:
        results = check_accounts(conn, settings, ["acc-000004", "acc-000007", "acc-000009"])
    events = sorted(r.event_id for r in results if r.event_id is not None)
    assert len(events) == 2
    assert db.conn.execute(DELIVERIES).fetchall() == [(e, "pending", 0, True) for e in events]
    # a sweep writes its events through the same path
    breach(db, "acc-000011")
    with connect(settings) as conn:
        swept = sweep(conn, settings)
    assert len(swept.transitions) >= 1
    assert db.scalar("SELECT count(*) FROM riskd.deliveries") == db.scalar(
        "SELECT count(*) FROM riskd.risk_events"
    )


def test_without_a_url_no_delivery_is_written(db: Db) -> None:
    seed(db.conn, accounts=20, positions=60, instruments=10)
    breach(db, "acc-000004")
    with connect(db.settings) as conn:
        results = check_accounts(conn, db.settings, ["acc-000004"])
    assert [r.event_id is not None for r in results] == [True]
    assert db.scalar("SELECT count(*) FROM riskd.deliveries") == 0


def test_a_check_that_rolls_back_leaves_neither(db: Db) -> None:
    seed(db.conn, accounts=20, positions=60, instruments=10)
    settings = webhook_settings(db)
    breach(db, "acc-000004")
    with (
        connect(settings, autocommit=False) as conn,
        pytest.raises(psycopg.errors.QueryCanceled),
        conn.transaction(),
    ):
        results = check_accounts(conn, settings, ["acc-000004"])
        assert [r.event_id is not None for r in results] == [True]
        assert conn.execute("SELECT count(*) FROM riskd.deliveries").fetchone() == (1,)
        conn.execute("SET LOCAL statement_timeout = '1ms'")
        conn.execute("SELECT pg_sleep(1)")  # the transaction fails after the check
    assert db.scalar("SELECT count(*) FROM riskd.risk_events") == 0
    assert db.scalar("SELECT count(*) FROM riskd.deliveries") == 0


def test_an_event_has_one_delivery_and_takes_it_along_when_deleted(db: Db) -> None:
    seed(db.conn, accounts=20, positions=60, instruments=10)
    settings = webhook_settings(db)
    breach(db, "acc-000004")
    with connect(settings) as conn:
        (result,) = check_accounts(conn, settings, ["acc-000004"])
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.conn.execute("INSERT INTO riskd.deliveries (event_id) VALUES (%s)", (result.event_id,))
    with pytest.raises(psycopg.errors.CheckViolation):  # an event or an alert, exactly one
        db.conn.execute("INSERT INTO riskd.deliveries (event_id, alert_id) VALUES (NULL, NULL)")
    db.conn.execute("DELETE FROM riskd.risk_events WHERE id = %s", (result.event_id,))
    assert db.scalar("SELECT count(*) FROM riskd.deliveries") == 0


def test_riskd_deliveries_lists_the_outbox_and_retries_the_dead_letters(db: Db) -> None:
    def cli(*args: str) -> tuple[int, str, str]:
        env = {"RISKD_CONFIG": "", "DATABASE_URL": "", "RISKD_DSN": db.dsn}
        result = CliRunner().invoke(main, ["deliveries", *args], env=env)
        return result.exit_code, result.stdout, result.stderr

    assert cli() == (0, "no delivery\n", "")
    seed(db.conn, accounts=20, positions=60, instruments=10)
    settings = webhook_settings(db)
    for account in ("acc-000004", "acc-000007", "acc-000012"):
        breach(db, account)
    with connect(settings) as conn:
        check_accounts(conn, settings, ["acc-000004", "acc-000007", "acc-000012"])
    ids = [r[0] for r in db.conn.execute("SELECT id FROM riskd.deliveries ORDER BY id")]
    assert len(ids) == 3
    db.conn.execute(
        "UPDATE riskd.deliveries SET status = 'failed', attempts = 8, last_status = 500,"
        " last_error = NULL WHERE id = ANY(%s)",
        (ids[:2],),
    )
    db.conn.execute(
        "UPDATE riskd.deliveries SET status = 'delivered', attempts = 1, last_status = 204,"
        " delivered_at = now() WHERE id = %s",
        (ids[2],),
    )
    code, out, _ = cli("--json")
    doc = json.loads(out)
    assert code == 0 and doc["total"] == 3
    assert [d["status"] for d in doc["deliveries"]] == ["delivered", "failed", "failed"]
    assert doc["deliveries"][0]["webhook_id"].startswith("evt_")
    code, out, _ = cli("--status", "failed")
    lines = out.splitlines()
    assert (
        code == 0
        and len(lines) == 2
        and all("failed" in line and "attempts 8" in line for line in lines)
    )
    assert "last 500" in lines[0] and "-> critical" in lines[0]
    # a delivered one is not sent again; the failed one named is
    code, out, err = cli("retry", str(ids[0]), str(ids[2]))
    assert code == 1 and out == f"1 failed deliveries pending again: [{ids[0]}]\n"
    assert err == f"delivery {ids[2]}: not failed (or no such delivery), left as it is\n"
    row = db.conn.execute(
        "SELECT status, attempts, next_attempt_at <= now() FROM riskd.deliveries WHERE id = %s",
        (ids[0],),
    ).fetchone()
    assert row == ("pending", 0, True)
    code, out, _ = cli("retry", "--all-failed")
    assert code == 0 and out == "1 failed deliveries pending again\n"
    assert cli("retry")[0] == 2  # neither ids nor --all-failed: a usage error
    code, out, _ = cli("--status", "pending")
    assert code == 0 and len(out.splitlines()) == 2 and "next attempt now" in out


def test_riskd_deliveries_without_riskd_is_one_line(bare_db: Db) -> None:
    env = {"RISKD_CONFIG": "", "DATABASE_URL": "", "RISKD_DSN": bare_db.dsn}
    result = CliRunner().invoke(main, ["deliveries"], env=env)
    assert result.exit_code == 2
    assert result.stderr == "riskd: riskd is not installed in this database (run `riskd migrate`)\n"
