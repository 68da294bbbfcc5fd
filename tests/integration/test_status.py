"""``riskd status`` against a real PostgreSQL: healthy with a running daemon, each unhealthy
reason with exit 1, exit 2 when the database cannot be reached, the --json document.

Heartbeat rows other than a real daemon's are written directly into riskd.daemons, the way a
daemon writes them (stats as jsonb), with ages set on the server's clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import Db
from daemonproc import DaemonProcess
from psycopg import sql
from psycopg.conninfo import make_conninfo
from test_check import check_one, setup_account

from riskd import __version__
from riskd import status as status_report
from riskd.cli import main
from riskd.migrate import head


def status(db: Db | None, *args: str, dsn: str | None = None) -> Result:
    env = {"RISKD_CONFIG": "", "DATABASE_URL": "", "RISKD_DSN": dsn or (db.dsn if db else "")}
    return CliRunner().invoke(main, ["status", *args], env=env)


def as_json(db: Db, *args: str) -> tuple[int, dict[str, Any]]:
    result = status(db, "--json", *args)
    assert result.stderr == ""
    return result.exit_code, json.loads(result.stdout)


def heartbeat(db: Db, instance: str, age: str = "0 s", **stats: Any) -> None:
    """A heartbeat row as a daemon writes it, ``age`` old."""
    row = {
        "state": "running",
        "lag": 0.0,
        "checks": 0,
        "leader": False,
        "schema_revision": head(),  # what the version fence asks of a heartbeat
    } | stats
    db.conn.execute(
        "INSERT INTO riskd.daemons (instance, host, pid, version, started_at, heartbeat_at,"
        " stats) VALUES (%s, 'h', 4242, '0.1.0', now() - interval '1 h',"
        " now() - %s::interval, %s::jsonb)",
        (instance, age, json.dumps(row)),
    )


DEFAULT_RISK = {
    "warning_threshold": "0.80",
    "auto_close_threshold": "0.90",
    "hysteresis": "0.02",
    "auto_close": "request",
    "model": "builtin",
    "max_closes_per_minute": "0",
    "max_price_age": "0s",
}


def unhealthy_lines(result: Result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("UNHEALTHY: ")]


@pytest.fixture
def daemon(db: Db, tmp_path: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(db.dsn, tmp_path / "riskd.log").start()
    try:
        yield proc
    finally:
        proc.close()


def test_healthy_with_a_running_daemon_then_unhealthy_once_it_stops(
    db: Db, daemon: DaemonProcess
) -> None:
    setup_account(db, "a1", quantity="95")
    daemon.wait_ready()
    daemon.wait_stats(lambda s: s["events"] >= 1, 10, "the daemon's sweep to find a1 critical")

    result = status(db)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("riskd OK: 1 live instance; schema "), lines[0]
    assert unhealthy_lines(result) == []
    assert f":{daemon.pid}" in result.stdout  # the instance is host:pid
    assert "accounts: ok 0, warning 0, critical 1" in result.stdout
    assert "close requests pending: 1" in result.stdout
    assert "ok -> critical" in result.stdout  # the recent events

    code, doc = as_json(db)
    assert code == 0 and doc["healthy"] is True and doc["problems"] == []
    (instance,) = doc["instances"]
    assert instance["pid"] == daemon.pid and instance["state"] == "running"
    assert instance["leader"] is True and instance["last_sweep_at"] is not None
    assert instance["counters"]["events"] >= 1 and instance["heartbeat_age"] < 10
    assert doc["levels"] == {"ok": 0, "warning": 0, "critical": 1}
    assert doc["pending_close_requests"] == 1 and doc["oldest_close_request_age"] >= 0
    assert [e["account_id"] for e in doc["recent_events"]] == ["a1"]

    # issue 10: the start line says what the daemon runs with, the heartbeat carries the risk
    # settings, and a live instance configured otherwise is named with the setting
    (start,) = [line for line in daemon.log().splitlines() if "daemon.starting" in line]
    assert start.endswith(
        " warning_threshold=0.80 auto_close_threshold=0.90 hysteresis=0.02 auto_close=request "
        "model=builtin max_closes_per_minute=0 max_price_age=0s "
        "debounce=0.2s max_delay=1s sweep_interval=60s batch_size=500"
    ), start
    assert instance["risk"] == instance["stats"]["risk"] == DEFAULT_RISK
    heartbeat(db, "other:2", risk=DEFAULT_RISK | {"hysteresis": "0.05"})
    code, doc = as_json(db)
    assert code == 1
    (problem,) = doc["problems"]
    holders = sorted([(instance["instance"], "0.02"), ("other:2", "0.05")])  # by instance
    runs = [f"{value} on {name}" for name, value in holders]
    assert problem == (
        f"live instances run different risk settings: [risk] hysteresis: {', '.join(runs)} "
        "(each undoes the other's events and close requests: give every instance the same "
        "configuration)"
    )
    db.conn.execute("DELETE FROM riskd.daemons WHERE instance = 'other:2'")

    assert daemon.stop() == 0
    result = status(db)
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[0].startswith("riskd UNHEALTHY (1 problem): 0 live")
    assert unhealthy_lines(result) == [
        "UNHEALTHY: no live riskd instance (no heartbeat in the last 10.0 s)"
    ]


def test_a_stale_heartbeat_is_unhealthy_and_names_the_instance(db: Db) -> None:
    heartbeat(db, "live:1")
    heartbeat(db, "gone:2", age="1 min")
    result = status(db)
    assert result.exit_code == 1, result.output
    (line,) = unhealthy_lines(result)
    assert line.startswith("UNHEALTHY: instance gone:2 (host h, pid 4242): last heartbeat 1.0 min")
    assert "DELETE FROM riskd.daemons WHERE instance = 'gone:2'" in line
    assert result.stdout.splitlines()[0].startswith(
        "riskd UNHEALTHY (1 problem): 1 live instance, 1 stale"
    )

    code, doc = as_json(db)
    assert code == 1 and len(doc["problems"]) == 1
    assert [i["instance"] for i in doc["instances"]] == ["live:1"]
    assert [(i["instance"], i["stale"]) for i in doc["stale_instances"]] == [("gone:2", True)]

    # the limit is an option: a minute-old heartbeat is fine when stale means two minutes
    assert status(db, "--stale-after", "2m").exit_code == 0


def test_only_stale_instances_means_no_live_one(db: Db) -> None:
    heartbeat(db, "gone:2", age="11 s")
    code, doc = as_json(db)
    assert code == 1
    assert doc["problems"][0].startswith("no live riskd instance")
    assert doc["problems"][1].startswith("instance gone:2 ")
    assert doc["instances"] == []


def test_not_at_head_is_unhealthy(db: Db) -> None:
    heartbeat(db, "live:1")
    db.conn.execute("UPDATE riskd.alembic_version SET version_num = '0001'")
    result = status(db)
    assert result.exit_code == 1
    assert unhealthy_lines(result) == [
        f"UNHEALTHY: riskd schema at 0001, riskd {__version__} needs revision {head()}: "
        "run `riskd migrate`"
    ]
    assert f"schema: revision 0001 (riskd {__version__} needs {head()})" in result.stdout
    code, doc = as_json(db)
    assert (doc["revision"], doc["at_head"]) == ("0001", False)


def test_a_schema_newer_than_this_riskd_is_named_as_such(db: Db) -> None:
    heartbeat(db, "live:1")
    db.conn.execute("UPDATE riskd.alembic_version SET version_num = '9999'")
    lines = unhealthy_lines(status(db))
    assert lines == [
        f"UNHEALTHY: riskd schema is at revision 9999, which riskd {__version__} does not know "
        f"(it needs {head()}): it was migrated by a newer riskd; run that release"
    ]


def test_riskd_not_installed_is_unhealthy(bare_db: Db) -> None:
    result = status(bare_db)
    assert result.exit_code == 1
    assert unhealthy_lines(result) == [
        "UNHEALTHY: riskd is not installed in this database (run `riskd migrate`)"
    ]


def test_lag_over_the_limit_is_unhealthy(db: Db) -> None:
    heartbeat(db, "slow:1", lag=45.5)
    heartbeat(db, "fine:2", lag=1.0)
    result = status(db)
    assert result.exit_code == 1
    assert unhealthy_lines(result) == [
        "UNHEALTHY: instance slow:1: lag 45.5 s, over 30.0 s (checks fall behind the changes)"
    ]
    assert "lag 45.5 s" in result.stdout.splitlines()[0]
    assert status(db, "--max-lag", "1m").exit_code == 0


def test_a_webhook_backlog_over_the_limit_is_unhealthy(db: Db) -> None:
    """Issue 13: the outbox's oldest pending delivery, against --max-delivery-age."""
    setup_account(db, "a1", quantity="95")
    setup_account(db, "a2", quantity="95")
    check_one(db, "a1")
    check_one(db, "a2")
    heartbeat(db, "live:1")
    db.conn.execute(
        "INSERT INTO riskd.deliveries (event_id, created_at, status)"
        " SELECT id, now() - interval '20 min', CASE WHEN account_id = 'a1' THEN 'pending'"
        " ELSE 'failed' END FROM riskd.risk_events"
    )
    result = status(db)
    assert result.exit_code == 1
    (line,) = unhealthy_lines(result)
    assert line == (
        "UNHEALTHY: webhook backlog: 1 pending, the oldest 20.0 min old, over 10.0 min (the "
        "endpoint keeps failing, or no instance delivers: `riskd deliveries`)"
    )
    assert "webhook deliveries: 1 pending, oldest" in result.stdout and "1 failed" in result.stdout
    assert status(db, "--max-delivery-age", "1h").exit_code == 0
    code, doc = as_json(db, "--max-delivery-age", "1h")
    assert (doc["pending_deliveries"], doc["failed_deliveries"]) == (1, 1)
    assert 1190 < doc["oldest_delivery_age"] < 1300


def test_notification_queue_usage_over_the_limit_is_unhealthy(db: Db) -> None:
    heartbeat(db, "live:1")
    # A listener inside a transaction reads nothing, so the queue keeps what is sent after its
    # LISTEN: a few pages of payload make the usage above zero, however small.
    with db.connect() as listener, db.connect() as sender:
        listener.execute("LISTEN status_test")
        listener.execute("BEGIN")
        listener.execute("SELECT 1")
        for _ in range(40):
            sender.execute("SELECT pg_notify('status_test', repeat('x', 7000))")
        code, doc = as_json(db, "--max-queue-usage", "0")
        assert doc["queue_usage"] > 0
        assert code == 1
        assert doc["problems"][0].startswith("notification queue ")
        assert status(db).exit_code == 0  # the default limit, 50 %
        listener.execute("COMMIT")


def test_cannot_connect_is_one_line_exit_2_without_the_password() -> None:
    result = status(None, dsn="postgresql://riskd:s3cret@127.0.0.1:1/trading")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("riskd: cannot connect to postgresql://riskd:***@127.0.0.1:1/")
    assert "s3cret" not in result.stderr
    result = status(None, "--json", dsn="postgresql://riskd:s3cret@127.0.0.1:1/trading")
    assert result.exit_code == 2 and result.stdout == "" and "s3cret" not in result.stderr


def test_the_password_of_a_working_dsn_is_masked(db: Db) -> None:
    heartbeat(db, "live:1")
    # the test servers trust local connections: the password is sent and ignored
    dsn = db.dsn.replace("postgresql://postgres@", "postgresql://postgres:s3cret@")
    assert dsn != db.dsn
    result = status(None, dsn=dsn)
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.stdout and "postgres:***@" in result.stdout
    json_result = status(None, "--json", dsn=dsn)
    assert "s3cret" not in json_result.stdout


def test_a_bad_limit_is_one_line_exit_2(db: Db) -> None:
    result = status(db, "--stale-after", "soon")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "--stale-after" in result.stderr
    assert status(db, "--max-queue-usage", "2").exit_code == 2


def test_json_document_shape(db: Db) -> None:
    setup_account(db, "a1", quantity="85")
    check_one(db, "a1")
    heartbeat(
        db, "live:1", lag=0.5, dirty=3, leader=True, last_sweep_at="2024-01-01T00:00:00+00:00"
    )
    db.conn.execute("DELETE FROM riskd.dirty_accounts")  # the marks setup_account made
    db.conn.execute("DELETE FROM riskd.dirty_instruments")
    db.conn.execute("INSERT INTO riskd.dirty_accounts (account_id) VALUES ('a1'), ('a1'), ('a2')")
    db.conn.execute("INSERT INTO riskd.dirty_instruments (instrument_id) VALUES ('i1'), ('i2')")
    code, doc = as_json(db, "--events", "5")
    assert code == 0
    assert set(doc) == {
        "healthy", "problems", "summary", "checked_at", "database", "installed", "revision",
        "head", "at_head", "limits", "instances", "stale_instances", "queue_usage",
        "dirty_marks", "dirty_accounts", "dirty_instrument_marks", "dirty_instruments",
        "levels", "pending_close_requests", "oldest_close_request_age", "pending_deliveries",
        "oldest_delivery_age", "failed_deliveries", "recent_events", "capture_problems",
        "warnings", "paused", "recent_alerts",
    }  # fmt: skip
    assert doc["paused"]["paused"] is False and doc["recent_alerts"] == []
    assert doc["summary"].startswith("riskd OK: ") and doc["warnings"] == []
    assert (doc["dirty_marks"], doc["dirty_accounts"]) == (3, 2)
    assert (doc["dirty_instrument_marks"], doc["dirty_instruments"]) == (2, 2)
    assert doc["levels"] == {"ok": 0, "warning": 1, "critical": 0}
    assert doc["limits"] == {
        "stale_after": 10.0,
        "max_queue_usage": 0.5,
        "max_lag": 30.0,
        "max_delivery_age": 600.0,
    }
    assert (doc["pending_deliveries"], doc["oldest_delivery_age"], doc["failed_deliveries"]) == (
        0,
        None,
        0,
    )
    (instance,) = doc["instances"]
    assert set(instance) >= {
        "instance", "host", "pid", "version", "started_at", "heartbeat_at", "uptime",
        "heartbeat_age", "lag", "dirty", "leader", "last_sweep_at", "last_sweep_duration",
        "counters", "state", "stats",
    }  # fmt: skip
    assert 3590 < instance["uptime"] < 3700 and instance["lag"] == 0.5
    (event,) = doc["recent_events"]
    assert (event["account_id"], event["to_level"], event["utilization"]) == (
        "a1",
        "warning",
        "0.8500000000",
    )
    assert event["created_at"].endswith("+00:00") or "+" in event["created_at"]


def test_the_dirty_set_counts_instrument_marks_too(db: Db) -> None:
    """A price tick marks an instrument, not its holders (the drain fans it out): a backlog of
    instrument marks is a backlog all the same, in the text and in --json."""
    heartbeat(db, "live:1")
    conn = db.conn
    conn.execute("INSERT INTO instruments VALUES ('btc', 'BTC', 100, 0.1), ('eth', 'ETH', 10, 0.1)")
    conn.execute("TRUNCATE riskd.dirty_accounts, riskd.dirty_instruments")
    conn.execute("UPDATE instruments SET price = price + 1")  # the capture marks both
    conn.execute("UPDATE instruments SET price = price + 1 WHERE id = 'btc'")
    conn.execute("INSERT INTO riskd.dirty_accounts (account_id) VALUES ('a1')")
    result = status(db)
    assert result.exit_code == 0, result.output
    assert "dirty set: 1 marks for 1 accounts, 3 marks for 2 instruments;" in result.stdout
    code, doc = as_json(db)
    assert (doc["dirty_marks"], doc["dirty_accounts"]) == (1, 1)
    assert (doc["dirty_instrument_marks"], doc["dirty_instruments"]) == (3, 2)


def test_instrument_marks_this_role_cannot_read_are_unknown_not_an_error(db: Db) -> None:
    """A monitoring role granted before the instrument marks existed reads the rest."""
    heartbeat(db, "live:1")
    role = f"status_{db.name}"
    conn = db.conn
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA riskd TO {}").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL(
                "GRANT SELECT ON riskd.alembic_version, riskd.installation, riskd.daemons,"
                " riskd.dirty_accounts, riskd.account_state, riskd.risk_events,"
                " riskd.close_requests, riskd.account_limits TO {}"
            ).format(sql.Identifier(role))
        )
        dsn = make_conninfo(db.dsn, user=role)
        result = status(None, dsn=dsn)
        assert result.exit_code == 0 and result.stderr == "", result.output
        assert "instrument marks unknown" in result.stdout
        doc = json.loads(status(None, "--json", dsn=dsn).stdout)
        assert (doc["dirty_instrument_marks"], doc["dirty_instruments"]) == (None, None)
        # nor the webhook outbox, granted since (revision 0007): unknown, not an error
        assert (doc["pending_deliveries"], doc["failed_deliveries"]) == (None, None)
        assert doc["healthy"] is True
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    # a schema from before the instrument marks (revision 0003 had none)
    conn.execute("DROP TABLE riskd.dirty_instruments CASCADE")
    code, doc = as_json(db)
    assert doc["dirty_instruments"] is None and code == 0


def test_live_instances_that_disagree_on_risk_settings_are_unhealthy(db: Db) -> None:
    """Issue 10: an instance run with thresholds as percentages fought a correct one, and
    nothing noticed. Every live instance's heartbeat says what it runs with; status compares."""
    heartbeat(db, "a:1", risk=DEFAULT_RISK)
    heartbeat(db, "b:2", risk=DEFAULT_RISK | {"warning_threshold": "80", "auto_close": "flatten"})
    heartbeat(db, "old:3")  # a riskd from before the heartbeat said: cannot be compared
    expected = (
        "live instances run different risk settings: [risk] warning_threshold: 0.80 on a:1, "
        "80 on b:2; [risk] auto_close: request on a:1, flatten on b:2 (each undoes the other's "
        "events and close requests: give every instance the same configuration)"
    )
    result = status(db)
    assert result.exit_code == 1, result.output
    assert unhealthy_lines(result) == [f"UNHEALTHY: {expected}"]
    assert "risk settings: " not in result.stdout.replace(expected, "")
    code, doc = as_json(db)
    assert code == 1 and doc["problems"] == [expected]
    by_name = {i["instance"]: i["risk"] for i in doc["instances"]}
    assert by_name["a:1"] == DEFAULT_RISK and by_name["old:3"] is None
    assert by_name["b:2"]["warning_threshold"] == "80"

    # the same numbers written another way agree
    db.conn.execute(
        "UPDATE riskd.daemons SET stats = jsonb_set(stats, '{risk}', %s::jsonb)"
        " WHERE instance = 'b:2'",
        (json.dumps(DEFAULT_RISK | {"warning_threshold": "0.8", "hysteresis": "0.020"}),),
    )
    result = status(db)
    assert result.exit_code == 0, result.output
    assert (
        "risk settings: warning_threshold 0.80, auto_close_threshold 0.90, hysteresis 0.02, "
        "auto_close request" in result.stdout
    )
    # a stale instance is not compared: it is unhealthy for being stale, and only for that
    heartbeat(db, "gone:4", age="1 min", risk=DEFAULT_RISK | {"hysteresis": "0.05"})
    code, doc = as_json(db)
    assert code == 1 and [p.split(" (")[0] for p in doc["problems"]] == ["instance gone:4"]


def test_health_rules_as_a_pure_function() -> None:
    """assess() alone: each limit is 'over', not 'at'."""

    def instance(age: float, lag: float) -> status_report.Instance:
        now = datetime.now(UTC)
        return status_report.Instance(
            "i:1", "h", 1, "v", now, now, 1.0, age, {"lag": lag, "state": "running"}
        )

    limits = status_report.Limits(stale_after=10, max_queue_usage=0.5, max_lag=30)
    ok = status_report.Status(
        database="", head="h", installed=True, revision="h", instances=[instance(10, 30)]
    )
    ok.queue_usage = 0.5
    assert status_report.assess(ok, limits) == []
    bad = status_report.Status(
        database="", head="h", installed=True, revision="h", instances=[instance(10.1, 0)]
    )
    assert [p.split(" (")[0] for p in status_report.assess(bad, limits)][
        0
    ] == "no live riskd instance"
    bad.instances = [instance(1, 30.1)]
    bad.queue_usage = 0.51
    assert len(status_report.assess(bad, limits)) == 2


def test_status_never_shows_a_traceback_on_a_database_error(db: Db) -> None:
    # a heartbeat table that is not what riskd made: a database error, one line, exit 1
    db.conn.execute("ALTER TABLE riskd.daemons RENAME COLUMN stats TO stats_old")
    result = status(db)
    assert result.exit_code == 1
    assert result.stderr.startswith("riskd: database error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
