"""What riskd's roles need, in one place: `riskd grants` prints it, the daemon probes it.

The grants are data here, one :class:`Grant` per GRANT statement, built from the ``[schema]``
mapping; ``sql/grants.sql`` places each one (by name) in the script with the comments that say
why, and :mod:`riskd.grants` renders it. The daemon asks the catalog (has_*_privilege) for the
whole list at once at start, which turns a missing grant into one line naming every missing
privilege, before any worker starts — instead of a worker finding out later, a crash or a
daemon that looks healthy and checks nothing. What the script grants and what the daemon
probes cannot drift apart: both are this list.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from riskd.config import SchemaMapping, Settings, TableName, model_function

# Where every privilege error points: the grants follow the [schema] mapping, so no file can
# hold them; the command prints them for the configuration at hand.
GRANTS_HINT = "`riskd grants` prints the grants"


@dataclass(frozen=True, slots=True)
class Need:
    kind: str  # schema | table | sequence | function | column
    target: str  # as the has_*_privilege functions take it (quoted where needed)
    privilege: str
    column: str | None = None  # for kind = column: the column's name, as is


@dataclass(frozen=True, slots=True)
class Grant:
    """One GRANT statement of `riskd grants`: privileges on objects of one kind.

    ``name`` is its placeholder in sql/grants.sql. ``targets`` are written as the catalog's
    has_*_privilege functions take them: a schema by its name, anything else as SQL (riskd's
    own names as they are, a mapped table quoted). Kind ``column`` grants on the columns of its
    one target, each with the ``[schema]`` keys that name it; ``key`` is the ``[schema]`` key
    of a mapped table.
    """

    name: str
    privileges: tuple[str, ...]
    kind: str  # schema | table | sequence | function | column
    targets: tuple[str, ...]
    columns: tuple[tuple[str, tuple[str, ...]], ...] = ()
    key: str = ""

    def needs(self) -> list[Need]:
        if self.kind == "column":
            (table,) = self.targets
            return [Need("column", table, p, c) for c, _ in self.columns for p in self.privileges]
        return [Need(self.kind, t, p) for t in self.targets for p in self.privileges]


def _table(name: TableName) -> str:
    return sql.Identifier(name.schema, name.name).as_string(None)


FUNCTIONS = (
    "riskd.check_accounts(text[], text, numeric, numeric, numeric, text)",
    "riskd.sweep(numeric, numeric, numeric)",
    "riskd.decide_level(bigint, numeric, numeric, numeric, numeric, numeric, text)",
    "riskd.utilization(bigint, numeric, numeric)",
    "riskd.position_margin(numeric, numeric, numeric)",
    "riskd.position_pnl(numeric)",
    "riskd.position_data_error(numeric, numeric, numeric, numeric)",
    "riskd.position_untrusted(numeric, numeric, numeric, numeric)",
    "riskd.drain_instruments()",
    "riskd.act(riskd.checked_account[], riskd.check_result[], numeric, numeric)",
    "riskd.setting_number(text)",
    "riskd.pause(text, text, jsonb)",
    "riskd.resume(text, text)",
)
FLATTEN_FUNCTION = "riskd.flatten(riskd.check_result[], numeric, numeric)"
# what flatten reads and writes the platform's tables through; their argument types follow the
# mapping, so they go by name (each is the only function of its name)
FLATTEN_HELPERS = (
    "riskd.flatten_positions",
    "riskd.flatten_lock_accounts",
    "riskd.flatten_close",
    "riskd.flatten_book",
    "riskd.flatten_by_model",
)

# The daemon on riskd's own objects, whatever the mapping.
RISKD_GRANTS = (
    Grant("riskd_usage", ("USAGE",), "schema", ("riskd",)),
    Grant("start", ("SELECT",), "table", ("riskd.alembic_version", "riskd.installation")),
    Grant("drain", ("SELECT", "INSERT", "DELETE"), "table", ("riskd.dirty_accounts",)),
    Grant("drain_instruments", ("SELECT", "DELETE"), "table", ("riskd.dirty_instruments",)),
    Grant("sweep_requests", ("SELECT", "DELETE"), "table", ("riskd.sweep_requests",)),
    Grant("wakeup", ("UPDATE",), "sequence", ("riskd.wakeup",)),
    Grant("heartbeat", ("SELECT", "INSERT", "UPDATE", "DELETE"), "table", ("riskd.daemons",)),
    Grant("state", ("SELECT", "INSERT", "UPDATE"), "table", ("riskd.account_state",)),
    Grant("events", ("SELECT", "INSERT"), "table", ("riskd.risk_events",)),
    Grant("close_requests", ("SELECT", "INSERT", "UPDATE"), "table", ("riskd.close_requests",)),
    Grant("deliveries", ("SELECT", "INSERT", "UPDATE"), "table", ("riskd.deliveries",)),
    Grant("limits", ("SELECT",), "table", ("riskd.account_limits",)),
    Grant("alerts", ("SELECT", "INSERT"), "table", ("riskd.alerts",)),
    Grant("controls", ("SELECT",), "table", ("riskd.controls",)),
    Grant("functions", ("EXECUTE",), "function", FUNCTIONS),
    # its argument type follows the mapping: by name (the only function of its name)
    Grant("model_figures", ("EXECUTE",), "function", ("riskd.model_figures",)),
    Grant("views", ("SELECT",), "table", ("riskd.platform_positions", "riskd.platform_accounts")),
)

# `riskd status` and `riskd events`: riskd's tables, read only, and nothing of the platform's.
MONITOR_GRANTS = (
    Grant("monitor_usage", ("USAGE",), "schema", ("riskd",)),
    Grant(
        "monitor_tables",
        ("SELECT",),
        "table",
        (
            "riskd.alembic_version",
            "riskd.installation",
            "riskd.daemons",
            "riskd.dirty_accounts",
            "riskd.dirty_instruments",
            "riskd.account_state",
            "riskd.risk_events",
            "riskd.close_requests",
            "riskd.account_limits",
            "riskd.deliveries",
            "riskd.alerts",
            "riskd.controls",
        ),
    ),
    # the dashboard's one action (`riskd dashboard --allow-actions`, behind its password)
    Grant("monitor_actions", ("EXECUTE",), "function", ("riskd.pause", "riskd.resume")),
)


def _columns(m: SchemaMapping, *keys: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Mapped columns with the keys naming each, in key order; a column mapped twice once."""
    named: dict[str, list[str]] = {}
    for key in keys:
        named.setdefault(getattr(m, key), []).append(key)
    return tuple((column, tuple(k)) for column, k in named.items())


def platform_grants(m: SchemaMapping) -> tuple[Grant, ...]:
    """The daemon on the platform's data: read only, and only the mapped columns."""
    schemas = sorted({t.schema for t in (m.accounts_table, m.positions_table, m.instruments_table)})
    return (
        Grant("platform_usage", ("USAGE",), "schema", tuple(schemas)),
        Grant(
            "accounts",
            ("SELECT",),
            "column",
            (_table(m.accounts_table),),
            _columns(m, "account_id", "account_user", "account_balance"),
            "accounts_table",
        ),
        Grant(
            "positions",
            ("SELECT",),
            "column",
            (_table(m.positions_table),),
            _columns(
                m,
                "position_id",
                "position_account",
                "position_instrument",
                "position_quantity",
                "position_pnl",
            ),
            "positions_table",
        ),
        Grant(
            "instruments",
            ("SELECT",),
            "column",
            (_table(m.instruments_table),),
            _columns(
                m,
                "instrument_id",
                "instrument_price",
                "instrument_margin_rate",
                *(("instrument_price_time",) if m.instrument_price_time else ()),
            ),
            "instruments_table",
        ),
    )


def flatten_grants(m: SchemaMapping) -> tuple[Grant, ...]:
    """What [risk] auto_close = "flatten" adds: riskd writes the platform's positions and
    balances."""
    return (
        Grant("flatten_functions", ("EXECUTE",), "function", (FLATTEN_FUNCTION, *FLATTEN_HELPERS)),
        Grant(
            "flatten_positions_select",
            ("SELECT",),
            "table",
            (_table(m.positions_table),),
            key="positions_table",
        ),
        Grant(
            "flatten_positions_update",
            ("UPDATE",),
            "column",
            (_table(m.positions_table),),
            _columns(m, "position_quantity", "position_pnl"),
            "positions_table",
        ),
        Grant(
            "flatten_balance",
            ("UPDATE",),
            "column",
            (_table(m.accounts_table),),
            _columns(m, "account_balance"),
            "accounts_table",
        ),
    )


def model_grants(settings: Settings) -> tuple[Grant, ...]:
    """The platform's margin model ([risk] model): the daemon calls it (what it reads is the
    function's owner's to grant, or SECURITY DEFINER's)."""
    model = model_function(settings.risk)
    if model is None:
        return ()
    function = sql.Identifier(model.schema, model.name).as_string(None)
    return (
        Grant("model_usage", ("USAGE",), "schema", (model.schema,)),
        Grant("model", ("EXECUTE",), "function", (function,)),
    )


def flattens(settings: Settings) -> bool:
    """Whether the configuration makes riskd write the platform's data."""
    return settings.risk.auto_close == "flatten"


def daemon_grants(settings: Settings, *, flatten: bool | None = None) -> list[Grant]:
    """Everything the daemon's role is granted; the flatten writes with ``flatten`` (by
    default: when the configuration flattens)."""
    grants = [*RISKD_GRANTS, *platform_grants(settings.schema), *model_grants(settings)]
    if flattens(settings) if flatten is None else flatten:
        grants += flatten_grants(settings.schema)
    return grants


def daemon_needs(settings: Settings) -> list[Need]:
    """What the daemon probes at start: every privilege of :func:`daemon_grants`, the schemas
    first (naming an object in a schema without USAGE is itself an error)."""
    needs = [n for g in daemon_grants(settings) for n in g.needs()]
    return sorted(needs, key=lambda n: n.kind != "schema")


def describe(need: Need) -> str:
    on = f"{need.target} ({need.column})" if need.column else need.target
    kind = "table" if need.kind == "column" else need.kind
    return f"{need.privilege} on {kind} {on}"


def _short(reason: str) -> str:
    """The server's own words (after the last FATAL), or libpq's (after the last "failed: ")."""
    if "FATAL: " in reason:
        return reason.rsplit("FATAL: ", 1)[-1].strip()
    return reason.rsplit("failed: ", 1)[-1].strip()


def refusal(reason: str) -> str | None:
    """The one line for a connection the server refused for good, or None for anything else
    (an outage, to be retried). ``reason``: the driver's message.

    Each refusal points where its fix is: a wrong or missing password is not a missing grant.
    """
    short = _short(" ".join(reason.split()))
    pgpass = "a pgpass file: $PGPASSFILE, else ~/.pgpass"
    if "password authentication failed" in short:
        return f"the database refused the password: {short} (check it in the DSN or in {pgpass})"
    if "no password supplied" in short:
        return f"the database wants a password and none was given: {short} (put it in {pgpass})"
    if "authentication failed" in short:  # peer, ident, cert, ldap…: the method, not a grant
        return f"the database refused this role: {short} (see the server's pg_hba.conf)"
    if "no pg_hba.conf entry" in short:
        return f"the database refused this connection: {short} (see the server's pg_hba.conf)"
    if "is not permitted to log in" in short:
        return (
            f"the database refused this role: {short} (connect as a LOGIN role that is a "
            f"member of the daemon's role; {GRANTS_HINT})"
        )
    if "permission denied for database" in short:
        return f"the database refused this role: {short} ({GRANTS_HINT})"
    if short.startswith('database "') and short.endswith("does not exist"):
        return f"the database refused this connection: {short} (check the DSN)"
    if short.startswith('role "') and short.endswith("does not exist"):
        return f"the database refused this role: {short} (create it as a LOGIN role; {GRANTS_HINT})"
    return None
