"""``riskd migrate``: riskd's schema and triggers, versioned with Alembic.

Alembic keeps its version table in ``riskd.alembic_version``, apart from the platform's own
migrations. Every revision installs SQL from ``sql/``, rendered from the ``[schema]`` mapping.
DDL on the platform's tables runs under a short ``lock_timeout``: a migration that cannot get
its lock at once gives up, rolls back, waits and tries again, instead of queueing trading
traffic behind it (I1).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
import tenacity
from alembic import command, context, op
from alembic import util as alembic_util
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql

from riskd import mapping as schema_mapping
from riskd.config import Settings
from riskd.db import connect
from riskd.errors import RiskdError
from riskd.resources import resource_dir
from riskd.sqlfiles import render, template_params

log = logging.getLogger(__name__)

VERSION_TABLE = "alembic_version"
SCHEMA = "riskd"
LOCK_TIMEOUT = "2s"
LOCK_ATTEMPTS = 10
# --sql has no database to ask for the account id's type: it assumes the reference schema's
OFFLINE_ACCOUNT_ID_TYPE = "text"


class MigrationError(RiskdError):
    """A migration could not be applied (its lock never came, or the SQL failed)."""


def _alembic_config(settings: Settings, **attributes: Any) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resource_dir("alembic")))
    cfg.attributes["settings"] = settings
    cfg.attributes.update(attributes)
    return cfg


def _engine(settings: Settings) -> sa.Engine:
    return sa.create_engine(
        "postgresql+psycopg://",
        creator=lambda: connect(settings, autocommit=False),
        poolclass=sa.NullPool,
    )


def _is_lock_timeout(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, psycopg.errors.LockNotAvailable)


def _retrying() -> tenacity.Retrying:
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(_is_lock_timeout),
        stop=tenacity.stop_after_attempt(LOCK_ATTEMPTS),
        wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=10),
        before_sleep=lambda state: log.warning(
            "migrate.lock_timeout",
            extra={"attempt": state.attempt_number, "lock_timeout": LOCK_TIMEOUT},
        ),
        reraise=True,
    )


@contextmanager
def _connection(settings: Settings) -> Iterator[sa.Connection]:
    engine = _engine(settings)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
            # what a WHEN clause or a view resolves at creation must not meet a hostile schema
            conn.exec_driver_sql("SET search_path = pg_catalog")
            conn.commit()
            yield conn
    finally:
        engine.dispose()


def _run(settings: Settings, action: str, revision: str) -> None:
    def attempt() -> None:
        with _connection(settings) as conn:
            cfg = _alembic_config(settings, connection=conn)
            if action == "upgrade":
                command.upgrade(cfg, revision)
            else:
                command.downgrade(cfg, revision)
            if revision == "base":
                # Alembic leaves its (empty) version table; base means nothing of riskd is left.
                conn.exec_driver_sql(
                    f"DROP TABLE IF EXISTS {SCHEMA}.{VERSION_TABLE}; DROP SCHEMA IF EXISTS {SCHEMA}"
                )
            conn.commit()

    try:
        _retrying()(attempt)
    except sa.exc.DBAPIError as exc:
        orig = exc.orig if exc.orig is not None else exc
        what = "could not get a lock in time" if _is_lock_timeout(exc) else "failed"
        raise MigrationError(f"migrate {revision}: {what}: {' '.join(str(orig).split())}") from exc


def _script(settings: Settings) -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic_config(settings))


def head(settings: Settings) -> str:
    heads = _script(settings).get_heads()
    return heads[0]


def current(settings: Settings) -> str | None:
    """The revision the database is at, None when riskd is not installed."""
    with connect(settings) as conn:
        exists = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.{VERSION_TABLE}",)
        ).fetchone()
        if not exists or not exists[0]:
            return None
        row = conn.execute(f"SELECT version_num FROM {SCHEMA}.{VERSION_TABLE}").fetchone()
        return row[0] if row else None


def migrate(settings: Settings, revision: str = "head") -> tuple[str | None, str | None]:
    """Move riskd's schema to ``revision`` (up or down); return (before, after)."""
    before = current(settings)
    target = head(settings) if revision == "head" else revision
    if target == "base":
        if before is not None:
            _run(settings, "downgrade", "base")
        return before, None
    script = _script(settings)
    try:
        script.get_revision(target)
    except Exception as exc:  # alembic raises several kinds for an unknown revision
        raise MigrationError(f"migrate: unknown revision {revision!r}") from exc
    if before == target:
        return before, before
    below = (
        set() if before is None else {r.revision for r in script.iterate_revisions(before, "base")}
    )
    _run(settings, "downgrade" if target in below else "upgrade", target)
    return before, current(settings)


def sql_script(settings: Settings, revision: str = "head") -> str:
    """The SQL ``migrate`` would run from an empty riskd to ``revision``, without connecting."""
    buffer = io.StringIO()
    cfg = _alembic_config(settings, output_buffer=buffer)
    cfg.output_buffer = buffer
    try:
        command.upgrade(cfg, revision, sql=True)
    except alembic_util.CommandError as exc:
        raise MigrationError(f"migrate --sql: {' '.join(str(exc).split())}") from exc
    return buffer.getvalue()


# --- used by alembic/env.py and the revisions in alembic/versions ---------------------------


def run_template(name: str) -> None:
    """Install ``sql/<name>`` rendered for the mapping being migrated."""
    text = render(name, op.get_context().config.attributes["template_params"])  # type: ignore[union-attr]
    run_sql(text)


def run_sql(text: str) -> None:
    """Execute a whole SQL script, or print it under ``--sql``.

    Straight to the driver: SQLAlchemy's text() would read ``:name`` as bind parameters.
    """
    if context.is_offline_mode():
        op.get_context().impl.static_output(text.strip() + "\n")
    else:
        op.get_bind().exec_driver_sql(text)


def record_installation() -> None:
    """Remember the mapping the triggers were rendered from (riskd.installation)."""
    settings: Settings = op.get_context().config.attributes["settings"]  # type: ignore[union-attr]
    payload = json.dumps(schema_mapping.as_json(settings.schema), sort_keys=True)
    statement = sql.SQL(
        "INSERT INTO riskd.installation (mapping) VALUES ({}::jsonb)\n"
        "ON CONFLICT (singleton) DO UPDATE SET mapping = excluded.mapping, updated_at = now();"
    ).format(sql.Literal(payload))
    run_sql(statement.as_string(None))


def prepare_templates(conn: sa.Connection | None, settings: Settings) -> dict[str, Any]:
    """Resolve the mapping against the database (or assume, offline) for the templates."""
    if conn is None:
        return template_params(settings.schema, OFFLINE_ACCOUNT_ID_TYPE)
    driver = conn.connection.driver_connection
    resolved = schema_mapping.resolve(driver, settings.schema)  # type: ignore[arg-type]
    return template_params(settings.schema, resolved.account_id_type)
