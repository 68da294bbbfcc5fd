"""Deterministic data for the reference trading schema: the demo, the tests, the benchmarks.

The rows are generated server-side in one round trip (``sql/seed.sql``), which is what makes a
million positions take seconds rather than minutes, and they derive from hashes of the seed and
the row number, so a test or a benchmark run can be repeated row for row. Balances are chosen
so that most accounts are far from a margin call while a few percent sit in the warning band
and a few percent above the auto-close threshold: every level has accounts to test against.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import psycopg

from riskd.resources import sql_path


@cache
def _load(name: str) -> bytes:
    """The text of ``sql/<name>``, read once per process."""
    return sql_path(name).read_bytes()


def seed(
    conn: psycopg.Connection[Any],
    accounts: int,
    positions: int,
    instruments: int = 100,
    seed: int = 1,
) -> None:
    """Create the reference schema if missing and replace its contents with seeded rows.

    Each account holds ``positions // accounts`` positions, the first ``positions % accounts``
    accounts one more, each in a different instrument. Runs and commits its own transaction,
    whose settings (no JIT; no triggers, as a superuser: see seed.sql) must not outlive it,
    so ``conn`` must not be inside one.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ValueError("seed() commits its own transaction: call it outside one")
    if accounts < 1 or instruments < 1 or positions < 0:
        raise ValueError("seed needs accounts >= 1, instruments >= 1 and positions >= 0")
    most_per_account = -(-positions // accounts)
    if most_per_account > instruments:
        raise ValueError(
            f"{most_per_account} positions per account need at least as many instruments,"
            f" not {instruments}: an account holds each instrument at most once"
        )
    params = {
        "accounts": accounts,
        "positions": positions,
        "instruments": instruments,
        "seed": seed,
    }
    with conn.transaction():
        conn.execute(_load("reference_schema.sql"))
        # Client-side binding lets the whole file go as one multi-statement query.
        with psycopg.ClientCursor(conn) as cur:
            cur.execute(_load("seed.sql"), params)
