"""Is the capture in place? (I8: a missing or disabled trigger must not go unnoticed.)

The triggers riskd expects are read from ``sql/capture.sql`` rendered for the mapping, so the
list cannot drift from what ``riskd migrate`` installs; the catalog says which of them are
missing or not firing ALWAYS, on the mapped tables and on their inheritance children. The
daemon and ``riskd status`` ask; ``riskd migrate`` repairs.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import psycopg

from riskd.config import SchemaMapping, TableName
from riskd.mapping import mapped_tables
from riskd.sqlfiles import query, render, template_params

# a rendered table: two quoted identifiers ("" inside one is a quote), as psycopg.sql writes them
_TRIGGER = re.compile(
    r'CREATE TRIGGER (\w+)\s+(?:BEFORE|AFTER)\s[^;]*?\sON\s+("(?:[^"]|"")*"\."(?:[^"]|"")*")',
    re.DOTALL,
)


@functools.cache
def expected_triggers(mapping: SchemaMapping) -> tuple[tuple[TableName, str], ...]:
    """(table, trigger) for every capture trigger riskd installs on the mapped tables."""
    text = render("capture.sql", template_params(mapping, "text"))
    tables = dict(
        zip(
            mapped_tables(mapping),
            (mapping.accounts_table, mapping.positions_table, mapping.instruments_table),
            strict=True,
        )
    )
    found = {(tables[table], name) for name, table in _TRIGGER.findall(text)}
    return tuple(sorted(found, key=lambda e: (e[0].schema, e[0].name, e[1])))


def _params(mapping: SchemaMapping) -> dict[str, str]:
    # names, not regclass: the monitoring role has no USAGE on the platform's schemas
    pairs = [
        {"nsp": table.schema, "rel": table.name, "name": name}
        for table, name in expected_triggers(mapping)
    ]
    return {"expected": json.dumps(pairs)}


def _lines(rows: list[tuple[Any, ...]]) -> list[str]:
    return [f"capture trigger {name} on {table} is {problem}" for table, name, problem in rows]


def problems(conn: psycopg.Connection[Any], mapping: SchemaMapping) -> list[str]:
    """One line per capture trigger missing or not firing ALWAYS; [] when all is in place."""
    return _lines(conn.execute(query("capture_problems"), _params(mapping)).fetchall())


async def aproblems(conn: psycopg.AsyncConnection[Any], mapping: SchemaMapping) -> list[str]:
    cur = await conn.execute(query("capture_problems"), _params(mapping))
    return _lines(await cur.fetchall())
