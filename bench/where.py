"""Where the server's time goes while riskd checks a trading load: pg_stat_statements.

    python bench/where.py [--durable] [--seconds 30] [--protocol prepared]
        [--workload fill] [--accounts 100000] [--positions 1000000]

bench/system.py says what riskd as a whole costs a trading database; this says where. A
throwaway PostgreSQL 18 with pg_stat_statements (``track = all``: the statements inside riskd's
triggers and functions are counted too, each apart from the statement that ran it, whose time
includes theirs), the reference schema seeded as bench/system.py seeds it, riskd migrated and
its state recorded by one ``riskd sweep``, then ``riskd run`` at its defaults. The statistics are
reset, pgbench runs the workload with 8 clients (the same scripts as bench/system.py), the
daemon catches up (the dirty set empty, its lag 0), and the statistics are read.

Printed: every statement that took at least 0.5 % of the execution time of the top-level
statements, by total time: whether it is top-level (sent by a client) or nested (run by a
trigger or function), calls, rows, mean µs per call, and µs per pgbench transaction; then the
top-level time summed by who sent it (pgbench's trading statements, riskd's daemon). Execution
time only: parse and plan (``track_planning`` off), and the WAL flush of a commit, are not in it.
"""

from __future__ import annotations

import argparse
import datetime
import signal
import subprocess
import time
from typing import Any

import psycopg
from common import DURABLE, OUT, machine, seeded_database, start_daemon
from system import CLIENTS, WORKLOADS, pgbench, run_sweep

from riskd.sandbox.cluster import find_bindirs

STATEMENTS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.max": "5000",
}
SHOWN = 0.005  # of the top-level execution time

READ = """
SELECT toplevel, calls, rows, total_exec_time, mean_exec_time,
       regexp_replace(query, '\\s+', ' ', 'g') AS query
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC
"""

STATS = """
SELECT sum((stats->>'checks')::bigint), sum((stats->>'check_batches')::bigint),
       sum((stats->>'drains')::bigint), sum((stats->>'drained_accounts')::bigint)
FROM riskd.daemons
"""

# pgbench's trading statements, by how they begin; everything else top-level is riskd's
# (the daemon's drains, checks, heartbeats; the sweep) or this script's.
TRADING = ("INSERT INTO executions", "UPDATE positions", "UPDATE trading_accounts", "BEGIN", "END")


def caught_up(dsn: str, deadline: float) -> None:
    """Wait until the daemon has checked every change pgbench made (polled, with a deadline)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM riskd.dirty_accounts),"
                " (SELECT coalesce(max((stats->>'dirty')::int), 0) FROM riskd.daemons),"
                " (SELECT count(*) FROM riskd.daemons WHERE heartbeat_at > now() - interval '1 s')"
            ).fetchone()
            assert row is not None
            if row[0] == 0 and row[1] == 0 and row[2] > 0:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not catch up: {row}")
            time.sleep(0.5)  # polling the database with a deadline


def report(rows: list[tuple[Any, ...]], tx: int) -> list[str]:
    top_total = sum(r[3] for r in rows if r[0])
    lines = [
        "| level | calls | rows | total ms | mean µs | µs per tx | share of top | statement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for toplevel, calls, nrows, total, mean, text in rows:
        if total < SHOWN * top_total:
            continue
        short = text if len(text) <= 110 else text[:107] + "..."
        lines.append(
            f"| {'top' if toplevel else 'nested'} | {calls} | {nrows} | {total:.0f} | "
            f"{mean * 1000:.0f} | {total * 1000 / tx:.1f} | {total / top_total:.1%} | "
            f"`{short.replace('|', '/')}` |"
        )
    trading = sum(r[3] for r in rows if r[0] and r[5].lstrip().startswith(TRADING))
    riskd = top_total - trading
    lines += [
        "",
        f"top-level execution time: {top_total:.0f} ms over {tx} transactions; "
        f"trading statements {trading * 1000 / tx:.0f} µs per tx, "
        f"riskd's daemon and sweep {riskd * 1000 / tx:.0f} µs per tx "
        f"({riskd / top_total:.0%})",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--durable", action="store_true", help="fsync, synchronous_commit on")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--protocol", default="prepared", choices=("prepared", "simple"))
    parser.add_argument("--workload", default="fill", choices=sorted(WORKLOADS))
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--positions", type=int, default=1_000_000)
    args = parser.parse_args()
    per = args.positions // args.accounts
    server = STATEMENTS | (DURABLE if args.durable else {})
    started = time.monotonic()
    with seeded_database(args.accounts, args.positions, server=server) as db:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        OUT.mkdir(exist_ok=True)
        config = OUT / "where.toml"
        config.write_text("# riskd at its defaults: the DSN comes from RISKD_DSN\n")
        run_sweep(db.dsn, config)  # every account's state recorded, as in production
        daemon = start_daemon(db.dsn, config, config.read_text(), OUT / "where.log")
        try:
            with psycopg.connect(db.dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_stat_statements_reset()")
            cluster: Any = _Cluster(db.dsn)  # what system.pgbench reads of a PgCluster
            tps, tx = pgbench(
                find_bindirs()[18], cluster, WORKLOADS[args.workload], args.protocol,
                args.seconds, args.positions, per,
            )  # fmt: skip
            caught_up(db.dsn, time.monotonic() + 300)
            with psycopg.connect(db.dsn, autocommit=True) as conn:
                rows = conn.execute(READ).fetchall()
                stats = conn.execute(STATS).fetchone()
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
    server_kind = (
        "durable (fsync, synchronous_commit on)" if args.durable else "CPU-bound (fsync off)"
    )
    print(
        f"where the server's time goes, {datetime.date.today()}, PostgreSQL {db.version}, "
        f"{server_kind}, {machine()}, {CLIENTS} pgbench clients, {args.workload}, "
        f"{args.protocol}, {args.accounts} accounts / {args.positions} positions, "
        f"{args.seconds} s at {tps:.0f} tps with `riskd run` at its defaults, "
        f"{time.monotonic() - started:.0f} s in all\n"
    )
    print("\n".join(report(rows, tx)))
    if stats is not None:
        checks, batches, drains, drained = (int(v or 0) for v in stats)
        print(
            f"\nthe daemon since its start (its start-up sweep included): {checks} checks in "
            f"{batches} batches ({checks / max(batches, 1):.1f} accounts each), {drains} drains "
            f"({drained / max(drains, 1):.1f} accounts each)"
        )


class _Cluster:
    """What system.pgbench needs of a cluster: its port."""

    def __init__(self, dsn: str) -> None:
        self.port = int(psycopg.conninfo.conninfo_to_dict(dsn)["port"] or 5432)


if __name__ == "__main__":
    main()
