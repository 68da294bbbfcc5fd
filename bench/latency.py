"""End-to-end latency: from a position update's commit to the completed risk check.

On a throwaway PostgreSQL 18 seeded with 100 000 accounts / 1 000 000 positions, riskd installed,
``riskd run`` as a subprocess with ``debounce = 0`` and every other setting at its default.
Every account's balance is set so that it stands at 50 % utilisation; each update moves one
account's position PnL so that it crosses the warning threshold (85 %) or comes back (50 %), so
every check ends in a level transition, and riskd NOTIFYs ``riskd_events`` when the check's
transaction commits. The benchmark LISTENs there: latency = the notification's arrival minus
the update's commit, both on this process's clock, so nothing depends on riskd's own
accounting. Load: writer threads, each with its own connection and its own share of the
accounts, pace single-row autocommit updates to the target rate; an account is not touched
again until its event came back.

    python bench/latency.py [--rates 1,500,2000,5000] [--seconds 10] [--quiet-seconds 30]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from common import OUT, seeded_database, start_daemon

WRITERS = 4

# One open position per account to move, the account's used margin, and a balance that puts the
# account at 50 % utilisation (equity = 2 x used margin).
PREPARE = """
WITH used AS (
    SELECT p."tradingAccountId" AS account, sum(abs(p.quantity) * i.price * i."marginRate") AS u,
           sum(p."unrealizedPnL") AS pnl, min(p.id) AS position
    FROM positions p JOIN instruments i ON i.id = p."instrumentId"
    WHERE p.quantity <> 0
    GROUP BY 1
)
UPDATE trading_accounts a SET balance = 2 * used.u - used.pnl
FROM used WHERE used.account = a.id AND used.u > 0
RETURNING a.id, used.position, used.u,
          (SELECT "unrealizedPnL" FROM positions WHERE id = used.position)
"""


@dataclass
class Target:
    account: str
    position: str
    pnl_ok: float
    pnl_warning: float
    warning: bool = False


@dataclass
class Phase:
    rate: float
    pending: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def listen(dsn: str, phase_ref: list[Phase], stop: threading.Event) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("LISTEN riskd_events")
        while not stop.is_set():
            for n in conn.notifies(timeout=0.2):
                arrived = time.monotonic()
                account = json.loads(n.payload)["account_id"]
                phase = phase_ref[0]
                with phase.lock:
                    committed = phase.pending.pop(account, None)
                if committed is not None:
                    phase.latencies.append(arrived - committed)


def write(
    dsn: str, targets: list[Target], phase: Phase, rate: float, seconds: float, seed_: int
) -> None:
    rng = random.Random(seed_)
    interval = 1.0 / rate
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.monotonic()
        k = 0
        while True:
            due = started + k * interval
            if due - started >= seconds:
                return
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)  # pacing the load, not waiting for a result
            for _ in range(10):  # an account whose last change has not been checked yet waits
                t = targets[rng.randrange(len(targets))]
                with phase.lock:
                    if t.account not in phase.pending:
                        break
            else:
                k += 1
                continue
            t.warning = not t.warning
            conn.execute(
                'UPDATE positions SET "unrealizedPnL" = %s WHERE id = %s',
                (t.pnl_warning if t.warning else t.pnl_ok, t.position),
            )
            with phase.lock:
                phase.pending[t.account] = time.monotonic()
                phase.sent += 1
            k += 1


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="1,500,2000,5000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quiet-seconds", type=float, default=30.0)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--positions", type=int, default=1_000_000)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    with seeded_database(
        args.accounts, args.positions, lambda conn: conn.execute(PREPARE).fetchall()
    ) as db:
        dsn, version, rows = db.dsn, db.version, db.prepared
        targets = [Target(a, p, float(pnl), float(pnl) - 0.824 * float(u)) for a, p, u, pnl in rows]
        daemon = start_daemon(
            dsn,
            OUT / "latency.toml",
            '[daemon]\ndebounce = "0s"\n',  # everything else: the defaults
            OUT / "latency-daemon.log",
        )
        try:
            results = []
            phase_ref = [Phase(0)]
            stop = threading.Event()
            listener = threading.Thread(target=listen, args=(dsn, phase_ref, stop), daemon=True)
            listener.start()
            time.sleep(1.0)  # the listener's LISTEN has committed
            for rate in rates:
                seconds = args.quiet_seconds if rate < 10 else args.seconds
                phase = Phase(rate)
                phase_ref[0] = phase
                writers = 1 if rate < 100 else WRITERS
                shares = [targets[i::writers] for i in range(writers)]
                cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
                threads = [
                    threading.Thread(
                        target=write,
                        args=(dsn, shares[i], phase, rate / writers, seconds, 100 * i + int(rate)),
                    )
                    for i in range(writers)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                settle = time.monotonic() + 10
                while phase.pending and time.monotonic() < settle:
                    time.sleep(0.05)
                elapsed = time.monotonic() - t0
                cpu = (cpu_seconds(daemon.pid) - cpu0) / elapsed
                lat = [x * 1000 for x in phase.latencies]
                achieved = phase.sent / seconds
                results.append((rate, achieved, len(lat), len(phase.pending), lat, cpu))
                print(
                    f"  {rate:g}/s: sent {phase.sent} ({achieved:.0f}/s), matched {len(lat)},"
                    f" p50 {statistics.median(lat):.1f} ms, p99 {quantile(lat, 0.99):.1f} ms,"
                    f" max {max(lat):.1f} ms, daemon CPU {cpu:.0%}",
                    flush=True,
                )
            stop.set()
            listener.join()
        finally:
            daemon.terminate()
            daemon.wait(30)

    print()
    print(
        f"latency, {datetime.date.today()}, PostgreSQL {version}, {os.cpu_count()} cores, "
        f"{platform.machine()}, {args.accounts} accounts / {args.positions} positions, "
        f"debounce 0, {WRITERS} writer connections"
    )
    print()
    print("| target rate | achieved | checks timed | p50 | p99 | max | daemon CPU | p99 <= 50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for rate, achieved, n, lost, lat, cpu in results:
        p99 = quantile(lat, 0.99)
        verdict = ("met" if p99 <= 50 else "NOT met") if rate <= 2000 else "(not a target)"
        print(
            f"| {rate:g}/s | {achieved:.0f}/s | {n}{f' ({lost} unmatched)' if lost else ''} "
            f"| {statistics.median(lat):.1f} ms | {p99:.1f} ms | {max(lat):.1f} ms "
            f"| {cpu:.0%} | {verdict} |"
        )


if __name__ == "__main__":
    main()
