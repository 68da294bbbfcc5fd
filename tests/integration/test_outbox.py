"""The webhook outbox (issue 13, sql/outbox.sql): with a [webhook] url, every event a check
writes has its pending delivery, written in the event's transaction; without one, none; a check
that rolls back leaves neither."""

from __future__ import annotations

import psycopg
import pytest
from conftest import Db, settings_for

from riskd.check import check_accounts, sweep
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
