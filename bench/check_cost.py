"""Check cost: riskd.check_accounts against a bare aggregate over the same accounts, per batch.

The bare aggregate is the least a check can ask of the server: each account's equity and used
margin, one statement over the accounts, their open positions and their instruments. The check
adds what makes it riskd's: advisory locks, the level with hysteresis and limits, the state it
keeps, events, close requests, a NOTIFY. Target (issue 11): per batch, <= 1.5x the bare
aggregate at batch sizes 1, 10, 100 and 500, on 20k / 200k and 100k / 1M.

On a throwaway PostgreSQL 18 seeded with the reference schema, riskd installed. Both statements
are prepared and run with ``plan_cache_mode = force_generic_plan`` (what a long-lived connection
ends up with), each call its own transaction, on random batches of accounts (the same batch for
both within a pair). Two states of the data:

* ``changed`` -- each batch's balances moved just before (outside the timer): every account
  checked has new figures, as when the daemon checks what a trade changed;
* ``steady`` -- the same accounts checked again with nothing changed (a sweep over quiet
  accounts): the check must write nothing.

Rounds alternate which statement runs first. Printed per cell: the median time per batch of
each, the ratio (median over rounds of sum(check) / sum(bare); min..max), the WAL the check
wrote per account, and how many times the check's plans scanned positions or trading_accounts
whole (the target is none).

    python bench/check_cost.py [--scales 20000/200000,100000/1000000] [--batches 1,10,100,500]
        [--rounds 5] [--revisions head] [--durable]
"""

from __future__ import annotations

import argparse
import datetime
import random
import statistics
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from common import BARE_AGGREGATE, DURABLE, machine, seeded_database

from riskd import migrate
from riskd.sqlfiles import query

MOVE = "UPDATE trading_accounts SET balance = balance + 0.01 WHERE id = ANY(%(ids)s::text[])"

SEQ_SCANS = """
SELECT COALESCE(sum(seq_scan), 0) FROM pg_stat_xact_user_tables
WHERE relname IN ('positions', 'trading_accounts')
"""

LSN = "SELECT pg_current_wal_insert_lsn()"

STATE_STATS = """
SELECT n_tup_ins + n_tup_upd, n_tup_hot_upd, n_dead_tup FROM pg_stat_user_tables
WHERE relid = 'riskd.account_state'::regclass
"""

# calls of each statement per round, by batch size: about a second of work per round
CALLS = {1: 300, 10: 150, 100: 40, 500: 12}


@dataclass
class Cell:
    bare: list[float] = field(default_factory=list)  # seconds per batch, every call
    check: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # per round
    wal: int = 0  # bytes the check wrote
    accounts: int = 0
    seq_scans: int = 0


def check_params(ids: list[str]) -> dict[str, Any]:
    return {
        "ids": ids,
        "instance": "bench",
        "warning": Decimal("0.8"),
        "auto_close": Decimal("0.9"),
        "hysteresis": Decimal("0.02"),
        "mode": "request",
    }


def record_all(conn: psycopg.Connection[Any], accounts: int) -> None:
    """Every account checked once, as after the daemon's first sweep."""
    for start in range(1, accounts + 1, 5000):
        ids = [f"acc-{n:06d}" for n in range(start, min(start + 5000, accounts + 1))]
        conn.execute(query("check_accounts"), check_params(ids))
    conn.execute("VACUUM ANALYZE")


def whole_table_scans(dsn: str, ids: list[str]) -> int:
    """The sequential scans of positions and trading_accounts one check makes: counted in a
    new session, whose pending statistics are the check's alone."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(query("check_accounts"), check_params(ids), prepare=True).fetchall()
        return conn.execute(SEQ_SCANS).fetchone()[0]  # type: ignore[index,no-any-return]


def measure(
    conn: psycopg.Connection[Any], accounts: int, batch: int, state: str, rounds: int
) -> Cell:
    rng = random.Random(batch * 7 + len(state))
    cell = Cell()
    calls = CALLS.get(batch, 10)
    check = query("check_accounts")
    lsn = conn.cursor()
    for r in range(rounds):
        spent = {"bare": 0.0, "check": 0.0}
        for _ in range(calls):
            ids = [f"acc-{n:06d}" for n in rng.sample(range(1, accounts + 1), batch)]
            if state == "changed":
                conn.execute(MOVE, {"ids": ids}, prepare=True)
            order = ("bare", "check") if r % 2 == 0 else ("check", "bare")
            for name in order:
                if name == "bare":
                    started = time.perf_counter()
                    conn.execute(BARE_AGGREGATE, {"ids": ids}, prepare=True).fetchall()
                    took = time.perf_counter() - started
                    cell.bare.append(took)
                else:
                    before = lsn.execute(LSN).fetchone()[0]  # type: ignore[index]
                    started = time.perf_counter()
                    conn.execute(check, check_params(ids), prepare=True).fetchall()
                    took = time.perf_counter() - started
                    after = lsn.execute(LSN).fetchone()[0]  # type: ignore[index]
                    cell.wal += _lsn_bytes(after) - _lsn_bytes(before)
                    cell.accounts += batch
                    cell.check.append(took)
                spent[name] += took
        cell.ratios.append(spent["check"] / spent["bare"])
    ids = [f"acc-{n:06d}" for n in rng.sample(range(1, accounts + 1), batch)]
    cell.seq_scans = whole_table_scans(conn.info.dsn, ids)
    return cell


def _lsn_bytes(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", default="20000/200000,100000/1000000")
    parser.add_argument("--batches", default="1,10,100,500")
    parser.add_argument("--states", default="changed,steady")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--revisions", default="head", help="riskd schema revisions to measure, in one run"
    )
    parser.add_argument("--durable", action="store_true", help="fsync and synchronous_commit on")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    states = args.states.split(",")
    rows: list[str] = []
    writes: list[str] = []
    version = ""
    for scale in args.scales.split(","):
        n_accounts, n_positions = (int(x) for x in scale.split("/"))
        server = DURABLE if args.durable else None
        with seeded_database(n_accounts, n_positions, server=server) as db:
            version = db.version
            base = (0, 0)
            for revision in args.revisions.split(","):
                migrate.migrate(db.settings, revision)
                with psycopg.connect(db.dsn, autocommit=True) as conn:
                    conn.execute("SET plan_cache_mode = force_generic_plan")
                    record_all(conn, n_accounts)
                    for state in states:
                        for batch in batches:
                            cell = measure(conn, n_accounts, batch, state, args.rounds)
                            row = (
                                f"| {scale} | {revision} | {state} | {batch} "
                                f"| {statistics.median(cell.bare) * 1000:.3f} "
                                f"| {statistics.median(cell.check) * 1000:.3f} "
                                f"| {statistics.median(cell.ratios):.2f} "
                                f"({min(cell.ratios):.2f}..{max(cell.ratios):.2f}) "
                                f"| {cell.wal / cell.accounts:.0f} | {cell.seq_scans} |"
                            )
                            rows.append(row)
                            print(row, flush=True)
                    # the session's statistics, flushed when it next goes idle, then read
                    conn.execute("SELECT pg_stat_force_next_flush()")
                    conn.execute("SELECT 1")
                    written, hot, dead = conn.execute(STATE_STATS).fetchone()  # type: ignore[misc]
                writes.append(
                    f"| {scale} | {revision} | {written - base[0]} | {hot - base[1]} | {dead} |"
                )
                base = (written, hot)
    print()
    print(
        f"check cost, {datetime.date.today()}, PostgreSQL {version}, "
        f"{'durable (fsync, synchronous_commit on)' if args.durable else 'CPU-bound (fsync off)'}, "
        f"{machine()}, generic plans, {args.rounds} alternating "
        f"rounds; target: check <= 1.5x bare at every batch size"
    )
    print()
    print(
        "| accounts / positions | revision | data | batch | bare ms | check ms "
        "| check / bare (min..max) | check WAL bytes per account | whole-table scans |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    print()
    print(
        "| accounts / positions | revision | account_state rows written (all cells) "
        "| of which HOT updates | dead tuples at the end |"
    )
    print("|---|---|---|---|---|")
    for row in writes:
        print(row)


if __name__ == "__main__":
    main()
