"""Opening connections: one place that knows the DSN, the application name and the errors.

A DSN can hold a password; it is never logged or printed unmasked (config.mask_dsn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from riskd.config import Settings, mask_dsn
from riskd.dsn import dsn_problem
from riskd.errors import ConfigError, DatabaseUnavailable, message
from riskd.sqlfiles import query

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

APPLICATION_NAME = "riskd"


def require_dsn(settings: Settings) -> str:
    dsn = settings.database.dsn
    if not dsn:
        raise ConfigError(
            "[database] dsn: no database given (--dsn, RISKD_DSN, DATABASE_URL or the config file)"
        )
    return dsn


def connect(
    settings: Settings, *, autocommit: bool = True, **kwargs: Any
) -> psycopg.Connection[Any]:
    """A connection to the platform's database, or DatabaseUnavailable with a one-line reason."""
    dsn = require_dsn(settings)
    kwargs.setdefault("connect_timeout", 10)
    try:
        conn = psycopg.connect(
            dsn, autocommit=autocommit, application_name=APPLICATION_NAME, **kwargs
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {mask_dsn(dsn)}: {message(exc)}") from exc
    except psycopg.ProgrammingError as exc:  # malformed DSN: libpq's message quotes it
        problem = dsn_problem(dsn) or "cannot be read as a connection string"
        source = settings.database.source or "[database] dsn"
        raise ConfigError(f"{source}: invalid DSN: {problem}") from exc
    set_session(conn, settings)
    return conn


def session_values(settings: Settings) -> dict[str, str]:
    """The session settings of every riskd connection that checks or writes (the named query
    session_settings): the webhook outbox on or off, the safety rails' limits."""
    risk = settings.risk
    return {
        "webhook": "on" if settings.webhook.url else "off",
        "max_closes_per_minute": str(risk.max_closes_per_minute),
        "max_price_age": f"{risk.max_price_age:.3f}",
    }


def set_session(conn: psycopg.Connection[Any], settings: Settings) -> None:
    """The session settings of ``settings`` on ``conn`` (:func:`session_values`), set on their
    own, outside any transaction the caller opens next."""
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        conn.execute(query("session_settings"), session_values(settings))
    except BaseException:
        conn.close()
        raise
    finally:
        if not conn.closed:
            conn.autocommit = autocommit


# The daemon's connections. Keepalives, so that a dead peer is noticed by the kernel in
# seconds, not after two hours (DESIGN §6); the listener's self-ping covers what they miss.
CONNECT_TIMEOUT = 5
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}
POOL_MIN, POOL_MAX = 2, 4


async def aconnect(dsn: str, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """A daemon connection: autocommit, keepalives, a short connect timeout."""
    return await psycopg.AsyncConnection.connect(
        dsn,
        autocommit=True,
        application_name=APPLICATION_NAME,
        connect_timeout=CONNECT_TIMEOUT,
        **KEEPALIVES,
        **kwargs,
    )


def apool(
    dsn: str, timeout: float, session: dict[str, str]
) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    """The daemon's pool (opened by the caller, inside its loop): the same connections as
    ``aconnect``, each checked before it is handed out (psycopg_pool does not, unless asked),
    each with the session settings ``session`` (:func:`session_values`)."""
    from psycopg_pool import AsyncConnectionPool  # the daemon's alone: no other command loads it

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(query("pool_session"))
        await conn.execute(query("session_settings"), session)

    return AsyncConnectionPool(
        dsn,
        min_size=POOL_MIN,
        max_size=POOL_MAX,
        open=False,
        timeout=timeout,
        kwargs={
            "autocommit": True,
            "application_name": APPLICATION_NAME,
            "connect_timeout": CONNECT_TIMEOUT,
            **KEEPALIVES,
        },
        configure=configure,
        check=AsyncConnectionPool.check_connection,
        name="riskd",
    )
