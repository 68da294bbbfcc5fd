"""``riskd events`` against a real PostgreSQL: filters, --json lines, the action each event's
check took, --follow as a subprocess (a live event arrives, Ctrl-C exits 0 whatever SIGINT
disposition the suite inherited, a server restart is ridden out like ``tail -F``), and the
follow steps interleaved with commits: an event committed between LISTEN and the backlog query
is shown once, a notification is only a hint, an event committed after a larger id was read is
still shown.

Events come from the real check (riskd.check_accounts, which also NOTIFYs riskd_events), or,
where a test needs a commit order the check cannot give, from rows written by hand.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from conftest import Db, settings_for
from test_check import set_quantity, setup_account

from riskd.check import check_accounts
from riskd.cli import main
from riskd.events import EventFilter, EventTail, hinted_id, recent


def cli(db: Db, *args: str) -> Result:
    env = {"RISKD_CONFIG": "", "DATABASE_URL": "", "RISKD_DSN": db.dsn}
    return CliRunner().invoke(main, ["events", *args], env=env)


def check(db: Db, *accounts: str) -> None:
    check_accounts(db.conn, db.settings, accounts)


@pytest.fixture
def three_events(db: Db) -> Db:
    """a1 ok -> critical, a2 ok -> warning, then a1 critical -> ok."""
    setup_account(db, "a1", quantity="95")
    setup_account(db, "a2", quantity="85")
    setup_account(db, "a3", quantity="50")
    check(db, "a1", "a2", "a3")
    set_quantity(db, "50", account="a1")
    check(db, "a1")
    return db


def transitions(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [" ".join(line.split("  ")[2:4]) for line in result.stdout.splitlines()]


def test_recent_events_oldest_first_with_filters(three_events: Db) -> None:
    db = three_events
    assert transitions(cli(db)) == ["a1 ok -> critical", "a2 ok -> warning", "a1 critical -> ok"]
    assert transitions(cli(db, "--limit", "1")) == ["a1 critical -> ok"]
    assert transitions(cli(db, "--account", "a1")) == ["a1 ok -> critical", "a1 critical -> ok"]
    assert transitions(cli(db, "--level", "warning")) == ["a2 ok -> warning"]
    assert transitions(cli(db, "--account", "a1", "--level", "ok")) == ["a1 critical -> ok"]
    assert transitions(cli(db, "--account", "nobody")) == []
    assert len(transitions(cli(db, "--since", "10m"))) == 3
    future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert transitions(cli(db, "--since", future)) == []
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    assert len(transitions(cli(db, "--since", past))) == 3


def test_since_and_level_are_validated(db: Db) -> None:
    result = cli(db, "--since", "yesterday")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "--since" in result.stderr
    assert cli(db, "--level", "panic").exit_code == 2


def test_json_lines_carry_every_column(three_events: Db) -> None:
    result = cli(three_events, "--json")
    assert result.exit_code == 0
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(docs) == 3
    first = docs[0]
    assert set(first) == {
        "id", "account_id", "user_id", "from_level", "to_level", "utilization", "equity",
        "used_margin", "detail", "created_at", "instance", "action", "close_request_id",
        "close_request_status",
    }  # fmt: skip
    assert (first["account_id"], first["user_id"], first["to_level"]) == (
        "a1",
        "user-a1",
        "critical",
    )
    assert (first["utilization"], first["equity"]) == ("0.9500000000", "1000")
    assert isinstance(first["used_margin"], str) and isinstance(first["detail"], dict)
    # the evidence's numbers too: exact decimals as strings, never floats
    assert first["detail"]["balance"] == "1000"
    assert all(isinstance(v, str) for p in first["detail"]["positions"] for v in p.values())
    # and the text line prints money one way
    assert "equity 1000.00  used margin 950.00" in cli(three_events).stdout
    assert datetime.fromisoformat(first["created_at"]).tzinfo is not None
    assert [d["id"] for d in docs] == sorted(d["id"] for d in docs)


def test_each_event_shows_the_action_its_check_took(three_events: Db) -> None:
    """a1 ok -> critical opened a close request, a2's warning took none, a1 critical -> ok
    cancelled that request; in flatten mode, a1 critical again is flattened."""
    db = three_events
    request = db.scalar("SELECT id FROM riskd.close_requests")
    docs = [json.loads(line) for line in cli(db, "--json").stdout.splitlines()]
    assert [(d["action"], d["close_request_id"], d["close_request_status"]) for d in docs] == [
        ("request_opened", request, "cancelled"),
        ("none", None, None),
        ("request_cancelled", request, "cancelled"),
    ]
    set_quantity(db, "95", account="a1")
    check_accounts(db.conn, settings_for(db.dsn, risk={"auto_close": "flatten"}), ["a1"])
    flattened = db.scalar("SELECT id FROM riskd.close_requests WHERE status = 'done'")
    assert [action_said(line) for line in cli(db).stdout.splitlines()] == [
        f"close request {request} opened (now cancelled)",
        None,  # a warning: no action to tell
        f"close request {request} cancelled (no longer critical)",
        f"flattened (close request {flattened}, done)",
    ]
    last = json.loads(cli(db, "--json", "--limit", "1").stdout)
    assert (last["action"], last["close_request_id"]) == ("flattened", flattened)
    # a critical event with no close (auto_close = off) says so
    set_quantity(db, "50", account="a2")
    check(db, "a2")
    set_quantity(db, "95", account="a2")
    check_accounts(db.conn, settings_for(db.dsn, risk={"auto_close": "off"}), ["a2"])
    (line,) = cli(db, "--limit", "1").stdout.splitlines()
    assert " a2  ok -> critical " in line and "  action: none  " in line


def action_said(line: str) -> str | None:
    found = re.search(r"  action: (.+?)  user ", line)
    return found[1] if found else None


# --- --follow as a user runs it -------------------------------------------------------------


class Lines:
    """A subprocess's stdout, line by line, read with deadlines."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next(self, timeout: float, what: str) -> str:
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout:.0f} s: {what}") from None
        assert line is not None, f"output ended, expected {what}"
        return line

    def rest(self, timeout: float) -> list[str]:
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while (line := self._queue.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            lines.append(line)
        return lines


# `python -m riskd`, with SIGINT first set back to Python's own handler: a suite run with SIGINT
# ignored (`nohup pytest &`, a CI wrapper: a shell without job control ignores SIGINT in what it
# starts in the background) passes the disposition on, and a Python started with SIGINT ignored
# keeps ignoring it, so the test's Ctrl-C would never arrive. The user's shell does not ignore it.
AS_FROM_A_TERMINAL = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('riskd', run_name='__main__', alter_sys=True)"
)


def riskd_process(db: Db, *args: str) -> subprocess.Popen[str]:
    """``riskd ARGS`` as a user runs it from a terminal, stdout and stderr piped to the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKD_")}
    env.update(RISKD_DSN=db.dsn, RISKD_CONFIG="", DATABASE_URL="")
    return subprocess.Popen(
        [sys.executable, "-c", AS_FROM_A_TERMINAL, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_follow_prints_the_backlog_then_live_events_and_ctrl_c_exits_0(db: Db) -> None:
    setup_account(db, "a1", quantity="95")
    setup_account(db, "a2", quantity="50")
    setup_account(db, "a3", quantity="50")
    check(db, "a1")
    proc = riskd_process(db, "events", "--follow", "--json", "--level", "critical")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        lines = Lines(proc.stdout)
        backlog = json.loads(lines.next(15, "the backlog event"))
        assert (backlog["account_id"], backlog["to_level"]) == ("a1", "critical")
        # the backlog is printed after LISTEN: from here on, events arrive live
        set_quantity(db, "85", account="a2")
        set_quantity(db, "95", account="a3")
        check(db, "a2", "a3")
        live = json.loads(lines.next(10, "the live critical event"))
        assert (live["account_id"], live["from_level"], live["to_level"]) == (
            "a3",
            "ok",
            "critical",
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert lines.rest(5) == []  # a2's warning was filtered out
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
def test_follow_rides_out_a_server_restart_like_tail_F(db: Db) -> None:
    """The server restarts under --follow: it says so on stderr in one line, reconnects, and
    prints the event committed while it was away and the ones after, each once."""
    cluster = db.server.cluster
    if cluster is None:
        pytest.skip("RISKD_TEST_DSN: the suite does not own the server")
    for account in ("a1", "a2", "a3"):
        setup_account(db, account, quantity="95" if account == "a1" else "50")
    check(db, "a1")
    proc = riskd_process(db, "events", "--follow", "--json")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        assert json.loads(out.next(15, "the backlog event"))["account_id"] == "a1"
        db.conn.close()
        cluster.restart()
        db.conn = psycopg.connect(db.dsn, autocommit=True)
        lost = err.next(15, "the lost connection said")
        assert re.fullmatch(r"riskd: lost the connection \(.+\), reconnecting in \d+ s", lost), lost
        set_quantity(db, "95", account="a2")  # while it waits to reconnect: no NOTIFY reaches it
        check(db, "a2")
        gap = json.loads(out.next(30, "the event committed during the gap"))
        assert (gap["account_id"], gap["to_level"]) == ("a2", "critical")
        said = [lost]
        while not (line := err.next(15, "the reconnect said")).startswith("riskd: reconnected"):
            said.append(line)  # the server may still be starting: tried again, each said
        assert all(line.startswith("riskd: lost the connection (") for line in said)
        set_quantity(db, "95", account="a3")
        check(db, "a3")
        live = json.loads(out.next(10, "a live event after the reconnect"))
        assert (live["account_id"], live["to_level"]) == ("a3", "critical")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert out.rest(5) == []  # nothing printed twice
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_follow_reconnects_and_catches_up_from_the_last_event_read(db: Db) -> None:
    """The steps: the follower's backend is killed; an event committed meanwhile, and one that
    took its id before the last one read but commits during the gap, are both read once."""
    said: list[str] = []
    with db.connect() as conn, db.connect(autocommit=False) as slow:
        tail = EventTail(conn, EventFilter(), say=said.append)
        followed = tail.follow(20, poll_interval=0.3)
        shown = insert_event(db.conn, "x0")
        assert next(followed).id == shown
        early = insert_event(slow, "x1")  # takes the smaller id, commits in the gap
        read = insert_event(db.conn, "x2")
        assert next(followed).id == read
        db.conn.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        slow.commit()
        during = insert_event(db.conn, "x3")
        caught = [next(followed).id, next(followed).id]
        assert sorted(caught) == [early, during]
        after = insert_event(db.conn, "x4")
        assert next(followed).id == after
        followed.close()
    assert len(said) == 2 and said[0].startswith("lost the connection (")
    assert said[0].endswith(", reconnecting in 1 s")
    assert said[1].startswith("reconnected")
    assert tail.conn.closed  # the connection follow opened, closed with it


# --- the follow steps, interleaved with commits ---------------------------------------------


def insert_event(conn: psycopg.Connection[Any], account: str, notify: bool = True) -> int:
    """An event row as the check writes it, with its NOTIFY (in the caller's transaction)."""
    row = conn.execute(
        "INSERT INTO riskd.risk_events (account_id, user_id, from_level, to_level,"
        " utilization, equity, used_margin, detail, instance)"
        " VALUES (%s, 'u', 'ok', 'warning', 0.85, 1000, 850, '{}', 'test') RETURNING id",
        (account,),
    ).fetchone()
    assert row is not None
    if notify:
        conn.execute(
            "SELECT pg_notify('riskd_events', json_build_object('event_id', %s::bigint)::text)",
            (row[0],),
        )
    return int(row[0])


def test_an_event_committed_between_listen_and_the_backlog_is_shown_once(db: Db) -> None:
    with db.connect() as conn:
        tail = EventTail(conn, EventFilter())
        tail.listen()
        between = insert_event(db.conn, "x1")  # committed after LISTEN, before the query
        assert [e.id for e in tail.backlog(20)] == [between]
        assert tail.wait(0.5) == []  # its notification: a duplicate, dropped
        after = insert_event(db.conn, "x2")
        assert [e.id for e in tail.wait(10)] == [after]


def test_follow_listens_before_it_reads_and_prints_each_event_once(db: Db) -> None:
    with db.connect() as conn:
        tail = EventTail(conn, EventFilter())
        listen = tail.listen
        between: list[int] = []

        def listen_then_commit() -> None:
            listen()
            between.append(insert_event(db.conn, "x1"))

        tail.listen = listen_then_commit  # type: ignore[method-assign]  # a commit in the gap
        followed = tail.follow(20, poll_interval=0.3)
        assert next(followed).id == between[0]
        later = insert_event(db.conn, "x2")
        assert next(followed).id == later  # not x1 again


def test_an_event_committed_after_a_larger_id_was_read_is_shown(db: Db) -> None:
    with db.connect() as conn, db.connect(autocommit=False) as slow:
        tail = EventTail(conn, EventFilter())
        tail.listen()
        early = insert_event(slow, "x1")  # takes the smaller id, commits last
        late = insert_event(db.conn, "x2")
        assert early < late
        assert [e.id for e in tail.backlog(20)] == [late]
        slow.commit()
        assert [e.id for e in tail.wait(10)] == [early]
        assert tail.wait(0.3) == []


def test_history_cut_by_the_limit_stays_cut(db: Db) -> None:
    """Events committed before the backlog query but left out by --limit are not printed
    later when their notifications arrive."""
    with db.connect() as conn:
        tail = EventTail(conn, EventFilter())
        tail.listen()
        older = insert_event(db.conn, "x1")
        newest = insert_event(db.conn, "x2")
        assert [e.id for e in tail.backlog(1)] == [newest]
        assert tail.wait(0.5) == []
        assert older not in tail.seen


def test_a_notification_is_only_a_hint(db: Db) -> None:
    with db.connect() as conn:
        tail = EventTail(conn, EventFilter(level="warning"))
        tail.listen()
        assert tail.backlog(20) == []
        for payload in ("not json", '{"event_id": "1; DROP TABLE x"}', '{"event_id": 999999}'):
            db.conn.execute("SELECT pg_notify('riskd_events', %s)", (payload,))
        assert tail.wait(0.5) == []  # nothing printed from a payload, no such row
        # an event whose NOTIFY was skipped (queue nearly full) is read on the next wake-up
        # or the poll timer: by id order, not by notification
        silent = insert_event(db.conn, "x1", notify=False)
        assert [e.id for e in tail.wait(0.2)] == [silent]


def test_payload_parsing_is_strict() -> None:
    assert hinted_id('{"event_id": 12}') == 12
    for payload in (
        "",
        "12",
        "[12]",
        '{"event_id": true}',
        '{"event_id": -1}',
        '{"event_id": 1.5}',
        '{"event_id": 99999999999999999999}',
        "x" * 9000,
    ):
        assert hinted_id(payload) is None, payload  # fmt: skip


def test_recent_needs_no_listen_and_skips_a_zero_limit(three_events: Db) -> None:
    assert recent(three_events.conn, EventFilter(), 0) == []
    (last,) = recent(three_events.conn, EventFilter(account="a2"), 5)
    assert (last.account_id, last.from_level, last.to_level) == ("a2", "ok", "warning")
