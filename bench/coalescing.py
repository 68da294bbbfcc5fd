"""Coalescing: how many checks a storm of updates costs, and whether memory follows the updates.

On a throwaway PostgreSQL 18 seeded with 10 000 accounts / 100 000 positions, riskd installed,
``riskd run`` as a subprocess with the default settings (debounce 1 s, max_delay 5 s). Writer
threads change the unrealised PnL of random positions of those accounts, 100 rows per statement,
paced to the target number of row updates over the duration. Each load runs against a fresh
daemon process; the checks come from its heartbeat (riskd.daemons.stats), its memory from
/proc (peak resident set). Target (issue 3): checks <= accounts x ceil(duration / max_delay) +
accounts, and the daemon's memory flat in the number of updates (the second load has ten times
the first's updates).

    python bench/coalescing.py [--updates 100000,1000000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import datetime
import math
import random
import threading
import time
from pathlib import Path

import psycopg
from common import OUT, machine, seeded_database, start_daemon

WRITERS = 4
ROWS_PER_STATEMENT = 100
MAX_DELAY = 5.0


def write(dsn: str, positions: list[str], rows: int, seconds: float, seed_: int) -> int:
    rng = random.Random(seed_)
    statements = rows // ROWS_PER_STATEMENT
    interval = seconds / statements
    done = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.monotonic()
        for k in range(statements):
            due = started + k * interval
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)  # pacing the load
            ids = rng.sample(positions, ROWS_PER_STATEMENT)
            cur = conn.execute(
                'UPDATE positions SET "unrealizedPnL" = "unrealizedPnL" + 0.01 WHERE id = ANY(%s)',
                (ids,),
            )
            done += cur.rowcount
    return done


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


def stats(dsn: str, pid: int) -> dict[str, object]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT stats FROM riskd.daemons WHERE pid = %s", (pid,)).fetchone()
    return {} if row is None else dict(row[0])


def run_load(
    dsn: str, positions: list[str], updates: int, seconds: float, out: Path
) -> tuple[int, int, dict[str, int], float]:
    daemon = start_daemon(
        dsn, out / "coalescing.toml", "# the defaults\n", out / f"coalescing-daemon-{updates}.log"
    )
    try:
        before = stats(dsn, daemon.pid)
        while not before:
            time.sleep(0.2)
            before = stats(dsn, daemon.pid)
        counts: list[int] = []
        started = time.monotonic()

        def one(i: int) -> None:
            counts.append(write(dsn, positions, updates // WRITERS, seconds, i))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        # let the last changes reach max_delay and the heartbeat (every 2 s) report them
        time.sleep(MAX_DELAY + 3.0)
        after = stats(dsn, daemon.pid)
        mem = memory_kib(daemon.pid)
    finally:
        daemon.terminate()
        daemon.wait(30)
    checks = int(after["checks"]) - int(before["checks"])  # type: ignore[call-overload]
    return sum(counts), checks, mem, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", default="100000,1000000")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--positions", type=int, default=100_000)
    args = parser.parse_args()
    loads = [int(u) for u in args.updates.split(",")]

    with seeded_database(args.accounts, args.positions) as db:
        dsn, version = db.dsn, db.version
        with psycopg.connect(dsn, autocommit=True) as conn:
            positions = [r[0] for r in conn.execute("SELECT id FROM positions").fetchall()]
            accounts = conn.execute("SELECT count(*) FROM trading_accounts").fetchone()[0]  # type: ignore[index]
        results = []
        for updates in loads:
            done, checks, mem, elapsed = run_load(dsn, positions, updates, args.seconds, OUT)
            bound = accounts * math.ceil(elapsed / MAX_DELAY) + accounts
            results.append((updates, done, elapsed, checks, bound, mem))
            print(
                f"  {done} updates in {elapsed:.1f} s: {checks} checks (bound {bound}),"
                f" peak RSS {mem['VmHWM'] / 1024:.1f} MiB",
                flush=True,
            )

    print()
    print(
        f"coalescing, {datetime.date.today()}, PostgreSQL {version}, {machine()}, "
        f"{accounts} accounts / {args.positions} positions, "
        f"defaults (debounce 1 s, max_delay 5 s), {ROWS_PER_STATEMENT} rows per statement"
    )
    print()
    print("| row updates | over | checks | bound | checks per update | daemon peak RSS |")
    print("|---|---|---|---|---|---|")
    for _, done, elapsed, checks, bound, mem in results:
        verdict = "met" if checks <= bound else "NOT met"
        print(
            f"| {done} | {elapsed:.1f} s | {checks} | {bound} ({verdict}) "
            f"| {checks / done:.4f} | {mem['VmHWM'] / 1024:.1f} MiB |"
        )
    peaks = [r[5]["VmHWM"] for r in results]
    print()
    print(
        f"peak memory, largest load / smallest: {peaks[-1] / peaks[0]:.2f} "
        f"for {results[-1][1] / results[0][1]:.0f}x the updates"
    )


if __name__ == "__main__":
    main()
