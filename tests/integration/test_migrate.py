"""`riskd migrate` against a real PostgreSQL: up, down to base, up; --sql; --check; roles;
locks; mappings unlike the reference schema."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from conftest import Db, settings_for

from riskd import migrate
from riskd.check import check_accounts, sweep
from riskd.cli import main
from riskd.config import SchemaMapping, TableName

HEAD = migrate.head()

CATALOG = """
SELECT 'schema ' || nspname || ' ' || coalesce(nspacl::text, '')
FROM pg_namespace WHERE nspname !~ '^pg_' AND nspname <> 'information_schema'
UNION ALL
SELECT 'relation ' || c.oid::regclass::text || ' ' || c.relkind::text || ' '
       || coalesce(c.relacl::text, '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'trigger ' || tgrelid::regclass::text || ' ' || tgname
FROM pg_trigger WHERE NOT tgisinternal
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'type ' || t.oid::regtype::text
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
ORDER BY 1
"""


def catalog(db: Db) -> list[str]:
    return [row[0] for row in db.conn.execute(CATALOG)]


def cli(*args: str, dsn: str | None = None, env: dict[str, str] | None = None) -> Result:
    environment = {"RISKD_CONFIG": "", "DATABASE_URL": "", "RISKD_DSN": dsn or ""}
    environment.update(env or {})
    return CliRunner().invoke(main, list(args), env=environment)


def test_up_down_to_base_and_up_again_leaves_the_catalog_as_it_was(bare_db: Db) -> None:
    before = catalog(bare_db)
    assert migrate.migrate(bare_db.settings) == (None, HEAD)
    installed = catalog(bare_db)
    assert "trigger positions riskd_positions_update" in installed
    assert any(line.startswith("relation riskd.dirty_accounts") for line in installed)
    assert migrate.migrate(bare_db.settings, "base") == (HEAD, None)
    assert catalog(bare_db) == before
    migrate.migrate(bare_db.settings)
    assert catalog(bare_db) == installed


def test_check_flag_exits_1_until_migrated(bare_db: Db) -> None:
    behind = cli("migrate", "--check", dsn=bare_db.dsn)
    assert behind.exit_code == 1, behind.output
    assert "riskd is not installed" in behind.output
    assert cli("migrate", dsn=bare_db.dsn).exit_code == 0
    at_head = cli("migrate", "--check", dsn=bare_db.dsn)
    assert at_head.exit_code == 0 and HEAD in at_head.output


def test_sql_prints_a_script_without_connecting_that_installs_riskd(bare_db: Db) -> None:
    result = cli("migrate", "--sql", dsn="postgresql://nobody@127.0.0.1:1/none")
    assert result.exit_code == 0, result.output
    script = result.stdout
    assert 'AFTER UPDATE ON "public"."positions"' in script
    assert "CREATE TABLE riskd.account_state" in script
    assert "alembic_version" in script
    bare_db.conn.execute(script)  # type: ignore[arg-type]
    assert migrate.current(bare_db.settings) == HEAD
    assert cli("migrate", "--check", dsn=bare_db.dsn).exit_code == 0


# A Prisma-style schema keyed by uuid (issue 10): what `migrate --sql` must declare.
UUID_SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE app."TradingAccount" (
    id uuid PRIMARY KEY, "userId" text NOT NULL, balance numeric(65, 30) NOT NULL DEFAULT 0);
CREATE TABLE app."Instrument" (id uuid PRIMARY KEY, price numeric, "marginRate" numeric);
CREATE TABLE app."Position" (
    id uuid PRIMARY KEY,
    "tradingAccountId" uuid NOT NULL REFERENCES app."TradingAccount",
    "instrumentId" uuid NOT NULL REFERENCES app."Instrument",
    quantity numeric NOT NULL, "unrealizedPnL" numeric);
"""
UUID_MAPPING = {
    "RISKD_SCHEMA_ACCOUNTS_TABLE": "app.TradingAccount",
    "RISKD_SCHEMA_POSITIONS_TABLE": "app.Position",
    "RISKD_SCHEMA_INSTRUMENTS_TABLE": "app.Instrument",
}


def test_sql_declares_the_types_of_the_database_it_can_reach(bare_db: Db) -> None:
    """With a reachable database, --sql prints what `riskd migrate` would install there (uuid
    ids); without one, the reference schema's types, and the script and a note say so."""
    bare_db.conn.execute(UUID_SCHEMA)  # type: ignore[arg-type]
    online = cli("migrate", "--sql", dsn=bare_db.dsn, env=UUID_MAPPING)
    assert online.exit_code == 0, online.output
    assert "account_id  uuid PRIMARY KEY" in online.stdout
    assert "account_id  text" not in online.stdout
    assert "-- column types read from database" in online.stdout and online.stderr == ""
    bare_db.conn.execute(online.stdout)  # type: ignore[arg-type]
    assert (
        bare_db.scalar(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'riskd.account_state'::regclass AND attname = 'account_id'"
        )
        == "uuid"
    )
    assert cli("migrate", "--check", dsn=bare_db.dsn, env=UUID_MAPPING).exit_code == 0
    unreachable = "postgresql://nobody@127.0.0.1:1/none"
    offline = cli("migrate", "--sql", dsn=unreachable, env=UUID_MAPPING)
    assert offline.exit_code == 0, offline.output
    assert "account_id  text PRIMARY KEY" in offline.stdout
    assert "-- column types: the reference schema's (account id text" in offline.stdout
    assert offline.stderr.count("\n") == 1 and "reference schema's" in offline.stderr


def test_migrate_runs_as_the_non_superuser_owner_of_the_platform_tables(bare_db: Db) -> None:
    conn = bare_db.conn
    conn.execute("CREATE ROLE platform_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    for table in ("trading_accounts", "instruments", "positions", "executions"):
        conn.execute(f"ALTER TABLE public.{table} OWNER TO platform_owner")
    conn.execute(f'GRANT CREATE ON DATABASE "{bare_db.name}" TO platform_owner')
    owner_dsn = psycopg.conninfo.make_conninfo(bare_db.dsn, user="platform_owner")
    owner = settings_for(owner_dsn)
    try:
        assert migrate.migrate(owner) == (None, HEAD)
        with psycopg.connect(owner_dsn, autocommit=True) as c:
            c.execute("INSERT INTO instruments VALUES ('i1', 'I1', 100, 0.1)")
            c.execute("INSERT INTO trading_accounts VALUES ('a1', 'u1', 1000)")
            c.execute(
                'INSERT INTO positions (id, "tradingAccountId", "instrumentId", quantity)'
                " VALUES ('p1', 'a1', 'i1', 95)"
            )
            assert [r.level for r in check_accounts(c, owner, ["a1"])] == ["critical"]
        assert migrate.migrate(owner, "base") == (HEAD, None)
    finally:
        conn.execute("DROP OWNED BY platform_owner CASCADE")


def _waiting_on_lock(db: Db) -> bool:
    return bool(
        db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND application_name = 'riskd'"
        )
    )


def test_migration_yields_to_trading_traffic_instead_of_queueing_it(bare_db: Db) -> None:
    """I1: a long trading transaction holds positions; the migration gives up its lock
    request after lock_timeout, so writes arriving meanwhile are never stuck behind it."""
    bare_db.conn.execute("INSERT INTO instruments VALUES ('i1', 'I1', 100, 0.1)")
    bare_db.conn.execute("INSERT INTO trading_accounts VALUES ('a1', 'u1', 1000)")
    bare_db.conn.execute(
        'INSERT INTO positions (id, "tradingAccountId", "instrumentId", quantity)'
        " VALUES ('p1', 'a1', 'i1', 1)"
    )
    holder = bare_db.connect(autocommit=False)
    holder.execute("UPDATE positions SET quantity = 2")  # holds ROW EXCLUSIVE, uncommitted
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(migrate.migrate(bare_db.settings))
        except BaseException as exc:  # reported below
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while not _waiting_on_lock(bare_db):
            assert time.monotonic() < deadline, "migration never waited on the lock"
            time.sleep(0.05)
        # a trading write arriving now completes within the lock timeout, not after the holder
        with bare_db.connect() as trader:
            trader.execute("SET statement_timeout = '5s'")
            started = time.monotonic()
            trader.execute("INSERT INTO trading_accounts VALUES ('a2', 'u2', 5)")
            trader.execute("UPDATE instruments SET price = 101")
            assert time.monotonic() - started < 5
    finally:
        holder.commit()
        holder.close()
        worker.join(timeout=120)
    assert outcome == [(None, HEAD)]


def test_a_mapping_naming_a_missing_column_is_refused_in_one_line(bare_db: Db) -> None:
    result = cli("migrate", dsn=bare_db.dsn, env={"RISKD_SCHEMA_POSITION_PNL": "pnl"})
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "[schema] position_pnl" in result.stderr and "Traceback" not in result.stderr
    assert migrate.current(bare_db.settings) is None


OTHER_SCHEMA = """
CREATE SCHEMA "Trading";
CREATE TABLE "Trading"."Account" ("AccountID" bigint PRIMARY KEY, "Owner" text, "Cash" numeric);
CREATE TABLE "Trading"."Instr" ("InstrID" int PRIMARY KEY, "Px" numeric, "MR" numeric);
CREATE TABLE "Trading"."Pos" (
    "PosID" serial PRIMARY KEY, "Acct" bigint REFERENCES "Trading"."Account",
    "Instr" int REFERENCES "Trading"."Instr", "Qty" numeric NOT NULL, "PnL" numeric);
INSERT INTO "Trading"."Instr" VALUES (1, 100, 0.1);
INSERT INTO "Trading"."Account" VALUES (7, 'alice', 1000), (8, 'bob', 1000);
INSERT INTO "Trading"."Pos" ("Acct", "Instr", "Qty", "PnL") VALUES (7, 1, 50, 0), (8, 1, 95, 0);
"""

OTHER_MAPPING = SchemaMapping(
    accounts_table=TableName("Trading", "Account"),
    account_id="AccountID",
    account_user="Owner",
    account_balance="Cash",
    positions_table=TableName("Trading", "Pos"),
    position_id="PosID",
    position_account="Acct",
    position_instrument="Instr",
    position_quantity="Qty",
    position_pnl="PnL",
    instruments_table=TableName("Trading", "Instr"),
    instrument_id="InstrID",
    instrument_price="Px",
    instrument_margin_rate="MR",
)


def test_a_mapping_unlike_the_reference_schema(bare_db: Db) -> None:
    bare_db.conn.execute(OTHER_SCHEMA)  # type: ignore[arg-type]
    before = catalog(bare_db)
    import dataclasses

    settings = dataclasses.replace(bare_db.settings, schema=OTHER_MAPPING)
    migrate.migrate(settings)
    assert (
        bare_db.scalar(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'riskd.account_state'::regclass AND attname = 'account_id'"
        )
        == "bigint"
    )
    result = sweep(bare_db.conn, settings)
    assert [(r.account_id, r.level) for r in result.transitions] == [("8", "critical")]
    bare_db.conn.execute('UPDATE "Trading"."Pos" SET "Qty" = 85 WHERE "Acct" = 7')
    assert bare_db.scalar("SELECT array_agg(DISTINCT account_id) FROM riskd.dirty_accounts") == [7]
    assert [r.level for r in check_accounts(bare_db.conn, settings, ["7"])] == ["warning"]
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        check_accounts(bare_db.conn, settings, ["seven"])
    migrate.migrate(settings, "base")
    assert catalog(bare_db) == before


def test_an_unknown_revision_is_one_line(bare_db: Db) -> None:
    for args in (("migrate", "--revision", "nope"), ("migrate", "--sql", "--revision", "nope")):
        result = cli(*args, dsn=bare_db.dsn)
        assert result.exit_code == 1, result.output
        assert result.stderr.count("\n") == 1 and "nope" in result.stderr


def test_public_cannot_execute_riskd_functions(db: Db) -> None:
    executable = db.conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = 'riskd'"
        " WHERE has_function_privilege('public', p.oid, 'EXECUTE')"
    ).fetchall()
    assert executable == []
    assert (
        db.scalar(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n"
            " ON n.oid = p.pronamespace WHERE n.nspname = 'riskd'"
        )
        > 5
    )
