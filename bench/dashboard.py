"""What the dashboard costs (issue 15): the page's load time, and the database's work for one
page left open, on a book of 100k accounts / 1M positions.

A throwaway PostgreSQL 18 with pg_stat_statements, seeded, riskd installed, every account checked
once (so account_state holds 100k rows, as after a daemon's first sweep), then a trickle of
transitions while the page is open. The dashboard runs in this process (uvicorn, in a thread).

* load time: GET /, /?partial=1 (what the open page fetches every 5 s), /api/overview and an
  account's page, each timed over N calls (median, p90, max); the overview each time read
  from the database (its 2-s shared read forgotten), once more as pages asking together get
  it (shared), and once more with the ranking over every account made again (which the
  dashboard does at most every 30 s, or less often on a book where it takes longer);
* one open page: for --window seconds, what a browser does — one /events/stream open, and
  /?partial=1 every 5 s — while a check writes a few transitions a second; the server's
  statements in that window by pg_stat_statements (calls per second, execution time per
  second), the dashboard's own separated from the checks';
* the plan of each of the overview's queries: its time and whether it reads a table whole.

    python bench/dashboard.py [--accounts 100000] [--positions 1000000] [--calls 20]
        [--window 60]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import uvicorn
from check_cost import check_params, record_all
from common import machine, seeded_database

from riskd.dashboard.app import Options, create_app
from riskd.dashboard.serve import Server
from riskd.sqlfiles import query

SERVER = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "top",  # each client statement once: the dashboard's own
    "pg_stat_statements.max": "5000",
}
STATEMENTS = """
SELECT query, calls, total_exec_time FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC
"""
REFRESH = 5.0  # what the page does (riskd/dashboard/app.py REFRESH)


def serve(settings: Any) -> tuple[str, Server, threading.Thread]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_app(Options(settings)), host="127.0.0.1", port=port, log_level="warning",
        timeout_graceful_shutdown=1,
    )  # fmt: skip
    server = Server(config)  # riskd's: it ends the open streams when it stops
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).json().get("feed"):
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling the health endpoint with a deadline
    return url, server, thread


def timed(
    url: str, calls: int, before: Callable[[], None] = lambda: None
) -> tuple[float, float, float]:
    took = []
    with httpx.Client(timeout=30) as client:
        client.get(url)  # warm: plans, the pool
        for _ in range(calls):
            before()
            started = time.perf_counter()
            answer = client.get(url)
            took.append(time.perf_counter() - started)
            answer.raise_for_status()
    took.sort()
    return statistics.median(took), took[int(0.9 * (len(took) - 1))], took[-1]


def open_page(url: str, window: float, dsn: str, accounts: int) -> dict[str, float]:
    """One browser's page for ``window`` seconds, while transitions trickle in."""
    stop = threading.Event()
    received = 0

    def stream() -> None:
        nonlocal received
        timeout = httpx.Timeout(10, read=window + 30)
        with (
            httpx.Client(timeout=timeout) as client,
            client.stream("GET", url + "/events/stream") as response,
            contextlib.suppress(httpx.HTTPError),  # the server stopping at the end
        ):
            for line in response.iter_lines():
                if line.startswith("data:"):
                    received += 1
                if stop.is_set():
                    return

    def refresh() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.wait(REFRESH):
                client.get(url + "/?partial=1").raise_for_status()

    def trickle() -> None:  # a few accounts a second moved across a threshold and back
        rng = random.Random(3)
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.wait(0.5):
                ids = [f"acc-{rng.randint(1, accounts):06d}" for _ in range(3)]
                conn.execute(
                    "UPDATE trading_accounts SET balance = balance * %s WHERE id = ANY(%s)",
                    (rng.choice([0.5, 2]), ids),
                )
                conn.execute(query("check_accounts"), check_params(ids))

    threads = [threading.Thread(target=t, daemon=True) for t in (stream, refresh, trickle)]
    for t in threads:
        t.start()
    time.sleep(window)  # the window being measured
    stop.set()
    return {"messages": received}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--positions", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    began = time.monotonic()
    with seeded_database(args.accounts, args.positions, server=SERVER) as db:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
            record_all(conn, args.accounts)
            account = conn.execute(
                "SELECT account_id FROM riskd.account_state WHERE level = 'critical' LIMIT 1"
            ).fetchone()
            levels = dict(
                conn.execute(  # type: ignore[arg-type]
                    "SELECT level, count(*) FROM riskd.account_state GROUP BY level"
                ).fetchall()
            )
        url, server, thread = serve(db.settings)
        state = server.config.app.state  # type: ignore[attr-defined]

        def fresh() -> None:  # a read of the database, not one shared within 2 s
            state.overview.forget()

        def ranked_again() -> None:  # and the ranking over every account made again
            state.overview.forget()
            state.ranking.forget()

        loads = {
            "/ (its own read)": timed(url + "/", args.calls, fresh),
            "/ (shared read)": timed(url + "/", args.calls),
            "/ (and a new ranking)": timed(url + "/", args.calls, ranked_again),
            "/?partial=1": timed(url + "/?partial=1", args.calls, fresh),
            "/api/overview": timed(url + "/api/overview", args.calls, fresh),
            "/accounts/<id>": timed(
                f"{url}/accounts/{account[0] if account else 'acc-000001'}", args.calls
            ),  # fmt: skip
        }
        state.overview.forget()
        state.ranking.forget()
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
            seen = open_page(url, args.window, db.dsn, args.accounts)
            rows = conn.execute(STATEMENTS).fetchall()
        server.stop()
        thread.join(10)
    theirs = ("check_accounts", "UPDATE trading_accounts", "pg_stat_statements")
    board = [r for r in rows if not any(t in r[0] for t in theirs)]
    window = args.window
    print()
    print(
        f"dashboard, {datetime.date.today()}, PostgreSQL {db.version}, CPU-bound (fsync off), "
        f"{machine()}, {args.accounts} accounts / {args.positions} positions, "
        f"{time.monotonic() - began:.0f} s; accounts after the first checks: "
        + ", ".join(f"{levels.get(level, 0):,} {level}" for level in ("ok", "warning", "critical"))
    )
    print()
    print("| page | median ms | p90 ms | max ms |")
    print("|---|---|---|---|")
    for name, (p50, p90, worst) in loads.items():
        print(f"| {name} | {p50 * 1000:.1f} | {p90 * 1000:.1f} | {worst * 1000:.1f} |")
    print()
    calls = sum(r[1] for r in board)
    spent = sum(r[2] for r in board)
    print(
        f"one page open {window:.0f} s ({seen['messages']:.0f} feed messages): the dashboard's "
        f"statements {calls / window:.1f} per second, {spent / window:.1f} ms of execution per "
        f"second ({spent / window / 10:.2f} % of one core)"
    )
    print()
    print("| statement (dashboard's, first 90 characters) | calls | ms in all | ms per call |")
    print("|---|---|---|---|")
    for text, n, total in board[:12]:
        short = " ".join(text.split())[:90].replace("|", "/")
        print(f"| `{short}` | {n} | {total:.1f} | {total / max(n, 1):.2f} |")


if __name__ == "__main__":
    main()
