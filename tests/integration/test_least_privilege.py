"""Least privilege (issue 4, point 5): the daemon runs as a role that holds exactly what
docs/grants.sql grants — the file itself is run here, with psql, as an operator runs it — and a
role without those grants gets one clear line and exit 2, never a traceback.

The database is hardened first: PUBLIC loses CONNECT on it, everything on schema public, and
EXECUTE on riskd's functions, so that every privilege the daemon uses must come from the file.
Accounts hold one position on an instrument priced 100 with a 10 % margin rate and a balance of
1 000: a quantity of 50 is 50 % utilisation, 95 is critical.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from conftest import Db, Server
from daemonproc import DaemonProcess, wait_until
from psycopg import sql

from riskd.check import check_accounts
from riskd.cli import main
from riskd.sqlfiles import query

GRANTS = Path(__file__).resolve().parents[2] / "docs" / "grants.sql"


@dataclass(frozen=True)
class Roles:
    """Role names unique to one test (roles are cluster-wide; the cluster is shared)."""

    daemon: str  # the NOLOGIN group role docs/grants.sql creates and grants to
    monitor: str
    login: str  # the LOGIN role the daemon connects as
    monitor_login: str

    def dsn(self, db: Db, user: str) -> str:
        return psycopg.conninfo.make_conninfo(db.dsn, user=user)


@pytest.fixture
def roles(db: Db) -> Iterator[Roles]:
    tag = uuid.uuid4().hex[:8]
    r = Roles(f"lp{tag}_daemon", f"lp{tag}_monitor", f"lp{tag}_login", f"lp{tag}_oncall")
    for login in (r.login, r.monitor_login):
        db.conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(login)))
    yield r
    rows = db.conn.execute(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
        ([r.daemon, r.monitor, r.login, r.monitor_login],),
    ).fetchall()
    names = [name for (name,) in rows]
    idents = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    db.conn.execute(sql.SQL("DROP OWNED BY {}").format(idents))
    db.conn.execute(sql.SQL("DROP ROLE {}").format(idents))


def harden(db: Db) -> None:
    """Take from PUBLIC what PostgreSQL gives it by default (and what a careful DBA revokes)."""
    db.conn.execute(
        sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
            sql.Identifier(db.name)
        )
    )
    db.conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
    db.conn.execute("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA riskd FROM PUBLIC")


def _psql(server: Server) -> str:
    if server.cluster is not None:
        return str(server.cluster.bindir / "psql")
    found = shutil.which("psql")
    if found is None:
        pytest.skip("psql not found: docs/grants.sql is a psql script")
    return found


def apply_grants(db: Db, roles: Roles, *, flatten: bool = False) -> None:
    """Run docs/grants.sql as the operator would (here as the superuser owning everything)."""
    variables = {
        "daemon_role": roles.daemon,
        "monitor_role": roles.monitor,
        "login": roles.login,
        "monitor_login": roles.monitor_login,
        "flatten": "on" if flatten else "off",
    }
    command = [_psql(db.server), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db.dsn]
    command += ["-f", str(GRANTS)]
    for name, value in variables.items():
        command += ["-v", f"{name}={value}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr


def add_accounts(db: Db, quantities: dict[str, str]) -> None:
    db.conn.execute(
        "INSERT INTO instruments (id, symbol, price, \"marginRate\") VALUES ('i1', 'I1', 100, 0.1)"
        " ON CONFLICT DO NOTHING"
    )
    for account, quantity in quantities.items():
        db.conn.execute(
            "INSERT INTO trading_accounts (id, \"userId\", balance) VALUES (%s, 'u', 1000)",
            (account,),
        )
        db.conn.execute(
            'INSERT INTO positions (id, "tradingAccountId", "instrumentId", quantity,'
            " \"unrealizedPnL\") VALUES (%s, %s, 'i1', %s, -10)",
            (f"p-{account}", account, Decimal(quantity)),
        )


def set_quantity(db: Db, account: str, quantity: str) -> None:
    db.conn.execute(
        'UPDATE positions SET quantity = %s WHERE "tradingAccountId" = %s',
        (Decimal(quantity), account),
    )


def events(db: Db, account: str) -> list[tuple[str, str]]:
    rows = db.conn.execute(
        "SELECT from_level, to_level FROM riskd.risk_events WHERE account_id = %s ORDER BY id",
        (account,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def requests(db: Db, account: str) -> list[str]:
    rows = db.conn.execute(
        "SELECT status FROM riskd.close_requests WHERE account_id = %s ORDER BY id", (account,)
    ).fetchall()
    return [r[0] for r in rows]


def problems(log: str) -> list[str]:
    """Log lines at warning level or above, and tracebacks."""
    return [
        line
        for line in log.splitlines()
        if " WARNING " in line or " ERROR " in line or line.startswith("Traceback")
    ]


Start = Callable[..., DaemonProcess]


@pytest.fixture
def start(db: Db, roles: Roles, tmp_path: Path) -> Iterator[Start]:
    """Start ``riskd run`` connecting as the test's login role (stopped before roles go)."""
    started: list[DaemonProcess] = []

    def start(auto_close: str = "request", **daemon: str) -> DaemonProcess:
        proc = DaemonProcess(
            roles.dsn(db, roles.login),
            tmp_path / f"riskd-{len(started)}.log",
            extra_env={"RISKD_RISK_AUTO_CLOSE": auto_close},
            **({"debounce": "0s", "max_delay": "200ms"} | daemon),
        )
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.close()


def wait_ready(daemon: DaemonProcess) -> None:
    """Ready by its log line, which comes up to a heartbeat interval before the row says so."""

    def ready() -> bool:
        assert daemon.alive(), f"daemon exited early:\n{daemon.log()}"
        return "ready: listening" in daemon.log()

    wait_until(ready, 15, "the daemon to be ready")


# ------------------------------------------------------------------ the grants are enough


def test_daemon_runs_end_to_end_as_the_granted_role(db: Db, roles: Roles, start: Start) -> None:
    harden(db)
    apply_grants(db, roles)
    add_accounts(db, {"swept": "95", "live": "50"})
    # only the start-up sweep can find "swept": nothing is left in the dirty set for the drain
    db.conn.execute("DELETE FROM riskd.dirty_accounts")

    daemon = start()
    wait_ready(daemon)
    wait_until(lambda: events(db, "swept"), 5, "the sweep's event")
    assert requests(db, "swept") == ["pending"]

    set_quantity(db, "live", "95")  # a breach, through the capture trigger and the drain
    wait_until(lambda: requests(db, "live"), 5, "the close request")
    assert events(db, "live") == [("ok", "critical")]
    assert requests(db, "live") == ["pending"]
    set_quantity(db, "live", "50")  # back under: the pending request is cancelled
    wait_until(lambda: len(events(db, "live")) == 2, 5, "the way back to ok")
    assert requests(db, "live") == ["cancelled"]

    stats = daemon.wait_stats(lambda s: s["checks"] >= 3, 10, "the heartbeat to count the checks")
    assert stats["sweeps"] >= 1 and stats["last_sweep_at"] and stats["leader"]
    assert stats["errors"] == 0, stats
    assert daemon.stop() == 0
    assert db.scalar("SELECT count(*) FROM riskd.daemons") == 0
    assert problems(daemon.log()) == []


def test_the_granted_role_can_hand_accounts_back(db: Db, roles: Roles) -> None:
    """The requeue of a stop with work undone, which a clean test stop rarely reaches."""
    harden(db)
    apply_grants(db, roles)
    with psycopg.connect(roles.dsn(db, roles.login), autocommit=True) as conn:
        conn.execute(query("requeue"), {"rows": json.dumps([{"account_id": "a1"}])})
    assert db.scalar("SELECT count(*) FROM riskd.dirty_accounts WHERE account_id = 'a1'") == 1


def test_flatten_mode_with_the_flatten_block(db: Db, roles: Roles, start: Start) -> None:
    harden(db)
    apply_grants(db, roles, flatten=True)
    add_accounts(db, {"a1": "50"})
    daemon = start(auto_close="flatten")
    wait_ready(daemon)
    set_quantity(db, "a1", "95")
    wait_until(lambda: requests(db, "a1"), 5, "the flatten's audit row")
    assert requests(db, "a1") == ["done"]
    # the flatten's own write is captured (the trigger runs with its owner's rights), and the
    # recheck sees the account flat again
    wait_until(lambda: len(events(db, "a1")) == 2, 5, "the recheck after the flatten")
    assert events(db, "a1") == [("ok", "critical"), ("critical", "ok")]
    assert db.scalar("SELECT quantity FROM positions WHERE id = 'p-a1'") == 0
    assert db.scalar("SELECT balance FROM trading_accounts WHERE id = 'a1'") == Decimal("990")
    assert daemon.stop() == 0
    assert problems(daemon.log()) == []


# ------------------------------------------------------------------ and no more than enough


def _has(db: Db, role: str, function: str, *args: str) -> bool:
    placeholders = ", ".join(["%s"] * (len(args) + 1))
    return bool(db.scalar(f"SELECT {function}({placeholders})", (role, *args)))


def test_the_daemon_gets_nothing_beyond_what_it_uses(db: Db, roles: Roles) -> None:
    harden(db)
    apply_grants(db, roles)
    role = roles.login
    for table, privilege in [
        ("public.positions", "UPDATE"),
        ("public.trading_accounts", "UPDATE"),
        ("public.positions", "SELECT"),  # only the mapped columns, below
        ("public.executions", "SELECT"),
        ("riskd.account_limits", "INSERT"),
        ("riskd.account_limits", "UPDATE"),
        ("riskd.risk_events", "UPDATE"),
        ("riskd.risk_events", "DELETE"),
        ("riskd.close_requests", "DELETE"),
        ("riskd.account_state", "DELETE"),
        ("riskd.alembic_version", "UPDATE"),
        ("riskd.installation", "UPDATE"),
        ("riskd.risk_events", "TRUNCATE"),
    ]:
        assert not _has(db, role, "has_table_privilege", table, privilege), (table, privilege)
    assert _has(db, role, "has_column_privilege", "public.positions", "quantity", "SELECT")
    assert not _has(db, role, "has_column_privilege", "public.positions", "averagePrice", "SELECT")
    assert not _has(db, role, "has_column_privilege", "public.positions", "quantity", "UPDATE")
    assert not _has(db, role, "has_schema_privilege", "riskd", "CREATE")
    assert not _has(db, role, "has_database_privilege", db.name, "TEMPORARY")
    flatten = "riskd.flatten(riskd.check_result[], numeric, numeric)"
    assert not _has(db, role, "has_function_privilege", flatten, "EXECUTE")


def test_the_monitoring_role_reads_riskd_and_nothing_else(db: Db, roles: Roles) -> None:
    harden(db)
    apply_grants(db, roles)
    add_accounts(db, {"a1": "95"})
    check_accounts(db.conn, db.settings, ["a1"])  # an event and a close request to report
    env = {"RISKD_CONFIG": "", "DATABASE_URL": "", "RISKD_DSN": roles.dsn(db, roles.monitor_login)}
    status = CliRunner().invoke(main, ["status", "--json"], env=env)
    assert status.stderr == "" and status.exit_code in (0, 1), status.output
    report = json.loads(status.stdout)  # unhealthy (no daemon runs), but every figure is there
    assert report["pending_close_requests"] == 1 and report["levels"]["critical"] == 1, report
    assert report["dirty_instruments"] is not None, report  # counted, not unknown
    shown = CliRunner().invoke(main, ["events", "--json"], env=env)
    assert shown.exit_code == 0 and shown.stderr == "", shown.output
    assert [json.loads(line)["account_id"] for line in shown.stdout.splitlines()] == ["a1"]

    with psycopg.connect(roles.dsn(db, roles.monitor_login), autocommit=True) as conn:
        conn.execute("LISTEN riskd_events")  # riskd events --follow
        for statement in (
            "SELECT balance FROM public.trading_accounts",
            "DELETE FROM riskd.dirty_accounts",
            "INSERT INTO riskd.account_limits (account_id) VALUES ('a1')",
            "SELECT pg_catalog.setval('riskd.wakeup', 1, false)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


# ------------------------------------------------------------------ without them: one line

# Only a daemon that neither exits nor shows that it carries on waits this long (a slow machine
# takes seconds just to import riskd).
START_DEADLINE = 20.0


@dataclass
class Outcome:
    code: int | None  # None: still running at the deadline, or started as if all were well
    stderr: str

    def error_lines(self) -> list[str]:
        """What the operator reads: stderr without the daemon's INFO log lines."""
        return [line for line in self.stderr.splitlines() if " INFO " not in line]


def settled(stderr: str) -> bool:
    """The daemon carries on: it accepted the role, or took a refusal for an outage."""
    return any(sign in stderr for sign in ("ready: listening", "retrying in", "Traceback"))


def run_daemon(db: Db, user: str, tmp_path: Path, **env: str) -> Outcome:
    """``riskd run`` (no --verbose, stderr apart) as ``user``, until it exits by itself, shows
    that it carries on (then it is killed), or START_DEADLINE passes."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("RISKD_", "NOTIFY_"))}
    environ.pop("DATABASE_URL", None)
    environ.pop("WATCHDOG_USEC", None)
    config = tmp_path / "riskd.toml"
    config.write_text("# settings come from RISKD_* variables\n")
    environ |= {
        "RISKD_CONFIG": str(config),
        "RISKD_DSN": psycopg.conninfo.make_conninfo(db.dsn, user=user),
        **env,
    }
    err = tmp_path / "stderr.txt"
    with err.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "riskd", "run"],
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
        with contextlib.suppress(AssertionError):  # still running: judged below
            wait_until(lambda: proc.poll() is not None or settled(err.read_text()),
                START_DEADLINE, "the daemon to exit, or to carry on")  # fmt: skip
        code = proc.poll()
        if code is None:
            proc.kill()
        proc.wait(10)
    return Outcome(code, err.read_text(errors="replace"))


def assert_one_line(outcome: Outcome, *names: str) -> None:
    """Exit 2 and one line on stderr, naming what is missing and where the grants are."""
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.code == 2, outcome.stderr
    lines = outcome.error_lines()
    assert len(lines) == 1, outcome.stderr
    (line,) = lines
    assert line.startswith("riskd: "), line
    assert "grants" in line and "docs/" in line, line
    for name in names:
        assert name in line, line


def test_a_role_without_the_grants_gets_one_line(db: Db, roles: Roles, tmp_path: Path) -> None:
    outcome = run_daemon(db, roles.login, tmp_path)
    assert_one_line(outcome, "schema riskd")


MISSING = [
    pytest.param(
        "REVOKE ALL ON riskd.dirty_accounts FROM {role}",
        {},
        ["dirty_accounts"],
        id="drain",
    ),
    pytest.param(
        "REVOKE ALL ON riskd.daemons FROM {role}",
        {},
        ["daemons"],
        id="heartbeat",
    ),
    pytest.param(
        "",
        {"RISKD_RISK_AUTO_CLOSE": "flatten"},
        ["flatten"],
        id="flatten",
    ),
    pytest.param(
        "REVOKE CONNECT ON DATABASE {database} FROM {role}",
        {},
        ["permission denied for database"],
        id="connect",
    ),
]


@pytest.mark.parametrize(("revoke", "env", "names"), MISSING)
def test_a_role_missing_one_grant_is_refused_at_start_with_one_line(
    db: Db, roles: Roles, tmp_path: Path, revoke: str, env: dict[str, str], names: list[str]
) -> None:
    """Everything docs/grants.sql grants but one thing: refused at start, not found out later
    by a worker (a crash with a traceback, or a daemon that looks healthy and checks nothing)."""
    harden(db)
    apply_grants(db, roles)
    if revoke:
        db.conn.execute(
            sql.SQL(revoke).format(
                role=sql.Identifier(roles.daemon), database=sql.Identifier(db.name)
            )
        )
    assert_one_line(run_daemon(db, roles.login, tmp_path, **env), *names)
