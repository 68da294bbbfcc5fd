"""Checks the ``[schema]`` mapping against the live catalog.

A mapping that names a missing table or column is refused with one line naming the key
(DESIGN §4), before anything is installed or run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


_Row = tuple[Any, ...]


def _describe(
    conn: psycopg.Connection[_Row], table: TableName
) -> tuple[str | None, dict[str, tuple[str, int]]]:
    """The relkind of a table and its columns as {name: (SQL type, type oid)}."""
    rows = conn.execute(
        query("describe_table"), {"schema": table.schema, "table": table.name}
    ).fetchall()
    if not rows:
        return None, {}
    return rows[0][0], {name: (typ, oid) for _, name, typ, oid in rows if name is not None}


def resolve(conn: psycopg.Connection[_Row], mapping: SchemaMapping) -> ResolvedMapping:
    """Verify every mapped table and column exists; raise SchemaMappingError otherwise."""
    types: dict[str, tuple[str, int]] = {}
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
    # the capture triggers store a position's account id as an account id: a type that would
    # not convert would fail trading writes at run time, so refuse it here
    (source_type, source), (target_type, target) = types["position_account"], types["account_id"]
    row = conn.execute(query("assignable"), {"source": source, "target": target}).fetchone()
    if not row or not row[0]:
        raise SchemaMappingError(
            f"[schema] position_account: type {source_type} cannot be stored as the account "
            f"id's type {target_type}"
        )
    return ResolvedMapping(mapping=mapping, account_id_type=target_type)


def as_json(mapping: SchemaMapping) -> dict[str, str]:
    """The mapping as recorded in riskd.installation: every key, tables as schema.table."""
    out: dict[str, str] = {}
    for table_key, column_keys in _LAYOUT:
        table: TableName = getattr(mapping, table_key)
        out[table_key] = f"{table.schema}.{table.name}"
        for column_key in column_keys:
            out[column_key] = getattr(mapping, column_key)
    return out
