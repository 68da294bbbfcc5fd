"""What each safety rail, and the platform's own margin model, costs the check path (issue 14).

On a throwaway PostgreSQL 18 seeded with the reference schema (a few % of the accounts start
critical), riskd installed and every account checked once. Each cell times
``riskd.check_accounts`` on random batches; before each call (outside the timer) the batch's
balances move (every account checked has new figures) and its pending close requests are
cancelled, so that each critical account in the batch is closed again: the rails' work is on
the path of every measured check, not skipped. The configurations of one phase run on
connections of their own (the rails' limits are session settings, riskd.db) and alternate
within each round; printed: the median time per batch, and the ratio to the phase's baseline
(median over rounds of sum(config) / sum(baseline), min..max).

Phases (each its own installation, so each ratio is measured within one run):
  rails    built-in model, price time not mapped: off | kill switch paused | breaker
  guard    [schema] instrument_price_time mapped: off | stale-price guard (prices fresh)
  model    the tests' tiered model (tests/tiered_model.sql) as [risk] model against the
           built-in model, auto-close off: what computing the figures costs

    python bench/rails.py [--accounts 20000] [--positions 200000] [--batches 10,100,500]
        [--rounds 5] [--durable]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import random
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg
from check_cost import check_params, record_all
from common import DURABLE, machine, seeded_database

from riskd import migrate
from riskd.config import Settings
from riskd.db import session_values
from riskd.sqlfiles import query

# the tests' own model (tests/tiered_model.sql), one definition
TIERED_SQL = (Path(__file__).resolve().parents[1] / "tests" / "tiered_model.sql").read_text()

MOVE = "UPDATE trading_accounts SET balance = balance + 0.01 WHERE id = ANY(%(ids)s::text[])"
CANCEL = (
    "UPDATE riskd.close_requests SET status = 'cancelled', completed_at = now()"
    " WHERE status = 'pending' AND account_id = ANY(%(ids)s::text[])"
)
PRICED_AT = 'ALTER TABLE instruments ADD COLUMN "pricedAt" timestamptz NOT NULL DEFAULT now()'
CALLS = {10: 100, 100: 30, 500: 8}
NEVER = 10**6  # a breaker that counts every close and never trips
PAUSE = "SELECT riskd.pause('bench', 'the kill switch on')"
RESUME = "SELECT riskd.resume('bench', NULL); DELETE FROM riskd.dirty_accounts"


def connection(dsn: str, settings: Settings) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute(query("session_settings"), session_values(settings))
    return conn


def measure(
    admin: psycopg.Connection[Any],
    conns: dict[str, psycopg.Connection[Any]],
    accounts: int,
    batch: int,
    rounds: int,
    mode: str,
) -> dict[str, tuple[float, float, float, float]]:
    """Per configuration: median ms per batch, and the ratio to the first (median, min, max)."""
    rng = random.Random(batch)
    names = list(conns)
    times: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    check = query("check_accounts")
    for r in range(rounds):
        spent = dict.fromkeys(names, 0.0)
        order = names if r % 2 == 0 else list(reversed(names))
        for _ in range(CALLS.get(batch, 10)):
            ids = [f"acc-{n:06d}" for n in rng.sample(range(1, accounts + 1), batch)]
            for name in order:
                admin.execute(MOVE, {"ids": ids}, prepare=True)
                admin.execute(CANCEL, {"ids": ids}, prepare=True)
                if name == "paused":  # the kill switch on for this configuration's calls
                    admin.execute(PAUSE)
                started = time.perf_counter()
                params = check_params(ids) | {"mode": mode}
                conns[name].execute(check, params, prepare=True).fetchall()
                took = time.perf_counter() - started
                if name == "paused":
                    admin.execute(RESUME)
                times[name].append(took)
                spent[name] += took
        for name in names:
            ratios[name].append(spent[name] / spent[names[0]])
    return {
        n: (
            statistics.median(times[n]) * 1000,
            statistics.median(ratios[n]),
            min(ratios[n]),
            max(ratios[n]),
        )
        for n in names
    }


def phase(
    db_dsn: str,
    configs: dict[str, Settings],
    accounts: int,
    batches: list[int],
    rounds: int,
    title: str,
    rows: list[str],
    mode: str = "request",
) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as admin:
        conns = {name: connection(db_dsn, s) for name, s in configs.items()}
        try:
            record_all(conns[next(iter(conns))], accounts)
            criticals = admin.execute(
                "SELECT count(*) FROM riskd.account_state WHERE level = 'critical'"
            ).fetchone()
            print(f"{title}: {criticals[0] if criticals else 0} accounts critical", flush=True)
            for batch in batches:
                for name, (ms, ratio, low, high) in measure(
                    admin, conns, accounts, batch, rounds, mode
                ).items():
                    row = (
                        f"| {title} | {name} | {batch} | {ms:.3f} "
                        f"| {ratio:.2f} ({low:.2f}..{high:.2f}) |"
                    )
                    rows.append(row)
                    print(row, flush=True)
        finally:
            for conn in conns.values():
                conn.close()
            admin.execute(RESUME)


def risk(settings: Settings, **values: Any) -> Settings:
    return dataclasses.replace(settings, risk=dataclasses.replace(settings.risk, **values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--positions", type=int, default=200_000)
    parser.add_argument("--batches", default="10,100,500")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--durable", action="store_true", help="fsync and synchronous_commit on")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rows: list[str] = []
    server = DURABLE if args.durable else None

    def prepare(conn: psycopg.Connection[Any]) -> None:
        conn.execute(PRICED_AT)
        conn.execute(TIERED_SQL)

    with seeded_database(args.accounts, args.positions, prepare, server=server) as db:
        s = db.settings
        # paused: every check still reads the switch, and closes nothing
        configs = {"off": s, "paused": s, "breaker": risk(s, max_closes_per_minute=NEVER)}
        phase(db.dsn, configs, args.accounts, batches, args.rounds, "rails", rows)
        mapped = dataclasses.replace(
            s, schema=dataclasses.replace(s.schema, instrument_price_time="pricedAt")
        )
        migrate.migrate(mapped)
        configs = {"off": mapped, "guard": risk(mapped, max_price_age=3600.0)}
        phase(db.dsn, configs, args.accounts, batches, args.rounds, "guard", rows)
        migrate.migrate(s)
        # auto-close off: the figures alone (the tiered model finds more accounts critical)
        phase(db.dsn, {"builtin": s}, args.accounts, batches, args.rounds, "model", rows, "off")
        modelled = risk(s, model="risk_model.tiered")
        migrate.migrate(modelled)
        phase(db.dsn, {"tiered": modelled}, args.accounts, batches, args.rounds,
              "model", rows, "off")  # fmt: skip
    print()
    print(
        f"rails cost, {datetime.date.today()}, PostgreSQL {db.version}, "
        f"{'durable (fsync, synchronous_commit on)' if args.durable else 'CPU-bound (fsync off)'}"
        f", {machine()}, {args.accounts} accounts / {args.positions} positions, generic plans, "
        f"{args.rounds} alternating rounds, every critical account in a batch closed again"
    )
    print()
    print("| phase | configuration | batch | ms per batch | / phase baseline (min..max) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(row)
    # the model's phases are two installations: their ratio from the medians of one run
    medians = {
        (r.split("|")[2].strip(), r.split("|")[3].strip()): float(r.split("|")[4])
        for r in rows
        if r.startswith("| model |")
    }
    for batch in batches:
        tiered, builtin = medians[("tiered", str(batch))], medians[("builtin", str(batch))]
        print(f"model, batch {batch}: tiered / builtin = {tiered / builtin:.2f}")


if __name__ == "__main__":
    main()
