"""Checks the ``[schema]`` mapping against the live catalog.

A mapping that names a missing table or column is refused with one line naming the key
(DESIGN §4), before anything is installed or run.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from riskd.config import SchemaMapping, TableName
from riskd.errors import SchemaMappingError
from riskd.sqlfiles import query

# relkinds a trigger can sit on: ordinary and partitioned tables
_TABLE_KINDS = {"r", "p"}

# (table key, [column keys]) in the order a user reads the [schema] section
_LAYOUT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("accounts_table", ("account_id", "account_user", "account_balance")),
    (
        "positions_table",
        ("position_account", "position_instrument", "position_quantity", "position_pnl"),
    ),
    ("instruments_table", ("instrument_id", "instrument_price", "instrument_margin_rate")),
)


@dataclass(frozen=True, slots=True)
class ResolvedMapping:
    """A mapping known to match the database, with the account id's SQL type."""

    mapping: SchemaMapping
    account_id_type: str


def _describe(
    conn: psycopg.Connection[tuple[str, str | None, str | None]], table: TableName
) -> tuple[str | None, dict[str, str]]:
    rows = conn.execute(
        query("describe_table"), {"schema": table.schema, "table": table.name}
    ).fetchall()
    if not rows:
        return None, {}
    return rows[0][0], {name: typ for _, name, typ in rows if name is not None and typ}


def resolve(
    conn: psycopg.Connection[tuple[str, str | None, str | None]], mapping: SchemaMapping
) -> ResolvedMapping:
    """Verify every mapped table and column exists; raise SchemaMappingError otherwise."""
    types: dict[str, str] = {}
    for table_key, column_keys in _LAYOUT:
        table: TableName = getattr(mapping, table_key)
        relkind, columns = _describe(conn, table)
        if relkind is None:
            raise SchemaMappingError(
                f"[schema] {table_key}: table {table.schema}.{table.name} does not exist"
            )
        if relkind not in _TABLE_KINDS:
            raise SchemaMappingError(
                f"[schema] {table_key}: {table.schema}.{table.name} is not a table"
            )
        for column_key in column_keys:
            column: str = getattr(mapping, column_key)
            if column not in columns:
                raise SchemaMappingError(
                    f"[schema] {column_key}: column {column!r} does not exist in "
                    f"{table.schema}.{table.name}"
                )
            types[column_key] = columns[column]
    return ResolvedMapping(mapping=mapping, account_id_type=types["account_id"])


def as_json(mapping: SchemaMapping) -> dict[str, str]:
    """The mapping as recorded in riskd.installation: every key, tables as schema.table."""
    out: dict[str, str] = {}
    for table_key, column_keys in _LAYOUT:
        table: TableName = getattr(mapping, table_key)
        out[table_key] = f"{table.schema}.{table.name}"
        for column_key in column_keys:
            out[column_key] = getattr(mapping, column_key)
    return out
