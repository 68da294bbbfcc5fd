"""Capture overhead: what riskd's triggers cost trading writes, as throughput ratios.

pgbench, 8 clients, against the reference schema seeded with 100 000 accounts / 1 000 000
positions on a throwaway PostgreSQL 18 (riskd.sandbox.cluster). Each round runs every capture design
once, in an order that rotates from round to round, on the same tables and server: no trigger,
two do-nothing row triggers (the floor of any trigger design), a do-nothing statement trigger
with transition tables (the floor of a statement design), the seed's pg_notify per row,
riskd's mark as BEFORE row triggers without WHEN clause (cheapest for one row, but a bulk
statement marks once per row), and riskd as installed (statement triggers with transition
tables on positions, a BEFORE row trigger on balances). A drainer empties the dirty set every
100 ms and re-arms the wake-up when it finds it empty, as the daemon does. The ratios are
medians over rounds of tps / tps without trigger, with the spread (min..max of the per-round
ratios).

    python bench/capture.py [--rounds 5] [--seconds 8] [--accounts 100000] [--positions 1000000]
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import subprocess
import time
from pathlib import Path

import psycopg
from common import Drainer, machine, server_cpu

from riskd import migrate
from riskd.config import DatabaseSettings, Settings
from riskd.sandbox.cluster import PgCluster, find_bindirs
from riskd.sandbox.seed import seed

HERE = Path(__file__).resolve().parent
TABLES = ("positions", "trading_accounts", "instruments")

DESIGNS: dict[str, tuple[str, ...]] = {
    "none": (),
    "floor (2 no-op row triggers)": (
        "positions.bench_floor_positions",
        "trading_accounts.bench_floor_accounts",
    ),
    "statement floor (transition tables, no-op)": (
        "positions.bench_statement_floor_positions",
        "trading_accounts.bench_floor_accounts",
    ),
    "seed: pg_notify per row": (
        "positions.bench_notify_positions",
        "trading_accounts.bench_notify_accounts",
    ),
    "row triggers (BEFORE, no WHEN; marks per row)": (
        "positions.bench_row_positions",
        "trading_accounts.bench_row_accounts",
    ),
    "riskd (as installed)": (
        "positions.riskd_positions_insert",
        "positions.riskd_positions_update",
        "positions.riskd_positions_delete",
        "trading_accounts.riskd_account_balance",
        "instruments.riskd_instruments_update",
    ),
    "riskd with the balance trigger BEFORE (revision 0004)": (
        "positions.riskd_positions_insert",
        "positions.riskd_positions_update",
        "positions.riskd_positions_delete",
        "trading_accounts.bench_riskd_before_accounts",
        "instruments.riskd_instruments_update",
    ),
}
# --layout partitioned: positions in 4 hash partitions by account, which riskd captures with
# row triggers (cloned to every partition) where a plain table gets statement triggers
PARTITIONED = """
ALTER TABLE public.positions RENAME TO positions_plain;
CREATE TABLE public.positions (LIKE public.positions_plain INCLUDING DEFAULTS,
    PRIMARY KEY (id, "tradingAccountId")) PARTITION BY HASH ("tradingAccountId");
CREATE TABLE public.positions_0 PARTITION OF public.positions
    FOR VALUES WITH (MODULUS 4, REMAINDER 0);
CREATE TABLE public.positions_1 PARTITION OF public.positions
    FOR VALUES WITH (MODULUS 4, REMAINDER 1);
CREATE TABLE public.positions_2 PARTITION OF public.positions
    FOR VALUES WITH (MODULUS 4, REMAINDER 2);
CREATE TABLE public.positions_3 PARTITION OF public.positions
    FOR VALUES WITH (MODULUS 4, REMAINDER 3);
INSERT INTO public.positions SELECT * FROM public.positions_plain;
DROP TABLE public.positions_plain CASCADE;
CREATE INDEX ON public.positions (id);
"""
# --durable: what production runs (the cluster's defaults are the CPU-bound test settings)
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
WORKLOADS = {
    "fill": "fill.pgbench",
    "position update": "position_update.pgbench",
    "500-row mark-to-market": "mark_to_market.pgbench",
}
TARGETS = {  # (simple, prepared), issue 2
    "fill": (0.91, 0.86),
    "position update": (0.83, 0.80),
    "500-row mark-to-market": (0.91, 0.91),
}


def enable(conn: psycopg.Connection, triggers: tuple[str, ...]) -> None:
    """Disable every user trigger on the watched tables, then enable ``table.trigger``s."""
    for table in TABLES:
        conn.execute(f"ALTER TABLE public.{table} DISABLE TRIGGER USER")
    for qualified in triggers:
        table, trigger = qualified.split(".")
        conn.execute(f"ALTER TABLE public.{table} ENABLE TRIGGER {trigger}")


def pgbench(
    bindir: Path,
    cluster: PgCluster,
    script: str,
    mode: str,
    seconds: int,
    clients: int,
    positions: int,
    per_account: int,
) -> tuple[float, int]:
    """tps and the number of transactions of one pgbench run."""
    out = subprocess.run(
        [
            str(bindir / "pgbench"),
            "-n",
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(seconds),
            "-M",
            mode,
            "-f",
            str(HERE / script),
            "-D",
            f"positions={positions}",
            "-D",
            f"per_account={per_account}",
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "-U",
            "postgres",
            "bench",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    ).stdout
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    if not match or not processed:
        raise RuntimeError(f"no tps in pgbench output:\n{out}")
    return float(match.group(1)), int(processed.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--positions", type=int, default=1_000_000)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--modes", default="simple,prepared")
    parser.add_argument("--layout", choices=("plain", "partitioned"), default="plain")
    parser.add_argument("--durable", action="store_true", help="fsync and synchronous_commit on")
    parser.add_argument(
        "--designs", default=",".join(DESIGNS), help="comma-separated; 'none' always runs"
    )
    args = parser.parse_args()
    per_account = args.positions // args.accounts
    bindir = find_bindirs()[18]
    server = {"shared_buffers": "1GB", "max_wal_size": "4GB", **(DURABLE if args.durable else {})}
    with PgCluster(bindir, settings=server) as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench")
        dsn = cluster.dsn("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            seed(conn, accounts=args.accounts, positions=args.positions)
            if args.layout == "partitioned":
                conn.execute(PARTITIONED)  # type: ignore[arg-type]
            migrate.migrate(Settings(database=DatabaseSettings(dsn=dsn)))
            conn.execute((HERE / "variants.sql").read_text())
            conn.execute("VACUUM ANALYZE")
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            drainer = Drainer(dsn)
            drainer.start()
            results: dict[tuple[str, str, str], list[float]] = {}
            cpu_per_tx: dict[tuple[str, str, str], list[float]] = {}
            designs = [
                "none",
                *(d for d in DESIGNS if d != "none" and d in args.designs.split(",")),
            ]
            for workload in args.workloads.split(","):
                for mode in args.modes.split(","):
                    for r in range(args.rounds):
                        order = designs[r % len(designs) :] + designs[: r % len(designs)]
                        for design in order:
                            enable(conn, DESIGNS[design])
                            conn.execute("VACUUM public.positions, public.trading_accounts")
                            cpu_before = server_cpu(cluster)
                            tps, transactions = pgbench(
                                bindir,
                                cluster,
                                WORKLOADS[workload],
                                mode,
                                args.seconds,
                                args.clients,
                                args.positions,
                                per_account,
                            )
                            time.sleep(0.5)  # pgbench's backends exit and are reaped
                            cpu = (server_cpu(cluster) - cpu_before) / transactions * 1e6
                            results.setdefault((workload, mode, design), []).append(tps)
                            cpu_per_tx.setdefault((workload, mode, design), []).append(cpu)
                        print(
                            f"  {workload} / {mode} round {r + 1}: "
                            + ", ".join(
                                f"{d.split(' ')[0]} {results[(workload, mode, d)][-1]:.0f}"
                                for d in designs
                            ),
                            flush=True,
                        )
            drainer.finish()
    report(results, cpu_per_tx, args, version)


def report(
    results: dict[tuple[str, str, str], list[float]],
    cpu_per_tx: dict[tuple[str, str, str], list[float]],
    args: argparse.Namespace,
    version: str,
) -> None:
    print()
    print(
        f"capture overhead, {datetime.date.today()}, PostgreSQL {version}, "
        f"{args.layout} positions, "
        f"{'durable (fsync, synchronous_commit on)' if args.durable else 'CPU-bound (fsync off)'}, "
        f"{machine()}, {args.clients} clients, "
        f"{args.accounts} accounts / {args.positions} positions, "
        f"{args.rounds} rounds x {args.seconds} s, ratio = tps / tps without trigger, "
        "median (min..max); server CPU per transaction (all backends, kernel included), median, "
        "and its difference to no trigger"
    )
    print()
    print("| workload | protocol | design | tps (median) | ratio | server CPU µs/tx | target |")
    print("|---|---|---|---|---|---|---|")
    for (workload, mode, design), samples in results.items():
        base = results[(workload, mode, "none")]
        ratios = [s / b for s, b in zip(samples, base, strict=True)]
        target = ""
        if design == "riskd (as installed)":
            t = TARGETS[workload][0 if mode == "simple" else 1]
            target = f">= {t:.2f} {'met' if statistics.median(ratios) >= t else 'NOT met'}"
        cpu = statistics.median(cpu_per_tx[(workload, mode, design)])
        extra = cpu - statistics.median(cpu_per_tx[(workload, mode, "none")])
        print(
            f"| {workload} | {mode} | {design} | {statistics.median(samples):.0f} | "
            f"{statistics.median(ratios):.2f} ({min(ratios):.2f}..{max(ratios):.2f}) | "
            f"{cpu:.0f} ({extra:+.0f}) | {target} |"
        )


if __name__ == "__main__":
    main()
