"""Sustained trading: the WAL and dead tuples riskd costs over an hour (issue 11).

A durable PostgreSQL 18 (fsync, synchronous_commit and full_page_writes on, checkpoints at their
defaults, so full-page images count as they do in production) seeded with 100 000 accounts /
1 000 000 positions, riskd migrated, ``riskd run`` at its defaults (its sweep every 60 s
included), and pgbench filling at a fixed rate (``-R``, 8 clients, prepared) for ``--minutes``.
Every ``--sample`` seconds the WAL written since the last sample is read back with pg_walinspect
(``pg_get_wal_block_info``) and attributed to the relations its blocks belong to (an index to
its table); riskd's share is what went to tables of schema riskd. Beside it: the rows written
to ``riskd.account_state`` (and how many were HOT), its dead tuples and size, the size of the
dirty set (unlogged: no WAL), and autovacuum's visits.

    python bench/sustained.py [--minutes 60] [--rate 500] [--sample 300]
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
from common import DURABLE, OUT, machine, seeded_database, start_daemon

from riskd.sandbox.cluster import find_bindirs

HERE = Path(__file__).resolve().parent

# WAL since an LSN, by the table a block belongs to (an index counts for its table). A record
# touching several blocks is counted once, for its first block; its length is the whole record.
WAL_BY_TABLE = """
WITH blocks AS (
    SELECT DISTINCT ON (b.start_lsn) b.start_lsn, b.relfilenode, b.record_length
    FROM pg_get_wal_block_info(%(since)s::pg_lsn, pg_current_wal_insert_lsn()) AS b
    ORDER BY b.start_lsn, b.block_id
), rel AS (
    SELECT c.relfilenode, coalesce(t.relnamespace, c.relnamespace)::regnamespace::text AS schema,
           coalesce(t.relname, c.relname) AS relname
    FROM pg_class AS c
    LEFT JOIN pg_index AS i ON i.indexrelid = c.oid
    LEFT JOIN pg_class AS t ON t.oid = i.indrelid
)
SELECT coalesce(rel.schema || '.' || rel.relname, '(other)') AS relation,
       sum(blocks.record_length)::bigint AS bytes
FROM blocks LEFT JOIN rel ON rel.relfilenode = blocks.relfilenode
GROUP BY 1
"""
TOTAL_WAL = "SELECT pg_current_wal_insert_lsn() - %(since)s::pg_lsn"
TABLE_STATS = """
SELECT relname, n_tup_upd, n_tup_hot_upd, n_dead_tup, autovacuum_count,
       pg_relation_size(relid) AS bytes
FROM pg_stat_user_tables WHERE schemaname = 'riskd' AND relname = ANY(%(tables)s)
"""
TABLES = ["account_state", "dirty_accounts", "risk_events", "close_requests"]


def stats(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, ...]]:
    rows = conn.execute(TABLE_STATS, {"tables": TABLES}).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def checks(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(sum((stats->>'checks')::bigint), 0) FROM riskd.daemons")
    return int(row.fetchone()[0])  # type: ignore[index]


def fills(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("SELECT count(*) FROM executions").fetchone()[0])  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=500, help="fills per second (pgbench -R)")
    parser.add_argument("--sample", type=float, default=300.0, help="seconds between samples")
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--positions", type=int, default=1_000_000)
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC)
    with seeded_database(args.accounts, args.positions, server=DURABLE) as db:
        conn = psycopg.connect(db.dsn, autocommit=True)
        conn.execute("CREATE EXTENSION pg_walinspect")
        info = psycopg.conninfo.conninfo_to_dict(db.dsn)
        config = f'[database]\ndsn = "{db.dsn}"\n'
        daemon = start_daemon(db.dsn, OUT / "sustained.toml", config, OUT / "sustained.log")
        per = args.positions // args.accounts
        seconds = int(args.minutes * 60)
        bench = subprocess.Popen(
            [
                str(find_bindirs()[18] / "pgbench"), "-n", "-c", "8", "-j", "2",
                "-T", str(seconds), "-R", str(args.rate), "-M", "prepared",
                "-f", str(HERE / "fill.pgbench"),
                "-D", f"positions={args.positions}", "-D", f"per_account={per}",
                "-h", str(info["host"]), "-p", str(info["port"]), "-U", "postgres", "bench",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        begin = time.monotonic()
        since = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]  # type: ignore[index]
        first = stats(conn)
        fills0, checks0 = fills(conn), checks(conn)
        rows: list[list[str]] = []
        total_wal = riskd_wal = 0
        while True:
            left = seconds - (time.monotonic() - begin)
            time.sleep(max(0.0, min(args.sample, left)))
            done = bench.poll() is not None
            lsn = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]  # type: ignore[index]
            total_wal += int(conn.execute(TOTAL_WAL, {"since": since}).fetchone()[0])  # type: ignore[index]
            by_table = dict(conn.execute(WAL_BY_TABLE, {"since": since}).fetchall())
            riskd_wal += sum(int(b) for r, b in by_table.items() if r.startswith("riskd."))
            since = lsn
            now = stats(conn)
            n_fills, n_checks = fills(conn) - fills0, checks(conn) - checks0
            state, first_state = now["account_state"], first["account_state"]
            written = state[0] - first_state[0]
            rows.append([
                f"{(time.monotonic() - begin) / 60:.0f}", str(n_fills), str(n_checks),
                f"{total_wal / 2**20:.0f}", f"{riskd_wal / 2**20:.1f}",
                f"{riskd_wal / max(total_wal, 1):.1%}", f"{riskd_wal / max(n_checks, 1):.0f}",
                str(written), f"{(state[1] - first_state[1]) / max(written, 1):.0%}",
                str(state[2]), f"{state[4] / 2**20:.1f}", f"{now['dirty_accounts'][4] / 2**20:.1f}",
                str(state[3] - first_state[3]),
            ])  # fmt: skip
            print(" | ".join(rows[-1]), flush=True)
            if done or left <= args.sample:
                break
        out = bench.communicate()[0]
        daemon.terminate()
        daemon.wait(60)
        conn.close()
    header = (
        f"sustained trading, {started:%Y-%m-%d %H:%M} UTC, PostgreSQL {db.version}, durable, "
        f"{machine()}, {args.accounts} accounts / {args.positions} positions, pgbench fill "
        f"at {args.rate}/s (8 clients, prepared), riskd run at its defaults"
    )
    print(f"\n{header}\n")
    print(
        "| minute | fills | checks | WAL MB (all) | riskd WAL MB | riskd share | riskd WAL B/check "
        "| account_state rows written | HOT | account_state dead tuples | account_state MB "
        "| dirty set MB | autovacuums of account_state |"
    )
    print("|" + "---|" * 13)
    for row in rows:
        print("| " + " | ".join(row) + " |")
    tps = [line for line in out.splitlines() if line.startswith("tps")]
    print(f"\npgbench: {' '.join(tps)}")


if __name__ == "__main__":
    main()
