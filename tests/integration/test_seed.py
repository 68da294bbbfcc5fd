"""Seeding the reference trading schema: shape, determinism, and accounts at every level."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from riskd.sandbox.cluster import PgCluster, find_bindirs
from riskd.sandbox.seed import seed

TEST_DSN = os.environ.get("RISKD_TEST_DSN")
SERVERS = ["env"] if TEST_DSN else sorted(find_bindirs())


@pytest.fixture(scope="module", params=SERVERS, ids=lambda server: f"pg{server}")
def server_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    """A superuser DSN: RISKD_TEST_DSN's server, or a throwaway cluster of each major."""
    if TEST_DSN:
        yield TEST_DSN
        return
    with PgCluster(find_bindirs()[request.param]) as cluster:
        yield cluster.dsn()


@pytest.fixture
def conn(server_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a fresh database, dropped afterwards."""
    name = f"riskd_seed_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(make_conninfo(server_dsn, dbname=name), autocommit=True) as db:
            yield db
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _one(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


FINGERPRINT = """
    SELECT (SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM trading_accounts AS t),
           (SELECT md5(string_agg(i::text, '|' ORDER BY id)) FROM instruments AS i),
           (SELECT md5(string_agg(p::text, '|' ORDER BY id)) FROM positions AS p)
"""

# Utilisation as DESIGN §1 defines it, bucketed at the default thresholds (0.80, 0.90).
LEVELS = """
    WITH per_account AS (
        SELECT a.balance + sum(p."unrealizedPnL") AS equity,
               sum(abs(p.quantity) * i.price * i."marginRate") AS used_margin
        FROM trading_accounts AS a
        JOIN positions AS p ON p."tradingAccountId" = a.id AND p.quantity <> 0
        JOIN instruments AS i ON i.id = p."instrumentId"
        GROUP BY a.id, a.balance
    ), levels AS (
        SELECT CASE WHEN equity <= 0 OR used_margin / equity >= 0.90 THEN 'critical'
                    WHEN used_margin / equity >= 0.80 THEN 'warning'
                    ELSE 'ok' END AS level
        FROM per_account
    )
    SELECT count(*) FILTER (WHERE level = 'ok'),
           count(*) FILTER (WHERE level = 'warning'),
           count(*) FILTER (WHERE level = 'critical')
    FROM levels
"""


def test_seed_is_deterministic_per_seed(conn: psycopg.Connection[Any]) -> None:
    seed(conn, accounts=1000, positions=10_000, seed=1)
    first = _one(conn, FINGERPRINT)
    seed(conn, accounts=1000, positions=10_000, seed=2)
    other = _one(conn, FINGERPRINT)
    seed(conn, accounts=1000, positions=10_000, seed=1)
    again = _one(conn, FINGERPRINT)

    assert again == first
    assert all(a != b for a, b in zip(first, other, strict=True))


def test_seed_has_the_promised_shape(conn: psycopg.Connection[Any]) -> None:
    seed(conn, accounts=1000, positions=10_000)

    assert _one(conn, "SELECT count(*) FROM trading_accounts") == 1000
    assert _one(conn, "SELECT count(*) FROM positions") == 10_000
    assert _one(conn, "SELECT count(*) FROM instruments") == 100
    assert _one(conn, "SELECT min(id), max(id) FROM trading_accounts") == (
        "acc-000001",
        "acc-001000",
    )
    assert _one(conn, "SELECT min(id), max(id) FROM instruments") == ("ins-0001", "ins-0100")
    assert _one(conn, "SELECT min(id), max(id) FROM positions") == ("pos-0000001", "pos-0010000")
    # Every reference holds, although seeding may skip the foreign-key triggers...
    assert _one(conn, """
        SELECT count(*) FROM positions AS p
        WHERE NOT EXISTS (SELECT FROM trading_accounts AS a WHERE a.id = p."tradingAccountId")
           OR NOT EXISTS (SELECT FROM instruments AS i WHERE i.id = p."instrumentId")
    """) == 0  # fmt: skip
    # ... and only while it runs.
    assert _one(conn, "SHOW session_replication_role") == "origin"
    # Ten positions per account, each in a different instrument.
    assert _one(conn, """
        SELECT min(n), max(n), bool_and(n = distinct_instruments) FROM (
            SELECT count(*) AS n, count(DISTINCT "instrumentId") AS distinct_instruments
            FROM positions GROUP BY "tradingAccountId") AS held
    """) == (10, 10, True)  # fmt: skip
    assert _one(conn, """
        SELECT bool_and(price BETWEEN 1 AND 1000 AND scale(price) = 2),
               bool_and("marginRate" IN (0.02, 0.05, 0.1, 0.2)),
               count(DISTINCT "marginRate")
        FROM instruments
    """) == (True, True, 4)  # fmt: skip
    assert _one(conn, """
        SELECT bool_and(abs(p.quantity) BETWEEN 1 AND 100 AND scale(p.quantity) <= 4),
               count(*) FILTER (WHERE p.quantity < 0) > 0,
               count(*) FILTER (WHERE p.quantity <> trunc(p.quantity)) > 0,
               bool_and(abs(p."unrealizedPnL")  -- the average price is within 5 % of the price
                        <= abs(p.quantity) * (0.05 * i.price + 0.005) + 0.005),
               bool_and(p."unrealizedPnL" = round(p.quantity * (i.price - p."averagePrice"), 2))
        FROM positions AS p JOIN instruments AS i ON i.id = p."instrumentId"
    """) == (True, True, True, True, True)  # fmt: skip


def test_a_remainder_goes_one_each_to_the_first_accounts(conn: psycopg.Connection[Any]) -> None:
    seed(conn, accounts=7, positions=30, instruments=10)
    held = conn.execute("""
        SELECT a.id, count(p.id) FROM trading_accounts AS a
        LEFT JOIN positions AS p ON p."tradingAccountId" = a.id
        GROUP BY a.id ORDER BY a.id
    """).fetchall()  # fmt: skip
    assert [n for _, n in held] == [5, 5, 4, 4, 4, 4, 4]
    with pytest.raises(ValueError, match="instruments"):
        seed(conn, accounts=2, positions=30, instruments=10)


def test_seed_refuses_to_run_inside_a_transaction(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction(), pytest.raises(ValueError, match="outside"):
        seed(conn, accounts=10, positions=10)


def test_accounts_exist_at_every_level(conn: psycopg.Connection[Any]) -> None:
    seed(conn, accounts=1000, positions=10_000)
    ok, warning, critical = _one(conn, LEVELS)

    assert ok + warning + critical == 1000
    assert ok >= 850, "most accounts are well under the warning threshold"
    assert 10 <= warning <= 100, "a few percent in the warning band"
    assert 10 <= critical <= 100, "a few percent above the auto-close threshold"
