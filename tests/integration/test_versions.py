"""Versions you can see (I10): which revision the database holds and which this riskd needs,
in `riskd --version`, `migrate --check`, `status` and the daemon's start line; a daemon never
runs against another revision; two `riskd migrate` at once take turns."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from conftest import Db
from daemonproc import DaemonProcess, wait_until
from release import environment
from test_migrate import cli

from riskd import __version__, migrate
from riskd.sqlfiles import MIGRATE_LOCK_CLASS, MIGRATE_LOCK_KEY

HEAD = migrate.head()


def test_version_names_the_release_and_its_schema_revision() -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.output == f"riskd {__version__} (schema revision {HEAD})\n"


def test_check_says_what_the_database_holds_and_what_riskd_needs(bare_db: Db) -> None:
    migrate.migrate(bare_db.settings, "0001")
    behind = cli("migrate", "--check", dsn=bare_db.dsn)
    assert behind.exit_code == 1
    assert behind.output == (
        f"riskd schema at 0001, riskd {__version__} needs revision {HEAD}: run `riskd migrate`\n"
    )
    upgraded = cli("migrate", dsn=bare_db.dsn)
    assert upgraded.stdout == f"riskd schema 0001 -> {HEAD}\n"
    assert "max_prepared_transactions = 10" in upgraded.stderr  # the test clusters have 2PC on
    at_head = cli("migrate", "--check", dsn=bare_db.dsn)
    assert at_head.exit_code == 0
    assert at_head.output == f"riskd schema at revision {HEAD}, as riskd {__version__} needs\n"


def test_a_schema_newer_than_this_riskd_is_refused_by_migrate_in_one_line(db: Db) -> None:
    db.conn.execute("UPDATE riskd.alembic_version SET version_num = '9999'")
    for args in (("migrate",), ("migrate", "--revision", "0001")):
        result = cli(*args, dsn=db.dsn)
        assert result.exit_code == 1
        assert result.stderr == (
            f"riskd: riskd schema is at revision 9999, which riskd {__version__} does not know "
            f"(it needs {HEAD}): it was migrated by a newer riskd; run that release\n"
        )
    assert cli("migrate", "--check", dsn=db.dsn).exit_code == 1


def _daemon(db: Db, tmp_path: Path) -> DaemonProcess:
    return DaemonProcess(db.dsn, tmp_path / "riskd.log")


def test_the_daemon_refuses_an_older_schema_at_start(bare_db: Db, tmp_path: Path) -> None:
    migrate.migrate(bare_db.settings, "0001")
    daemon = _daemon(bare_db, tmp_path).start()
    try:
        assert daemon.proc is not None and daemon.proc.wait(30) == 2
        assert daemon.log().splitlines()[-1] == (
            f"riskd: riskd schema is at revision 0001, riskd {__version__} needs {HEAD}: "
            "run `riskd migrate`"
        )
        assert "Traceback" not in daemon.log()
    finally:
        daemon.close()


def test_the_daemon_refuses_a_newer_schema_at_start(db: Db, tmp_path: Path) -> None:
    db.conn.execute("UPDATE riskd.alembic_version SET version_num = '9999'")
    daemon = _daemon(db, tmp_path).start()
    try:
        assert daemon.proc is not None and daemon.proc.wait(30) == 2
        assert "which riskd" in daemon.log() and "newer riskd" in daemon.log()
    finally:
        daemon.close()


def test_the_start_line_names_the_revision(db: Db, tmp_path: Path) -> None:
    daemon = _daemon(db, tmp_path).start()
    try:
        daemon.wait_ready()
        assert f"daemon.starting version={__version__} schema_revision={HEAD} " in daemon.log()
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_a_daemon_stops_in_one_line_when_the_schema_moves_under_it(db: Db, tmp_path: Path) -> None:
    daemon = _daemon(db, tmp_path).start()
    try:
        daemon.wait_ready()
        assert daemon.heartbeat() is not None
        migrate.migrate(db.settings, "0001")
        assert daemon.proc is not None and daemon.proc.wait(30) == 2
        errors = [line for line in daemon.log().splitlines() if " ERROR " in line]
        assert len(errors) == 1, daemon.log()
        assert (
            f"riskd schema moved to revision 0001 under this daemon (riskd {__version__}"
            in (errors[0])
        )
        assert "Traceback" not in daemon.log()
    finally:
        daemon.close()


def test_the_fence_refuses_a_heartbeat_of_another_revision(db: Db) -> None:
    """What stops riskd 0.1.0 (which knows nothing of revisions) and any daemon that would not
    stop by itself: the database refuses its heartbeat."""
    insert = (
        "INSERT INTO riskd.daemons (instance, host, pid, version, stats)"
        " VALUES ('x', 'h', 1, %s, %s::jsonb)"
    )
    for version, stats in (("0.1.0", "{}"), ("9.9.9", '{"schema_revision": "0001"}')):
        try:
            db.conn.execute(insert, (version, stats))
        except Exception as exc:  # noqa: BLE001 - examined below
            assert type(exc).__name__ == "InsufficientPrivilege"
            assert f"riskd schema is at revision {HEAD}, this daemon (riskd {version})" in str(exc)
        else:
            raise AssertionError("the fence let a heartbeat of another revision through")
    db.conn.execute(insert, ("0.2.0", f'{{"schema_revision": "{HEAD}"}}'))


def test_two_migrations_at_once_take_turns_and_both_succeed(bare_db: Db) -> None:
    """Two `riskd migrate` processes on an empty database, four times over."""
    for round_ in range(4):
        if round_:
            migrate.migrate(bare_db.settings, "base")
        env = environment(bare_db.dsn)
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "riskd", "migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        said = sorted(out for out, _ in outputs)
        assert said == [f"riskd schema already at {HEAD}\n", f"riskd schema base -> {HEAD}\n"]
        assert migrate.current(bare_db.settings) == HEAD


def test_a_second_migrate_waits_for_the_first_and_says_so(bare_db: Db) -> None:
    holder = bare_db.connect()
    holder.execute("SELECT pg_advisory_lock(%s, %s)", (MIGRATE_LOCK_CLASS, MIGRATE_LOCK_KEY))
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(migrate.migrate(bare_db.settings)))
    worker.start()
    try:
        wait_until(
            lambda: bare_db.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND wait_event = 'advisory' AND datname = current_database()"
            ),
            30,
            "the second migrate to wait",
        )
        assert migrate.current(bare_db.settings) is None
    finally:
        holder.close()
        worker.join(60)
    assert outcome == [(None, HEAD)]


def test_check_and_sweep_refuse_another_revision_in_one_line(bare_db: Db) -> None:
    """What riskd-sweep.timer runs must not run a release on a schema it was not built for."""
    migrate.migrate(bare_db.settings, "0001")
    for args in (("sweep",), ("check", "a1")):
        result = cli(*args, dsn=bare_db.dsn)
        assert result.exit_code == 2
        assert result.stderr == (
            f"riskd: riskd schema at 0001, riskd {__version__} needs revision {HEAD}: "
            "run `riskd migrate`\n"
        )


def test_the_sql_of_a_removal_leaves_nothing_and_the_sql_of_base_is_refused(
    bare_db: Db,
) -> None:
    migrate.migrate(bare_db.settings)
    script = cli("migrate", "--sql", "--revision", f"{HEAD}:base", dsn=bare_db.dsn)
    assert script.exit_code == 0, script.output
    assert "lock_timeout" in script.stdout and "pg_advisory_xact_lock" in script.stdout
    bare_db.conn.execute(script.stdout)  # type: ignore[arg-type]
    assert bare_db.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'riskd'") == 0
    refused = cli("migrate", "--sql", "--revision", "base", dsn=bare_db.dsn)
    assert refused.exit_code == 1 and "--revision <installed>:base" in refused.stderr
