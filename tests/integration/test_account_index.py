"""Every check looks an account's positions up by the account column: `riskd migrate` and
`riskd status` say when a table holding positions has no index leading with it (issue 11)."""

from __future__ import annotations

from conftest import Db
from test_migrate import cli
from test_status import as_json

WARNING = (
    '"public"."positions" has no index leading with "tradingAccountId" ([schema] '
    "position_account): every check reads the whole table; CREATE INDEX CONCURRENTLY ON "
    '"public"."positions" ("tradingAccountId")'
)


def test_with_the_index_in_place_neither_says_a_word(db: Db) -> None:
    migrated = cli("migrate", dsn=db.dsn)
    assert migrated.exit_code == 0 and "warning" not in migrated.stderr, migrated.output
    _, doc = as_json(db)
    assert doc["warnings"] == []


def test_without_it_migrate_and_status_warn_in_one_line_and_go_on(db: Db) -> None:
    db.conn.execute("DROP INDEX positions_account_idx")
    # an index with another column first does not serve
    db.conn.execute('CREATE INDEX ON positions ("instrumentId", "tradingAccountId")')
    migrated = cli("migrate", dsn=db.dsn)
    assert migrated.exit_code == 0, migrated.output
    assert migrated.stderr.splitlines() == [f"warning: {WARNING}"]
    code, doc = as_json(db)
    assert doc["warnings"] == [WARNING]
    assert all("index" not in p for p in doc["problems"])  # a warning, not unhealthy
    text = cli("status", dsn=db.dsn)
    assert f"warning: {WARNING}" in text.stdout.splitlines()
    # a partial one on the open positions, what a check reads, does
    db.conn.execute('CREATE INDEX ON positions ("tradingAccountId") WHERE quantity <> 0')
    assert as_json(db)[1]["warnings"] == []


def test_a_child_table_without_its_own_index_is_named(db: Db) -> None:
    db.conn.execute("CREATE TABLE positions_archive () INHERITS (positions)")
    _, doc = as_json(db)
    assert doc["warnings"] == [WARNING.replace('"positions"', '"positions_archive"')]
    db.conn.execute('CREATE INDEX ON positions_archive ("tradingAccountId", id)')
    _, doc = as_json(db)
    assert doc["warnings"] == []
