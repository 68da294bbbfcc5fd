"""Opening connections: one place that knows the DSN, the application name and the errors.

A DSN can hold a password; it is never logged or printed unmasked (config.mask_dsn).
"""

from __future__ import annotations

from typing import Any

import psycopg

from riskd.config import Settings, mask_dsn
from riskd.dsn import dsn_problem
from riskd.errors import ConfigError, DatabaseUnavailable

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
        return psycopg.connect(
            dsn, autocommit=autocommit, application_name=APPLICATION_NAME, **kwargs
        )
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DatabaseUnavailable(f"cannot connect to {mask_dsn(dsn)}: {reason}") from exc
    except psycopg.ProgrammingError as exc:  # malformed DSN: libpq's message quotes it
        problem = dsn_problem(dsn) or "cannot be read as a connection string"
        source = settings.database.source or "[database] dsn"
        raise ConfigError(f"{source}: invalid DSN: {problem}") from exc
