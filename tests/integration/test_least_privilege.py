"""Least privilege (issue 4, point 5; issue 10, point 5): the daemon runs as a role that holds
exactly what `riskd grants` prints for its [schema] mapping — the output is run here, with psql,
as an operator runs it, on the reference schema and on a schema of another shape — and a role
without those grants gets one clear line and exit 2, never a traceback; so does a wrong
password, which is no missing grant.

The database is hardened first: PUBLIC loses CONNECT on it, everything on schema public, and
EXECUTE on riskd's functions, so that every privilege the daemon uses must come from the script.
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
from conftest import Db, Server, settings_for
from daemonproc import DaemonProcess, wait_until
from psycopg import sql

from riskd.check import check_accounts
from riskd.cli import main
from riskd.db import set_session
from riskd.sqlfiles import query


@dataclass(frozen=True)
class Roles:
    """Role names unique to one test (roles are cluster-wide; the cluster is shared)."""

    daemon: str  # the NOLOGIN group role `riskd grants` creates and grants to
    monitor: str
    login: str  # the LOGIN role the daemon connects as
    monitor_login: str

    def dsn(self, db: Db, user: str) -> str:
        return psycopg.conninfo.make_conninfo(db.dsn, user=user)


@contextlib.contextmanager
def make_roles(db: Db) -> Iterator[Roles]:
    """Two LOGIN roles of the test's own; everything the roles got in ``db`` is dropped after."""
    tag = uuid.uuid4().hex[:8]
    r = Roles(f"lp{tag}_daemon", f"lp{tag}_monitor", f"lp{tag}_login", f"lp{tag}_oncall")
    for login in (r.login, r.monitor_login):
        db.conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(login)))
    try:
        yield r
    finally:
        rows = db.conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
            ([r.daemon, r.monitor, r.login, r.monitor_login],),
        ).fetchall()
        names = [name for (name,) in rows]
        idents = sql.SQL(", ").join(sql.Identifier(n) for n in names)
        db.conn.execute(sql.SQL("DROP OWNED BY {}").format(idents))
        db.conn.execute(sql.SQL("DROP ROLE {}").format(idents))


@pytest.fixture
def roles(db: Db) -> Iterator[Roles]:
    with make_roles(db) as r:
        yield r


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
        pytest.skip("psql not found: `riskd grants` prints a psql script")
    return found


def riskd_env(**schema: str) -> dict[str, str | None]:
    """The environment of a riskd command run in-process: no config file, no DSN, and the
    [schema] mapping given (as RISKD_SCHEMA_<KEY>)."""
    return {
        "RISKD_CONFIG": "",
        "RISKD_DSN": "",
        "DATABASE_URL": "",
        **{f"RISKD_SCHEMA_{key.upper()}": value for key, value in schema.items()},
    }


def apply_grants(
    db: Db, roles: Roles, *, flatten: bool = False, schema: dict[str, str] | None = None
) -> str:
    """Print the grants with `riskd grants` for this mapping and run them with psql, as the
    operator would (here as the superuser owning everything); the script."""
    printed = CliRunner().invoke(
        main, ["grants", *(["--flatten"] if flatten else [])], env=riskd_env(**(schema or {}))
    )
    assert printed.exit_code == 0 and printed.stderr == "", printed.output
    variables = {
        "daemon_role": roles.daemon,
        "monitor_role": roles.monitor,
        "login": roles.login,
        "monitor_login": roles.monitor_login,
    }
    command = [_psql(db.server), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db.dsn, "-f", "-"]
    for name, value in variables.items():
        command += ["-v", f"{name}={value}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = subprocess.run(
        command, input=printed.stdout, capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 0, result.stderr
    return printed.stdout


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


@contextlib.contextmanager
def starter(
    db: Db, roles: Roles, tmp_path: Path, env: dict[str, str] | None = None
) -> Iterator[Start]:
    """Start ``riskd run`` connecting as the test's login role (stopped before roles go)."""
    started: list[DaemonProcess] = []

    def start(auto_close: str = "request", **daemon: str) -> DaemonProcess:
        proc = DaemonProcess(
            roles.dsn(db, roles.login),
            tmp_path / f"riskd-{len(started)}.log",
            extra_env={"RISKD_RISK_AUTO_CLOSE": auto_close, **(env or {})},
            **({"debounce": "0s", "max_delay": "200ms"} | daemon),
        )
        started.append(proc)
        return proc.start()

    try:
        yield start
    finally:
        for proc in started:
            proc.close()


@pytest.fixture
def start(db: Db, roles: Roles, tmp_path: Path) -> Iterator[Start]:
    with starter(db, roles, tmp_path) as start:
        yield start


def wait_ready(daemon: DaemonProcess) -> None:
    """Ready by its log line, which comes up to a heartbeat interval before the row says so."""

    def ready() -> bool:
        assert daemon.alive(), f"daemon exited early:\n{daemon.log()}"
        return "daemon.ready" in daemon.log()

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


def test_flatten_mode_with_grants_flatten(db: Db, roles: Roles, start: Start) -> None:
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


def test_the_granted_role_runs_every_rail_and_asks_where_it_may_not_flatten(
    db: Db, roles: Roles
) -> None:
    """As the daemon's role without the flatten grants: an account whose limit says flatten
    gets a close request saying why (the check does not fail); the breaker pauses riskd through
    riskd.pause; a close held for bad data records its alert."""
    harden(db)
    apply_grants(db, roles)
    add_accounts(db, {"a1": "95", "a2": "96", "a3": "97"})
    db.conn.execute("UPDATE positions SET \"unrealizedPnL\" = 'NaN' WHERE id = 'p-a3'")
    db.conn.execute(
        "INSERT INTO riskd.account_limits (account_id, auto_close) VALUES ('a1', 'flatten')"
    )
    settings = settings_for(db.dsn, risk={"max_closes_per_minute": 1})
    with psycopg.connect(roles.dsn(db, roles.login), autocommit=True) as conn:
        set_session(conn, settings)
        results = check_accounts(conn, settings, ["a1", "a2", "a3"])
    assert [r.level for r in results] == ["critical"] * 3
    (row,) = db.conn.execute("SELECT account_id, status, detail FROM riskd.close_requests")
    assert row[:2] == ("a2", "pending")  # the worse of the two it may close; then the cap
    assert db.scalar("SELECT paused FROM riskd.controls") is True
    kinds = db.conn.execute("SELECT kind, account_id FROM riskd.alerts ORDER BY id").fetchall()
    assert kinds == [("close_held", "a3"), ("circuit_open", None)]
    db.conn.execute("SELECT riskd.resume('test', NULL)")
    db.conn.execute("UPDATE riskd.close_requests SET created_at = now() - interval '2 min'")
    with psycopg.connect(roles.dsn(db, roles.login), autocommit=True) as conn:
        set_session(conn, settings)
        check_accounts(conn, settings, ["a1"])
    detail = db.scalar("SELECT detail FROM riskd.close_requests WHERE account_id = 'a1'")
    assert detail["flatten_failed"] == "the daemon may not flatten (riskd grants --flatten)"
    assert db.scalar("SELECT quantity FROM positions WHERE id = 'p-a1'") == 95


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
            "UPDATE riskd.controls SET paused = true",
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
    return any(sign in stderr for sign in ("daemon.ready", "retry_in=", "Traceback"))


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


def the_line(outcome: Outcome) -> str:
    """Exit 2 and one line on stderr: that line."""
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.code == 2, outcome.stderr
    lines = outcome.error_lines()
    assert len(lines) == 1, outcome.stderr
    (line,) = lines
    assert line.startswith("riskd: "), line
    return line


def assert_one_line(outcome: Outcome, *names: str) -> None:
    """Exit 2 and one line on stderr, naming what is missing and the command that prints the
    grants (an installed riskd has no docs/ folder to point at)."""
    line = the_line(outcome)
    assert "`riskd grants`" in line and "docs/" not in line, line
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
    """Everything `riskd grants` grants but one thing: refused at start, not found out later
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


# ------------------------------------------------------- another schema: grants from [schema]

# A platform of another shape (Prisma-style): its own schema, quoted mixed-case names, uuid
# keys, other column names, and columns riskd must never read.
APP_SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE app."Account" (
    "accountId" uuid PRIMARY KEY,
    "ownerRef" text NOT NULL,
    "cashBalance" numeric(20, 2) NOT NULL,
    "apiSecret" text
);
CREATE TABLE app."Instrument" (
    "instrumentKey" uuid PRIMARY KEY,
    "ticker" text NOT NULL,
    "lastPrice" numeric NOT NULL,
    "initialMargin" numeric NOT NULL
);
CREATE TABLE app."Position" (
    "positionId" uuid PRIMARY KEY,
    "accountRef" uuid NOT NULL REFERENCES app."Account",
    "instrumentRef" uuid NOT NULL REFERENCES app."Instrument",
    "netQty" numeric NOT NULL,
    "openPnl" numeric NOT NULL DEFAULT 0,
    "note" text
);
"""
APP_MAPPING = {
    "accounts_table": "app.Account",
    "account_id": "accountId",
    "account_user": "ownerRef",
    "account_balance": "cashBalance",
    "positions_table": "app.Position",
    "position_id": "positionId",
    "position_account": "accountRef",
    "position_instrument": "instrumentRef",
    "position_quantity": "netQty",
    "position_pnl": "openPnl",
    "instruments_table": "app.Instrument",
    "instrument_id": "instrumentKey",
    "instrument_price": "lastPrice",
    "instrument_margin_rate": "initialMargin",
}
APP_ENV = {f"RISKD_SCHEMA_{key.upper()}": value for key, value in APP_MAPPING.items()}


@pytest.fixture
def app_db(bare_db: Db) -> Db:
    """The app schema beside the reference one, riskd installed for the app mapping only."""
    bare_db.conn.execute(APP_SCHEMA)
    env = riskd_env(**APP_MAPPING) | {"RISKD_DSN": bare_db.dsn}
    migrated = CliRunner().invoke(main, ["migrate"], env=env)
    assert migrated.exit_code == 0, migrated.output
    return bare_db


@pytest.mark.parametrize("auto_close", ["request", "flatten"])
def test_grants_printed_for_another_schema_run_the_daemon_as_least_privilege(
    app_db: Db, tmp_path: Path, auto_close: str
) -> None:
    db, flatten = app_db, auto_close == "flatten"
    with make_roles(db) as roles, starter(db, roles, tmp_path, APP_ENV) as start:
        harden(db)
        script = apply_grants(db, roles, flatten=flatten, schema=APP_MAPPING)
        assert apply_grants(db, roles, flatten=flatten, schema=APP_MAPPING) == script  # again
        assert "trading_accounts" not in script and '"app"."Position"' in script
        role = roles.login
        # the mapping's columns and nothing else of the platform's
        assert _has(db, role, "has_column_privilege", 'app."Account"', "cashBalance", "SELECT")
        assert not _has(db, role, "has_column_privilege", 'app."Account"', "apiSecret", "SELECT")
        assert not _has(db, role, "has_any_column_privilege", "public.positions", "SELECT")
        assert not _has(db, role, "has_any_column_privilege", "public.trading_accounts", "SELECT")
        note = _has(db, role, "has_column_privilege", 'app."Position"', "note", "SELECT")
        assert note == flatten  # flatten reads the whole row's table (tableoid)
        balance = _has(db, role, "has_column_privilege", 'app."Account"', "cashBalance", "UPDATE")
        assert balance == flatten

        account, instrument = uuid.uuid4(), uuid.uuid4()
        db.conn.execute("INSERT INTO app.\"Instrument\" VALUES (%s, 'I1', 100, 0.1)", (instrument,))
        db.conn.execute("INSERT INTO app.\"Account\" VALUES (%s, 'u', 1000, 's3cret')", (account,))
        db.conn.execute(
            'INSERT INTO app."Position" VALUES (%s, %s, %s, 50, -10, NULL)',
            (uuid.uuid4(), account, instrument),
        )
        daemon = start(auto_close=auto_close)
        wait_ready(daemon)
        db.conn.execute(
            'UPDATE app."Position" SET "netQty" = 95 WHERE "accountRef" = %s', (account,)
        )
        want = "done" if flatten else "pending"
        wait_until(lambda: requests(db, str(account)) == [want], 10, f"a {want} close request")
        if flatten:
            wait_until(lambda: len(events(db, str(account))) == 2, 5, "the recheck")
            assert events(db, str(account)) == [("ok", "critical"), ("critical", "ok")]
            assert db.scalar('SELECT "netQty" FROM app."Position"') == 0
            assert db.scalar('SELECT "cashBalance" FROM app."Account"') == Decimal("990.00")
        else:
            assert events(db, str(account)) == [("ok", "critical")]
        assert daemon.wait_stats(lambda s: s["checks"] >= 1, 10, "a check")["errors"] == 0
        assert daemon.stop() == 0
        assert problems(daemon.log()) == []


# ------------------------------------------------------ a wrong password is not a missing grant


@contextlib.contextmanager
def password_auth(db: Db, role: str) -> Iterator[None]:
    """The server asks ``role`` (and only it) for a password over TCP; restored after."""
    if db.server.cluster is None:
        pytest.skip("needs a server of the suite's own: pg_hba.conf is edited")
    hba = Path(db.scalar("SHOW hba_file"))
    before = hba.read_text()
    lines = [
        f"host all {role} 127.0.0.1/32 scram-sha-256",
        f"host all {role} ::1/128 scram-sha-256",
    ]
    hba.write_text("\n".join(lines) + "\n" + before)
    try:
        db.conn.execute("SELECT pg_reload_conf()")

        def asks() -> bool:
            try:
                psycopg.connect(psycopg.conninfo.make_conninfo(db.dsn, user=role)).close()
            except psycopg.OperationalError:
                return True
            return False

        wait_until(asks, 10, "the server to ask for a password")
        yield
    finally:
        hba.write_text(before)
        db.conn.execute("SELECT pg_reload_conf()")


@pytest.mark.parametrize(
    ("password", "says"),
    [("Wr0ng-pw", "refused the password"), (None, "wants a password")],
    ids=["wrong", "missing"],
)
def test_a_failed_authentication_says_so_in_one_line(
    db: Db, roles: Roles, tmp_path: Path, password: str | None, says: str
) -> None:
    """Not a hint about grants (the role has them all), nor retried as an outage."""
    harden(db)
    apply_grants(db, roles)
    db.conn.execute(sql.SQL("ALTER ROLE {} PASSWORD 'right'").format(sql.Identifier(roles.login)))
    with password_auth(db, roles.login):
        dsn = psycopg.conninfo.make_conninfo(
            db.dsn, user=roles.login, **({"password": password} if password else {})
        )
        line = the_line(run_daemon(db, roles.login, tmp_path, RISKD_DSN=dsn))
    assert says in line and "PGPASSFILE" in line, line
    assert "grant" not in line, line
    assert "Wr0ng" not in line, line  # the password itself is never printed
