"""Checks the ``[schema]`` mapping against the live catalog.

A mapping that names a missing table or column is refused with one line naming the key
(DESIGN §4), before anything is installed or run; so is a positions layout where flatten could
not address each position alone (I7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from riskd.config import OPTIONAL_COLUMNS, SchemaMapping, Settings, TableName, model_function
from riskd.db import connect
from riskd.errors import SchemaMappingError
from riskd.sqlfiles import query

# relkinds a trigger can sit on: ordinary and partitioned tables
_TABLE_KINDS = {"r", "p"}

# (table key, [column keys]) in the order a user reads the [schema] section
_LAYOUT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("accounts_table", ("account_id", "account_user", "account_balance")),
    (
        "positions_table",
        (
            "position_id",
            "position_account",
            "position_instrument",
            "position_quantity",
            "position_pnl",
        ),
    ),
    (
        "instruments_table",
        ("instrument_id", "instrument_price", "instrument_margin_rate", "instrument_price_time"),
    ),
)
# the types a price's time may have (or a domain over one)
_TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")


@dataclass(frozen=True, slots=True)
class Column:
    """A mapped column as the catalog has it."""

    type: str  # SQL syntax, format_type
    type_oid: int
    generated: bool = False
    numeric_scale: int | None = None  # numeric(p, s): s; None for any other type


@dataclass(frozen=True, slots=True)
class ResolvedMapping:
    """A mapping known to match the database, with what the templates need of its columns."""

    mapping: SchemaMapping
    account_id_type: str
    instrument_id_type: str = "text"
    # flatten sets the PnL to zero only where the platform writes it (not a generated column)
    pnl_generated: bool = False
    balance_generated: bool = False
    # flatten rounds what it books to the balance column's scale (None: any scale)
    balance_scale: int | None = None
    # every mapped column's type, by [schema] key (capture's accessors return them)
    column_types: tuple[tuple[str, str], ...] = ()
    # the platform's margin model ([risk] model), its signature checked; None: built in
    model: TableName | None = None


_Row = tuple[Any, ...]


def _describe(
    conn: psycopg.Connection[_Row], table: TableName
) -> tuple[str | None, dict[str, Column]]:
    """The relkind of a table and its columns."""
    rows = conn.execute(
        query("describe_table"), {"schema": table.schema, "table": table.name}
    ).fetchall()
    if not rows:
        return None, {}
    return rows[0][0], {
        name: Column(typ, oid, bool(generated), scale)
        for _, name, typ, oid, generated, scale in rows
        if name is not None
    }


def resolve(
    conn: psycopg.Connection[_Row], mapping: SchemaMapping, model: TableName | None = None
) -> ResolvedMapping:
    """Verify every mapped table and column exists, and that the margin model's function (if
    any) fits; raise SchemaMappingError otherwise."""
    types: dict[str, Column] = {}
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
            if not column and column_key in OPTIONAL_COLUMNS:
                continue
            if column not in columns:
                raise SchemaMappingError(
                    f"[schema] {column_key}: column {column!r} does not exist in "
                    f"{table.schema}.{table.name}"
                )
            types[column_key] = columns[column]
    if "instrument_price_time" in types:
        _check_time(conn, types["instrument_price_time"], mapping)
    # the capture triggers store a position's account id as an account id: a type that would
    # not convert would fail trading writes at run time, so refuse it here
    source, target = types["position_account"], types["account_id"]
    row = conn.execute(
        query("assignable"), {"source": source.type_oid, "target": target.type_oid}
    ).fetchone()
    if not row or not row[0]:
        raise SchemaMappingError(
            f"[schema] position_account: type {source.type} cannot be stored as the account "
            f"id's type {target.type}"
        )
    if model is not None:
        rows = conn.execute(
            query("model_signature"),
            {"schema": model.schema, "name": model.name, "account_type": target.type_oid},
        ).fetchall()
        problem = model_problem(model, target.type, rows)
        if problem is not None:
            raise SchemaMappingError(problem)
    return ResolvedMapping(
        model=model,
        mapping=mapping,
        account_id_type=target.type,
        instrument_id_type=types["instrument_id"].type,
        pnl_generated=types["position_pnl"].generated,
        balance_generated=types["account_balance"].generated,
        balance_scale=types["account_balance"].numeric_scale,
        column_types=tuple((key, column.type) for key, column in types.items()),
    )


def _check_time(conn: psycopg.Connection[_Row], column: Column, mapping: SchemaMapping) -> None:
    """The stale-price guard compares a price's time with the clock: the column must hold one
    (timestamptz, or timestamp read in the session's time zone, or date)."""
    row = conn.execute(query("base_type"), {"type": column.type_oid}).fetchone()
    if not row or row[0] not in _TIME_TYPES:
        raise SchemaMappingError(
            f"[schema] instrument_price_time: column {mapping.instrument_price_time!r} is "
            f"{column.type}, not a time stamp (timestamptz, timestamp or date)"
        )


def model_problem(model: TableName, account_type: str, rows: list[_Row]) -> str | None:
    """None when one function of the model's name fits DESIGN §1's signature, else one line
    saying what does not. ``rows``: the named query model_signature's."""
    wanted = (
        f"(account_ids {account_type}[]) RETURNS TABLE (account_id {account_type}, "
        "equity numeric, used_margin numeric) STABLE"
    )
    if not rows:
        return f"[risk] model: function {model} does not exist; expected {model}{wanted}"
    misfits = []
    for signature, takes_ids, returns_set, volatility, names, id_type_ok, numeric in rows:
        if not takes_ids:
            why = "does not take one array of account ids"
        elif not returns_set or list(names or []) != ["account_id", "equity", "used_margin"]:
            why = "does not return TABLE (account_id, equity, used_margin)"
        elif not id_type_ok or not numeric:
            why = "returns account_id or figures of other types"
        elif volatility == "v":
            why = "is VOLATILE (a check reads it in its snapshot: declare it STABLE)"
        else:
            return None
        misfits.append(f"{signature} {why}")
    return f"[risk] model: {'; '.join(misfits)}; expected {model}{wanted}"


def verify(settings: Settings, **connect_options: Any) -> ResolvedMapping:
    """:func:`resolve` on a connection of its own: what a command checks before it relies on
    the mapping (DatabaseUnavailable when the database cannot be reached)."""
    with connect(settings, **connect_options) as conn:
        return resolve(conn, settings.schema, model_function(settings.risk))


def check_position_key(conn: psycopg.Connection[_Row], mapping: SchemaMapping) -> None:
    """I7: flatten closes a position by its key, its account and its row's table; refuse a
    layout where some table that holds positions does not keep that key unique (a close could
    touch several rows)."""
    row = conn.execute(
        query("position_key_gaps"),
        {
            "schema": mapping.positions_table.schema,
            "table": mapping.positions_table.name,
            "id": mapping.position_id,
            "account": mapping.position_account,
        },
    ).fetchone()
    if row is None:
        return
    schema, table, index, lacks = row
    key, account = mapping.position_id, mapping.position_account
    wanted = _columns(key) if key == account else f"{_columns(key)} or {_columns(key, account)}"
    nearest = f" (its unique index {_quoted(index)} {lacks})" if index else ""
    raise SchemaMappingError(
        f"[schema] position_id: {_quoted(schema, table)} has no unique index on {wanted}"
        f"{nearest}: flatten could close a position twice"
    )


def account_index_warnings(conn: psycopg.Connection[_Row], mapping: SchemaMapping) -> list[str]:
    """The tables holding positions with no index leading with the account column, as one
    warning line each: every check of an account reads such a table whole."""
    rows = conn.execute(
        query("positions_without_account_index"),
        {
            "schema": mapping.positions_table.schema,
            "table": mapping.positions_table.name,
            "account": mapping.position_account,
        },
    ).fetchall()
    column = _quoted(mapping.position_account)
    return [
        f"{_quoted(schema, table)} has no index leading with {column} ([schema] "
        f"position_account): every check reads the whole table; CREATE INDEX CONCURRENTLY "
        f"ON {_quoted(schema, table)} ({column})"
        for schema, table in rows
    ]


def _quoted(*names: str) -> str:
    return sql.Identifier(*names).as_string(None)


def _columns(*names: str) -> str:
    return "(" + ", ".join(_quoted(n) for n in names) + ")"


def mapped_tables(mapping: SchemaMapping) -> list[str]:
    """The mapped tables as quoted, qualified names (for a ``::regclass`` cast)."""
    return [
        sql.Identifier(t.schema, t.name).as_string(None)
        for t in (mapping.accounts_table, mapping.positions_table, mapping.instruments_table)
    ]


def rls_refusal(hidden: list[str], role: str) -> SchemaMappingError:
    """I8: riskd sees every row or refuses to run."""
    return SchemaMappingError(
        f"row-level security on {', '.join(hidden)} hides rows from role {role}: riskd would "
        "check a subset of the book; give the role BYPASSRLS, or a policy FOR SELECT "
        "USING (true) to it (docs/operations.md, supported table layouts)"
    )


def check_visibility(conn: psycopg.Connection[_Row], mapping: SchemaMapping) -> None:
    """Refuse to compute on a subset: every row of the mapped tables must be visible."""
    rows = conn.execute(query("rls_hidden"), {"tables": mapped_tables(mapping)}).fetchall()
    if rows:
        raise rls_refusal([r[0] for r in rows], str(conn.info.user))


def installed_json(settings: Settings) -> dict[str, str]:
    """What riskd.installation records: the mapping, and the margin model when it is the
    platform's (both render into what `riskd migrate` installs)."""
    model = model_function(settings.risk)
    return as_json(settings.schema) | ({"model": str(model)} if model else {})


def as_json(mapping: SchemaMapping) -> dict[str, str]:
    """The mapping as recorded in riskd.installation: every key, tables as schema.table."""
    out: dict[str, str] = {}
    for table_key, column_keys in _LAYOUT:
        table: TableName = getattr(mapping, table_key)
        out[table_key] = f"{table.schema}.{table.name}"
        for column_key in column_keys:
            if getattr(mapping, column_key) or column_key not in OPTIONAL_COLUMNS:
                out[column_key] = getattr(mapping, column_key)
    return out
