"""Server CPU per trading statement, by capture design: the low-noise companion of capture.py.

One session runs N statements in a DO block that commits after each (no network, no parse;
per-transaction costs included, which a single transaction would hide: PL/pgSQL sets its
expressions up again in every transaction), rounds alternating the designs; the median µs per
statement of each design is printed with its difference to no trigger. Shared machines move
pgbench throughput by ±10 %; this moves by a few per cent, which is what a change to a
trigger's body needs to be judged. A DO block is one client statement, so designs that key on
statement_timestamp() cannot be measured here; nor can what 8 backends sharing 2 cores add
(bench/capture.py's server CPU per transaction shows that).

    python bench/trigger_cost.py [--statements 5000] [--rounds 5] [--workloads single,fill,bulk]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import psycopg
from capture import enable  # bench/ is the script's directory, hence on sys.path

from riskd import migrate
from riskd.config import DatabaseSettings, Settings
from riskd.sandbox.cluster import PgCluster, find_bindirs
from riskd.sandbox.seed import seed

HERE = Path(__file__).resolve().parent
ACCOUNTS, POSITIONS = 10_000, 100_000  # ten positions per account, numbered consecutively
DESIGNS: dict[str, tuple[str, ...]] = {
    "none": (),
    "floor": ("positions.bench_floor_positions", "trading_accounts.bench_floor_accounts"),
    "statement-floor": (
        "positions.bench_statement_floor_positions",
        "trading_accounts.bench_floor_accounts",
    ),
    "row": ("positions.bench_row_positions", "trading_accounts.bench_row_accounts"),
    "riskd": (
        "positions.riskd_positions_insert",
        "positions.riskd_positions_update",
        "positions.riskd_positions_delete",
        "trading_accounts.riskd_account_balance",
        "instruments.riskd_instruments_update",
    ),
}
# %(n)s statements; position p belongs to account (p - 1) / 10 + 1
LOOPS = {
    "single": """
DO $$ DECLARE p int; BEGIN FOR k IN 1..%(n)s LOOP
  p := 1 + (k * 7919) %% 100000;
  UPDATE positions SET "unrealizedPnL" = "unrealizedPnL" + 0.01
   WHERE id = 'pos-' || lpad(p::text, 7, '0');
  COMMIT;
END LOOP; END $$""",
    "fill": """
DO $$ DECLARE p int; a int; BEGIN FOR k IN 1..%(n)s LOOP
  p := 1 + (k * 7919) %% 100000; a := (p - 1) / 10 + 1;
  INSERT INTO executions ("tradingAccountId", "instrumentId", quantity, price)
   VALUES ('acc-' || lpad(a::text, 6, '0'), 'ins-0001', 1, 100);
  UPDATE positions SET quantity = quantity + 1, "unrealizedPnL" = "unrealizedPnL" + 0.5
   WHERE id = 'pos-' || lpad(p::text, 7, '0');
  UPDATE trading_accounts SET balance = balance - 0.1 WHERE id = 'acc-' || lpad(a::text, 6, '0');
  COMMIT;
END LOOP; END $$""",
    "bulk": """
DO $$ DECLARE p int; BEGIN FOR k IN 1..%(n)s LOOP
  p := 1 + (k * 7919) %% 99000;
  UPDATE positions SET "unrealizedPnL" = "unrealizedPnL" + 0.01
   WHERE id BETWEEN 'pos-' || lpad(p::text, 7, '0') AND 'pos-' || lpad((p + 499)::text, 7, '0');
  COMMIT;
END LOOP; END $$""",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--statements", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workloads", default="single,fill,bulk")
    args = parser.parse_args()
    with PgCluster(find_bindirs()[18]) as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench")
        dsn = cluster.dsn("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            seed(conn, accounts=ACCOUNTS, positions=POSITIONS)
            migrate.migrate(Settings(database=DatabaseSettings(dsn=dsn)))
            conn.execute((HERE / "variants.sql").read_text())
            conn.execute("VACUUM ANALYZE")
            designs = list(DESIGNS)
            for workload in args.workloads.split(","):
                n = args.statements // 50 if workload == "bulk" else args.statements
                samples: dict[str, list[float]] = {d: [] for d in designs}
                for r in range(args.rounds):
                    for design in designs[r % len(designs) :] + designs[: r % len(designs)]:
                        enable(conn, DESIGNS[design])
                        conn.execute("VACUUM positions, trading_accounts, riskd.dirty_accounts")
                        started = time.perf_counter()
                        conn.execute(LOOPS[workload] % {"n": n})
                        samples[design].append((time.perf_counter() - started) / n * 1e6)
                base = statistics.median(samples["none"])
                for design in designs:
                    m = statistics.median(samples[design])
                    print(f"{workload:6s} {design:15s} {m:9.1f} us/statement  (+{m - base:7.1f})")


if __name__ == "__main__":
    main()
