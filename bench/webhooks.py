"""Webhook delivery (issue 13): how late an event reaches the platform's endpoint, and what the
outbox costs the check.

    python bench/webhooks.py [--accounts 20000] [--positions 200000] [--breaches 200]
        [--batch 100] [--rounds 7] [--durable]

1. Latency. `riskd run` at its defaults with `[webhook] url` pointing at a local HTTP server
   (this process, answering 204 at once). One account at a time is moved across the
   auto-close threshold, 250 ms after the previous one's POST; for each event the time from
   the change's commit to the POST's arrival (what the platform sees: the debounce included),
   and from the event's check to the arrival (the delivery's part), p50 / p99 / max.
2. The check path. `riskd.check_accounts` over batches whose every account transitions (their
   positions moved across the threshold and back before each call, outside the timer),
   alternating a session with `riskd.webhook = on` (the outbox written) and one without, each
   call its own transaction, generic plans; median ms per batch and the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from common import DURABLE, OUT, machine, seeded_database, start_daemon

from riskd.check import check_accounts
from riskd.config import DatabaseSettings, Settings
from riskd.db import session_values
from riskd.sqlfiles import query

SECRET = "whsec_" + "QmVuY2htYXJrIHdlYmhvb2sga2V5IDAxMjM0NTY3"  # 30 bytes, a bench's own
MOVE = 'UPDATE positions SET quantity = quantity * %s WHERE "tradingAccountId" = %s'


class Arrivals:
    def __init__(self) -> None:
        self.at: dict[str, float] = {}  # webhook-id -> arrival, on this process's clock
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        arrivals = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("content-length", "0")))
                with arrivals.lock:
                    arrivals.at.setdefault(self.headers["webhook-id"], time.monotonic())
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"p50 {statistics.median(ordered) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms (n={len(ordered)})"
    )


def latency(dsn: str, breaches: int) -> tuple[list[float], list[float]]:
    arrivals = Arrivals()
    server = ThreadingHTTPServer(("127.0.0.1", 0), arrivals.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/risk"
    config = OUT / "webhooks.toml"
    text = f'[webhook]\nurl = "{url}"\nsecret = "{SECRET}"\n'
    daemon = start_daemon(dsn, config, text, OUT / "webhooks-daemon.log")
    from_change: list[float] = []
    from_event: list[float] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            # accounts at ok (the start-up sweep wrote events for the others), apart from
            # those the check-path measure moved (the last ones)
            accounts = [
                r[0]
                for r in conn.execute(
                    "SELECT account_id::text FROM riskd.account_state WHERE level = 'ok'"
                    " ORDER BY account_id LIMIT %s",
                    (breaches,),
                )
            ]
            for account in accounts:  # each moved across the auto-close threshold once
                before = conn.execute("SELECT coalesce(max(id), 0) FROM riskd.risk_events")
                last = before.fetchone()
                assert last is not None
                conn.execute(MOVE, (40, account))
                committed = time.monotonic()
                deadline = committed + 30
                row = None
                while row is None and time.monotonic() < deadline:  # polled, with a deadline
                    row = conn.execute(
                        "SELECT id, extract(epoch FROM clock_timestamp() - created_at)"
                        " FROM riskd.risk_events WHERE account_id = %s AND id > %s"
                        " ORDER BY id DESC LIMIT 1",
                        (account, last[0]),
                    ).fetchone()
                    time.sleep(0.005)
                if row is None:
                    continue
                event_id, event_age = row
                msg = f"evt_{event_id}"
                seen_event = time.monotonic() - float(event_age)
                while msg not in arrivals.at and time.monotonic() < deadline:
                    time.sleep(0.005)
                if msg in arrivals.at:
                    from_change.append(arrivals.at[msg] - committed)
                    from_event.append(arrivals.at[msg] - seen_event)
                time.sleep(0.25)
    finally:
        daemon.terminate()
        daemon.wait(30)
        server.shutdown()
    return from_change, from_event


def check_path(dsn: str, batch: int, rounds: int) -> tuple[float, float]:
    settings = Settings(database=DatabaseSettings(dsn=dsn))
    on = psycopg.connect(dsn, autocommit=True)
    off = psycopg.connect(dsn, autocommit=True)
    for conn in (on, off):
        conn.execute(query("pool_session"))
    on.execute(query("session_settings"), session_values(settings) | {"webhook": "on"})
    timings: dict[str, list[float]] = {"on": [], "off": []}
    with psycopg.connect(dsn, autocommit=True) as admin:
        pool = [
            r[0]
            for r in admin.execute(
                "SELECT id FROM trading_accounts ORDER BY id DESC LIMIT %s", (batch * 2 * rounds,)
            )
        ]
        for r in range(rounds):
            for k, (label, conn) in enumerate((("on", on), ("off", off))[:: 1 if r % 2 else -1]):
                ids = pool[(2 * r + k) * batch : (2 * r + k + 1) * batch]
                for factor in (40, 1):  # across the threshold and back: two transitions each
                    admin.execute(
                        "UPDATE positions SET quantity = quantity * %s"
                        ' WHERE "tradingAccountId" = ANY(%s)',
                        (factor, ids),
                    )
                    started = time.perf_counter()
                    check_accounts(conn, settings, ids)
                    timings[label].append(time.perf_counter() - started)
                    if factor == 40:
                        admin.execute(
                            "UPDATE positions SET quantity = quantity / 40"
                            ' WHERE "tradingAccountId" = ANY(%s)',
                            (ids,),
                        )
    on.close()
    off.close()
    return statistics.median(timings["on"]), statistics.median(timings["off"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--positions", type=int, default=200_000)
    parser.add_argument("--breaches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--durable", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    started = time.monotonic()
    server: dict[str, Any] = DURABLE if args.durable else {}
    with seeded_database(args.accounts, args.positions, server=server) as db:
        on, off = check_path(db.dsn, args.batch, args.rounds)
        from_change, from_event = latency(db.dsn, args.breaches)
        kind = "durable" if args.durable else "CPU-bound (fsync off)"
        print(
            f"webhooks, {datetime.date.today()}, PostgreSQL {db.version}, {kind}, {machine()}, "
            f"{args.accounts} accounts / {args.positions} positions, "
            f"{time.monotonic() - started:.0f} s\n"
        )
        print("| measure | value |\n|---|---|")
        rows = (
            ("change's commit -> POST arrives (debounce 1 s included)", quantiles(from_change)),
            ("the event's check (its transaction's start) -> POST arrives", quantiles(from_event)),
        )
        for label, value in rows:
            print(f"| {label} | {value} |")
        print(
            f"| check of {args.batch} accounts, every one a transition: outbox on / off | "
            f"{on * 1000:.2f} / {off * 1000:.2f} ms, ratio {on / off:.2f} |"
        )


if __name__ == "__main__":
    main()
