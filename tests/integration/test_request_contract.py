"""Request mode's contract as docs/operations.md writes it (issue 10, finding 4), run as written:
the section's grants block and its Python consumer are read out of the document and executed
against PostgreSQL, so the document cannot drift from what works.

One account with one position on an instrument priced 100 with a 10 % margin rate and a
balance of 1 000: a quantity of 95 with a PnL of -30 is 97.94 % utilisation, critical.
"""

from __future__ import annotations

import re
import threading
import types
import uuid
from pathlib import Path
from typing import Any

import psycopg
from conftest import Db
from daemonproc import wait_until
from psycopg import sql
from test_check import close_requests, events, setup_account

from riskd.check import NO_ACTION, check_accounts, check_now

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
SECTION = "## Request mode: what the platform does"


def section() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:] if end == -1 else text[start:end]


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", section(), flags=re.DOTALL | re.MULTILINE)


def consumer() -> types.ModuleType:
    """The section's one Python block, as a module."""
    (code,) = blocks("python")
    module = types.ModuleType("request_consumer")
    exec(compile(code, f"{DOC}: {SECTION}", "exec"), module.__dict__)
    return module


def flat(text: str) -> str:
    return " ".join(text.split())


def test_the_documented_sql_is_what_the_consumer_runs() -> None:
    code = consumer()
    (walkthrough,) = [b for b in blocks("sql") if "SKIP LOCKED" in b]
    assert flat(code.CLAIM) + ";" in flat(walkthrough)
    assert flat(code.MARK_DONE).replace("%(id)s", "17") + ";" in flat(walkthrough)


def consumer_waiting(db: Db, role: str) -> bool:
    """The consumer has LISTENed and drained once (its claim transaction committed): from now
    on only a notification, or its poll timer, makes it drain again."""
    return bool(
        db.scalar(
            "SELECT count(*) FILTER (WHERE query = 'LISTEN riskd_events') = 1"
            " AND count(*) FILTER (WHERE query = 'COMMIT' AND state = 'idle') = 1"
            " FROM pg_stat_activity WHERE usename = %s",
            (role,),
        )
    )


def test_the_documented_consumer_closes_a_critical_account_end_to_end(db: Db) -> None:
    code = consumer()
    role = f"engine_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(role)
    db.conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    try:
        (grants,) = [b for b in blocks("sql") if "GRANT" in b]
        db.conn.execute(re.sub(r"\bplatform_engine\b", role, grants))  # type: ignore[arg-type]
        # what the engine has on the platform's own tables anyway (not riskd's to grant)
        db.conn.execute(
            sql.SQL("GRANT SELECT, UPDATE ON trading_accounts, positions TO {}").format(ident)
        )
        run_consumer(db, code, psycopg.conninfo.make_conninfo(db.dsn, user=role), role)
    finally:
        db.conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        db.conn.execute(sql.SQL("DROP ROLE {}").format(ident))


def run_consumer(db: Db, code: types.ModuleType, dsn: str, role: str) -> None:
    setup_account(db, "a1", quantity="95", pnl="-30")
    stop = threading.Event()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            # a poll far longer than the deadlines below: only the NOTIFY can wake it in time
            code.consume(dsn, code.close_reference_account, poll=120.0, stop=stop.is_set)
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        wait_until(lambda: errors or consumer_waiting(db, role), 15, "the consumer to listen")
        assert errors == []
        (critical,) = check_accounts(db.conn, db.settings, ["a1"])
        assert critical.level == "critical" and critical.close_request_id is not None

        def done() -> Any:
            assert errors == [], errors
            return close_requests(db, "a1")[0][0] == "done"

        wait_until(done, 10, "the consumer to close the positions and mark the request done")
        assert db.scalar("SELECT sum(abs(quantity)) FROM positions") == 0
        assert db.scalar("SELECT balance FROM trading_accounts WHERE id = 'a1'") == 970

        # the next check (the daemon's, after the close marked the account dirty)
        report = check_now(db.conn, db.settings, ["a1"])
        (after,) = report.checked
        assert (after.result.previous_level, after.result.level) == ("critical", "ok")
        assert (after.action, after.close_request_id) == (NO_ACTION, None)
        assert [status for status, _ in close_requests(db, "a1")] == ["done"]  # no new one
        assert events(db, "a1") == [("ok", "critical"), ("critical", "ok")]
    finally:
        stop.set()
        db.conn.execute("NOTIFY riskd_events")  # wakes it: a hint it does not trust
        thread.join(timeout=15)
    assert not thread.is_alive() and errors == []
