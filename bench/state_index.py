"""What an index on riskd.account_state costs the check: why the dashboard does not rank by one.

The dashboard's "nearest a threshold" wants the accounts by utilisation. An index on
``account_state (utilization)`` would serve it, but the check rewrites an account's row whenever
its figures change, and a change of an indexed column makes that rewrite a non-HOT update: a
new index entry in every index of the table, more WAL, more for vacuum. Revision 0009's
partial index on the level of the accounts over a threshold changes only at a transition.

On a throwaway PostgreSQL 18 seeded with the reference schema (100k accounts / 1M positions by
default), every account checked once, then per round and per variant (alternating, the same
database): ``riskd.check_accounts`` against the bare aggregate on batches whose balances moved
just before (bench/check_cost.py's ``changed`` cells), with

* ``head``: riskd as installed (revision 0009's partial index included);
* ``+utilization``: head plus ``CREATE INDEX ON riskd.account_state (utilization)``.

Printed per variant and batch: median ms of the check, check / bare (median of rounds), WAL
per account checked, the share of account_state updates that were HOT.

    python bench/state_index.py [--scale 100000/1000000] [--batches 10,100,500] [--rounds 3]
        [--passes 2] [--durable]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
from typing import Any

import psycopg
from check_cost import measure, record_all
from common import DURABLE, machine, seeded_database

VARIANTS = {
    "head": "DROP INDEX IF EXISTS riskd.bench_utilization_idx",
    "+utilization": (
        "CREATE INDEX IF NOT EXISTS bench_utilization_idx ON riskd.account_state (utilization)"
    ),
}

UPDATES = """
SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
WHERE relid = 'riskd.account_state'::regclass
"""


def _updates(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    # the session's statistics, flushed when it next goes idle, then read
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")
    row = conn.execute(UPDATES).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="100000/1000000")
    parser.add_argument("--batches", default="10,100,500")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=2, help="alternations of the variants")
    parser.add_argument("--durable", action="store_true", help="fsync and synchronous_commit on")
    args = parser.parse_args()
    accounts, positions = (int(x) for x in args.scale.split("/"))
    batches = [int(b) for b in args.batches.split(",")]
    cells: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    server = DURABLE if args.durable else None
    with (
        seeded_database(accounts, positions, server=server) as db,
        psycopg.connect(db.dsn, autocommit=True) as conn,
    ):
        conn.execute("SET plan_cache_mode = force_generic_plan")
        record_all(conn, accounts)
        for _ in range(args.passes):
            for variant, ddl in VARIANTS.items():
                conn.execute(ddl)
                conn.execute("VACUUM ANALYZE riskd.account_state")
                for batch in batches:
                    before = _updates(conn)
                    cell = measure(conn, accounts, batch, "changed", args.rounds)
                    after = _updates(conn)
                    updated = after[0] - before[0]
                    hot = (after[1] - before[1]) / updated if updated else 0.0
                    cells.setdefault((variant, batch), []).append(
                        (
                            statistics.median(cell.check) * 1000,
                            statistics.median(cell.ratios),
                            cell.wal / cell.accounts,
                            hot,
                        )
                    )
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    print(
        f"\nstate index, {datetime.date.today()}, PostgreSQL {version}, "
        f"{'durable (fsync, synchronous_commit on)' if args.durable else 'CPU-bound (fsync off)'}, "
        f"{machine()}, {args.scale}, generic plans, {args.passes} alternating passes of "
        f"{args.rounds} rounds\n"
    )
    print("| variant | batch | check ms | check / bare | WAL B per account | HOT updates |")
    print("|---|---|---|---|---|---|")
    for (variant, batch), runs in cells.items():
        ms = "–".join(f"{r[0]:.2f}" for r in runs)
        ratio = "–".join(f"{r[1]:.2f}" for r in runs)
        wal = "–".join(f"{r[2]:.0f}" for r in runs)
        hot = "–".join(f"{r[3]:.0%}" for r in runs)
        print(f"| {variant} | {batch} | {ms} | {ratio} | {wal} | {hot} |")


if __name__ == "__main__":
    main()
