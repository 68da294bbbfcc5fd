"""``riskd migrate``: riskd's schema and triggers, versioned with Alembic.

Alembic keeps its version table in ``riskd.alembic_version``, apart from the platform's own
migrations. Two ways in, both ending with the same catalog (tests/integration/test_upgrades.py):

* an empty database gets head in one step: the templates of ``sql/`` (HEAD_INSTALL), rendered
  from the ``[schema]`` mapping, then the version table stamped — "building an up-to-date
  database from scratch", as Alembic's cookbook has it;
* an installed one goes from revision to revision. Each revision is frozen with its release
  (``alembic/versions/<rev>/``: the SQL it runs, never edited once released, its digest kept in
  the revision file) and takes the database from the previous release to its own, and back.
  So is an empty database asked for an older revision: revision 0001 is riskd 0.1.0's install.

DDL on the platform's tables runs under a short ``lock_timeout``: a migration that cannot get
its lock at once gives up, rolls back, waits and tries again, instead of queueing trading
traffic behind it (I1). Two migrations never run at once: each takes riskd's migration lock
(a session advisory lock) before it reads the version, and a second one waits for the first.

A removal (``--revision base``) drops riskd's records for good: with a guard (riskd.removal; the
CLI always passes one), it says how many events, close requests and account limits it drops
before dropping them, and refuses while a riskd instance is alive unless forced.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
import tenacity
from alembic import command, context
from alembic import util as alembic_util
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql

from riskd import __version__, capture
from riskd import mapping as schema_mapping
from riskd.config import Settings, model_function
from riskd.db import connect
from riskd.errors import (
    ConfigError,
    DatabaseUnavailable,
    NotInstalled,
    RiskdError,
    SchemaMappingError,
    message,
)
from riskd.removal import Guard
from riskd.resources import resource_dir
from riskd.sqlfiles import (
    MIGRATE_LOCK_CLASS,
    MIGRATE_LOCK_KEY,
    queries,
    query,
    render,
    template_params,
)

log = logging.getLogger(__name__)

VERSION_TABLE = "alembic_version"
MIGRATE_QUERIES = "migrate.sql"
SCHEMA = "riskd"
LOCK_TIMEOUT = "2s"
LOCK_ATTEMPTS = 10
# --sql without a database to ask for the account id's type assumes the reference schema's
OFFLINE_ACCOUNT_ID_TYPE = "text"
# What an empty database gets for head, in this order (sql/).
HEAD_INSTALL = (
    "schema.sql",
    "rails.sql",
    "outbox.sql",
    "fence.sql",
    "check.sql",
    "act.sql",
    "sweep.sql",
    "capture.sql",
    "privileges.sql",
)
MIGRATE_LOCK_WAIT = "10min"


class MigrationError(RiskdError):
    """A migration could not be applied (its lock never came, or the SQL failed)."""


class Action(enum.Enum):
    NONE = "none"
    INSTALL = "install"  # an empty database straight to head, from sql/
    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"
    REMOVE = "remove"  # down to base, then the version table and the schema
    REMAP = "remap"  # at head, another mapping: what head renders from it, installed again


# What head renders from the [schema] mapping: taken off by drop_capture.sql and unmap.sql,
# installed again by these.
REMAP_INSTALL = ("check.sql", "act.sql", "sweep.sql", "capture.sql", "privileges.sql")


def plan(before: str | None, target: str, head: str, below_before: set[str]) -> Action:
    """What moving from ``before`` (None: nothing installed) to ``target`` takes.

    ``below_before`` holds the revisions under ``before`` (a downgrade goes there).
    """
    if target == "base":
        return Action.NONE if before is None else Action.REMOVE
    if before == target:
        return Action.NONE
    if before is None:
        return Action.INSTALL if target == head else Action.UPGRADE
    return Action.DOWNGRADE if target in below_before else Action.UPGRADE


def drops_records(action: Action) -> bool:
    """Whether a move loses riskd's records: events, close requests, account limits.

    Only a removal does. Their tables date from 0001, and no downgrade to a revision drops
    them: the tables a downgrade drops hold marks, not records (0004's dirty_instruments, whose
    marks it hands to the dirty set first, and sweep_requests, which the next start's sweep
    covers). A revision that adds a table of records must extend this.
    """
    return action is Action.REMOVE


def _alembic_config(settings: Settings | None, **attributes: Any) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resource_dir("alembic")))
    cfg.attributes["settings"] = settings
    cfg.attributes.update(attributes)
    return cfg


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic_config(None))


def head(settings: Settings | None = None) -> str:
    """The revision this riskd installs and runs against."""
    heads = _script().get_heads()
    return heads[0]


def _below(revision: str) -> set[str]:
    return {r.revision for r in _script().iterate_revisions(revision, "base")} - {revision}


def known(revision: str) -> bool:
    try:
        return _script().get_revision(revision) is not None
    except alembic_util.CommandError:
        return False


def describe(revision: str | None) -> str:
    """A revision as operators read it: 0002, or "none (riskd not installed)"."""
    return revision or "none (riskd not installed)"


def compare(current: str | None) -> tuple[str, bool]:
    """What ``migrate --check`` and ``status`` say of the database's revision; at head?"""
    needs = head()
    if current == needs:
        return f"riskd schema at revision {needs}, as riskd {__version__} needs", True
    if current is not None and not known(current):
        return str(newer_schema_error(current)), False
    where = "riskd is not installed" if current is None else f"riskd schema at {current}"
    return f"{where}, riskd {__version__} needs revision {needs}: run `riskd migrate`", False


def newer_schema_error(revision: str) -> MigrationError:
    return MigrationError(
        f"riskd schema is at revision {revision}, which riskd {__version__} does not know (it "
        f"needs {head()}): it was migrated by a newer riskd; run that release"
    )


def _engine(settings: Settings) -> sa.Engine:
    return sa.create_engine(
        "postgresql+psycopg://",
        creator=lambda: connect(settings, autocommit=False),
        poolclass=sa.NullPool,
    )


def _is_lock_timeout(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, psycopg.errors.LockNotAvailable)


def _is_deadlock(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, psycopg.errors.DeadlockDetected)


def _is_lock_conflict(exc: BaseException) -> bool:
    """A lock not granted within lock_timeout, or a deadlock (a removal's DROP against a
    running daemon's drain, under --force): the attempt rolled back, it is made again."""
    return _is_lock_timeout(exc) or _is_deadlock(exc)


def _before_retry(state: tenacity.RetryCallState) -> None:
    failed = state.outcome.exception() if state.outcome is not None else None
    if failed is not None and _is_deadlock(failed):
        log.warning("migrate.deadlock", extra={"attempt": state.attempt_number})
    else:
        log.warning(
            "migrate.lock_timeout",
            extra={"attempt": state.attempt_number, "lock_timeout": LOCK_TIMEOUT},
        )


def _retrying() -> tenacity.Retrying:
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(_is_lock_conflict),
        stop=tenacity.stop_after_attempt(LOCK_ATTEMPTS),
        wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=10),
        before_sleep=_before_retry,
        reraise=True,
    )


@contextmanager
def _connection(settings: Settings) -> Iterator[sa.Connection]:
    engine = _engine(settings)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(_sql("session"), {"lock_timeout": LOCK_TIMEOUT})
            conn.commit()
            yield conn
    finally:
        engine.dispose()


def _take_migrate_lock(conn: sa.Connection) -> None:
    """Wait for any other ``riskd migrate`` on this database to finish, then hold the lock."""
    keys = {"lock_class": MIGRATE_LOCK_CLASS, "key": MIGRATE_LOCK_KEY}
    if conn.exec_driver_sql(_sql("try_lock"), keys).scalar():
        return
    log.warning("migrate.waiting", extra={"for": "another riskd migrate on this database"})
    statement_timeout = conn.exec_driver_sql(_sql("statement_timeout")).scalar()
    conn.exec_driver_sql(_sql("lock_wait"), {"wait": MIGRATE_LOCK_WAIT})
    try:
        conn.exec_driver_sql(_sql("lock"), keys)
    except sa.exc.OperationalError as exc:
        if _is_lock_timeout(exc):
            raise MigrationError(
                f"another riskd migrate held the migration lock for {MIGRATE_LOCK_WAIT}: "
                "is one stuck? (pg_stat_activity, application_name riskd)"
            ) from exc
        raise
    conn.exec_driver_sql(
        _sql("lock_waited"),
        {"lock_timeout": LOCK_TIMEOUT, "statement_timeout": statement_timeout},
    )


def _current(conn: sa.Connection) -> str | None:
    return installed_revision(conn.connection.driver_connection)  # type: ignore[arg-type]


def _apply(settings: Settings, target: str, guard: Guard | None = None) -> Outcome:
    """One attempt, under the migration lock: read the version, move, commit."""
    with _connection(settings) as conn:
        _take_migrate_lock(conn)
        before = _current(conn)
        action, remapped = _decide(conn, settings, before, target)
        notes = _layout_notes(conn, settings, action)
        if guard is not None and drops_records(action):
            guard.check(conn, target)
        _move(conn, settings, action, target, remapped)
        conn.commit()
        if action is not Action.NONE:
            log.info("migrate.done", extra={"before": before, "after": _current(conn)})
        if action in (Action.INSTALL, Action.UPGRADE, Action.REMAP):
            prepared = conn.exec_driver_sql(_sql("max_prepared_transactions")).scalar()
            note = prepared_transactions_note(int(prepared or 0))
            notes += [note] if note else []
        return Outcome(before, _current(conn), action, tuple(notes))


def _decide(
    conn: sa.Connection, settings: Settings, before: str | None, target: str
) -> tuple[Action, str]:
    """What to do, and the [schema] keys changed since the install ("" when none)."""
    if before is not None and not known(before):
        raise newer_schema_error(before)
    action = plan(before, target, head(), _below(before) if before else set())
    if action is Action.NONE and before == head() and _capture_astray(conn, settings):
        action = Action.REMAP
    remapped = (
        action is not Action.INSTALL and before is not None and _remapped_keys(conn, settings)
    )
    if remapped and (action is Action.DOWNGRADE or (action is Action.UPGRADE and target != head())):
        raise MigrationError(
            f"[schema] differs from the mapping riskd was installed with ({remapped}): a"
            " changed mapping is installed at head only; move to another revision with the"
            " installed mapping, or run `riskd migrate` (to head) with the new one"
        )
    return action, remapped or ""


def _layout_notes(conn: sa.Connection, settings: Settings, action: Action) -> list[str]:
    """What the layout lacks, said (or, for flatten's position key, refused)."""
    driver: Any = conn.connection.driver_connection
    notes: list[str] = []
    if action in (Action.INSTALL, Action.UPGRADE, Action.REMAP):
        # what flatten needs of the layout; a downgrade or a removal stays possible
        schema_mapping.resolve(driver, settings.schema)
        try:
            schema_mapping.check_position_key(driver, settings.schema)
        except SchemaMappingError as exc:
            if settings.risk.auto_close == "flatten":
                raise
            notes.append(f"{exc} (refused with auto_close = flatten)")
    if action not in (Action.DOWNGRADE, Action.REMOVE):
        # what every check needs of the layout (DESIGN §2.4): said, never refused
        indexes = schema_mapping.account_index_warnings(driver, settings.schema)
        notes += [f"warning: {w}" for w in indexes]
    return notes


def _move(
    conn: sa.Connection, settings: Settings, action: Action, target: str, remapped: str
) -> None:
    """The move itself, in the attempt's transaction."""
    cfg = _alembic_config(settings, connection=conn)
    if action is Action.REMAP:
        _remap(conn, settings)
    elif action is Action.INSTALL:
        cfg.attributes["install"] = True
        command.stamp(cfg, target)
    elif action is Action.UPGRADE:
        if remapped:
            conn.exec_driver_sql(render("drop_capture.sql", {}))
        command.upgrade(cfg, target)
        if remapped:
            # the revisions rendered what they install from the new mapping; what earlier
            # ones left on the old tables goes, in the same transaction (I1)
            _remap(conn, settings)
    elif action in (Action.DOWNGRADE, Action.REMOVE):
        command.downgrade(cfg, target)
    if action is Action.REMOVE:
        conn.exec_driver_sql(_sql("remove"))


def mapping_matches(settings: Settings) -> bool:
    """Were the installed triggers rendered from this [schema] mapping?"""
    with connect(settings) as conn:
        row = conn.execute(query("installed_mapping")).fetchone()
    return row is not None and row[0] == schema_mapping.installed_json(settings)


def _remapped_keys(conn: sa.Connection, settings: Settings) -> str:
    """The [schema] keys whose value differs from the installed mapping's, as ``key: old ->
    new`` (names of tables and columns, never a secret); "" when none does. A key the
    installed release did not know (``position_id`` before 0.2.0) is no change."""
    installed = conn.exec_driver_sql(queries()["installed_mapping"]).scalar()
    if not isinstance(installed, dict):
        return ""
    configured = schema_mapping.installed_json(settings)
    return "; ".join(
        f"{key}: {installed[key]} -> {value}"
        for key, value in configured.items()
        if key in installed and installed[key] != value
    )


def _capture_astray(conn: sa.Connection, settings: Settings) -> bool:
    """Another mapping than the one installed, or a capture trigger missing or disabled (a
    table swapped, a trigger dropped): head's mapping-dependent SQL is to be installed again."""
    installed = conn.exec_driver_sql(queries()["installed_mapping"]).scalar()
    if installed != schema_mapping.installed_json(settings):
        return True
    driver = conn.connection.driver_connection
    return bool(capture.problems(driver, settings.schema))  # type: ignore[arg-type]


def _column_type(conn: sa.Connection, table: str, column: str) -> str | None:
    """The SQL type of a column of one of riskd's tables."""
    return conn.exec_driver_sql(_sql("column_type"), {"table": table, "column": column}).scalar()


def _remap(conn: sa.Connection, settings: Settings) -> None:
    """Install head's mapping-dependent SQL again for a changed [schema], keeping riskd's rows.

    The account id must keep its type: riskd's tables hold it. An instrument id of another type
    retypes the table of instrument marks (sql/retype_instruments.sql).
    """
    params = prepare_templates(conn, settings)
    held = _column_type(conn, "account_state", "account_id")
    wanted = params["account_id_type"].as_string(None)
    if held != wanted:
        raise MigrationError(
            f"[schema] account_id: the new mapping's account id is {wanted}, riskd's tables hold "
            f"{held}: a change of type needs `riskd migrate --revision base` (which drops riskd's "
            "history) and a fresh install"
        )
    # what the operator granted on the objects about to be re-created (docs/grants.sql): the
    # running daemon must not lose a privilege to a repair
    grants = [row[0] for row in conn.exec_driver_sql(queries()["grants_held"])]
    conn.exec_driver_sql(render("drop_capture.sql", params))
    conn.exec_driver_sql(render("unmap.sql", params))
    if _column_type(conn, "dirty_instruments", "instrument_id") != params[
        "instrument_id_type"
    ].as_string(None):
        conn.exec_driver_sql(render("retype_instruments.sql", params))
    for name in REMAP_INSTALL:
        conn.exec_driver_sql(render(name, params))
    for grant in grants:
        conn.exec_driver_sql(grant)
    conn.exec_driver_sql(record_statement(settings))
    log.warning("migrate.remapped", extra={"revision": head()})


def require_head(settings: Settings) -> None:
    """For a command that needs riskd at the revision this riskd runs: NotInstalled, or a
    ConfigError with ``compare``'s line."""
    revision = current(settings)
    if revision is None:
        raise NotInstalled()
    line, ok = compare(revision)
    if not ok:
        raise ConfigError(line)


def why_missing(settings: Settings) -> RiskdError | None:
    """Why one of riskd's objects was not found, when riskd is the reason: not installed
    (NotInstalled), or at another revision (a ConfigError with ``compare``'s line); None when
    riskd is in place at head, or when the database cannot say."""
    try:
        require_head(settings)
    except RiskdError as exc:
        return None if isinstance(exc, DatabaseUnavailable) else exc
    except psycopg.Error:
        return None
    return None


def current(settings: Settings) -> str | None:
    """The revision the database is at, None when riskd is not installed."""
    with connect(settings) as conn:
        return installed_revision(conn)


def installed(conn: psycopg.Connection[Any]) -> bool:
    """Is riskd installed in this database: a question any role may ask."""
    row = conn.execute(query("riskd_installed")).fetchone()
    return bool(row and row[0])


def installed_revision(conn: psycopg.Connection[Any]) -> str | None:
    """Is riskd installed, at which revision (None: not installed): the one way every command
    asks. The revision needs SELECT on riskd.alembic_version (docs/grants.sql)."""
    if not installed(conn):
        return None
    row = conn.execute(query("schema_revision")).fetchone()
    return None if row is None else str(row[0])


async def ainstalled_revision(conn: psycopg.AsyncConnection[Any]) -> str | None:
    """installed_revision() on an async connection (the daemon's)."""
    cur = await conn.execute(query("riskd_installed"))
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute(query("schema_revision"))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


def _target(revision: str) -> str:
    target = head() if revision == "head" else revision
    if target != "base" and not known(target):
        raise MigrationError(f"migrate: unknown revision {revision!r}")
    return target


@dataclass(frozen=True, slots=True)
class Outcome:
    before: str | None
    after: str | None
    action: Action
    notes: tuple[str, ...] = ()


def prepared_transactions_note(max_prepared: int) -> str | None:
    """Two-phase commit on: a transaction that notified cannot be prepared (issue 9)."""
    if max_prepared <= 0:
        return None
    return (
        f"note: max_prepared_transactions = {max_prepared}: a trading transaction that marks "
        "the first change after a quiet spell also NOTIFYs the daemon, and PostgreSQL refuses "
        "to PREPARE a transaction that notified; sessions that use PREPARE TRANSACTION must "
        "SET riskd.notify_queue_limit = '0' (docs/operations.md, two-phase commit)"
    )


def migrate(settings: Settings, revision: str = "head") -> tuple[str | None, str | None]:
    """Move riskd's schema to ``revision`` (up or down); return (before, after)."""
    outcome = run(settings, revision)
    return outcome.before, outcome.after


def run(settings: Settings, revision: str = "head", *, guard: Guard | None = None) -> Outcome:
    """Move riskd's schema to ``revision``, or install head again for a changed mapping.

    With a ``guard`` (the CLI's), a move that drops riskd's records says what it drops and is
    refused while an instance is alive unless forced; without one (tests, the demo), it runs.
    """
    target = _target(revision)
    try:
        return _retrying()(_apply, settings, target, guard)
    except sa.exc.DBAPIError as exc:
        orig = exc.orig if exc.orig is not None else exc
        what = "could not get a lock in time" if _is_lock_timeout(exc) else "failed"
        raise MigrationError(f"migrate {revision}: {what}: {message(orig)}") from exc


@dataclass(frozen=True, slots=True)
class Script:
    """What ``migrate --sql`` prints, and a note when its types were assumed."""

    text: str
    note: str | None = None


def _reference_types(why: str) -> str:
    return (
        f"-- column types: the reference schema's (account id {OFFLINE_ACCOUNT_ID_TYPE}, "
        f"instrument id text), as {why}; for your schema's, give its DSN (--dsn, RISKD_DSN)\n"
    )


def _script_params(settings: Settings) -> tuple[dict[str, Any], str, str | None]:
    """The templates' parameters for ``--sql``, a header saying where the column types come
    from, and a note for the operator when they were assumed although a DSN was given.

    With a database to ask (a DSN given and reachable), the types and layout are read from it
    as ``riskd migrate`` reads them (a mapping it would refuse is refused here too); without
    one, they are the reference schema's.
    """
    offline = prepare_templates(None, settings)
    if not settings.database.dsn:
        return offline, _reference_types("no database was given"), None
    try:
        conn = connect(settings)
    except DatabaseUnavailable as exc:
        note = (
            f"note: {exc}: the script's column types are the reference schema's (account id "
            f"{OFFLINE_ACCOUNT_ID_TYPE}), not necessarily your schema's"
        )
        return offline, _reference_types("the database could not be reached"), note
    with conn:
        resolved = schema_mapping.resolve(conn, settings.schema, model_function(settings.risk))
        where = f"{conn.info.dbname} on {conn.info.host}"
    header = (
        f"-- column types read from database {where} (account id {resolved.account_id_type}, "
        f"instrument id {resolved.instrument_id_type})\n"
    )
    return template_params_of(resolved), header, None


def sql_script(settings: Settings, revision: str = "head") -> Script:
    """The SQL ``migrate`` would run, without running it: from nothing to ``revision``, or
    between two revisions given as ``FROM:TO`` (up or down).

    The column types are read from the database when a DSN is given and it can be reached;
    else they are the reference schema's (the script's header and the note say which).
    """
    if ":" in revision:
        start, end = (_target(part) for part in revision.split(":", 1))
        if start == "base":
            raise MigrationError("migrate --sql: FROM must be a revision, not base")
    else:
        start, end = "", _target(revision)
        if end == "base":
            raise MigrationError(
                "migrate --sql --revision base: base installs nothing; the removal is "
                "--revision <installed>:base"
            )
    params, header, note = _script_params(settings)
    buffer = io.StringIO()
    buffer.write(f"-- riskd {__version__}: riskd migrate --sql --revision {revision}\n{header}")
    cfg = _alembic_config(settings, output_buffer=buffer, template_params=params)
    cfg.output_buffer = buffer
    try:
        if start:
            down = end == "base" or end in _below(start)
            (command.downgrade if down else command.upgrade)(cfg, f"{start}:{end}", sql=True)
            if end == "base":
                buffer.write(_sql("remove") + "\n")  # as the online removal
        elif end == head():
            cfg.attributes["install"] = True
            command.stamp(cfg, end, sql=True)
        else:
            command.upgrade(cfg, end, sql=True)
    except alembic_util.CommandError as exc:
        raise MigrationError(f"migrate --sql: {message(exc)}") from exc
    return Script(buffer.getvalue(), note)


def _sql(name: str) -> str:
    """A named query of sql/migrate.sql, for a SQLAlchemy connection's driver (``%(name)s``)."""
    return queries(MIGRATE_QUERIES)[name]


def _literal_sql(name: str, **values: object) -> str:
    """A ``{placeholder}`` section of sql/migrate.sql with the values as SQL literals: for a
    ``--sql`` script, which carries no parameters."""
    literals = {key: sql.Literal(value) for key, value in values.items()}
    return sql.SQL(_sql(name)).format(**literals).as_string(None)


# --- used by alembic/env.py and the revisions in alembic/versions ---------------------------


def script_begin() -> str:
    """What a ``--sql`` script does before its first revision (sql/migrate.sql)."""
    return _literal_sql(
        "script_begin",
        lock_timeout=LOCK_TIMEOUT,
        lock_class=MIGRATE_LOCK_CLASS,
        key=MIGRATE_LOCK_KEY,
    )


def create_schema() -> str:
    return _sql("create_schema")


def _params() -> dict[str, Any]:
    return context.config.attributes["template_params"]  # type: ignore[no-any-return]


def run_template(name: str) -> None:
    """Install ``sql/<name>`` rendered for the mapping being migrated."""
    run_sql(render(name, _params()))


def install_head() -> None:
    """An empty database straight to head: what ``sql/`` holds (alembic/env.py calls it)."""
    for name in HEAD_INSTALL:
        run_template(name)
    record_installation()


def frozen_dir(revision: str) -> Path:
    """Where a revision keeps the SQL frozen with its release."""
    return resource_dir("alembic") / "versions" / revision


def frozen_digest(revision: str) -> str:
    """sha256 over a revision's frozen files (names and contents), as its file records it."""
    digest = hashlib.sha256()
    for path in sorted(frozen_dir(revision).glob("*.sql")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def run_frozen(revision: str, name: str) -> None:
    """Run ``alembic/versions/<revision>/<name>``, rendered for the mapping being migrated."""
    run_sql(render(name, _params(), folder=frozen_dir(revision)))


def run_sql(text: str) -> None:
    """Execute a whole SQL script, or print it under ``--sql``.

    Straight to the driver: SQLAlchemy's text() would read ``:name`` as bind parameters.
    """
    if context.is_offline_mode():
        context.get_context().impl.static_output(text.strip() + "\n")
    else:
        context.get_bind().exec_driver_sql(text)


def record_statement(settings: Settings) -> str:
    """The statement that records the mapping the triggers were rendered from."""
    payload = json.dumps(schema_mapping.installed_json(settings), sort_keys=True)
    return _literal_sql("record_installation", mapping=payload)


def record_installation() -> None:
    """Remember the mapping the triggers were rendered from (riskd.installation)."""
    run_sql(record_statement(context.config.attributes["settings"]))


def prepare_templates(conn: sa.Connection | None, settings: Settings) -> dict[str, Any]:
    """Resolve the mapping against the database (or assume, offline) for the templates."""
    if conn is None:
        return template_params(
            settings.schema, OFFLINE_ACCOUNT_ID_TYPE, model=model_function(settings.risk)
        )
    driver = conn.connection.driver_connection
    return template_params_of(
        schema_mapping.resolve(
            driver,  # type: ignore[arg-type]
            settings.schema,
            model_function(settings.risk),
        )
    )


def template_params_of(resolved: schema_mapping.ResolvedMapping) -> dict[str, Any]:
    """The templates' parameters for a mapping resolved against the database."""
    return template_params(
        resolved.mapping,
        resolved.account_id_type,
        instrument_id_type=resolved.instrument_id_type,
        pnl_generated=resolved.pnl_generated,
        balance_generated=resolved.balance_generated,
        balance_scale=resolved.balance_scale,
        column_types=dict(resolved.column_types),
        model=resolved.model,
    )
