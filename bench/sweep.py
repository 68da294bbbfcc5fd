"""Sweep cost: one riskd sweep over every account against a bare aggregate of the same data,
and against checking the accounts one query at a time (what the cron job did).

On a throwaway PostgreSQL 18 (riskd.sandbox.cluster) with the reference schema seeded with 100 000
accounts / 1 000 000 positions. After a first sweep has recorded every account's state, the
rounds alternate the bare aggregate and the sweep (same data, same server, same run); the
per-account rate is measured on a random sample and scaled to all accounts.

    python bench/sweep.py [--rounds 7] [--accounts 100000] [--positions 1000000]
"""

from __future__ import annotations

import argparse
import datetime
import random
import statistics
import time

import psycopg
from common import machine, seeded_database

from riskd.check import check_accounts, sweep

# The figures every risk check needs, per account, and a count of the accounts at or above the
# warning threshold (so that the server must compute every figure): the floor for a sweep.
BARE_AGGREGATE = """
SELECT count(*) FILTER (WHERE s.used >= 0.8 * s.equity) FROM (
    SELECT a.id, a.balance + COALESCE(sum(p."unrealizedPnL"), 0) AS equity,
           COALESCE(sum(abs(p.quantity) * i.price * i."marginRate"), 0) AS used
    FROM trading_accounts a
    LEFT JOIN positions p ON p."tradingAccountId" = a.id AND p.quantity <> 0
    LEFT JOIN instruments i ON i.id = p."instrumentId"
    GROUP BY a.id, a.balance
) AS s
"""


def timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--positions", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=2_000)
    args = parser.parse_args()
    with seeded_database(args.accounts, args.positions) as db:
        settings, version = db.settings, db.version
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            first = timed(lambda: sweep(conn, settings))
            bare: list[float] = []
            swept: list[float] = []
            for r in range(args.rounds):
                pair = [
                    ("bare", lambda: conn.execute(BARE_AGGREGATE).fetchall()),
                    ("sweep", lambda: sweep(conn, settings)),
                ]
                for name, fn in pair if r % 2 == 0 else reversed(pair):
                    (bare if name == "bare" else swept).append(timed(fn))
                print(
                    f"  round {r + 1}: bare {bare[-1]:.3f} s, sweep {swept[-1]:.3f} s", flush=True
                )
            ids = [
                f"acc-{n:06d}"
                for n in random.Random(1).sample(range(1, args.accounts + 1), args.sample)
            ]
            one_by_one = timed(lambda: [check_accounts(conn, settings, [i]) for i in ids])
    per_account = one_by_one / args.sample
    ratios = [s / b for s, b in zip(swept, bare, strict=True)]
    all_one_by_one = per_account * args.accounts
    print()
    print(
        f"sweep, {datetime.date.today()}, PostgreSQL {version}, {machine()}, "
        f"{args.accounts} accounts / {args.positions} positions, "
        f"{args.rounds} alternating rounds"
    )
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| first sweep (records every account) | {first:.2f} s |")
    print(f"| bare aggregate, median | {statistics.median(bare):.3f} s |")
    print(f"| riskd sweep, median | {statistics.median(swept):.3f} s |")
    print(
        f"| sweep / bare aggregate, median (min..max) | {statistics.median(ratios):.2f} "
        f"({min(ratios):.2f}..{max(ratios):.2f}); target <= 1.3: "
        f"{'met' if statistics.median(ratios) <= 1.3 else 'NOT met'} |"
    )
    print(
        f"| one check query per account | {per_account * 1000:.2f} ms each, "
        f"{all_one_by_one:.1f} s for all {args.accounts} |"
    )
    print(
        f"| speed-up of the sweep over one query per account | "
        f"{all_one_by_one / statistics.median(swept):.0f}x |"
    )


if __name__ == "__main__":
    main()
