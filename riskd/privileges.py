"""What the daemon's role needs (docs/grants.sql), as a list the daemon probes at start.

Asking the catalog (has_*_privilege) for the whole list at once turns a missing grant into one
line naming every missing privilege, before any worker starts — instead of a worker finding
out later, a crash or a daemon that looks healthy and checks nothing. A test keeps this list
and docs/grants.sql in step.
"""

from __future__ import annotations

from dataclasses import dataclass

from riskd.config import Settings, TableName


@dataclass(frozen=True, slots=True)
class Need:
    kind: str  # schema | table | sequence | function | column
    target: str  # as the has_*_privilege functions take it (quoted where needed)
    privilege: str
    column: str | None = None  # for kind = column: the column's name, as is


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table(name: TableName) -> str:
    return f"{_quote(name.schema)}.{_quote(name.name)}"


RISKD_TABLES = {
    "riskd.alembic_version": "SELECT",
    "riskd.installation": "SELECT",
    "riskd.dirty_accounts": "SELECT, INSERT, DELETE",
    "riskd.dirty_instruments": "SELECT, DELETE",
    "riskd.sweep_requests": "SELECT, DELETE",
    "riskd.daemons": "SELECT, INSERT, UPDATE, DELETE",
    "riskd.account_state": "SELECT, INSERT, UPDATE",
    "riskd.risk_events": "SELECT, INSERT",
    "riskd.close_requests": "SELECT, INSERT, UPDATE",
    "riskd.account_limits": "SELECT",
    "riskd.platform_positions": "SELECT",
    "riskd.platform_accounts": "SELECT",
}
FUNCTIONS = (
    "riskd.check_accounts(text[], text, numeric, numeric, numeric, text)",
    "riskd.sweep(numeric, numeric, numeric)",
    "riskd.decide_level(bigint, numeric, numeric, numeric, numeric, numeric, text)",
    "riskd.utilization(bigint, numeric, numeric)",
    "riskd.position_margin(numeric, numeric, numeric)",
    "riskd.position_pnl(numeric)",
    "riskd.position_data_error(numeric, numeric, numeric, numeric)",
    "riskd.drain_instruments()",
)
FLATTEN_FUNCTION = "riskd.flatten(riskd.check_result[], numeric, numeric)"
# what flatten reads and writes the platform's tables through; their argument types follow the
# mapping, so they go by name (each is the only function of its name)
FLATTEN_HELPERS = (
    "riskd.flatten_positions",
    "riskd.flatten_lock_accounts",
    "riskd.flatten_close",
    "riskd.flatten_book",
)


def daemon_needs(settings: Settings) -> list[Need]:
    m = settings.schema
    needs = [Need("schema", "riskd", "USAGE")]
    needs += [
        Need("schema", schema, "USAGE")  # a name, not an identifier: unquoted
        for schema in sorted(
            {t.schema for t in (m.accounts_table, m.positions_table, m.instruments_table)}
        )
    ]
    for riskd_table, granted in RISKD_TABLES.items():
        needs += [Need("table", riskd_table, p.strip()) for p in granted.split(",")]
    needs.append(Need("sequence", "riskd.wakeup", "UPDATE"))
    needs += [Need("function", f, "EXECUTE") for f in FUNCTIONS]
    for table, columns in (
        (m.accounts_table, (m.account_id, m.account_user, m.account_balance)),
        (
            m.positions_table,
            (
                m.position_id,
                m.position_account,
                m.position_instrument,
                m.position_quantity,
                m.position_pnl,
            ),
        ),
        (m.instruments_table, (m.instrument_id, m.instrument_price, m.instrument_margin_rate)),
    ):
        needs += [Need("column", _table(table), "SELECT", c) for c in columns]
    if settings.risk.auto_close == "flatten":
        needs.append(Need("function", FLATTEN_FUNCTION, "EXECUTE"))
        needs += [Need("function", f, "EXECUTE") for f in FLATTEN_HELPERS]
        needs.append(Need("table", _table(m.positions_table), "SELECT"))
        needs += [
            Need("column", _table(m.positions_table), "UPDATE", c)
            for c in (m.position_quantity, m.position_pnl)
        ]
        needs.append(Need("column", _table(m.accounts_table), "UPDATE", m.account_balance))
    return needs


def describe(need: Need) -> str:
    on = f"{need.target} ({need.column})" if need.column else need.target
    kind = "table" if need.kind == "column" else need.kind
    return f"{need.privilege} on {kind} {on}"
