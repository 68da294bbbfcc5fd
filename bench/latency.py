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

Risk first (issue 11, DESIGN §1): with ``--risk-first``, 2 % of the accounts are edge accounts,
held at 75 % utilisation (checked so before the load starts), and a share of the updates
(``--crossing-share``, 5 %) moves one of them across the warning threshold (85 %) and back;
every other update moves a background account's PnL a little (50 % to 50.5 % and back), which
changes its figures but never its level. At a rate the daemon cannot keep up with, the edge
accounts, whose last recorded utilisation is highest, must be checked first: target p99 from
commit to check <= 100 ms for the crossings, while the rest may lag. The crossings' latency is
timed as above; the rest's comes from the daemon's own change-to-check histogram (Prometheus,
``riskd_change_to_check_seconds``), as bucket bounds.

    python bench/latency.py --risk-first [--rates 5000] [--crossing-share 0.05]
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import re
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import psycopg
from common import OUT, machine, proc_cpu, seeded_database, start_daemon

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


def edge_target(account: str, position: str, used: float, pnl: float) -> Target:
    """An account that goes from 75 % utilisation (ok, under the hysteresis band) to 85 %."""
    return Target(account, position, pnl - 0.6667 * used, pnl - 0.8235 * used)


def background_target(account: str, position: str, used: float, pnl: float) -> Target:
    """An account whose figures move (50 % to 50.5 % utilisation) but never its level."""
    return Target(account, position, pnl, pnl - 0.0198 * used)


@dataclass
class Mix:
    """Which accounts an update may move: crossings on the edge, the rest in the background."""

    edge: list[Target]
    background: list[Target]
    share: float


@dataclass
class Phase:
    rate: float
    pending: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    sent: int = 0  # the timed updates
    total: int = 0  # every update
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
    dsn: str,
    targets: list[Target],
    phase: Phase,
    rate: float,
    seconds: float,
    seed_: int,
    mix: Mix | None = None,
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
            k += 1
            if mix is not None and rng.random() >= mix.share:
                b = mix.background[rng.randrange(len(mix.background))]
                b.warning = not b.warning  # here: its PnL's other value, same level
                conn.execute(
                    'UPDATE positions SET "unrealizedPnL" = %s WHERE id = %s',
                    (b.pnl_warning if b.warning else b.pnl_ok, b.position),
                )
                with phase.lock:
                    phase.total += 1
                continue
            pool = mix.edge if mix is not None else targets
            for _ in range(10):  # an account whose last change has not been checked yet waits
                t = pool[rng.randrange(len(pool))]
                with phase.lock:
                    if t.account not in phase.pending:
                        break
            else:
                continue
            t.warning = not t.warning
            conn.execute(
                'UPDATE positions SET "unrealizedPnL" = %s WHERE id = %s',
                (t.pnl_warning if t.warning else t.pnl_ok, t.position),
            )
            with phase.lock:
                phase.pending[t.account] = time.monotonic()
                phase.sent += 1
                phase.total += 1


def histogram(port: int) -> dict[float, float]:
    """The daemon's change-to-check histogram: cumulative count per bucket bound."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    counts: dict[float, float] = {}
    for m in re.finditer(r'riskd_change_to_check_seconds_bucket\{le="([^"]+)"\} (\S+)', text):
        counts[float(m.group(1))] = float(m.group(2))
    return counts


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> str:
    """The bucket bound under which ``q`` of the checks between two scrapes fell."""
    bounds = sorted(after)
    total = after[bounds[-1]] - before.get(bounds[-1], 0.0)
    if total <= 0:
        return "-"
    for bound in bounds:
        if after[bound] - before.get(bound, 0.0) >= q * total:
            return f"<= {bound * 1000:g} ms" if bound != float("inf") else "> 60 s"
    return "-"


def prepare_mix(dsn: str, rows: list[tuple[str, str, float, float]], share: float) -> Mix:
    """Edge accounts moved to 75 % and checked there by the daemon before the load starts,
    so that their last recorded utilisation is what it is on a platform in steady state."""
    edge = [edge_target(a, p, float(u), float(pnl)) for a, p, u, pnl in rows[::50]]
    background = [
        background_target(a, p, float(u), float(pnl))
        for i, (a, p, u, pnl) in enumerate(rows)
        if i % 50
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in edge:
            conn.execute(
                'UPDATE positions SET "unrealizedPnL" = %s WHERE id = %s', (t.pnl_ok, t.position)
            )
        ids = [t.account for t in edge]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            held = conn.execute(
                "SELECT count(*) FROM riskd.account_state"
                " WHERE account_id = ANY(%s) AND utilization > 0.7",
                (ids,),
            ).fetchone()
            if held and held[0] == len(ids):
                return Mix(edge, background, share)
            time.sleep(0.2)  # waiting on the daemon's checks, with a deadline
    raise SystemExit("the daemon did not check the edge accounts within 120 s")


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
    parser.add_argument("--risk-first", action="store_true", help="crossings among other load")
    parser.add_argument("--crossing-share", type=float, default=0.05)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if args.risk_first and args.rates == parser.get_default("rates"):
        rates = [5000.0]
    metrics_port = 9464

    with seeded_database(
        args.accounts, args.positions, lambda conn: conn.execute(PREPARE).fetchall()
    ) as db:
        dsn, version, rows = db.dsn, db.version, db.prepared
        targets = [Target(a, p, float(pnl), float(pnl) - 0.824 * float(u)) for a, p, u, pnl in rows]
        daemon = start_daemon(
            dsn,
            OUT / "latency.toml",
            # everything else: the defaults
            f'[daemon]\ndebounce = "0s"\nmetrics_port = {metrics_port}\n',
            OUT / "latency-daemon.log",
        )
        try:
            mix = prepare_mix(dsn, rows, args.crossing_share) if args.risk_first else None
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
                mixes = [
                    Mix(mix.edge[i::writers], mix.background[i::writers], mix.share)
                    if mix
                    else None
                    for i in range(writers)
                ]
                before = histogram(metrics_port)
                cpu0, t0 = proc_cpu(daemon.pid), time.monotonic()
                threads = [
                    threading.Thread(
                        target=write,
                        args=(
                            dsn,
                            shares[i],
                            phase,
                            rate / writers,
                            seconds,
                            100 * i + int(rate),
                            mixes[i],
                        ),
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
                cpu = (proc_cpu(daemon.pid) - cpu0) / elapsed
                after = histogram(metrics_port)
                every = (bucket_quantile(before, after, 0.5), bucket_quantile(before, after, 0.99))
                lat = [x * 1000 for x in phase.latencies]
                achieved = phase.total / seconds
                results.append((rate, achieved, len(lat), len(phase.pending), lat, cpu, every))
                print(
                    f"  {rate:g}/s: {phase.total} updates ({achieved:.0f}/s), {phase.sent} timed,"
                    f" matched {len(lat)}, p50 {statistics.median(lat):.1f} ms,"
                    f" p99 {quantile(lat, 0.99):.1f} ms, max {max(lat):.1f} ms; every check:"
                    f" p50 {every[0]}, p99 {every[1]}; daemon CPU {cpu:.0%}",
                    flush=True,
                )
            stop.set()
            listener.join()
        finally:
            daemon.terminate()
            daemon.wait(30)

    print()
    mode = (
        f"risk first: {args.crossing_share:.0%} of the updates cross a threshold on 2 % of the "
        "accounts (held at 75 %), the rest move other accounts' figures"
        if args.risk_first
        else "every update crosses a threshold"
    )
    print(
        f"latency, {datetime.date.today()}, PostgreSQL {version}, {machine()}, "
        f"{args.accounts} accounts / {args.positions} positions, "
        f"debounce 0, {WRITERS} writer connections; {mode}"
    )
    print()
    target = "p99 <= 100 ms (crossings)" if args.risk_first else "p99 <= 50 ms"
    print(
        "| target rate | achieved | crossings timed | p50 | p99 | max "
        f"| every check p50 / p99 (daemon's histogram) | daemon CPU | {target} |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rate, achieved, n, lost, lat, cpu, every in results:
        p99 = quantile(lat, 0.99)
        if args.risk_first:
            verdict = "met" if p99 <= 100 else "NOT met"
        else:
            verdict = ("met" if p99 <= 50 else "NOT met") if rate <= 2000 else "(not a target)"
        print(
            f"| {rate:g}/s | {achieved:.0f}/s | {n}{f' ({lost} unmatched)' if lost else ''} "
            f"| {statistics.median(lat):.1f} ms | {p99:.1f} ms | {max(lat):.1f} ms "
            f"| {every[0]} / {every[1]} | {cpu:.0%} | {verdict} |"
        )


if __name__ == "__main__":
    main()
