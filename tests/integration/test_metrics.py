"""Prometheus metrics, the health probe and JSON logs of ``riskd run``, against a real daemon."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import psycopg
import pytest
from conftest import Db
from daemonproc import wait_until
from test_daemon import Start, add_accounts, events, set_quantity, start

__all__ = ["start"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sample(text: str, name: str) -> float:
    """The value of one sample, ``name`` with its labels if any, from the text format."""
    for line in text.splitlines():
        if line.rsplit(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def test_metrics_and_healthz(db: Db, start: Start) -> None:
    (a,) = add_accounts(db, 1)
    port = free_port()
    daemon = start(metrics_port=str(port))
    daemon.wait_ready()
    status, body = get(port, "/healthz")
    assert (status, body) == (200, "ok\n")
    set_quantity(db, a, "95")
    wait_until(lambda: events(db), 10, "the breach")

    def scraped() -> str | None:
        text = get(port, "/metrics")[1]
        return text if 'riskd_events_total{level="critical"} 1.0' in text else None

    text = wait_until(scraped, 10, "the event in the metrics")
    assert sample(text, "riskd_checks_total") >= 1
    assert sample(text, "riskd_close_requests_total") == 1
    assert sample(text, "riskd_change_to_check_seconds_count") >= 1
    assert sample(text, "riskd_check_batch_seconds_count") >= 1
    assert sample(text, "riskd_sweeps_total") >= 1
    assert sample(text, "riskd_sweep_leader") == 1
    assert sample(text, "riskd_healthy") == 1
    assert "riskd_debouncer_accounts" in text and "riskd_lag_seconds" in text
    assert get(port, "/nope")[0] == 404
    # loopback only by default
    listening = [line for line in daemon.log().splitlines() if "metrics.listening" in line]
    assert listening and "http://127.0.0.1:" in listening[0]
    assert daemon.stop() == 0


def test_metrics_port_taken_is_one_line_and_exit_2(db: Db, start: Start) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        daemon = start(metrics_port=str(taken.getsockname()[1]))
        assert daemon.proc is not None
        assert daemon.proc.wait(20) == 2
    lines = [line for line in daemon.log().splitlines() if "DEBUG" not in line]
    errors = [line for line in lines if line.startswith("riskd:")]
    assert len(errors) == 1 and "[daemon] metrics_port" in errors[0], lines
    assert "Traceback" not in daemon.log()


def test_json_logs_and_no_password(db: Db, start: Start) -> None:
    (a,) = add_accounts(db, 1)
    info = psycopg.conninfo.conninfo_to_dict(db.dsn)
    info["password"] = "sekrit-pw"  # the test server trusts local connections: never sent
    daemon = start(dsn=psycopg.conninfo.make_conninfo(**info), log_format="json")  # type: ignore[arg-type]
    daemon.wait_ready()
    set_quantity(db, a, "95")
    wait_until(lambda: events(db), 10, "the breach")
    assert daemon.stop() == 0
    log = daemon.log()
    assert "sekrit-pw" not in log
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert records and all({"timestamp", "level", "event"} <= r.keys() for r in records)
    (transition,) = [r for r in records if r["event"] == "account.transition"]
    assert transition["account"] == a and transition["from_level"] == "ok"
    assert transition["to_level"] == "critical" and transition["event_id"] >= 1
    assert transition["utilization"] == "0.9500000000"
    assert transition["outcome"] == f"close request {transition['close_request_id']} opened"
    assert any(r["event"] == "sweep.done" and "candidates" in r for r in records)
    (start_line,) = [r for r in records if r["event"] == "daemon.starting"]
    assert "***" in start_line["database"] and start_line["batch_size"] == 500


@pytest.mark.slow
def test_healthz_says_503_while_the_database_is_down(db: Db, start: Start) -> None:
    cluster = db.server.cluster
    if cluster is None:
        pytest.skip("RISKD_TEST_DSN: the suite does not own the server")
    port = free_port()
    daemon = start(metrics_port=str(port))
    daemon.wait_ready()
    assert get(port, "/healthz")[0] == 200
    db.conn.close()
    cluster.stop()
    try:
        status, body = wait_until(
            lambda: (r := get(port, "/healthz"))[0] == 503 and r, 15, "/healthz to say 503"
        )
        assert "unhealthy" in body
        assert "riskd_healthy 0.0" in get(port, "/metrics")[1]
    finally:
        cluster.start()
    wait_until(lambda: get(port, "/healthz")[0] == 200, 30, "/healthz back to 200")
    db.conn = psycopg.connect(db.dsn, autocommit=True)
    assert daemon.stop() == 0
