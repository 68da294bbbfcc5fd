"""What the benchmarks share: a seeded throwaway PostgreSQL 18 with riskd, and the daemon.

with seeded_database(accounts, positions) as db:   # db.dsn, db.settings, db.version
    daemon = start_daemon(db.dsn, OUT / "x.toml", config_text, OUT / "x.log")
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from riskd import migrate
from riskd.config import DatabaseSettings, Settings
from riskd.sandbox.cluster import PgCluster, find_bindirs
from riskd.sandbox.seed import seed
from riskd.sqlfiles import query

OUT = Path(__file__).resolve().parent / "out"  # gitignored

# What production runs; the throwaway cluster's defaults are the CPU-bound test settings.
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}

DRAIN_INTERVAL = 0.1  # the Drainer's, as the daemon's timer drain

# The least a check can ask of the server: each account's equity and used margin, one
# statement over accounts, positions and instruments (the reference schema).
BARE_AGGREGATE = """
SELECT a.id, a.balance + COALESCE(sum(p."unrealizedPnL"), 0) AS equity,
       COALESCE(sum(abs(p.quantity) * i.price * i."marginRate"), 0) AS used
FROM trading_accounts a
LEFT JOIN positions p ON p."tradingAccountId" = a.id AND p.quantity <> 0
LEFT JOIN instruments i ON i.id = p."instrumentId"
WHERE a.id = ANY(%(ids)s::text[])
GROUP BY a.id, a.balance
"""


@dataclass
class Database:
    dsn: str
    settings: Settings
    version: str
    prepared: Any = None  # what before_migrate returned


@contextmanager
def seeded_database(
    accounts: int,
    positions: int,
    before_migrate: Callable[[psycopg.Connection[Any]], Any] | None = None,
    server: dict[str, str] | None = None,
) -> Iterator[Database]:
    """A throwaway PostgreSQL 18 with the reference schema seeded and riskd migrated;
    ``before_migrate`` runs on the seeded data before the triggers exist; ``server`` adds
    settings (``DURABLE``)."""
    settings = {"shared_buffers": "1GB", "max_wal_size": "4GB", **(server or {})}
    with PgCluster(find_bindirs()[18], settings=settings) as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench")
        dsn = cluster.dsn("bench")
        riskd_settings = Settings(database=DatabaseSettings(dsn=dsn))
        with psycopg.connect(dsn, autocommit=True) as conn:
            seed(conn, accounts=accounts, positions=positions)
            prepared = before_migrate(conn) if before_migrate else None
            migrate.migrate(riskd_settings)
            conn.execute("VACUUM ANALYZE")
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        yield Database(dsn, riskd_settings, version, prepared)


def start_daemon(dsn: str, config: Path, config_text: str, log: Path) -> subprocess.Popen[bytes]:
    """``riskd run`` as a subprocess with this configuration, once it says it is ready."""
    OUT.mkdir(exist_ok=True)
    config.write_text(config_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKD_")}
    env |= {"RISKD_DSN": dsn, "RISKD_CONFIG": str(config)}
    daemon = subprocess.Popen([sys.executable, "-m", "riskd", "run"], env=env, stderr=log.open("w"))
    deadline = time.monotonic() + 120
    while "daemon.ready" not in log.read_text():
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            raise SystemExit(f"the daemon did not start:\n{log.read_text()}")
        time.sleep(0.2)  # polling a log file with a deadline
    return daemon


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) of one live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(cluster: PgCluster) -> float:
    """CPU seconds the server has used so far: the postmaster, the backends it has reaped
    (pgbench's, once it exits) and its live children. Less sensitive than tps to what else
    runs on the machine, so it shows where a design's cost lies."""
    postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    ticks = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(proc.name) == postmaster:
            ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        elif int(fields[1]) == postmaster:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Drainer(threading.Thread):
    """The daemon's drain (its named queries) every 100 ms, re-armed after an empty drain, and
    no check: what capture costs with its marks taken away as the daemon takes them."""

    def __init__(self, dsn: str, aggregate: bool = False) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.aggregate = aggregate
        self.stop = threading.Event()
        self.drained = 0
        self.error: BaseException | None = None

    def drain(self, conn: psycopg.Connection[Any]) -> int:
        rows = conn.execute(query("drain")).fetchall()
        if not rows:
            conn.execute(query("rearm"))
            rows = conn.execute(query("drain")).fetchall()
        if rows and self.aggregate:
            # ``aggregate``: each drain's accounts then go through the bare aggregate, one
            # statement per drain of at most 500 (riskd's batch size)
            ids = [r[0] for r in rows]
            for i in range(0, len(ids), 500):
                conn.execute(BARE_AGGREGATE, {"ids": ids[i : i + 500]}, prepare=True).fetchall()
        self.drained += len(rows)
        return len(rows)

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
                while not self.stop.wait(DRAIN_INTERVAL):
                    self.drain(conn)
                self.drain(conn)  # the round's last marks
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(60)
        if self.error is not None:
            raise RuntimeError(f"drainer failed: {self.error}")


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model} ({platform.machine()})"
