"""Everything riskd installs or asks of the database lives as SQL in ``sql/``.

Install scripts are templates: ``{name}`` placeholders are filled from the ``[schema]`` mapping
with identifiers quoted by :mod:`psycopg.sql`, never by pasting strings. Named queries are kept
in ``sql/queries.sql`` as ``-- name: <query>`` sections and loaded once.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from psycopg import sql

from riskd.config import SchemaMapping, TableName
from riskd.resources import resource_dir, sql_path

# Transaction advisory locks of riskd take this first key ("rskd"), the account's hash second,
# so they stay clear of the platform's own single-key advisory locks.
LOCK_CLASS = 0x72736B64
# The session advisory lock that elects the sweep leader: a class of its own ("rskL"), so that
# no account whose hash happens to equal the key can ever wait behind the leader's session lock.
SWEEP_LEADER_CLASS = 0x72736B4C
SWEEP_LEADER_KEY = 1
# riskd's migration lock: a session advisory lock of its own class ("rskM"), apart from the
# account locks and the sweep leader's, held from before the version is read to the end.
MIGRATE_LOCK_CLASS = 0x72736B4D
MIGRATE_LOCK_KEY = 1
# The safety rails' lock ("rskR", transaction-level): a check about to close takes it shared
# (exclusively when it counts closes for the circuit breaker), pause and resume exclusively, so
# that once `riskd pause` returns no check that read the switch before it is still closing.
RAILS_LOCK_CLASS = 0x72736B52
RAILS_LOCK_KEY = 1
# The channels (DESIGN §4): the triggers wake the daemon on the first, the checks tell the
# platform on the second.
CHANGES_CHANNEL = "riskd_changes"
EVENTS_CHANNEL = "riskd_events"

_NAME = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


# Fragments inlined into the install templates as ``{<name>}``, read from the template's own
# folder: a revision frozen with its release (alembic/versions/<rev>/) keeps its fragments too.
FRAGMENTS = ("wake_up",)


def read(name: str) -> str:
    """The text of ``sql/<name>``."""
    return _read(sql_path(name))


@functools.cache
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _table(name: TableName) -> sql.Identifier:
    return sql.Identifier(name.schema, name.name)


def _fragment(path: Path) -> sql.SQL:
    """A trusted SQL fragment from riskd's own files, comment lines dropped."""
    lines = [line for line in _read(path).splitlines() if not line.lstrip().startswith("--")]
    return sql.SQL("\n".join(lines).strip())


# template names of the mapped columns, by [schema] key
COLUMN_KEYS = {
    "p_id": "position_id",
    "p_account": "position_account",
    "p_instrument": "position_instrument",
    "p_quantity": "position_quantity",
    "p_pnl": "position_pnl",
    "a_id": "account_id",
    "a_balance": "account_balance",
    "i_id": "instrument_id",
    "i_price": "instrument_price",
    "i_margin_rate": "instrument_margin_rate",
}
REFERENCE_TYPES = {
    "position_id": "text",
    "position_account": "text",
    "position_instrument": "text",
    "position_quantity": "numeric",
    "position_pnl": "numeric",
    "account_id": "text",
    "account_balance": "numeric",
    "instrument_id": "text",
    "instrument_price": "numeric",
    "instrument_margin_rate": "numeric",
}


def template_params(
    mapping: SchemaMapping,
    account_id_type: str,
    *,
    instrument_id_type: str = "text",
    pnl_generated: bool = False,
    balance_generated: bool = False,
    balance_scale: int | None = None,
    column_types: dict[str, str] | None = None,
    model: TableName | None = None,
) -> dict[str, sql.Composable]:
    """What the install templates may refer to.

    The types come from the catalog (``format_type`` of the mapped columns), already in SQL
    syntax; they are the one piece not built from an identifier. ``pnl_generated``: the PnL
    column is computed by the platform's table, so flatten leaves it alone; a generated balance
    cannot take realised PnL, so flatten falls back to a close request. ``balance_scale``:
    the balance column's numeric scale, which flatten rounds what it books to.
    """
    pnl = sql.Identifier(mapping.position_pnl)
    return model_params(model) | {
        "accounts": _table(mapping.accounts_table),
        "a_id": sql.Identifier(mapping.account_id),
        "a_user": sql.Identifier(mapping.account_user),
        "a_balance": sql.Identifier(mapping.account_balance),
        "positions": _table(mapping.positions_table),
        "p_id": sql.Identifier(mapping.position_id),
        "p_account": sql.Identifier(mapping.position_account),
        "p_instrument": sql.Identifier(mapping.position_instrument),
        "p_quantity": sql.Identifier(mapping.position_quantity),
        "p_pnl": pnl,
        "instruments": _table(mapping.instruments_table),
        "i_id": sql.Identifier(mapping.instrument_id),
        "i_price": sql.Identifier(mapping.instrument_price),
        "i_margin_rate": sql.Identifier(mapping.instrument_margin_rate),
        "account_id_type": sql.SQL(account_id_type),
        "instrument_id_type": sql.SQL(instrument_id_type),
        "set_pnl_zero": sql.SQL("") if pnl_generated else sql.SQL(", {} = 0").format(pnl),
        "balance_bookable": sql.SQL("false" if balance_generated else "true"),
        "balance_scale": sql.SQL("NULL") if balance_scale is None else sql.Literal(balance_scale),
        "price_time": (
            sql.SQL("i.{}::timestamptz").format(sql.Identifier(mapping.instrument_price_time))
            if mapping.instrument_price_time
            else sql.SQL("NULL::timestamptz")
        ),
        "lock_class": sql.Literal(LOCK_CLASS),
        "rails_lock": sql.SQL("{}, {}").format(
            sql.Literal(RAILS_LOCK_CLASS), sql.Literal(RAILS_LOCK_KEY)
        ),
        # each mapped column's SQL type as the catalog has it ({type_p_account}, …); without a
        # database (--sql), the reference schema's
        **{
            f"type_{short}": sql.SQL((column_types or {}).get(key, REFERENCE_TYPES[key]))
            for short, key in COLUMN_KEYS.items()
        },
    }


# The margin model's pieces of the check and the sweep (sql/check.sql, sql/sweep.sql), over the
# positions' aggregate ``agg`` and the account ``a``: the built-in model's figures, or those of
# riskd.model_figures (the platform's function) joined as ``m``. A model's figures that are not
# finite numbers, or an account it returns twice, are data riskd cannot trust (DESIGN §1).
_BUILTIN_PIECES = {
    "n_open": "COALESCE(agg.n_open, 0)",
    "equity": "a.balance_value + COALESCE(agg.pnl, 0)",
    "used_margin": "COALESCE(agg.used, 0)",
    "account_error": "a.data_error",
    "model_join": "",
    "model_join_all": "",
}
_MODEL_PIECES = {
    # an account the model does not return has nothing open
    "n_open": "CASE WHEN m.account_id IS NULL THEN 0 ELSE GREATEST(COALESCE(agg.n_open, 0), 1) END",
    "equity": "CASE WHEN m.account_id IS NULL THEN a.balance_value"
    " ELSE riskd.position_pnl(m.equity) END",
    "used_margin": "COALESCE(riskd.position_pnl(m.used_margin), 0)",
    "account_error": (
        "NULLIF(COALESCE(a.data_error, '{{}}'::jsonb) || CASE WHEN m.account_id IS NOT NULL"
        " AND (m.n > 1 OR NOT COALESCE(m.equity > '-Infinity' AND m.equity < 'Infinity', false)"
        " OR NOT COALESCE(m.used_margin > '-Infinity' AND m.used_margin < 'Infinity', false))"
        " THEN jsonb_build_object('model', {name}, 'equity', m.equity::text,"
        " 'used_margin', m.used_margin::text, 'rows', m.n) ELSE '{{}}'::jsonb END, '{{}}'::jsonb)"
    ),
    "model_join": (
        "LEFT JOIN (SELECT f.account_id, min(f.equity) AS equity,"
        " max(f.used_margin) AS used_margin, count(*) AS n"
        " FROM riskd.model_figures(v_ids) AS f GROUP BY f.account_id) AS m"
        " ON m.account_id = a.account_id"
    ),
    "model_join_all": (
        "LEFT JOIN (SELECT f.account_id, min(f.equity) AS equity,"
        " max(f.used_margin) AS used_margin FROM riskd.model_figures("
        "ARRAY(SELECT x.account_id FROM riskd.platform_accounts AS x))"
        " AS f GROUP BY f.account_id) AS m ON m.account_id = a.account_id"
    ),
}


def model_params(model: TableName | None) -> dict[str, sql.Composable]:
    """The templates' pieces for the margin model: built in, or the platform's function."""
    name = sql.Literal(str(model)) if model else sql.SQL("NULL::text")
    pieces = _MODEL_PIECES if model else _BUILTIN_PIECES
    params: dict[str, sql.Composable] = {
        key: sql.SQL(text).format(name=name) for key, text in pieces.items()
    }
    params["model_name"] = name
    params["model_flatten"] = sql.SQL("true" if model else "false")
    params["model_figures"] = (
        sql.SQL(
            "SELECT m.account_id, CAST(m.equity AS numeric), CAST(m.used_margin AS numeric)"
            " FROM {}(p_accounts) AS m;"
        ).format(sql.Identifier(model.schema, model.name))
        if model
        else sql.SQL(_BUILTIN_FIGURES)
    )
    return params


# The built-in model as riskd.model_figures computes it (what flatten re-asks with a model;
# the check and the sweep inline the same sums): SQL-standard body, every operator qualified.
_BUILTIN_FIGURES = """SELECT a.account_id,
           a.balance_value OPERATOR(pg_catalog.+) pg_catalog.sum(p.pnl_value),
           pg_catalog.sum(p.margin)
    FROM riskd.platform_accounts AS a
    JOIN riskd.platform_positions AS p ON p.account_id OPERATOR(pg_catalog.=) a.account_id
    WHERE a.account_id OPERATOR(pg_catalog.=) ANY (p_accounts)
    GROUP BY a.account_id, a.balance_value;"""


def render(name: str, params: dict[str, sql.Composable], folder: Path | None = None) -> str:
    """Fill the template ``<folder>/<name>`` (``sql/`` by default) and return it as SQL text;
    the fragments it inlines come from the same folder."""
    base = folder if folder is not None else resource_dir("sql")
    fragments = {f: _fragment(base / f"{f}.sql") for f in FRAGMENTS if (base / f"{f}.sql").exists()}
    return sql.SQL(_read(base / name)).format(**params, **fragments).as_string(None)


QUERIES = "queries.sql"


def queries(file: str = QUERIES) -> dict[str, str]:
    """The named queries of ``sql/<file>`` (riskd's own, ``sql/queries.sql``, by default)."""
    return _queries(file)


@functools.cache
def _queries(file: str) -> dict[str, str]:
    """Read once per file: ``-- name: <query>`` headers, the text up to the next one."""
    parts = _NAME.split(read(file))
    names = parts[1::2]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # the later one would silently replace the earlier
        raise RuntimeError(f"sql/{file} names {twice} twice")
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


def query(name: str, file: str = QUERIES) -> sql.SQL:
    """One named query of ``sql/<file>``, ready to execute with ``%(param)s`` parameters."""
    return sql.SQL(queries(file)[name])
