"""What ``riskd run`` logs, read as an operator reads it (issue 10): one event per line through
an outage, every reconnect saying when it tries again, bad payloads counted whole, and each
transition saying the action taken."""

from __future__ import annotations

import re

import psycopg
from conftest import Db
from daemonproc import wait_until
from proxy import TcpProxy
from test_daemon import Start, add_accounts, set_quantity, start

__all__ = ["start"]  # the fixture, shared with test_daemon

# `riskd run`'s text format: time, level, logger, message (riskd.logs.TEXT_FORMAT)
RECORD = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: "
)


def test_bad_payloads_are_counted_whole_and_a_transition_says_its_action(
    db: Db, start: Start
) -> None:
    (account,) = add_accounts(db, 1)
    daemon = start()
    daemon.wait_ready()
    with db.connect(autocommit=False) as conn:  # three in one transaction: one burst
        for payload in ("one", "two", "three"):
            conn.execute("SELECT pg_notify('riskd_changes', %s)", (payload,))
    wait_until(
        lambda: "payloads.dropped dropped=3 channel=riskd_changes " in daemon.log(),
        10,
        "the three payloads said",
    )
    assert "dropped=1 " not in daemon.log()
    set_quantity(db, account, "95")
    row = wait_until(
        lambda: db.conn.execute("SELECT id FROM riskd.close_requests").fetchone(),
        10,
        "the close request",
    )
    said = f"account.transition account={account} from_level=ok to_level=critical "
    wait_until(lambda: said in daemon.log(), 10, "the transition logged")
    (line,) = [line for line in daemon.log().splitlines() if said in line]
    assert line.endswith(f'close_request_id={row[0]} outcome="close request {row[0]} opened"'), line
    assert daemon.stop() == 0


def test_an_outage_is_logged_one_line_per_event(db: Db, start: Start) -> None:
    """The server unreachable (a proxy that refuses connections): libpq's two-line
    "Connection refused / Is the server running" is quoted on one line, psycopg.pool's
    duplicates of riskd's retry lines are left out, and the listener's loss says when it
    tries again, as every retry line does."""
    with TcpProxy("127.0.0.1", int(psycopg.conninfo.conninfo_to_dict(db.dsn)["port"])) as proxy:
        daemon = start(
            dsn=psycopg.conninfo.make_conninfo(db.dsn, host="127.0.0.1", port=proxy.port)
        )
        daemon.wait_ready()
        proxy.close()  # every connection reset, every new one refused
        wait_until(
            lambda: daemon.log().count("retry_in=") >= 4 and "listener.lost" in daemon.log(),
            20,
            "the outage logged",
        )
        assert daemon.stop() == 0
    lines = daemon.log().splitlines()
    assert [line for line in lines if not RECORD.match(line)] == []
    (lost,) = [line for line in lines if "listener.lost " in line]
    assert lost.endswith(" retry_in=0.2")
    assert "Connection refused Is the server running" in daemon.log()  # flattened, not cut
    assert "error connecting in" not in daemon.log()
