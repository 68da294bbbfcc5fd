"""Before the loop starts, and whenever the schema may have moved: riskd installed, at the
revision this code needs, with the configured mapping, every privilege the daemon will use
granted, every row of the mapped tables visible (I8), and the capture triggers in place."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg

from riskd import __version__, capture, migrate, privileges
from riskd.config import model_function
from riskd.daemon.faults import SchemaMoved
from riskd.daemon.shared import Shared
from riskd.db import CONNECT_TIMEOUT, aconnect
from riskd.errors import ConfigError, reason
from riskd.mapping import installed_json, mapped_tables, model_problem, rls_refusal
from riskd.sqlfiles import query

log = logging.getLogger("riskd.daemon")

NOT_INSTALLED = "riskd is not installed in this database: run `riskd migrate` first"


def revision_error(current: str | None, needs: str, *, running: bool = False) -> Exception | None:
    """Why a daemon of schema revision ``needs`` cannot run against ``current`` (None when it
    can): never against a schema newer or older than its own (I10). ``running``: the schema
    moved under a daemon that started at the right one."""
    if current == needs:
        return None
    if running:
        return SchemaMoved(
            f"riskd schema moved to revision {migrate.describe(current)} under this daemon "
            f"(riskd {__version__}, revision {needs}): stopping; start the riskd release "
            "that ran `riskd migrate`"
        )
    if current is not None and not migrate.known(current):
        return ConfigError(str(migrate.newer_schema_error(current)))
    return ConfigError(
        f"riskd schema is at revision {migrate.describe(current)}, riskd {__version__} "
        f"needs {needs}: run `riskd migrate`"
    )


def check_revision(shared: Shared, current: str | None, *, running: bool = False) -> None:
    error = revision_error(current, shared.stats.schema_revision, running=running)
    if error is not None:
        raise error


async def _connect_at_start(dsn: str) -> psycopg.AsyncConnection[Any]:
    """A connection, or ConfigError when the server refused this role for good (no point
    retrying a wrong password or a missing grant as if it were an outage)."""
    try:
        return await aconnect(dsn)
    except psycopg.OperationalError as exc:
        refused = privileges.refusal(str(exc))
        if refused is not None:
            raise ConfigError(refused) from exc
        raise


async def _missing_privileges(
    conn: psycopg.AsyncConnection[Any], needs: list[privileges.Need]
) -> list[str]:
    cur = await conn.execute(
        query("missing_privileges"),
        {
            "kinds": [n.kind for n in needs],
            "targets": [n.target for n in needs],
            "columns": [n.column for n in needs],
            "privileges": [n.privilege for n in needs],
        },
    )
    return [privileges.describe(needs[row[0] - 1]) for row in await cur.fetchall()]


async def _check_privileges(shared: Shared, conn: psycopg.AsyncConnection[Any]) -> None:
    needs = privileges.daemon_needs(shared.settings)
    # schemas first: naming an object in a schema without USAGE is itself an error
    missing = await _missing_privileges(conn, [n for n in needs if n.kind == "schema"])
    if not missing:
        missing = await _missing_privileges(conn, [n for n in needs if n.kind != "schema"])
    if missing:
        raise ConfigError(
            f"the daemon's role lacks {', '.join(missing)} ({privileges.GRANTS_HINT})"
        )


async def check_capture(shared: Shared, conn: psycopg.AsyncConnection[Any]) -> None:
    """I8: say which capture trigger is missing or disabled, at start and at every sweep (the
    sweep covers what they miss meanwhile); `riskd migrate` repairs."""
    found = await capture.aproblems(conn, shared.settings.schema)
    if found != shared.stats.capture_problems:
        for problem in found:
            log.error("capture.missing", extra={"problem": problem, "hint": "run riskd migrate"})
        if not found:
            log.info("capture.restored")
    shared.stats.capture_problems = found


async def check_model(shared: Shared, conn: psycopg.AsyncConnection[Any]) -> None:
    """The platform's margin model still fits (its owner may have altered it since `riskd
    migrate`): one line saying what does not."""
    model = model_function(shared.settings.risk)
    if model is None:
        return
    cur = await conn.execute(query("account_id_type_oid"))
    row = await cur.fetchone()
    assert row is not None  # riskd is installed: account_state has its account_id
    cur = await conn.execute(
        query("model_signature"),
        {"schema": model.schema, "name": model.name, "account_type": row[0]},
    )
    problem = model_problem(model, row[1], await cur.fetchall())
    if problem is not None:
        raise ConfigError(problem)


async def preflight(shared: Shared) -> None:
    """Everything the daemon needs of the database, or a ConfigError saying what is not."""
    conn = await shared.retry("start", lambda: _connect_at_start(shared.dsn))
    async with conn:
        # the revision first: the privileges to probe are those of this riskd's schema
        try:
            revision = await migrate.ainstalled_revision(conn)
            if revision is None:
                raise ConfigError(NOT_INSTALLED)
            cur = await conn.execute(query("installed_mapping"))
            installed = await cur.fetchone()
        except psycopg.errors.UndefinedTable as exc:
            raise ConfigError(NOT_INSTALLED) from exc
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigError(
                f"the daemon's role lacks a privilege it needs: "
                f"{exc.diag.message_primary or reason(exc)} ({privileges.GRANTS_HINT})"
            ) from exc
        check_revision(shared, revision)
        wanted = installed_json(shared.settings)
        if installed is None or installed[0] != wanted:
            what = (
                "[risk] model"
                if installed is not None
                and isinstance(installed[0], dict)
                and installed[0].get("model") != wanted.get("model")
                else "[schema]"
            )
            raise ConfigError(
                f"{what} differs from what `riskd migrate` installed riskd with: run `riskd "
                f"migrate` with this configuration, or fix {what}"
            )
        await check_model(shared, conn)
        await _check_privileges(shared, conn)
        # I8: every row of the mapped tables visible to this role, or no start
        cur = await conn.execute(
            query("rls_hidden"), {"tables": mapped_tables(shared.settings.schema)}
        )
        hidden = [r[0] for r in await cur.fetchall()]
        if hidden:
            raise rls_refusal(hidden, str(conn.info.user))
        await check_capture(shared, conn)
        log.info("schema.ok", extra={"revision": revision})


async def schema_moved_or(shared: Shared, exc: BaseException) -> BaseException:
    """The revision check a heartbeat would have made, now: SchemaMoved if the schema moved
    under the daemon, the error itself otherwise."""
    try:
        conn = await asyncio.wait_for(aconnect(shared.dsn), CONNECT_TIMEOUT)
        async with conn:
            revision = await migrate.ainstalled_revision(conn)
        if revision is None:
            return SchemaMoved("riskd was removed from this database under the daemon: stopping")
        check_revision(shared, revision, running=True)
    except SchemaMoved as moved:
        return moved
    except (psycopg.Error, OSError, TimeoutError):
        pass
    return exc
