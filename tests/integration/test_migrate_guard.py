"""`riskd migrate --revision base` on a live installation (issue 10, finding 3): the removal
says how many events, close requests and account limits it drops before dropping them, and is
refused (exit 1) while a riskd instance is alive — a heartbeat as recent as `riskd status`'s
live ones — unless --force. A downgrade to a revision keeps every record and is not guarded.

A live instance is faked by a fresh heartbeat row, except in the last test, which runs the
daemon and removes riskd under it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import Db
from daemonproc import DaemonProcess, wait_until

from riskd import __version__, migrate
from riskd.cli import main

HEAD = migrate.head()
DROPS = "3 risk events, 2 close requests (1 pending) and 1 account limit"


def cli(*args: str, dsn: str) -> Result:
    env = {"RISKD_CONFIG": "", "DATABASE_URL": "", "RISKD_DSN": dsn}
    return CliRunner().invoke(main, list(args), env=env)


def add_records(db: Db) -> None:
    """3 events, 2 close requests (1 pending), 1 account limit."""
    db.conn.execute(
        "INSERT INTO riskd.risk_events (account_id, from_level, to_level, equity, used_margin,"
        " detail, instance) SELECT 'a' || n, 'ok', 'warning', 100, 85, '{}', 'test'"
        " FROM generate_series(1, 3) AS n"
    )
    db.conn.execute(
        "INSERT INTO riskd.close_requests (account_id, status)"
        " VALUES ('a1', 'pending'), ('a2', 'done')"
    )
    db.conn.execute(
        "INSERT INTO riskd.account_limits (account_id, warning_threshold, auto_close_threshold)"
        " VALUES ('a1', 0.5, 0.6)"
    )


def heartbeat(db: Db, instance: str, age: float) -> None:
    """A heartbeat row ``age`` seconds old, as an instance of this release writes it."""
    db.conn.execute(
        "INSERT INTO riskd.daemons (instance, host, pid, version, heartbeat_at, stats)"
        " VALUES (%s, 'host-a', 4242, %s, now() - make_interval(secs => %s), %s::jsonb)",
        (instance, __version__, age, json.dumps({"schema_revision": HEAD})),
    )


def test_a_removal_under_a_live_instance_is_refused_unless_forced(db: Db) -> None:
    add_records(db)
    heartbeat(db, "fresh", 0)
    refused = cli("migrate", "--revision", "base", dsn=db.dsn)
    assert refused.exit_code == 1, refused.output
    assert refused.stderr.count("\n") == 1, refused.stderr
    line = refused.stderr
    assert line.startswith("riskd: migrate --revision base: refused: riskd instance fresh "), line
    assert "(host host-a, pid 4242, heartbeat " in line and "is alive" in line
    assert f"removing riskd would drop {DROPS}; stop every instance first, or add --force" in line
    assert refused.stdout == ""
    assert migrate.current(db.settings) == HEAD
    assert db.scalar("SELECT count(*) FROM riskd.risk_events") == 3

    forced = cli("migrate", "--revision", "base", "--force", dsn=db.dsn)
    assert forced.exit_code == 0, forced.output
    assert forced.stderr == (
        f"removing riskd under 1 live instance (--force: they stop, exit 2): dropping {DROPS}\n"
    )
    assert forced.stdout == f"riskd schema {HEAD} -> base\n"
    assert migrate.current(db.settings) is None


def test_a_removal_with_only_a_stale_instance_goes_ahead_and_says_what_it_drops(db: Db) -> None:
    """A heartbeat older than riskd status's limit is an instance gone (killed, cut off)."""
    add_records(db)
    heartbeat(db, "gone", 60)
    removed = cli("migrate", "--revision", "base", dsn=db.dsn)
    assert removed.exit_code == 0, removed.output
    assert removed.stderr == f"removing riskd: dropping {DROPS}\n"
    assert migrate.current(db.settings) is None


def test_a_downgrade_to_a_revision_keeps_the_records_and_is_not_guarded(db: Db) -> None:
    add_records(db)
    heartbeat(db, "fresh", 0)
    down = cli("migrate", "--revision", "0001", dsn=db.dsn)
    assert down.exit_code == 0, down.output
    assert down.stderr == ""
    assert migrate.current(db.settings) == "0001"
    counts = db.conn.execute(
        "SELECT (SELECT count(*) FROM riskd.risk_events), (SELECT count(*) FROM"
        " riskd.close_requests), (SELECT count(*) FROM riskd.account_limits)"
    ).fetchone()
    assert counts == (3, 2, 1)


@pytest.mark.slow
def test_a_running_daemon_blocks_the_removal_and_a_forced_one_stops_it_in_one_line(
    db: Db, tmp_path: Path
) -> None:
    daemon = DaemonProcess(db.dsn, tmp_path / "riskd.log").start()
    try:
        daemon.wait_ready()
        refused = cli("migrate", "--revision", "base", dsn=db.dsn)
        assert refused.exit_code == 1, refused.output
        assert f"pid {daemon.pid}, heartbeat" in refused.stderr, refused.stderr
        assert daemon.alive()
        forced = cli("migrate", "--revision", "base", "--force", dsn=db.dsn)
        assert forced.exit_code == 0, forced.output
        assert forced.stderr.startswith("removing riskd under 1 live instance"), forced.stderr
        assert daemon.proc is not None and daemon.proc.wait(30) == 2
        log = daemon.log()
        assert "Traceback" not in log, log
        errors = [line for line in log.splitlines() if " ERROR " in line]
        assert len(errors) == 1, log
        assert errors[0].endswith(
            'daemon.refused error="riskd was removed from this database under the daemon: stopping"'
        ), log
    finally:
        daemon.close()


def _waiting_on_lock(db: Db) -> bool:
    return bool(
        db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND application_name = 'riskd'"
        )
    )


def test_a_removal_that_meets_a_deadlock_tries_again(db: Db) -> None:
    """What a forced removal meets under a running daemon (its drain reads riskd's tables
    while the removal holds the platform's): a deadlock, which PostgreSQL resolves by aborting
    one side. When the removal is that side, it rolls back and tries again, as after a lock
    timeout, instead of failing. Here a session reads riskd.account_limits (which the removal
    will drop), then writes positions (whose capture triggers the removal has dropped)."""
    session = db.connect(autocommit=False)
    session.execute("SELECT count(*) FROM riskd.account_limits")
    outcome: list[object] = []

    def remove() -> None:
        try:
            outcome.append(migrate.migrate(db.settings, "base"))
        except BaseException as exc:  # examined below
            outcome.append(exc)

    worker = threading.Thread(target=remove)
    worker.start()
    try:
        wait_until(lambda: _waiting_on_lock(db), 30, "the removal to wait for account_limits")
        # the removal waits for this session, which now waits for the removal: PostgreSQL
        # aborts the one whose deadlock check runs first, the removal (it has waited longer)
        session.execute("UPDATE positions SET quantity = quantity WHERE false")
        session.commit()
    finally:
        session.close()
        worker.join(timeout=120)
    assert outcome == [(HEAD, None)]
