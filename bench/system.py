"""System cost: what riskd as a whole costs trading writes, beside the seed's designs.

pgbench (8 clients) against the reference schema seeded with 100 000 accounts / 1 000 000
positions on a throwaway PostgreSQL 18 (riskd.sandbox.cluster), riskd migrated to head. Three
workloads (fill, single-row position update, 500-row mark-to-market), both protocols
(pgbench -M simple and -M prepared). Each round runs every design once, in an order that
rotates from round to round, on the same server and data:

  none     riskd's capture triggers disabled, nothing else
  floor    two do-nothing AFTER UPDATE row triggers (positions, balances) instead of riskd's
  capture  riskd's triggers, and a drain loop only (the `drain` query every 100 ms, `rearm`
           after an empty drain, as the daemon does); no checks
  aggregate  riskd's triggers and the same drain loop, each drain's accounts then checked with
           the bare aggregate of bench/check_cost.py (equity and used margin, one statement per
           drain, no write): the least any design that checks every changed account can cost
  riskd    riskd's triggers and `riskd run` at its defaults (config: the DSN only), started
           before the round (its start-up sweep done before the window opens) and stopped
           with SIGTERM once it is idle again after the round
  seed     riskd's triggers disabled; the seed's design: pg_notify('risk_changes', account)
           per changed row, and a listener process (this file, --seed-listener) that checks an
           account 5 s after its last notification with one query, writing an event (and a
           NOTIFY) only when the level changes; kept running through the whole benchmark
  cron     riskd's triggers disabled; `riskd sweep` (a new process, as a timer starts it)
           every 60 s. Its rounds last max(--seconds, --cron-seconds) = T, so that a sweep
           under load fits in; a round of T < 60 s holds one sweep (started 1 s into it) and is
           padded to 60 s with the same round's `none` figures: ratio = (tx + (60 - T) x
           tps_none) / (60 x tps_none), server CPU likewise. Longer rounds hold a sweep every
           60 s and are padded to a multiple of 60 s.

riskd's daemon also sweeps every 60 s, which a round shorter than that does not hold: the
"riskd + its sweep" row estimates it as riskd's ratio less the tps the cron design loses.

Probes: the last 50 accounts are kept out of pgbench's reach (it is given fewer positions), set
at 50 % utilisation, and a probe writer moves one of them every 200 ms across the warning
threshold (85 %) and back, in every design (so every design carries the same load). Freshness
is the time from a probe update's commit to the arrival of its event (LISTEN riskd_events for
riskd and cron, bench_seed_events for the seed's listener), on this process's clock; a probe is
not moved again until its event came back. For cron it is a model: a change waits for the next
sweep, uniformly up to 60 s, so p99 = 0.99 x 60 s + the measured time from a sweep's start to
its probe events.

Per design and cell, over the rounds:
  ratio         tps / tps of `none` in the same round; median (min..max)
  server CPU    utime + stime of every process of the cluster (/proc; the postmaster's reaped
                children included) from pgbench's start until the design is idle again (the
                checks the round's writes caused included), per pgbench transaction; median,
                and its difference to `none`
  CPU/check     the daemon's own process (riskd run; the seed's listener; riskd sweep) CPU per
                check; riskd's checks are the `checks` counter of its riskd.daemons heartbeat
                row, read when idle before and after the round; a sweep checks every account
  checks/s      checks the round caused (counted until idle) per second of the round
  freshness     p99 over every probe of every round of the cell (n samples)

    python bench/system.py [--durable] [--rounds 5] [--seconds 7] [--cron-seconds 16]
        [--accounts 100000] [--positions 1000000] [--workloads fill,position_update,mark_to_market]
        [--protocols simple,prepared] [--designs none,floor,capture,aggregate,riskd,seed,cron]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from common import DURABLE, OUT, Drainer, machine, proc_cpu, server_cpu, start_daemon

from riskd import migrate
from riskd.check import check_accounts
from riskd.config import DatabaseSettings, Settings
from riskd.db import APPLICATION_NAME
from riskd.sandbox.cluster import PgCluster, find_bindirs
from riskd.sandbox.seed import seed

HERE = Path(__file__).resolve().parent
WORKLOADS = {
    "fill": "fill.pgbench",
    "position_update": "position_update.pgbench",
    "mark_to_market": "mark_to_market.pgbench",
}
DESIGNS = ("none", "floor", "capture", "aggregate", "riskd", "seed", "cron")
TABLES = ("public.positions", "public.trading_accounts", "public.instruments")
CLIENTS = 8
CRON_PERIOD = 60.0
SEED_DEBOUNCE = 5.0
PROBES = 50
PROBE_INTERVAL = 0.2
REAP = 0.5  # pgbench's backends exit and are reaped
RISKD_STARTED = {"a", "o", "r"}  # pg_trigger.tgenabled values that mean enabled (lower-cased)
SEED_CHANNEL = "risk_changes"
SEED_EVENTS = "bench_seed_events"
RISKD_EVENTS = "riskd_events"
SEED_MARKER = "bench:"  # the seed listener's controls: a marker to say it read so far,
SEED_RESET = "bench:ok:"  # and a probe account put back at ok

# Benchmark-only objects, beside riskd's (never installed by riskd), all disabled at first.
BENCH_SQL = """
CREATE FUNCTION public.bench_system_nothing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RETURN NULL;
END $$;
CREATE TRIGGER bench_system_floor_positions AFTER UPDATE ON public.positions
    FOR EACH ROW EXECUTE FUNCTION public.bench_system_nothing();
CREATE TRIGGER bench_system_floor_accounts AFTER UPDATE ON public.trading_accounts
    FOR EACH ROW EXECUTE FUNCTION public.bench_system_nothing();

-- the seed's design: pg_notify per changed row
CREATE FUNCTION public.bench_system_notify_position() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('risk_changes', NEW."tradingAccountId");
    RETURN NULL;
END $$;
CREATE FUNCTION public.bench_system_notify_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('risk_changes', NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_system_seed_positions
    AFTER UPDATE OF quantity, "unrealizedPnL" ON public.positions
    FOR EACH ROW WHEN (OLD.quantity IS DISTINCT FROM NEW.quantity
                       OR OLD."unrealizedPnL" IS DISTINCT FROM NEW."unrealizedPnL")
    EXECUTE FUNCTION public.bench_system_notify_position();
CREATE TRIGGER bench_system_seed_accounts AFTER UPDATE OF balance ON public.trading_accounts
    FOR EACH ROW WHEN (OLD.balance IS DISTINCT FROM NEW.balance)
    EXECUTE FUNCTION public.bench_system_notify_account();

ALTER TABLE public.positions DISABLE TRIGGER bench_system_floor_positions;
ALTER TABLE public.trading_accounts DISABLE TRIGGER bench_system_floor_accounts;
ALTER TABLE public.positions DISABLE TRIGGER bench_system_seed_positions;
ALTER TABLE public.trading_accounts DISABLE TRIGGER bench_system_seed_accounts;

-- the seed listener's events (it writes one, and NOTIFYs, only when a level changes)
CREATE TABLE public.bench_seed_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  text NOT NULL,
    from_level  text NOT NULL,
    to_level    text NOT NULL,
    utilization numeric,
    created_at  timestamptz NOT NULL DEFAULT now()
);
"""
BENCH_TRIGGERS = {
    "floor": (
        ("public.positions", "bench_system_floor_positions"),
        ("public.trading_accounts", "bench_system_floor_accounts"),
    ),
    "seed": (
        ("public.positions", "bench_system_seed_positions"),
        ("public.trading_accounts", "bench_system_seed_accounts"),
    ),
}

# riskd's capture triggers on the mapped tables, found by name, and how migrate enabled them
RISKD_TRIGGERS = """
SELECT t.tgrelid::regclass::text, t.tgname::text, t.tgenabled::text
FROM pg_catalog.pg_trigger AS t
WHERE NOT t.tgisinternal AND t.tgname LIKE 'riskd\\_%'
  AND t.tgrelid IN ('public.positions'::regclass, 'public.trading_accounts'::regclass,
                    'public.instruments'::regclass)
ORDER BY 1, 2
"""

# Whether riskd has work in hand that its heartbeat may not show yet: marks not drained, or a
# statement running on one of its connections (the listener's wait is no statement).
RISKD_BUSY = """
SELECT clock_timestamp(),
       EXISTS (SELECT FROM riskd.dirty_accounts)
       OR EXISTS (SELECT FROM pg_catalog.pg_stat_activity
                  WHERE application_name = %s AND state = 'active'
                    AND pid <> pg_catalog.pg_backend_pid())
"""

# The probe accounts: one open position each to move, and a balance that puts the account at
# 50 % utilisation (equity = 2 x used margin).
PREPARE_PROBES = """
WITH used AS (
    SELECT p."tradingAccountId" AS account, sum(abs(p.quantity) * i.price * i."marginRate") AS u,
           sum(p."unrealizedPnL") AS pnl, min(p.id) AS position
    FROM positions p JOIN instruments i ON i.id = p."instrumentId"
    WHERE p.quantity <> 0 AND p."tradingAccountId" = ANY (%(ids)s::text[])
    GROUP BY 1
)
UPDATE trading_accounts a SET balance = 2 * used.u - used.pnl
FROM used WHERE used.account = a.id AND used.u > 0
RETURNING a.id, used.position, used.u,
          (SELECT "unrealizedPnL" FROM positions WHERE id = used.position)
"""

# The seed's check of one account (its monitorAccount): the bare aggregate.
SEED_CHECK = """
SELECT a.balance + coalesce(sum(p."unrealizedPnL"), 0) AS equity,
       coalesce(sum(abs(p.quantity) * i.price * i."marginRate"), 0) AS used,
       count(p.id) AS open
FROM trading_accounts a
LEFT JOIN positions p ON p."tradingAccountId" = a.id AND p.quantity <> 0
LEFT JOIN instruments i ON i.id = p."instrumentId"
WHERE a.id = %s
GROUP BY a.balance
"""
# What the seed's listener knows at its start (the cron job had checked every account): the
# accounts not at ok.
SEED_LEVELS = """
SELECT id, level FROM (
    SELECT a.id,
           CASE WHEN count(p.id) = 0 THEN 'ok'
                WHEN a.balance + coalesce(sum(p."unrealizedPnL"), 0) <= 0 THEN 'critical'
                WHEN coalesce(sum(abs(p.quantity) * i.price * i."marginRate"), 0)
                     >= 0.9 * (a.balance + coalesce(sum(p."unrealizedPnL"), 0)) THEN 'critical'
                WHEN coalesce(sum(abs(p.quantity) * i.price * i."marginRate"), 0)
                     >= 0.8 * (a.balance + coalesce(sum(p."unrealizedPnL"), 0)) THEN 'warning'
                ELSE 'ok' END AS level
    FROM trading_accounts a
    LEFT JOIN positions p ON p."tradingAccountId" = a.id AND p.quantity <> 0
    LEFT JOIN instruments i ON i.id = p."instrumentId"
    GROUP BY a.id, a.balance
) AS s WHERE level <> 'ok'
"""

CHILDREN: list[subprocess.Popen[bytes]] = []  # stopped on any exit


def log(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------ measurement helpers


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def pgbench(
    bindir: Path, cluster: PgCluster, script: str, mode: str, seconds: int, positions: int, per: int
) -> tuple[float, int]:
    """tps (without connection time) and transactions of one pgbench run."""
    out = subprocess.run(
        [
            str(bindir / "pgbench"), "-n", "-c", str(CLIENTS), "-j", "2", "-T", str(seconds),
            "-M", mode, "-f", str(HERE / script),
            "-D", f"positions={positions}", "-D", f"per_account={per}",
            "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "bench",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    ).stdout  # fmt: skip
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    if not match or not processed:
        raise RuntimeError(f"no tps in pgbench output:\n{out}")
    return float(match.group(1)), int(processed.group(1))


def riskd_env(dsn: str, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKD_")}
    return env | {"RISKD_DSN": dsn, "RISKD_CONFIG": str(config)}


@dataclass
class SweepRun:
    started: float
    seconds: float
    cpu: float
    accounts: int


def run_sweep(dsn: str, config: Path, timeout: float = 600.0) -> SweepRun:
    """`riskd sweep --json` as a subprocess: its wall time, its own CPU and accounts swept."""
    out = OUT / "system-sweep.json"
    started = time.monotonic()
    with out.open("wb") as stdout, (OUT / "system-sweep.log").open("ab") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "riskd", "sweep", "--json"],
            env=riskd_env(dsn, config),
            stdout=stdout,
            stderr=stderr,
        )
        CHILDREN.append(proc)
        try:
            while True:  # wait4 gives the child's own rusage; polled, for a deadline
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() - started > timeout:
                    proc.kill()
                    raise RuntimeError(f"riskd sweep did not finish in {timeout:.0f} s")
                time.sleep(0.02)
        finally:
            CHILDREN.remove(proc)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"riskd sweep failed ({proc.returncode}): see {OUT / 'system-sweep.log'}"
        )
    accounts = int(json.loads(out.read_text()).get("accounts", 0))
    return SweepRun(started, seconds, usage.ru_utime + usage.ru_stime, accounts)


def stop_child(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, wait, then SIGKILL; forget it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc in CHILDREN:
        CHILDREN.remove(proc)


# ------------------------------------------------------------------ probes and freshness


@dataclass
class Probe:
    account: str
    position: str
    pnl_ok: Decimal
    pnl_warning: Decimal
    warning: bool = False


class Freshness:
    """Probe changes and the events that answer them, for the design of the round."""

    def __init__(self, probes: list[Probe]) -> None:
        self.lock = threading.Lock()
        self.accounts = {p.account for p in probes}
        self.channel: str | None = None
        self.mode = "off"  # off | pending (wait for each change's event) | sweep (cron)
        self.pending: dict[str, float] = {}
        self.latencies: list[float] = []
        self.sweep_start: float | None = None
        self.seen: set[str] = set()

    def begin(self, channel: str | None, mode: str) -> None:
        with self.lock:
            self.channel, self.mode = channel, mode
            self.pending, self.latencies, self.seen = {}, [], set()
            self.sweep_start = None

    def busy(self, account: str) -> bool:
        with self.lock:
            return account in self.pending

    def sent(self, account: str, committed: float) -> None:
        with self.lock:
            if self.mode == "pending":
                self.pending[account] = committed

    def sweep_started(self, at: float) -> None:
        with self.lock:
            self.sweep_start, self.seen = at, set()

    def arrived(self, channel: str, account: str, at: float) -> None:
        with self.lock:
            if channel != self.channel or account not in self.accounts:
                return
            if self.mode == "pending":
                committed = self.pending.pop(account, None)
                if committed is not None:
                    self.latencies.append(at - committed)
            elif self.mode == "sweep" and self.sweep_start is not None and account not in self.seen:
                self.seen.add(account)
                self.latencies.append(at - self.sweep_start)

    def wait_pending(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending:
                    return
            time.sleep(0.05)

    def end(self) -> tuple[list[float], int]:
        """This round's latencies and the changes whose event never came."""
        with self.lock:
            result = (list(self.latencies), len(self.pending))
            self.mode, self.channel, self.pending = "off", None, {}
        return result


def listen_events(dsn: str, freshness: Freshness, stop: threading.Event) -> None:
    """LISTEN riskd_events and the seed listener's events; hand each to ``freshness``."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"LISTEN {RISKD_EVENTS}")
        conn.execute(f"LISTEN {SEED_EVENTS}")
        while not stop.is_set():
            for n in conn.notifies(timeout=0.2):
                arrived = time.monotonic()
                account = n.payload
                if n.channel == RISKD_EVENTS:
                    try:
                        account = str(json.loads(n.payload).get("account_id"))
                    except (ValueError, AttributeError):
                        continue
                freshness.arrived(n.channel, account, arrived)


class Prober(threading.Thread):
    """Every PROBE_INTERVAL, moves one probe account (one not waiting for its event) across
    the warning threshold or back."""

    def __init__(self, dsn: str, probes: list[Probe], freshness: Freshness) -> None:
        super().__init__(daemon=True)
        self.dsn, self.probes, self.freshness = dsn, probes, freshness
        self.stop = threading.Event()
        self.next = 0
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
                while not self.stop.wait(PROBE_INTERVAL):
                    for _ in range(len(self.probes)):
                        p = self.probes[self.next]
                        self.next = (self.next + 1) % len(self.probes)
                        if not self.freshness.busy(p.account):
                            break
                    else:
                        continue
                    p.warning = not p.warning
                    conn.execute(
                        'UPDATE public.positions SET "unrealizedPnL" = %s WHERE id = %s',
                        (p.pnl_warning if p.warning else p.pnl_ok, p.position),
                    )
                    self.freshness.sent(p.account, time.monotonic())
                    self.sent += 1
        except BaseException as exc:  # reported by the round
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        if self.error is not None:
            raise RuntimeError(f"probe writer failed: {self.error}")


# ------------------------------------------------------------------ the designs' helpers


class CronSweeper(threading.Thread):
    """`cron`: `riskd sweep` 1 s into the round, and every 60 s after."""

    def __init__(self, dsn: str, config: Path, seconds: float, freshness: Freshness) -> None:
        super().__init__(daemon=True)
        self.dsn, self.config, self.freshness = dsn, config, freshness
        first = min(1.0, seconds / 4)
        self.offsets = [first + CRON_PERIOD * i for i in range(math.ceil(seconds / CRON_PERIOD))]
        self.stop = threading.Event()
        self.runs: list[SweepRun] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            for offset in self.offsets:
                if self.stop.wait(max(0.0, started + offset - time.monotonic())):
                    return
                self.freshness.sweep_started(time.monotonic())
                self.runs.append(run_sweep(self.dsn, self.config))
        except BaseException as exc:
            self.error = exc

    def finish(self, window_end: float) -> None:
        self.join(600)
        if self.error is not None:
            raise RuntimeError(f"cron sweep failed: {self.error}")
        over = max((r.started + r.seconds - window_end for r in self.runs), default=0.0)
        if over > 0:
            log(f"    (cron: a sweep outlasted the round by {over:.1f} s: use longer --seconds)")


class SeedListener:
    """The seed's listener process, and what its status file says."""

    def __init__(self, dsn: str) -> None:
        self.status_path = OUT / "system-seed-listener.json"
        self.status_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--seed-listener", dsn,
             "--status", str(self.status_path)],
            stderr=(OUT / "system-seed-listener.log").open("w"),
        )  # fmt: skip
        CHILDREN.append(self.proc)
        self.markers = 0
        deadline = time.monotonic() + 300
        while self.status() is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "the seed listener did not start: see " + str(OUT / "system-seed-listener.log")
                )
            time.sleep(0.2)

    def status(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (OSError, ValueError):
            return None

    def idle(self, conn: psycopg.Connection[Any], deadline: float) -> dict[str, Any]:
        """Wait until it has read every notification sent so far and checked every account."""
        self.markers += 1
        marker = f"{SEED_MARKER}{self.markers}"
        conn.execute("SELECT pg_notify(%s, %s)", (SEED_CHANNEL, marker))
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("the seed listener died: see system-seed-listener.log")
            status = self.status()
            if status and status["marker"] == marker and status["pending"] == 0:
                return status
            if time.monotonic() > deadline:
                log(f"    (seed listener not idle by the deadline: {status})")
                return status or {"checks": 0}
            time.sleep(0.1)


def seed_listener(dsn: str, status_path: Path) -> None:
    """The seed's design (--seed-listener): LISTEN risk_changes, one check per account 5 s
    after its last notification (a trailing debounce), one query each; an event row and a
    NOTIFY only when its level changes."""
    parent = os.getppid()
    levels: dict[str, str] = {}
    pending: collections.OrderedDict[str, float] = collections.OrderedDict()
    counts = {"checks": 0, "events": 0, "notifications": 0}
    marker = said = ""  # the last marker read, and the last one the status file says
    written = 0.0

    def write_status() -> None:
        tmp = status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**counts, "pending": len(pending), "marker": marker}))
        os.replace(tmp, status_path)

    def level_of(equity: Decimal, used: Decimal, n_open: int) -> str:
        if n_open == 0:
            return "ok"
        if equity <= 0 or used >= Decimal("0.9") * equity:
            return "critical"
        return "warning" if used >= Decimal("0.8") * equity else "ok"

    with (
        psycopg.connect(dsn, autocommit=True, connect_timeout=10) as listen,
        psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn,
    ):
        levels.update((a, lv) for a, lv in conn.execute(SEED_LEVELS))
        listen.execute(f"LISTEN {SEED_CHANNEL}")
        write_status()
        while os.getppid() == parent:
            now = time.monotonic()
            wait = 0.05
            if pending:
                wait = max(0.0, min(wait, next(iter(pending.values())) + SEED_DEBOUNCE - now))
            for n in listen.notifies(timeout=wait, stop_after=10_000):
                if n.payload.startswith(SEED_RESET):
                    levels.pop(n.payload.removeprefix(SEED_RESET), None)
                    continue
                if n.payload.startswith(SEED_MARKER):
                    marker = n.payload
                    continue
                counts["notifications"] += 1
                pending[n.payload] = time.monotonic()
                pending.move_to_end(n.payload)
            now = time.monotonic()
            budget = now + 0.05  # then read notifications again
            while pending and time.monotonic() < budget:
                account, last = next(iter(pending.items()))
                if last + SEED_DEBOUNCE > now:
                    break
                del pending[account]
                row = conn.execute(SEED_CHECK, (account,)).fetchone()
                counts["checks"] += 1
                if row is None:
                    continue
                equity, used, n_open = row
                level = level_of(equity, used, n_open)
                before = levels.get(account, "ok")
                if level != before:
                    utilization = used / equity if equity > 0 else None
                    with conn.transaction():
                        conn.execute(
                            f"INSERT INTO public.{SEED_EVENTS}"
                            " (account_id, from_level, to_level, utilization)"
                            " VALUES (%s, %s, %s, %s)",
                            (account, before, level, utilization),
                        )
                        conn.execute("SELECT pg_notify(%s, %s)", (SEED_EVENTS, account))
                    levels[account] = level
                    counts["events"] += 1
            if time.monotonic() - written > 0.2 or marker != said:
                write_status()
                written, said = time.monotonic(), marker


# ------------------------------------------------------------------ the benchmark


@dataclass
class Sample:
    tps: float
    tx: int
    window: float  # pgbench -T
    seconds: float  # the time the ratio and checks/s refer to (cron: padded to 60 s)
    cpu_us: float  # server CPU per transaction
    daemon_cpu: float | None = None  # seconds
    checks: int | None = None
    latencies: list[float] = field(default_factory=list)
    missed: int = 0
    modelled_wait: float = 0.0  # cron: the p99 wait for the next sweep, added to latencies
    ratio: float = 0.0


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        cluster: PgCluster,
        bindir: Path,
        dsn: str,
        probes: list[Probe],
    ) -> None:
        self.args, self.cluster, self.bindir, self.dsn = args, cluster, bindir, dsn
        self.probes = probes
        self.per_account = args.positions // args.accounts
        self.pgbench_positions = args.positions - len(probes) * self.per_account
        self.settings = Settings(database=DatabaseSettings(dsn=dsn))
        self.config = OUT / "system.toml"
        self.config.write_text("# riskd at its defaults: the DSN comes from RISKD_DSN\n")
        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        self.conn.execute("SET lock_timeout = '10s'")
        self.conn.execute("SET statement_timeout = '600s'")
        self.riskd_triggers = [
            (table, name, state) for table, name, state in self.conn.execute(RISKD_TRIGGERS)
        ]
        if not self.riskd_triggers:
            raise RuntimeError("no riskd_* trigger found on the reference tables")
        self.state: dict[tuple[str, str], bool] = {}
        for table, name, state in self.riskd_triggers:
            self.state[(table, name)] = state.lower() in RISKD_STARTED
        for triggers in BENCH_TRIGGERS.values():
            for table, name in triggers:
                self.state[(table, name)] = False
        self.freshness = Freshness(probes)
        self.stop_events = threading.Event()
        self.events = threading.Thread(
            target=listen_events, args=(dsn, self.freshness, self.stop_events), daemon=True
        )
        self.events.start()
        self.seed: SeedListener | None = None
        if "seed" in args.designs:
            self.seed = SeedListener(dsn)
        time.sleep(1.0)  # the LISTENs have committed

    def close(self) -> None:
        self.stop_events.set()
        self.events.join(5)
        if self.seed is not None:
            stop_child(self.seed.proc)
        self.conn.close()

    def alter(self, table: str, name: str, on: bool, how: str = "") -> None:
        if self.state.get((table, name)) == on:
            return
        verb = f"ENABLE {how} TRIGGER" if on else "DISABLE TRIGGER"
        for attempt in range(5):  # lock_timeout: a long check may hold the table a while
            try:
                self.conn.execute(f'ALTER TABLE {table} {verb} "{name}"')
                break
            except psycopg.errors.LockNotAvailable:
                if attempt == 4:
                    raise
        self.state[(table, name)] = on

    def set_design(self, design: str) -> None:
        riskd_on = design in ("capture", "aggregate", "riskd")
        for table, name, state in self.riskd_triggers:
            how = {"a": "ALWAYS", "r": "REPLICA"}.get(state.lower(), "")
            self.alter(table, name, riskd_on and state.lower() in RISKD_STARTED, how)
        for which, triggers in BENCH_TRIGGERS.items():
            for table, name in triggers:
                self.alter(table, name, design == which)

    def reset(self, design: str) -> None:
        """After a round, outside its measurement: every probe back at 50 % with every
        capture off, riskd's record of them put right by a check, and the seed listener told
        (its memory of their levels), so that every design starts from the same levels."""
        self.set_design("none")
        for p in self.probes:
            if p.warning:
                self.conn.execute(
                    'UPDATE public.positions SET "unrealizedPnL" = %s WHERE id = %s',
                    (p.pnl_ok, p.position),
                )
                p.warning = False
        check_accounts(self.conn, self.settings, [p.account for p in self.probes], "bench")
        if design == "seed":
            self.conn.execute(
                "SELECT pg_notify(%s, %s || a) FROM unnest(%s::text[]) AS a",
                (SEED_CHANNEL, SEED_RESET, [p.account for p in self.probes]),
            )

    def vacuum(self) -> None:
        """Every round starts from tables vacuumed after the last one's updates."""
        self.conn.execute("VACUUM public.positions, public.trading_accounts")

    def idle_deadline(self) -> float:
        return time.monotonic() + max(120.0, 10.0 * self.args.seconds)

    def riskd_idle(self, daemon: subprocess.Popen[bytes], deadline: float) -> dict[str, Any]:
        """The daemon's stats once it is idle: at some moment the dirty set empty and none of
        its connections running a statement, then a heartbeat written after that moment with
        nothing in its debouncer, and still no statement running (a batch taken from the
        debouncer just before the heartbeat and done just after would be missed: a few
        accounts at most)."""
        stats: dict[str, Any] = {}
        while True:
            if daemon.poll() is not None:
                raise RuntimeError(
                    f"riskd run exited ({daemon.returncode}): see {OUT / 'system-daemon.log'}"
                )
            if time.monotonic() > deadline:
                log(f"    (riskd not idle by the deadline: {stats.get('dirty')} dirty)")
                return stats
            row = self.conn.execute(RISKD_BUSY, (APPLICATION_NAME,)).fetchone()
            assert row is not None
            since, busy = row
            if busy:
                time.sleep(0.1)
                continue
            while time.monotonic() < deadline:
                beat = self.conn.execute(
                    "SELECT heartbeat_at, stats FROM riskd.daemons WHERE pid = %s", (daemon.pid,)
                ).fetchone()
                if beat is not None and beat[0] > since:
                    stats = dict(beat[1])
                    break
                time.sleep(0.1)
            else:
                continue
            if stats.get("dirty") != 0 or stats.get("state") != "running":
                continue
            row = self.conn.execute(RISKD_BUSY, (APPLICATION_NAME,)).fetchone()
            if row is not None and not row[1]:
                return stats

    def round(self, design: str, workload: str, mode: str) -> Sample:
        args = self.args
        seconds = max(args.seconds, args.cron_seconds) if design == "cron" else args.seconds
        self.set_design(design)
        daemon: subprocess.Popen[bytes] | None = None
        drainer: Drainer | None = None
        sweeper: CronSweeper | None = None
        prober: Prober | None = None
        daemon_cpu0 = checks0 = 0.0
        try:
            if design == "riskd":
                daemon = start_daemon(
                    self.dsn, self.config, self.config.read_text(), OUT / "system-daemon.log"
                )
                CHILDREN.append(daemon)
                self.vacuum()  # while the daemon settles
                checks0 = self.riskd_idle(daemon, self.idle_deadline()).get("checks", 0)
                daemon_cpu0 = proc_cpu(daemon.pid)
                self.freshness.begin(RISKD_EVENTS, "pending")
            else:
                self.vacuum()
            if design == "seed":
                assert self.seed is not None
                checks0 = self.seed.idle(self.conn, self.idle_deadline())["checks"]
                daemon_cpu0 = proc_cpu(self.seed.proc.pid)
                self.freshness.begin(SEED_EVENTS, "pending")
            elif design == "cron":
                self.freshness.begin(RISKD_EVENTS, "sweep")
            elif design != "riskd":
                self.freshness.begin(None, "off")
            if design in ("capture", "aggregate"):
                drainer = Drainer(self.dsn, aggregate=design == "aggregate")
                drainer.start()
            prober = Prober(self.dsn, self.probes, self.freshness)
            cpu0 = server_cpu(self.cluster)
            prober.start()
            if design == "cron":
                sweeper = CronSweeper(self.dsn, self.config, seconds, self.freshness)
                sweeper.start()
            tps, tx = pgbench(
                self.bindir,
                self.cluster,
                WORKLOADS[workload],
                mode,
                seconds,
                self.pgbench_positions,
                self.per_account,
            )
            window_end = time.monotonic()
            prober.finish()
            sample = Sample(tps, tx, float(seconds), float(seconds), 0.0)
            if design in ("riskd", "seed"):
                self.freshness.wait_pending(self.idle_deadline())
            if sweeper is not None:
                sweeper.finish(window_end)
            if drainer is not None:
                drainer.finish()
                if design == "aggregate":
                    sample.checks = drainer.drained
            if daemon is not None:
                stats = self.riskd_idle(daemon, self.idle_deadline())
                sample.checks = int(stats.get("checks", 0) - checks0)
                sample.daemon_cpu = proc_cpu(daemon.pid) - daemon_cpu0
            elif design == "seed":
                assert self.seed is not None
                status = self.seed.idle(self.conn, self.idle_deadline())
                sample.checks = int(status["checks"] - checks0)
                sample.daemon_cpu = proc_cpu(self.seed.proc.pid) - daemon_cpu0
            else:
                time.sleep(REAP)
            cpu = server_cpu(self.cluster) - cpu0
            sample.cpu_us = cpu / tx * 1e6
            sample.latencies, sample.missed = self.freshness.end()
            self.reset(design)
            if sweeper is not None:
                sample.checks = sum(r.accounts for r in sweeper.runs)
                sample.daemon_cpu = sum(r.cpu for r in sweeper.runs)
                sample.modelled_wait = 0.99 * CRON_PERIOD
                sample.seconds = max(CRON_PERIOD * len(sweeper.runs), float(seconds))
            return sample
        finally:
            if daemon is not None:
                stop_child(daemon)
            for thread in (drainer, sweeper, prober):
                if thread is not None:
                    thread.stop.set()


def pad_cron(sample: Sample, none: Sample) -> None:
    """A round shorter than the sweeps' period, padded with the same round's `none`."""
    pad = sample.seconds - sample.window
    tx = sample.tx + pad * none.tps
    cpu = sample.cpu_us * sample.tx + pad * none.tps * none.cpu_us
    sample.ratio = tx / (sample.seconds * none.tps)
    sample.cpu_us = cpu / tx


def brief(design: str, s: Sample) -> str:
    text = f"{design} {s.ratio:.2f} {s.cpu_us:.0f}µs/tx"
    if s.checks:
        per_s = s.checks / s.seconds
        text += f" {per_s:.0f}ck/s"
        if s.daemon_cpu is not None:
            text += f" {s.daemon_cpu / s.checks * 1e6:.0f}µs/ck"
    if s.latencies:
        text += f" p99 {quantile(s.latencies, 0.99) + s.modelled_wait:.2f}s"
    if s.missed:
        text += f" ({s.missed} missed)"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--durable", action="store_true", help="fsync, synchronous_commit on")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=7, help="pgbench -T of a round")
    parser.add_argument(
        "--cron-seconds",
        type=int,
        default=16,
        help="the cron design's rounds last at least this long, so that its sweep fits in",
    )
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--positions", type=int, default=1_000_000)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--protocols", default="simple,prepared")
    parser.add_argument("--designs", default=",".join(DESIGNS), help="'none' always runs")
    parser.add_argument("--seed-listener", metavar="DSN", help=argparse.SUPPRESS)
    parser.add_argument("--status", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed_listener:
        seed_listener(args.seed_listener, args.status)
        return
    chosen = args.designs.split(",")
    args.designs = ["none", *(d for d in DESIGNS if d != "none" and d in chosen)]
    args.workloads = args.workloads.split(",")
    args.protocols = args.protocols.split(",")
    unknown = (
        (set(args.workloads) - set(WORKLOADS))
        | (set(chosen) - set(DESIGNS))
        | (set(args.protocols) - {"simple", "extended", "prepared"})
    )
    if unknown or args.positions % args.accounts or args.accounts >= 1_000_000:
        parser.error(
            f"unknown names: {sorted(unknown)}"
            if unknown
            else "--positions must be a "
            "multiple of --accounts, and --accounts below 1 000 000 (pgbench's id arithmetic)"
        )
    n_probes = min(PROBES, args.accounts // 10)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    OUT.mkdir(exist_ok=True)
    bindir = find_bindirs()[18]
    server = {"shared_buffers": "1GB", "max_wal_size": "4GB", **(DURABLE if args.durable else {})}
    started = time.monotonic()
    results: dict[tuple[str, str, str], list[Sample]] = {}
    try:
        with PgCluster(bindir, settings=server) as cluster:
            with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
                admin.execute("CREATE DATABASE bench")
            dsn = cluster.dsn("bench")
            with psycopg.connect(dsn, autocommit=True) as conn:
                log(f"seeding {args.accounts} accounts / {args.positions} positions")
                seed(conn, accounts=args.accounts, positions=args.positions)
                ids = [
                    f"acc-{n:06d}" for n in range(args.accounts - n_probes + 1, args.accounts + 1)
                ]
                probes = [
                    Probe(a, p, Decimal(pnl), Decimal(pnl) - Decimal("0.824") * Decimal(u))
                    for a, p, u, pnl in conn.execute(PREPARE_PROBES, {"ids": ids})
                ]
                migrate.migrate(Settings(database=DatabaseSettings(dsn=dsn)))
                conn.execute(BENCH_SQL)  # type: ignore[arg-type]
                conn.execute("VACUUM ANALYZE")
                version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            bench_config = OUT / "system.toml"
            bench_config.write_text("# riskd at its defaults: the DSN comes from RISKD_DSN\n")
            first = run_sweep(dsn, bench_config)  # riskd records every account's state
            log(f"ready in {time.monotonic() - started:.0f} s (first sweep {first.seconds:.1f} s)")
            bench = Bench(args, cluster, bindir, dsn, probes)
            try:
                designs = args.designs
                for workload in args.workloads:
                    for mode in args.protocols:
                        for r in range(args.rounds):
                            order = designs[r % len(designs) :] + designs[: r % len(designs)]
                            done: dict[str, Sample] = {}
                            for design in order:
                                done[design] = bench.round(design, workload, mode)
                            none = done["none"]
                            for design, s in done.items():
                                s.ratio = s.tps / none.tps
                                if design == "cron":
                                    pad_cron(s, none)
                                results.setdefault((workload, mode, design), []).append(s)
                            log(
                                f"  {workload} / {mode} round {r + 1} "
                                f"({time.monotonic() - started:.0f} s): none {none.tps:.0f} tps "
                                f"{none.cpu_us:.0f}µs/tx; "
                                + "; ".join(brief(d, done[d]) for d in designs if d != "none")
                            )
            finally:
                bench.close()
    finally:
        for proc in list(CHILDREN):
            stop_child(proc, 10)
    report(results, args, version, time.monotonic() - started)


def report(
    results: dict[tuple[str, str, str], list[Sample]],
    args: argparse.Namespace,
    version: str,
    elapsed: float,
) -> None:
    durable = args.durable
    print()
    print(
        f"system cost, {datetime.date.today()}, PostgreSQL {version}, "
        f"{'durable (fsync, synchronous_commit on)' if durable else 'CPU-bound (fsync off)'}, "
        f"{machine()}, {CLIENTS} pgbench clients, {args.accounts} accounts / {args.positions} "
        f"positions, {args.rounds} rounds x {args.seconds} s, designs rotated every round, "
        f"{elapsed / 60:.0f} min. Ratio = tps / tps of none in the same round, median "
        "(min..max); server CPU per transaction, median (difference to none); CPU/check: the "
        "daemon's own process; freshness: p99 from a probe's commit to its event. riskd: "
        "`riskd run` at its defaults, restarted every round, its periodic sweep outside the "
        "window (see the estimate row); cron: one `riskd sweep` per 60 s, in rounds of "
        f"{max(args.seconds, args.cron_seconds)} s padded to 60 s with the same round's none; "
        "its freshness p99 = 0.99 x 60 s + a sweep's delay to its events (a model)"
    )
    print()
    print(
        "| workload | protocol | design | tps | ratio | server CPU µs/tx | CPU/check | "
        "checks/s | freshness p99 | target |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for workload in args.workloads:
        for mode in args.protocols:
            cell = {d: results.get((workload, mode, d), []) for d in args.designs}
            if not cell["none"]:
                continue
            none_cpu = statistics.median(s.cpu_us for s in cell["none"])
            medians = {d: statistics.median(s.ratio for s in ss) for d, ss in cell.items() if ss}
            cpus = {d: statistics.median(s.cpu_us for s in ss) for d, ss in cell.items() if ss}
            for design, samples in cell.items():
                if not samples:
                    continue
                ratios = [s.ratio for s in samples]
                checks = sum(s.checks or 0 for s in samples)
                daemon_cpu = sum(s.daemon_cpu or 0.0 for s in samples)
                seconds = sum(s.seconds for s in samples)
                per_check = f"{daemon_cpu / checks * 1e6:.0f} µs" if checks and daemon_cpu else "—"
                per_second = f"{checks / seconds:.0f}" if checks else "—"
                fresh = freshness(samples)
                target = verdict(design, workload, durable, medians, cpus, none_cpu)
                print(
                    f"| {workload} | {mode} | {design} | "
                    f"{statistics.median(s.tps for s in samples):.0f} | "
                    f"{medians[design]:.2f} ({min(ratios):.2f}..{max(ratios):.2f}) | "
                    f"{cpus[design]:.0f} ({cpus[design] - none_cpu:+.0f}) | {per_check} | "
                    f"{per_second} | {fresh} | {target} |"
                )
            if "riskd" in medians and "cron" in medians:
                est = medians["riskd"] - (1 - medians["cron"])
                cpu = cpus["riskd"] + cpus["cron"] - none_cpu
                target = ""
                if durable and workload == "fill":
                    target = f">= 0.80 {'met' if est >= 0.80 else 'NOT met'}"
                print(
                    f"| {workload} | {mode} | riskd + its sweep every 60 s (estimate: riskd "
                    f"less cron's loss) | | {est:.2f} | {cpu:.0f} ({cpu - none_cpu:+.0f}) "
                    f"| | | | {target} |"
                )


def freshness(samples: list[Sample]) -> str:
    latencies = [x + s.modelled_wait for s in samples for x in s.latencies]
    missed = sum(s.missed for s in samples)
    if not latencies and not missed:
        return "—"
    every = latencies + [math.inf] * missed
    p99 = quantile(every, 0.99)
    model = " (model)" if any(s.modelled_wait for s in samples) else ""
    text = f"{p99:.2f} s{model}" if math.isfinite(p99) else "never (events missing)"
    return f"{text}, n={len(latencies)}" + (f", {missed} missed" if missed else "")


def verdict(
    design: str,
    workload: str,
    durable: bool,
    medians: dict[str, float],
    cpus: dict[str, float],
    none_cpu: float,
) -> str:
    parts = []
    if design == "riskd":
        if durable and workload == "fill":
            parts.append(f">= 0.80 {'met' if medians['riskd'] >= 0.80 else 'NOT met'}")
        if "seed" in medians:
            parts.append(f"ahead of seed: {'yes' if medians['riskd'] > medians['seed'] else 'NO'}")
    if design == "capture":
        if durable:
            parts.append(f">= 0.90 {'met' if medians['capture'] >= 0.90 else 'NOT met'}")
        elif "floor" in cpus:
            added, floor = cpus["capture"] - none_cpu, cpus["floor"] - none_cpu
            ok = added <= floor + 12
            parts.append(
                f"{added:+.0f} <= floor {floor:+.0f} + 12 µs: {'met' if ok else 'NOT met'}"
            )
    return "; ".join(parts)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # children and cluster already stopped by the finally blocks
        sys.exit("interrupted")
