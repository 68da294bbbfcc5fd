"""`riskd grants`: the psql script that gives riskd's roles what the ``[schema]`` mapping needs.

As ``riskd migrate --sql`` renders the install, this renders the grants without connecting:
the statements are riskd.privileges' list (the one the daemon probes at start), the names in
them quoted by :mod:`psycopg.sql`, placed in ``sql/grants.sql`` among the comments that say
why. A statement the template does not place is a bug caught here, not a grant silently lost.
"""

from __future__ import annotations

import json
import string

from psycopg import sql

from riskd import privileges
from riskd.config import Settings
from riskd.mapping import as_json
from riskd.privileges import Grant
from riskd.sqlfiles import queries

TEMPLATE = "grants.sql"
DAEMON_ROLE = sql.SQL(':"daemon_role"')  # psql variables of the script
MONITOR_ROLE = sql.SQL(':"monitor_role"')
_WIDTH = 96  # a statement longer than this lists its objects one per line
_KEYWORDS = {"schema": "SCHEMA ", "sequence": "SEQUENCE ", "function": "FUNCTION ", "table": ""}
_COLUMN_PAD = 20


def _object(grant: Grant, target: str) -> sql.Composable:
    # a schema is a name (quoted here); anything else is already SQL (riskd's own names, or a
    # mapped table riskd.privileges quoted)
    return sql.Identifier(target) if grant.kind == "schema" else sql.SQL(target)


def _key_comment(keys: tuple[str, ...]) -> str:
    return "-- [schema] " + ", ".join(keys)


def statement(grant: Grant, role: sql.Composable) -> sql.Composable:
    """One GRANT, laid out for a reader: the mapped columns one per line with their keys."""
    privs = sql.SQL(", ".join(grant.privileges))
    table_comment = sql.SQL("   " + _key_comment((grant.key,)) if grant.key else "")
    if grant.kind == "column":
        (table,) = grant.targets
        lines = []
        for i, (column, keys) in enumerate(grant.columns):
            quoted = sql.Identifier(column).as_string(None)
            comma = "," if i < len(grant.columns) - 1 else ""
            lines.append(
                sql.SQL("    {}{}{}").format(
                    sql.Identifier(column),
                    sql.SQL(comma + " " * max(1, _COLUMN_PAD - len(quoted) - len(comma))),
                    sql.SQL(_key_comment(keys)),
                )
            )
        return sql.SQL("GRANT {} (\n{}\n) ON {} TO {};{}").format(
            privs, sql.SQL("\n").join(lines), sql.SQL(table), role, table_comment
        )
    keyword = sql.SQL(_KEYWORDS[grant.kind])
    objects = [_object(grant, t) for t in grant.targets]
    one_line = sql.SQL("GRANT {} ON {}{} TO {};{}").format(
        privs, keyword, sql.SQL(", ").join(objects), role, table_comment
    )
    if len(objects) == 1 or len(one_line.as_string(None)) <= _WIDTH:
        return one_line
    listed = sql.SQL(",\n").join(sql.SQL("    {}").format(o) for o in objects)
    return sql.SQL("GRANT {} ON{}\n{}\nTO {};{}").format(
        privs, sql.SQL((" " + _KEYWORDS[grant.kind]).rstrip()), listed, role, table_comment
    )


def _fill(section: str, statements: dict[str, sql.Composable], **extra: str) -> str:
    """Fill one section of the template; every statement must have its place in it."""
    template = queries(TEMPLATE)[section]
    fields = {field for _, field, _, _ in string.Formatter().parse(template) if field}
    unplaced = sorted(set(statements) - fields)
    if unplaced:
        raise RuntimeError(f"sql/{TEMPLATE} [{section}] has no place for {unplaced}")
    texts = {name: sql.SQL(text) for name, text in extra.items()}
    return sql.SQL(template).format(**statements, **texts).as_string(None)


def script(settings: Settings, *, flatten: bool = False) -> str:
    """The psql script for this configuration; the flatten writes with ``flatten`` or when
    the configuration flattens."""
    flatten = flatten or privileges.flattens(settings)
    flat = set(privileges.flatten_grants(settings.schema))
    daemon = privileges.daemon_grants(settings, flatten=flatten)
    statements = {g.name: statement(g, DAEMON_ROLE) for g in daemon if g not in flat}
    statements |= {g.name: statement(g, MONITOR_ROLE) for g in privileges.MONITOR_GRANTS}
    if "model" not in statements:
        statements["model_usage"] = sql.SQL("")
        statements["model"] = sql.SQL('-- [risk] model = "builtin": none of the platform\'s')
    block = (
        _fill("flatten", {g.name: statement(g, DAEMON_ROLE) for g in daemon if g in flat})
        if flatten
        else _fill("no_flatten", {})
    )
    command = "`riskd grants --flatten`" if flatten else "`riskd grants`"
    return (
        _fill("script", statements, command=command, mapping=_mapping(settings), flatten=block)
        + "\n"
    )


def _mapping(settings: Settings) -> str:
    """The mapping the script is for, as comment lines in TOML (a name is a JSON string, so
    that no character of it can end the comment)."""
    return "\n".join(
        f"--   {key} = {json.dumps(value, ensure_ascii=False)}"
        for key, value in as_json(settings.schema).items()
    )
