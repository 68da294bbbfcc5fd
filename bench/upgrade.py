"""What an upgrade costs the trading writes going on: riskd 0.1.0 to head, live.

On a throwaway PostgreSQL 18 seeded with 20 000 accounts / 200 000 positions, riskd 0.1.0 is
installed by its own released wheel (tests/releases/) and its own daemon runs; 8 sessions
trade (a fill: update a position's quantity, then its account's balance, one transaction).
Five seconds in, this riskd's `riskd migrate` runs (0001 to head: the version fence, the check
through views, capture re-created on the platform's tables under lock_timeout). Reported, on a
CPU-bound server (fsync off) and on a durable one (fsync on, synchronous_commit on): the
trading writes before, during and after the migration, how many failed, their latency
(median, p99, max) in each window, how long the migration took, and how the old daemon ended.

    python bench/upgrade.py [--seconds 15] [--accounts 20000] [--positions 200000]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import psycopg
from common import OUT

from riskd.sandbox.cluster import PgCluster, find_bindirs
from riskd.sandbox.seed import seed

RELEASE = Path(__file__).resolve().parent.parent / "tests" / "releases"
TRADERS = 8
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
# --log-locks: the server says who waited on a lock for more than 100 ms, and for what, and
# which statements took more than 100 ms, so a slow migration can be taken apart
LOG_LOCKS = {
    "log_lock_waits": "on",
    "deadlock_timeout": "100ms",
    "log_min_duration_statement": "100ms",
}


def env_for(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RISKD_", "NOTIFY_"))}
    env.pop("DATABASE_URL", None)
    return env | {"RISKD_DSN": dsn, "RISKD_CONFIG": ""}


def riskd(args: list[str], dsn: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "riskd", *args],
        cwd=cwd,
        env=env_for(dsn),
        capture_output=True,
        text=True,
        timeout=600,
    )


def trade(dsn: str, accounts: int, stop: threading.Event, out: list[tuple[float, float, bool]]):
    rng = random.Random()
    with psycopg.connect(dsn) as conn:
        conn.execute("SET statement_timeout = '30s'")
        conn.commit()
        while not stop.is_set():
            account = f"acc-{rng.randrange(accounts) + 1:06d}"
            started = time.monotonic()
            ok = True
            try:
                conn.execute(
                    "UPDATE positions SET quantity = quantity + 1 WHERE id = ("
                    'SELECT id FROM positions WHERE "tradingAccountId" = %s LIMIT 1)',
                    (account,),
                )
                conn.execute(
                    "UPDATE trading_accounts SET balance = balance + 1 WHERE id = %s", (account,)
                )
                conn.commit()
            except psycopg.Error:
                conn.rollback()
                ok = False
            out.append((started, time.monotonic() - started, ok))


def window(rows: list[tuple[float, float, bool]], start: float, end: float) -> dict[str, float]:
    inside = [lat for t, lat, ok in rows if start <= t < end]
    failed = sum(1 for t, _, ok in rows if start <= t < end and not ok)
    if not inside:
        return {"writes": 0, "failed": failed}
    inside.sort()
    seconds = max(end - start, 1e-9)
    return {
        "writes": len(inside),
        "per_second": round(len(inside) / seconds),
        "failed": failed,
        "p50_ms": round(statistics.median(inside) * 1000, 2),
        "p99_ms": round(inside[int(0.99 * (len(inside) - 1))] * 1000, 2),
        "max_ms": round(inside[-1] * 1000, 2),
    }


def run(label: str, settings: dict[str, str], args: argparse.Namespace) -> dict[str, object]:
    with (
        PgCluster(
            find_bindirs()[18],
            settings={"shared_buffers": "1GB", **settings, **(LOG_LOCKS if args.log_locks else {})},
        ) as cluster,
        tempfile.TemporaryDirectory() as tmp,
    ):
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench")
        dsn = cluster.dsn("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            seed(conn, accounts=args.accounts, positions=args.positions)
            conn.execute("VACUUM ANALYZE")
        old = Path(tmp) / "riskd-0.1.0"
        with zipfile.ZipFile(RELEASE / "riskd-0.1.0-py3-none-any.whl") as wheel:
            wheel.extractall(old)
        installed = riskd(["migrate"], dsn, cwd=old)
        assert installed.returncode == 0, installed.stderr
        log = Path(tmp) / "old.log"
        daemon = subprocess.Popen(
            [sys.executable, "-m", "riskd", "run"],
            cwd=old,
            env=env_for(dsn),
            stderr=log.open("w"),
        )
        try:
            deadline = time.monotonic() + 120
            while "ready:" not in log.read_text():
                assert daemon.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)  # polling a log file with a deadline
            stop = threading.Event()
            rows: list[tuple[float, float, bool]] = []
            threads = [
                threading.Thread(target=trade, args=(dsn, args.accounts, stop, rows))
                for _ in range(TRADERS)
            ]
            began = time.monotonic()
            for t in threads:
                t.start()
            time.sleep(5)  # trading before the upgrade: the baseline window
            log_offset = cluster.log_path.stat().st_size
            migrate_start = time.monotonic()
            migrated = riskd(["migrate"], dsn)
            migrate_end = time.monotonic()
            # Python starting and importing riskd, no database: what of the time is not SQL
            started = time.monotonic()
            riskd(["--version"], dsn)
            startup = time.monotonic() - started
            with cluster.log_path.open(errors="replace") as server_log:
                server_log.seek(log_offset)
                waits = [
                    " ".join(line.split()[2:])[:300]
                    for line in server_log
                    if "still waiting for" in line or "duration:" in line or "acquired" in line
                ]
            old_exit = daemon.wait(60)
            time.sleep(max(0.0, args.seconds - (time.monotonic() - began)))
            stop.set()
            for t in threads:
                t.join(60)
            ended = time.monotonic()
        finally:
            if daemon.poll() is None:
                daemon.kill()
        errors = [line for line in log.read_text().splitlines() if " ERROR " in line]
        return {
            "server": label,
            "migrate": migrated.stdout.strip() or migrated.stderr.strip(),
            "migrate_seconds": round(migrate_end - migrate_start, 3),
            # each attempt that met a lock held past lock_timeout logs this, then retries
            "migrate_lock_retries": migrated.stderr.count("migrate.lock_timeout"),
            "cli_startup_seconds": round(startup, 3),
            "server_log": waits if args.log_locks else [],
            "before": window(rows, began, migrate_start),
            "during": window(rows, migrate_start, migrate_end),
            "after": window(rows, migrate_end, ended),
            "old_daemon_exit": old_exit,
            "old_daemon_error_lines": errors,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--positions", type=int, default=200_000)
    parser.add_argument("--log-locks", action="store_true", help="lock waits and slow statements")
    args = parser.parse_args()
    results = [run("CPU-bound (fsync off)", {}, args), run("durable (fsync on)", DURABLE, args)]
    OUT.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    (OUT / "upgrade.json").write_text(json.dumps({"at": stamp, "results": results}, indent=2))
    print(f"# riskd 0.1.0 -> head under load, {stamp}, {platform.node()}, {os.cpu_count()} cores")
    print("| server | window | writes | per s | failed | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for name in ("before", "during", "after"):
            w = r[name]
            assert isinstance(w, dict)
            print(
                f"| {r['server']} | {name} | {w.get('writes')} | {w.get('per_second', '-')} | "
                f"{w.get('failed')} | {w.get('p50_ms', '-')} | {w.get('p99_ms', '-')} | "
                f"{w.get('max_ms', '-')} |"
            )
    for r in results:
        print(
            f"- {r['server']}: migrate {r['migrate_seconds']} s, "
            f"{r['migrate_lock_retries']} lock retries ({r['migrate']}), of which "
            f"{r['cli_startup_seconds']} s starting the CLI (`riskd --version` under the same "
            f"load); old daemon exit {r['old_daemon_exit']}: {r['old_daemon_error_lines']}"
        )
        for line in r["server_log"]:  # type: ignore[attr-defined]
            print(f"    {line}")


if __name__ == "__main__":
    main()
