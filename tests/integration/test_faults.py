"""Fault injection (issue 3): the daemon as a real subprocess, real PostgreSQL, real failures.

Each test breaks something — the listener's backend, the server, the daemon itself, the
channel's payloads, the NOTIFY — and then asserts on rows: one event per transition (I3), no
breach missed (I2), nothing acted on without a real breach (I4), trading writes never failed
(I1). Waits poll conditions against deadlines.
"""

from __future__ import annotations

import signal
import socket
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from conftest import Db
from daemonproc import DaemonProcess, wait_until
from proxy import TcpProxy
from test_daemon import Start, add_accounts, events, pending_requests, set_quantity, start

from riskd.daemon.listen import PING_INTERVAL, PING_TIMEOUT
from riskd.sqlfiles import LOCK_CLASS

__all__ = ["start"]  # the fixture, shared with test_daemon


def levels(db: Db) -> Counter[str]:
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT level, count(*) FROM riskd.account_state GROUP BY 1")
        return Counter({r[0]: r[1] for r in rows})


def fresh_events(db: Db, account: str | None = None) -> list[tuple[str, str, str]]:
    """events() on a new connection: the test's own may have died with the server."""
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT account_id::text, from_level, to_level FROM riskd.risk_events"
            " WHERE %(a)s::text IS NULL OR account_id::text = %(a)s ORDER BY id",
            {"a": account},
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def breach_unseen(db: Db, account: str) -> None:
    """A breach whose mark is lost (taken back in its own transaction, as a server crash
    empties the unlogged dirty set): only a sweep finds it. Replica mode no longer hides a
    write: riskd's triggers fire ALWAYS."""
    with psycopg.connect(db.dsn) as conn:  # one transaction, committed at the end
        conn.execute("SET LOCAL synchronous_commit = on")  # the test cluster runs without
        conn.execute('UPDATE positions SET quantity = 95 WHERE "tradingAccountId" = %s', (account,))
        conn.execute("DELETE FROM riskd.dirty_accounts WHERE account_id = %s", (account,))
    marked = db.conn.execute(
        "SELECT count(*) FROM riskd.dirty_accounts WHERE account_id = %s", (account,)
    ).fetchone()
    assert marked == (0,)


def listener_pid(db: Db, daemon: DaemonProcess) -> int:
    def find() -> int | None:
        row = db.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'riskd' AND query LIKE 'LISTEN %%riskd_ping_%%'"
        ).fetchone()
        return None if row is None else int(row[0])

    return wait_until(find, 10, "the listener's backend")


def test_listener_backend_killed(db: Db, start: Start) -> None:
    a, b = add_accounts(db, 2)
    daemon = start()
    daemon.wait_ready()
    old = listener_pid(db, daemon)
    breach_unseen(db, b)  # no trigger saw it: only the sweep after the reconnect finds it
    db.conn.execute("SELECT pg_terminate_backend(%s)", (old,))
    set_quantity(db, a, "95")  # while the listener is cut off
    wait_until(lambda: len(events(db)) == 2, 15, "both breaches acted on")
    assert sorted(events(db)) == [(a, "ok", "critical"), (b, "ok", "critical")]
    stats = daemon.wait_stats(lambda s: s["reconnects"] >= 1, 10, "the reconnect counted")
    assert stats["sweeps"] >= 2
    assert listener_pid(db, daemon) != old
    assert daemon.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize("how", ["restart", "crash"])
def test_server_restart_or_crash(db: Db, start: Start, how: str) -> None:
    cluster = db.server.cluster
    if cluster is None:
        pytest.skip("RISKD_TEST_DSN: the suite does not own the server")
    a, b = add_accounts(db, 2)
    daemon = start()
    daemon.wait_ready()
    breach_unseen(db, a)  # only the sweep after the reconnect can find this one
    db.conn.close()
    if how == "restart":
        cluster.restart()
    else:
        cluster.kill()  # crash recovery empties the unlogged dirty set too
        cluster.start()
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute('UPDATE positions SET quantity = 95 WHERE "tradingAccountId" = %s', (b,))
    wait_until(lambda: len(fresh_events(db)) == 2, 30, "both breaches acted on")
    assert sorted(fresh_events(db)) == [(a, "ok", "critical"), (b, "ok", "critical")]
    assert daemon.alive()
    db.conn = psycopg.connect(db.dsn, autocommit=True)
    assert daemon.stop() == 0


def test_sigkill_mid_work_then_restart(db: Db, start: Start) -> None:
    accounts = add_accounts(db, 400)
    first = start(debounce="0s", batch_size="20")
    first.wait_ready()
    # Hold one account's check lock, so that the daemon is caught mid-work: some batches done,
    # one stuck in flight, the rest drained from the dirty set and waiting in its memory.
    with psycopg.connect(db.dsn, autocommit=True) as blocker:
        blocker.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, accounts[200]))
        db.conn.execute("UPDATE positions SET quantity = 95")  # 400 breaches at once
        wait_until(lambda: len(events(db)) >= 200, 20, "the batches before the stuck one")
        assert db.scalar("SELECT count(*) FROM riskd.dirty_accounts") == 0
        first.kill()
        assert len(events(db)) < len(accounts)
    second = start(debounce="0s", batch_size="20")  # its start-up sweep finds the rest
    second.wait_ready()
    wait_until(lambda: len(events(db)) >= len(accounts), 30, "every breach acted on")
    per_account = Counter(a for a, _, _ in events(db))
    assert set(per_account) == set(accounts)
    assert set(per_account.values()) == {1}, "an account got a second event"
    assert pending_requests(db) == dict.fromkeys(accounts, 1)
    assert second.stop() == 0


@pytest.mark.slow
def test_three_instances_one_event_per_transition_and_leader_takeover(db: Db, start: Start) -> None:
    accounts = add_accounts(db, 300)
    daemons = [start(debounce="0s", batch_size="25", sweep_interval="3s") for _ in range(3)]
    for d in daemons:
        d.wait_ready()
    rounds = 3
    for _ in range(rounds):  # one transaction per account, so that the instances interleave
        for a in accounts:
            set_quantity(db, a, "95")
        wait_until(lambda: levels(db)["critical"] == len(accounts), 30, "all critical")
        for a in accounts:
            set_quantity(db, a, "50")
        wait_until(lambda: levels(db)["ok"] == len(accounts), 30, "all ok again")
    evs = events(db)
    per_account: dict[str, list[tuple[str, str]]] = {}
    for account, src, dst in evs:
        per_account.setdefault(account, []).append((src, dst))
    expected = [("ok", "critical"), ("critical", "ok")] * rounds
    assert all(per_account[a] == expected for a in accounts), "a transition was duplicated"
    assert max(pending_requests(db).values(), default=0) <= 1
    instances = db.conn.execute("SELECT DISTINCT instance FROM riskd.risk_events").fetchall()
    assert len(instances) >= 2, "the instances did not share the work"
    stats = [d.heartbeat() or {} for d in daemons]
    # kill the sweep leader: another takes over within a sweep interval
    (leader,) = [d for d, s in zip(daemons, stats, strict=True) if s.get("leader")]
    leader.kill()
    others = [d for d in daemons if d is not leader]
    killed_at = time.monotonic()
    wait_until(lambda: any((d.heartbeat() or {}).get("leader") for d in others), 15, "a new leader")
    assert time.monotonic() - killed_at <= 3 + 2 + 2  # interval, retry, heartbeat
    breach_unseen(db, accounts[0])  # and it sweeps
    wait_until(lambda: len(events(db)) == len(evs) + 1, 15, "the new leader's sweep")
    for d in others:
        assert d.stop() == 0


HOSTILE = [
    "garbage",
    "x" * 7999,
    "\u00c3\u00a9\ufffd\u0001\u007f",
    "'); DROP TABLE positions; --",
    "acc00000",
    '{"account_id": "acc00001", "level": "critical"}',
]


def test_hostile_payloads_are_counted_and_dropped(db: Db, start: Start) -> None:
    a, b = add_accounts(db, 2)
    daemon = start()
    daemon.wait_ready()
    for payload in HOSTILE:
        db.conn.execute("SELECT pg_notify('riskd_changes', %s)", (payload,))
    db.conn.execute("NOTIFY riskd_changes")  # an empty one is a (harmless) wake-up
    stats = daemon.wait_stats(
        lambda s: s["malformed_payloads"] >= len(HOSTILE), 10, "the payloads counted"
    )
    assert stats["malformed_payloads"] == len(HOSTILE)
    assert events(db) == [] and pending_requests(db) == {}
    assert db.scalar("SELECT count(*) FROM positions") == 2
    set_quantity(db, b, "95")  # and it still works
    wait_until(lambda: events(db), 10, "the real breach")
    assert events(db) == [(b, "ok", "critical")]
    assert daemon.stop() == 0


def test_notify_guard_on_still_checks_through_the_timer_drain(db: Db, start: Start) -> None:
    (a,) = add_accounts(db, 1)
    daemon = start()
    daemon.wait_ready()
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute("SET riskd.notify_queue_limit = '0'")  # the guard: never NOTIFY
        conn.execute(
            'UPDATE positions SET quantity = 95 WHERE "tradingAccountId" = %s', (a,)
        )  # commits
    wait_until(lambda: events(db), 10, "the breach acted on")
    assert (daemon.heartbeat() or {})["notifications"] == 0
    assert daemon.stop() == 0


def test_sd_notify_messages_in_order(db: Db, start: Start, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    try:
        daemon = start(extra_env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
        messages: list[str] = []

        def receive_until(prefix: str) -> None:
            while not any(m.startswith(prefix) for m in messages):
                messages.extend(sock.recv(4096).decode().splitlines())

        receive_until("READY=1")
        pings: list[float] = []  # WATCHDOG_USEC 1 s: one every 0.5 s
        while len(pings) < 5:
            lines = sock.recv(4096).decode().splitlines()
            pings += [time.monotonic() for m in lines if m == "WATCHDOG=1"]
            messages.extend(lines)
        daemon.signal(signal.SIGTERM)
        receive_until("STOPPING=1")
        assert daemon.proc is not None and daemon.proc.wait(15) == 0
    finally:
        sock.close()
    kinds = [m.split("=")[0] for m in messages if m.split("=")[0] != "STATUS"]
    assert kinds[0] == "READY" and kinds[-1] == "STOPPING", kinds
    assert kinds.count("WATCHDOG") >= 3 and "WATCHDOG" not in kinds[: kinds.index("READY")]
    assert any(m.startswith("STATUS=") for m in messages)
    gaps = sorted(b - a for a, b in zip(pings, pings[1:], strict=False))
    assert 0.3 <= gaps[len(gaps) // 2] <= 0.8, gaps  # half of WATCHDOG_USEC


def test_database_unreachable_at_start_keeps_retrying(start: Start) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = start(dsn=f"postgresql://riskd@127.0.0.1:{port}/trading")
    wait_until(lambda: daemon.log().count("start.retry ") >= 3, 20, "three retries logged")
    assert daemon.alive()
    assert "password" not in daemon.log()
    assert daemon.stop() == 0


@pytest.mark.slow
def test_silently_stalled_network(db: Db, start: Start) -> None:
    """Through a proxy that stops forwarding without closing anything: keepalives never fire
    (the proxy's kernel still ACKs, tests/proxy.py), so only the self-ping can notice."""
    a, b = add_accounts(db, 2)
    with TcpProxy("127.0.0.1", int(psycopg.conninfo.conninfo_to_dict(db.dsn)["port"])) as proxy:
        dsn = psycopg.conninfo.make_conninfo(db.dsn, host="127.0.0.1", port=proxy.port)
        daemon = start(dsn=dsn)
        daemon.wait_ready()
        proxy.stall()
        stalled_at = time.monotonic()
        set_quantity(db, a, "95")  # made while the daemon is cut off
        wait_until(lambda: "ListenerStalled" in daemon.log(), 15, "the stall noticed")
        noticed = time.monotonic() - stalled_at
        assert noticed <= PING_INTERVAL + PING_TIMEOUT + 1.5, f"noticed after {noticed:.1f} s"
        assert events(db) == []
        proxy.resume()
        wait_until(lambda: events(db), 30, "the breach made during the stall")
        assert events(db) == [(a, "ok", "critical")]
        daemon.wait_stats(lambda s: s["reconnects"] >= 1, 15, "the reconnect counted")
        set_quantity(db, b, "95")  # and it goes on working
        wait_until(lambda: len(events(db)) == 2, 15, "a breach after the stall")
        assert daemon.stop() == 0
