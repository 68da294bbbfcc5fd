"""tests/catalog.py can fail: equal installs dump equal, and each kind of drift a migration could
leave behind (a comment, a grant, a function setting or body, a disabled trigger on a platform
table, a forgotten table, index, policy or event trigger, persistence, a sequence option,
an added or reordered column, ...) makes the dumps differ under a key naming the object."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from catalog import catalog
from conftest import Db, Server, _clone
from psycopg import sql

from riskd import migrate


@pytest.fixture
def twin(server: Server) -> Iterator[Db]:
    """A second database cloned from the same template as ``db``."""
    yield from _clone(server, "migrated")


@pytest.fixture
def role(db: Db, twin: Db) -> Iterator[str]:
    """A role of its own, dropped (with its grants in ``db`` and ``twin``) at the end."""
    name = sql.Identifier(f"catalog_{uuid.uuid4().hex[:8]}")
    db.conn.execute(sql.SQL("CREATE ROLE {}").format(name))
    yield name.as_string()
    for conn in (db.conn, twin.conn):
        conn.execute(sql.SQL("DROP OWNED BY {}").format(name))
    db.conn.execute(sql.SQL("DROP ROLE {}").format(name))


def differing(left: dict[str, str], right: dict[str, str]) -> set[str]:
    return {key for key in left.keys() | right.keys() if left.get(key) != right.get(key)}


def test_two_installs_dump_equal_and_the_dump_covers_riskd(db: Db, twin: Db) -> None:
    dump = catalog(db.conn)
    assert dump == catalog(twin.conn)
    assert dump["schema riskd"].startswith("owner=")
    assert "persistence=u" in dump["table riskd.dirty_accounts"]
    assert "persistence=u" in dump["sequence riskd.wakeup"]
    assert "SECURITY DEFINER" in dump["function riskd.mark_positions_inserted()"]
    assert "enabled=A" in dump["trigger riskd_positions_insert on public.positions"]
    assert dump["data alembic_version"] == migrate.head(db.settings)
    assert not [key for key, value in dump.items() if "no definition dumped" in value]


def test_an_install_into_a_new_database_dumps_as_the_template(db: Db, bare_db: Db) -> None:
    # other OIDs, relfilenodes, sequence positions: none of it may show
    migrate.migrate(bare_db.settings)
    bare_db.conn.execute("SELECT nextval('riskd.wakeup'), nextval('riskd.wakeup')")
    assert catalog(bare_db.conn) == catalog(db.conn)


SAME = [
    (
        "dropped-column",
        "ALTER TABLE riskd.risk_events ADD COLUMN w text;"
        "ALTER TABLE riskd.risk_events DROP COLUMN w;"
        "ALTER TABLE riskd.risk_events ADD COLUMN z int",
        "ALTER TABLE riskd.risk_events ADD COLUMN z int",
    ),
    (
        "grant-order",
        "GRANT SELECT ON riskd.daemons TO {role}; GRANT SELECT ON riskd.daemons TO PUBLIC",
        "GRANT SELECT ON riskd.daemons TO PUBLIC; GRANT SELECT ON riskd.daemons TO {role}",
    ),
    (
        "revoked-grant",
        "GRANT ALL ON riskd.daemons TO {role}; REVOKE ALL ON riskd.daemons FROM {role};"
        "GRANT USAGE ON SCHEMA riskd TO {role}; REVOKE USAGE ON SCHEMA riskd FROM {role}",
        "",
    ),
    ("search-path", "SET search_path = riskd, public", ""),
]


@pytest.mark.parametrize(
    ("db_sql", "twin_sql"), [pytest.param(*case[1:], id=case[0]) for case in SAME]
)
def test_a_history_that_changes_no_definition_dumps_equal(
    db: Db, twin: Db, role: str, db_sql: str, twin_sql: str
) -> None:
    db.conn.execute(db_sql.replace("{role}", role))  # type: ignore[arg-type]
    if twin_sql:
        twin.conn.execute(twin_sql.replace("{role}", role))  # type: ignore[arg-type]
    assert catalog(db.conn) == catalog(twin.conn)


EVENT_FUNCTION = (
    "CREATE FUNCTION riskd.forgotten_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN END$$;"
)
KIND = "CREATE TYPE riskd.forgotten_kind AS ENUM ('a');"
NEW_BODY = """DO $do$ BEGIN EXECUTE replace(
    pg_get_functiondef('riskd.mark_positions_deleted()'::regprocedure),
    'AS $function$', E'AS $function$\\n-- changed'); END $do$"""

# (id, SQL for db, SQL for its twin, a string every differing key contains)
MUTATIONS = [
    ("comment", "COMMENT ON TABLE riskd.account_state IS 'x'", "", "table riskd.account_state"),
    (
        "column-comment",
        "COMMENT ON COLUMN riskd.account_state.level IS 'x'",
        "",
        "table column riskd.account_state.level",
    ),
    ("grant", "GRANT SELECT ON riskd.risk_events TO {role}", "", "table riskd.risk_events"),
    (
        "function-setting",
        "ALTER FUNCTION riskd.mark_account_balance() SET work_mem = '64MB'",
        "",
        "function riskd.mark_account_balance()",
    ),
    ("function-body", NEW_BODY, "", "function riskd.mark_positions_deleted()"),
    (
        "disabled-trigger",
        "ALTER TABLE public.positions DISABLE TRIGGER riskd_positions_insert",
        "",
        "trigger riskd_positions_insert on public.positions",
    ),
    ("table", "CREATE TABLE riskd.forgotten (x int)", "", "riskd.forgotten"),
    (
        "index",
        "CREATE INDEX forgotten_idx ON riskd.risk_events (instance)",
        "",
        "riskd.forgotten_idx",
    ),
    ("logged", "ALTER TABLE riskd.dirty_accounts SET LOGGED", "", "table riskd.dirty_accounts"),
    ("sequence-cache", "ALTER SEQUENCE riskd.wakeup CACHE 5", "", "sequence riskd.wakeup"),
    (
        "policy",
        "CREATE POLICY forgotten ON riskd.account_limits USING (true)",
        "",
        "policy forgotten on riskd.account_limits",
    ),
    (
        "event-trigger",
        EVENT_FUNCTION + "CREATE EVENT TRIGGER riskd_forgotten ON ddl_command_end"
        " EXECUTE FUNCTION riskd.forgotten_ddl()",
        EVENT_FUNCTION,
        "event trigger riskd_forgotten",
    ),
    (
        "added-column",
        "ALTER TABLE riskd.risk_events ADD COLUMN z int",
        "",
        "table column riskd.risk_events.z",
    ),
    (
        "column-order",
        "ALTER TABLE riskd.risk_events ADD COLUMN y int, ADD COLUMN z int",
        "ALTER TABLE riskd.risk_events ADD COLUMN z int, ADD COLUMN y int",
        "table column riskd.risk_events.",
    ),
    (
        "aggregate",
        "CREATE AGGREGATE riskd.forgotten_sum(int) (sfunc = int4pl, stype = int)",
        "",
        "riskd.forgotten_sum(integer)",
    ),
    (
        "domain",
        "CREATE DOMAIN riskd.forgotten_level AS text CHECK (VALUE <> '')",
        "",
        "riskd.forgotten_level",
    ),
    ("enum-label", KIND + "ALTER TYPE riskd.forgotten_kind ADD VALUE 'b'", KIND, "forgotten_kind"),
    (
        "platform-column-of-a-riskd-type",
        KIND + "ALTER TABLE public.positions ADD COLUMN riskd_kind riskd.forgotten_kind",
        KIND,
        "table column public.positions.riskd_kind",
    ),
    (
        "platform-view",
        "CREATE VIEW public.forgotten_view AS SELECT instance FROM riskd.daemons",
        "",
        "public.forgotten_view",
    ),
    (
        "platform-foreign-key",
        "ALTER TABLE public.positions ADD CONSTRAINT forgotten_fk FOREIGN KEY"
        ' ("tradingAccountId") REFERENCES riskd.account_state NOT VALID',
        "",
        "forgotten_fk",
    ),
]


@pytest.mark.parametrize(
    ("mutation", "twin_sql", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in MUTATIONS],
)
def test_a_difference_shows_under_the_key_of_the_object(
    db: Db, twin: Db, role: str, mutation: str, twin_sql: str, expected: str
) -> None:
    db.conn.execute(mutation.replace("{role}", role))  # type: ignore[arg-type]
    if twin_sql:
        twin.conn.execute(twin_sql)  # type: ignore[arg-type]
    changed = differing(catalog(db.conn), catalog(twin.conn))
    assert changed, "the dumps do not differ"
    assert all(expected in key for key in changed), changed


def test_after_migrate_base_nothing_of_riskd_is_left(db: Db, bare_db: Db) -> None:
    platform = catalog(bare_db.conn, "public")
    installed = differing(catalog(db.conn, "public"), platform)
    assert "trigger riskd_positions_insert on public.positions" in installed
    migrate.migrate(db.settings, "base")
    assert catalog(db.conn) == {}
    assert catalog(db.conn, "public") == platform  # the triggers on the platform's tables too
