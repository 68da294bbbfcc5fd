"""The safety rails against a real PostgreSQL (DESIGN §1 "Safety rails", issue 14): the kill
switch, the circuit breaker, the stale-price guard, the per-account auto-close mode, and the
alerts each records.

The book: accounts a0…aN, balance 1 000, one long position each on instrument i1 (price 100,
margin rate 10 %): a quantity of q units is q % utilisation. A crash of the price is a loss
booked as unrealised PnL, as a platform's price feed would book it.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from conftest import Db, settings_for
from daemonproc import wait_until
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from test_daemon import Start, add_accounts, set_quantity, start

from riskd import migrate, rails
from riskd.check import CheckResult, check_accounts
from riskd.cli import main
from riskd.config import Settings
from riskd.db import set_session

__all__ = ["start"]  # the fixture, shared with test_daemon


def book(db: Db, quantities: list[int], instrument: str = "i1") -> list[str]:
    """Accounts a0… holding ``quantities`` of ``instrument`` (price 100, margin rate 0.1)."""
    db.conn.execute(
        'INSERT INTO instruments (id, symbol, price, "marginRate") VALUES (%s, %s, 100, 0.1)'
        " ON CONFLICT DO NOTHING",
        (instrument, instrument.upper()),
    )
    ids = []
    for n, quantity in enumerate(quantities):
        account = f"a{n}"
        db.conn.execute(
            'INSERT INTO trading_accounts (id, "userId", balance) VALUES (%s, %s, 1000)',
            (account, f"u{n}"),
        )
        db.conn.execute(
            'INSERT INTO positions (id, "tradingAccountId", "instrumentId", quantity, '
            '"unrealizedPnL") VALUES (%s, %s, %s, %s, 0)',
            (f"p{n}", account, instrument, quantity),
        )
        ids.append(account)
    return ids


def rails_settings(db: Db, **risk: Any) -> Settings:
    return settings_for(db.dsn, risk=risk)


def checker(db: Db, settings: Settings) -> psycopg.Connection[Any]:
    """An instance's connection: the session settings its configuration gives (riskd.db)."""
    conn = db.connect()
    set_session(conn, settings)
    return conn


def check(conn: psycopg.Connection[Any], settings: Settings, ids: list[str]) -> list[CheckResult]:
    return check_accounts(conn, settings, ids, instance="test")


def close_requests(db: Db) -> list[str]:
    rows = db.conn.execute("SELECT account_id FROM riskd.close_requests ORDER BY id").fetchall()
    return [r[0] for r in rows]


def alerts(db: Db, kind: str | None = None) -> list[tuple[str, str | None, dict[str, Any]]]:
    rows = db.conn.execute(
        "SELECT kind, account_id, detail FROM riskd.alerts"
        " WHERE %(kind)s::text IS NULL OR kind = %(kind)s ORDER BY id",
        {"kind": kind},
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def paused(db: Db) -> bool:
    return bool(db.scalar("SELECT paused FROM riskd.controls"))


def crash(db: Db, instrument: str = "i1", loss_per_unit: int = 3) -> None:
    """The price falls: each unit held loses ``loss_per_unit`` of equity."""
    db.conn.execute(
        'UPDATE positions SET "unrealizedPnL" = -quantity * %s WHERE "instrumentId" = %s',
        (loss_per_unit, instrument),
    )


def test_a_pause_holds_every_close_and_the_levels_and_events_go_on(db: Db) -> None:
    settings = rails_settings(db)
    ids = book(db, [95, 92, 50])
    changed, switch = rails.pause(settings, "feed incident #42")
    assert changed and switch.paused and switch.reason == "feed incident #42"
    assert "@" in (switch.paused_by or "")
    with checker(db, settings) as conn:
        results = {r.account_id: r for r in check(conn, settings, ids)}
    assert results["a0"].level == results["a1"].level == "critical"
    assert results["a0"].event_id is not None  # the transition is recorded
    assert results["a0"].close_request_id is None
    assert close_requests(db) == []
    assert [a[0] for a in alerts(db)] == ["paused"]
    assert alerts(db)[0][2]["reason"] == "feed incident #42"

    again, _ = rails.pause(settings, "twice")
    assert not again  # paused already: nothing changes, no second alert
    assert [a[0] for a in alerts(db)] == ["paused"]


def test_resuming_closes_the_accounts_still_critical_worst_first(db: Db) -> None:
    settings = rails_settings(db)
    ids = book(db, [91, 97, 50, 94])
    rails.pause(settings, None)
    with checker(db, settings) as conn:
        check(conn, settings, ids)
    db.conn.execute("DELETE FROM riskd.dirty_accounts")
    assert close_requests(db) == []

    changed, switch = rails.resume(settings, "feed fixed")
    assert changed and not switch.paused
    resumed = alerts(db, "resumed")[0][2]
    assert resumed["paused_reason"] is None and resumed["reason"] == "feed fixed"
    # the accounts still critical are marked for the daemon, which checks them at once
    marked = db.conn.execute("SELECT DISTINCT account_id FROM riskd.dirty_accounts").fetchall()
    assert sorted(r[0] for r in marked) == ["a0", "a1", "a3"]
    with checker(db, settings) as conn:
        check(conn, settings, ids)
    # one batch: worst first
    assert close_requests(db) == ["a1", "a3", "a0"]


def test_a_pause_waits_for_the_check_that_is_closing_then_holds_the_next(db: Db) -> None:
    settings = rails_settings(db)
    book(db, [95, 96])
    done = threading.Event()

    def pause() -> None:
        rails.pause(settings, "stop")
        done.set()

    thread = threading.Thread(target=pause)
    with checker(db, settings) as other:  # another instance, in the middle of a check
        with other.transaction():
            check(other, settings, ["a0"])  # closes a0, not committed yet
            thread.start()
            # pause waits for the closing check's commit: its lock is seen waiting
            deadline = time.monotonic() + 10
            while not db.scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ):
                assert time.monotonic() < deadline, "pause did not wait for the rails lock"
                time.sleep(0.02)
            assert not done.is_set()
        assert done.wait(10)
        thread.join(10)
        # once pause has returned, the other instance's next check closes nothing
        check(other, settings, ["a1"])
    assert close_requests(db) == ["a0"]


def test_the_circuit_breaker_closes_the_cap_then_pauses_every_instance(db: Db) -> None:
    settings = rails_settings(db, max_closes_per_minute=3)
    ids = book(db, [70, 75, 80, 82, 84, 86, 60])
    first, second = checker(db, settings), checker(db, settings)
    try:
        crash(db, loss_per_unit=4)  # a0 … a5 critical, a6 (60 units: 79 %) is not
        results = check(first, settings, ids[:3])
        results += check(second, settings, ids[3:])
        levels = {r.account_id: r.level for r in results}
        assert [a for a in ids if levels[a] == "critical"] == ids[:6]
        # the first instance closed its three; the second would exceed the cap: none, paused
        assert sorted(close_requests(db)) == ["a0", "a1", "a2"]
        assert paused(db)
        (opened,) = alerts(db, "circuit_open")
        assert opened[2]["max_closes_per_minute"] == 3 and opened[2]["held"] == 3
        assert "max_closes_per_minute = 3" in opened[2]["reason"]
        assert db.scalar("SELECT paused_by FROM riskd.controls") == "circuit breaker"
        # nothing more until resume, whichever instance checks
        check(first, settings, ids)
        check(second, settings, ids)
        assert len(close_requests(db)) == 3
        # resumed a minute later, the accounts still critical are closed, worst first
        rails.resume(settings, "checked the tick")
        db.conn.execute("UPDATE riskd.close_requests SET created_at = now() - interval '2 min'")
        check(second, settings, ids)
        assert close_requests(db)[3:] == ["a5", "a4", "a3"]
        assert not paused(db)
    finally:
        first.close()
        second.close()


def test_a_30_percent_crash_closes_exactly_the_cap_then_nothing_until_resume(db: Db) -> None:
    """One instrument falls 30 %, marked to market (PnL = quantity x the move): six accounts
    go critical at once, two instances check them all, the cap is three."""
    settings = rails_settings(db, max_closes_per_minute=3)
    ids = book(db, [20, 26, 27, 28, 29, 30, 31, 40])  # all ok at 100 (40 % at most)
    first, second = checker(db, settings), checker(db, settings)
    try:
        db.conn.execute("UPDATE instruments SET price = 70 WHERE id = 'i1'")
        db.conn.execute('UPDATE positions SET "unrealizedPnL" = quantity * (70 - 100)')
        levels = {r.account_id: r.level for r in check(first, settings, ids)}
        check(second, settings, ids)
        assert [a for a in ids if levels[a] == "critical"] == ids[2:]
        # exactly the cap, worst first: equity gone (a7), then 310 % (a6), 210 % (a5)
        assert close_requests(db) == ["a7", "a6", "a5"]
        assert paused(db)
        for _ in range(3):
            check(first, settings, ids)
            check(second, settings, ids)
        assert len(close_requests(db)) == 3
        rails.resume(settings, None)
        db.conn.execute("UPDATE riskd.close_requests SET created_at = now() - interval '2 min'")
        check(second, settings, ids)
        assert close_requests(db)[3:] == ["a4", "a3", "a2"]
    finally:
        first.close()
        second.close()


def test_the_breaker_closes_the_worst_accounts_up_to_the_cap_in_one_batch(db: Db) -> None:
    settings = rails_settings(db, max_closes_per_minute=2)
    ids = book(db, [91, 99, 93, 95])
    with checker(db, settings) as conn:
        check(conn, settings, ids)
    assert close_requests(db) == ["a1", "a3"]
    assert paused(db)


def test_the_breaker_counts_flattens_too(db: Db) -> None:
    settings = rails_settings(db, max_closes_per_minute=1, auto_close="flatten")
    ids = book(db, [95, 99])
    with checker(db, settings) as conn:
        check(conn, settings, ids)
    done = db.conn.execute("SELECT account_id, status FROM riskd.close_requests").fetchall()
    assert done == [("a1", "done")]
    assert db.scalar("SELECT quantity FROM positions WHERE id = 'p0'") == 95  # held
    assert db.scalar("SELECT quantity FROM positions WHERE id = 'p1'") == 0
    assert paused(db)


def test_with_the_breaker_off_nothing_is_counted(db: Db) -> None:
    settings = rails_settings(db)
    ids = book(db, [91 + n for n in range(8)])
    with checker(db, settings) as conn:
        check(conn, settings, ids)
    assert len(close_requests(db)) == 8 and not paused(db)


@pytest.fixture
def priced(db: Db) -> Settings:
    """The reference schema with the price's time mapped ([schema] instrument_price_time)."""
    db.conn.execute('ALTER TABLE instruments ADD COLUMN "pricedAt" timestamptz DEFAULT now()')
    settings = settings_for(db.dsn, schema={"instrument_price_time": "pricedAt"})
    migrate.migrate(settings)  # the mapping changed: the views read the new column
    return dataclasses.replace(
        settings, risk=dataclasses.replace(settings.risk, max_price_age=30.0)
    )


def test_a_stale_price_holds_the_close_with_an_alert_and_a_fresh_one_closes(
    db: Db, priced: Settings
) -> None:
    ids = book(db, [95, 50])
    db.conn.execute("""UPDATE instruments SET "pricedAt" = now() - interval '5 min'""")
    with checker(db, priced) as conn:
        (critical, _) = check(conn, priced, ids)
        assert critical.level == "critical" and critical.event_id is not None
        assert critical.close_request_id is None
        assert close_requests(db) == []
        (held,) = alerts(db, "close_held")
        assert held[1] == "a0"
        assert held[2]["reason"] == "stale_price" and held[2]["instrument"] == "i1"
        assert 299 < held[2]["price_age"] < 400 and held[2]["max_price_age"] == 30
        check(conn, priced, ids)  # still stale: said once while the account stays critical
        assert len(alerts(db, "close_held")) == 1

        db.conn.execute("""UPDATE instruments SET "pricedAt" = now()""")
        (critical, _) = check(conn, priced, ids)
        assert critical.close_request_id is not None
        assert close_requests(db) == ["a0"]


def test_the_guard_holds_on_the_oldest_price_of_the_account(db: Db, priced: Settings) -> None:
    book(db, [60])
    db.conn.execute(
        'INSERT INTO instruments (id, symbol, price, "marginRate", "pricedAt")'
        " VALUES ('i2', 'I2', 100, 0.1, now() - interval '1 h')"
    )
    db.conn.execute(
        'INSERT INTO positions (id, "tradingAccountId", "instrumentId", quantity, '
        "\"unrealizedPnL\") VALUES ('p0b', 'a0', 'i2', 35, 0)"
    )
    with checker(db, priced) as conn:
        (result,) = check(conn, priced, ["a0"])
    assert result.level == "critical" and result.close_request_id is None
    assert alerts(db, "close_held")[0][2]["instrument"] == "i2"


def test_a_price_with_no_time_counts_as_stale(db: Db, priced: Settings) -> None:
    book(db, [95])
    db.conn.execute('UPDATE instruments SET "pricedAt" = NULL')
    with checker(db, priced) as conn:
        check(conn, priced, ["a0"])
    assert close_requests(db) == []
    assert alerts(db, "close_held")[0][2]["reason"] == "stale_price"


def test_data_riskd_cannot_trust_holds_the_close_with_an_alert(db: Db) -> None:
    settings = rails_settings(db)
    book(db, [95])
    db.conn.execute("""UPDATE positions SET "unrealizedPnL" = 'NaN'""")
    with checker(db, settings) as conn:
        (result,) = check(conn, settings, ["a0"])
    assert result.level == "critical" and result.close_request_id is None
    (held,) = alerts(db, "close_held")
    assert held[2]["reason"] == "data_error"
    assert held[2]["data_errors"] == [{"pnl": "NaN", "position": "p0"}]


def test_a_transition_decided_on_data_riskd_cannot_trust_gets_an_alert(db: Db) -> None:
    settings = rails_settings(db)
    book(db, [85])  # warning
    db.conn.execute("""UPDATE positions SET "unrealizedPnL" = 'Infinity'""")
    with checker(db, settings) as conn:
        (result,) = check(conn, settings, ["a0"])
        assert result.level == "warning"
        (alert,) = alerts(db, "data_error")
        assert alert[1] == "a0" and alert[2]["to_level"] == "warning"
        assert alert[2]["data_errors"] == [{"pnl": "Infinity", "position": "p0"}]
        check(conn, settings, ["a0"])  # no transition: no second alert
    assert len(alerts(db, "data_error")) == 1


def test_the_account_limit_overrides_the_auto_close_mode(db: Db) -> None:
    settings = rails_settings(db, auto_close="request")
    ids = book(db, [95, 96, 97])
    db.conn.execute(
        "INSERT INTO riskd.account_limits (account_id, auto_close)"
        " VALUES ('a0', 'flatten'), ('a1', 'off')"
    )
    with checker(db, settings) as conn:
        results = {r.account_id: r for r in check(conn, settings, ids)}
    rows = db.conn.execute(
        "SELECT account_id, status FROM riskd.close_requests ORDER BY account_id"
    ).fetchall()
    assert rows == [("a0", "done"), ("a2", "pending")]
    assert db.scalar("SELECT quantity FROM positions WHERE id = 'p0'") == 0
    assert results["a1"].level == "critical" and results["a1"].close_request_id is None


def test_alerts_are_announced_on_riskd_events_and_delivered_with_a_webhook(db: Db) -> None:
    settings = rails_settings(db)
    listener = db.connect()
    listener.execute("LISTEN riskd_events")
    with_webhook = dataclasses.replace(
        settings,
        webhook=dataclasses.replace(
            settings.webhook, url="http://127.0.0.1:9/hook", secret="whsec_" + "A" * 32
        ),
    )
    rails.pause(with_webhook, "drill")
    notes = list(listener.notifies(timeout=5, stop_after=1))
    listener.close()
    payload = json.loads(notes[0].payload)
    assert payload["kind"] == "paused" and payload["detail"]["reason"] == "drill"
    assert isinstance(payload["alert_id"], int)
    rows = db.conn.execute("SELECT alert_id, event_id, status FROM riskd.deliveries").fetchall()
    assert rows == [(payload["alert_id"], None, "pending")]
    rails.resume(settings, None)  # no [webhook] url: no delivery
    assert db.scalar("SELECT count(*) FROM riskd.deliveries") == 1


def test_pause_and_resume_from_the_command_line_and_status_says_paused(db: Db) -> None:
    runner = CliRunner()
    args = ["--dsn", db.dsn]
    paused_out = runner.invoke(main, [*args, "pause", "--reason", "maintenance window"])
    assert paused_out.exit_code == 0, paused_out.output
    assert paused_out.output.startswith("riskd paused: PAUSED by ")
    again = runner.invoke(main, [*args, "pause"])
    assert again.exit_code == 0 and again.output.startswith("riskd was paused already: PAUSED")
    status = runner.invoke(main, [*args, "status"])
    assert status.exit_code == 1
    assert status.output.startswith("*** PAUSED by ")
    assert "maintenance window" in status.output
    as_json = runner.invoke(main, [*args, "status", "--json"])
    document = json.loads(as_json.output)
    assert document["paused"]["paused"] is True
    assert document["paused"]["reason"] == "maintenance window"
    assert any(p.startswith("PAUSED by ") for p in document["problems"])
    assert [a["kind"] for a in document["recent_alerts"]] == ["paused"]

    listed = runner.invoke(main, [*args, "events", "--alerts"])
    assert listed.exit_code == 0 and " paused " in listed.output
    resumed = runner.invoke(main, [*args, "resume", "--reason", "done"])
    assert resumed.exit_code == 0 and resumed.output.startswith("riskd resumed")
    listed = runner.invoke(main, [*args, "events", "--alerts", "--json"])
    kinds = [json.loads(line)["kind"] for line in listed.output.splitlines()]
    assert kinds == ["paused", "resumed"]
    nothing = runner.invoke(main, [*args, "resume"])
    assert nothing.exit_code == 0 and nothing.output.startswith("riskd was not paused")
    wrong = runner.invoke(main, [*args, "events", "--alerts", "--follow"])
    assert wrong.exit_code == 2 and "--alerts goes with" in wrong.output


# --- the property: whatever happens, the rails hold -------------------------------------

STEP = st.one_of(
    st.tuples(st.just("move"), st.sampled_from(["i1", "i2"]), st.integers(-9, 3)),
    st.tuples(st.just("pause")),
    st.tuples(st.just("resume")),
    st.tuples(st.just("check"), st.integers(0, 1)),
    st.tuples(st.just("advance"), st.integers(5, 90)),
    st.tuples(st.just("done")),
)
RESET = (
    "DELETE FROM riskd.deliveries",
    "DELETE FROM riskd.alerts",
    "DELETE FROM riskd.close_requests",
    "DELETE FROM riskd.risk_events",
    "DELETE FROM riskd.account_state",
    "DELETE FROM riskd.dirty_accounts",
    "UPDATE riskd.controls SET paused = false, paused_by = NULL, reason = NULL, since = NULL",
    "DELETE FROM positions",
    "DELETE FROM trading_accounts",
    "DELETE FROM instruments",
)


def windows_over_cap(db: Db, cap: int) -> list[tuple[Any, int]]:
    """Every close whose minute (the 60 s up to it) holds more than ``cap`` closes."""
    rows = db.conn.execute(
        "SELECT c.created_at, (SELECT count(*) FROM riskd.close_requests AS o"
        "  WHERE o.created_at > c.created_at - interval '1 minute'"
        "    AND o.created_at <= c.created_at)"
        " FROM riskd.close_requests AS c"
    ).fetchall()
    return [(at, n) for at, n in rows if n > cap]


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(STEP, min_size=1, max_size=20),
    cap=st.integers(1, 4),
    mode=st.sampled_from(["request", "flatten"]),
)
def test_no_close_while_paused_and_never_more_than_the_cap_per_minute(
    db: Db, steps: list[tuple[Any, ...]], cap: int, mode: str
) -> None:
    for statement in RESET:
        db.conn.execute(statement)  # type: ignore[arg-type]
    settings_ = rails_settings(db, max_closes_per_minute=cap, auto_close=mode)
    ids = book(db, [60, 70, 80, 85, 88], "i1")
    db.conn.execute(
        "INSERT INTO instruments (id, symbol, price, \"marginRate\") VALUES ('i2', 'I2', 100, 0.1)"
    )
    for n, quantity in enumerate([75, 82, 87]):
        account = f"b{n}"
        db.conn.execute(
            'INSERT INTO trading_accounts (id, "userId", balance) VALUES (%s, %s, 1000)',
            (account, account),
        )
        db.conn.execute(
            'INSERT INTO positions (id, "tradingAccountId", "instrumentId", quantity, '
            "\"unrealizedPnL\") VALUES (%s, %s, 'i2', %s, 0)",
            (f"q{n}", account, quantity),
        )
        ids.append(account)
    instances = [checker(db, settings_), checker(db, settings_)]
    try:
        for step in steps:
            note(repr(step))
            if step[0] == "move":
                crash(db, step[1], -step[2])
            elif step[0] == "pause":
                rails.pause(settings_, "property")
            elif step[0] == "resume":
                rails.resume(settings_, "property")
            elif step[0] == "advance":  # the minute slides: every close made so long ago
                db.conn.execute(
                    "UPDATE riskd.close_requests"
                    " SET created_at = created_at - %s * interval '1 second'",
                    (step[1],),
                )
            elif step[0] == "done":  # the platform's engine closes what was asked
                db.conn.execute(
                    "UPDATE riskd.close_requests SET status = 'done', completed_at = now()"
                    " WHERE status = 'pending'"
                )
            else:
                was_paused = paused(db)
                before = len(close_requests(db))
                check(instances[step[1]], settings_, ids)
                made = len(close_requests(db)) - before
                assert not (was_paused and made), f"{made} closes made while paused"
                assert made <= cap
            assert windows_over_cap(db, cap) == []
    finally:
        for conn in instances:
            conn.close()


def test_riskd_check_says_why_a_critical_account_got_no_close(db: Db, priced: Settings) -> None:
    book(db, [95, 96, 97])
    db.conn.execute(
        "INSERT INTO riskd.account_limits (account_id, auto_close) VALUES ('a2', 'off')"
    )
    db.conn.execute("""UPDATE instruments SET "pricedAt" = now() - interval '10 min'""")
    env = {
        "RISKD_SCHEMA_INSTRUMENT_PRICE_TIME": "pricedAt",
        "RISKD_RISK_MAX_PRICE_AGE": "30s",
    }
    runner = CliRunner()
    out = runner.invoke(main, ["--dsn", db.dsn, "check", "a0", "a2"], env=env)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert "close held: the price of i1 is" in lines[0] and "over [risk] max_price_age" in lines[0]
    assert "auto_close = off (the account's limit)" in lines[1]
    db.conn.execute("""UPDATE instruments SET "pricedAt" = now()""")
    rails.pause(priced, "drill")
    out = runner.invoke(main, ["--dsn", db.dsn, "check", "a1"], env=env)
    assert "paused: no close until `riskd resume`" in out.output, out.output


def test_the_pause_holds_across_daemon_restarts_and_resume_closes(
    db: Db, start: Start, tmp_path: Path
) -> None:
    """The daemon as a process: paused before it starts, it records the breach and closes
    nothing, says PAUSED in its heartbeat and log, holds across a restart; `riskd resume`
    closes the account still critical, with no further change to it."""
    (account,) = add_accounts(db, 1)
    runner = CliRunner()
    assert runner.invoke(main, ["--dsn", db.dsn, "pause", "--reason", "drill"]).exit_code == 0
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    try:
        daemon = start(extra_env={"NOTIFY_SOCKET": str(path)})
        daemon.wait_ready()
        # systemd's STATUS= line says it first
        status = ""
        while not status.startswith("STATUS=PAUSED by "):
            lines = sock.recv(4096).decode().splitlines()
            status = next((m for m in lines if m.startswith("STATUS=")), status)
        assert "(drill)" in status, status
    finally:
        sock.close()
    set_quantity(db, account, "95")
    wait_until(
        lambda: db.scalar("SELECT count(*) FROM riskd.risk_events WHERE to_level = 'critical'"),
        10,
        "the transition recorded while paused",
    )
    stats = wait_until(lambda: (daemon.heartbeat() or {}).get("paused") and daemon.heartbeat(),
                       10, "the heartbeat to say paused")  # fmt: skip
    assert stats["paused_reason"] == "drill"
    assert "rails.paused" in daemon.log()
    assert daemon.stop() == 0
    daemon = start()
    daemon.wait_ready()  # its first sweep sees the critical account: still nothing closed
    assert db.scalar("SELECT count(*) FROM riskd.close_requests") == 0
    assert runner.invoke(main, ["--dsn", db.dsn, "resume"]).exit_code == 0
    wait_until(
        lambda: db.scalar("SELECT count(*) FROM riskd.close_requests"), 10, "the close on resume"
    )
    assert daemon.stop() == 0
