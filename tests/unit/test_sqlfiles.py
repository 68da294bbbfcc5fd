"""Install templates are rendered with quoted identifiers, never pasted names."""

from __future__ import annotations

from riskd.config import SchemaMapping, TableName
from riskd.migrate import HEAD_INSTALL
from riskd.sqlfiles import queries, render, template_params

HOSTILE = SchemaMapping(
    accounts_table=TableName("Trading Desk", 'Acc"ounts'),
    account_id="id); DROP TABLE x; --",
    positions_table=TableName("public", "Positions"),
    position_pnl="PnL",
)


def test_identifiers_are_quoted_whatever_they_contain() -> None:
    text = render("capture.sql", template_params(HOSTILE, "text"))
    assert '"Trading Desk"."Acc""ounts"' in text
    assert '"id); DROP TABLE x; --"' in text
    assert 'ON "public"."Positions"' in text
    assert '"PnL"' in text
    # no placeholder left unrendered, and the wake-up fragment went in
    assert "{" not in text.replace("{0,6}", "").replace("{1,12}", "")
    # into every capture function: 3 + 3 statement and 3 + 3 row functions on positions and
    # instruments, the balance's, the TRUNCATE's sweep request
    assert text.count("pg_notify('riskd_changes', '')") == 14


def test_every_install_template_renders() -> None:
    params = template_params(SchemaMapping(), "bigint")
    for name in HEAD_INSTALL:
        assert render(name, params).strip()
    assert "account_id  bigint PRIMARY KEY" in render("schema.sql", params)


def test_named_queries_are_loaded_by_name() -> None:
    names = set(queries())
    assert {"check_accounts", "sweep", "describe_table", "assignable"} <= names
    assert all(text and not text.startswith("-- name") for text in queries().values())


def test_the_capture_triggers_expected_are_read_from_capture_sql_whatever_the_names() -> None:
    from riskd.capture import expected_triggers

    expected = expected_triggers(HOSTILE)
    tables = {table for table, _ in expected}
    assert tables == {HOSTILE.accounts_table, HOSTILE.positions_table, HOSTILE.instruments_table}
    names = {name for _, name in expected}
    assert {"riskd_positions_update", "riskd_account_balance", "riskd_instruments_truncate"} <= (
        names
    )
    assert len(expected) == 10
