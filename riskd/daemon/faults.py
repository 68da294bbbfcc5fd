"""What can go wrong under the daemon, by how it is met: ridden out, isolated, or the end of the
run."""

from __future__ import annotations

import psycopg

from riskd.errors import ConfigError

# Errors a daemon rides out: connection loss, server restart, timeouts, a stalled listener.
TRANSIENT: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.errors.ReadOnlySqlTransaction,  # a standby, briefly, during a failover
    OSError,
    TimeoutError,
)


class ListenerStalled(Exception):
    """The listener's self-ping did not come back in time."""


class SchemaMoved(ConfigError):
    """``riskd migrate`` moved the schema to another revision under a running daemon."""


LISTENER_FAULTS: tuple[type[Exception], ...] = (*TRANSIENT, ListenerStalled)
# What a worker meets when `riskd migrate` moved the schema under the daemon (a plan cached
# before the move fails with "could not open relation with OID …", an internal error); each is
# told apart from a real fault by reading the revision again.
SCHEMA_GONE: tuple[type[Exception], ...] = (
    psycopg.errors.UndefinedFunction,
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.UndefinedObject,
    psycopg.errors.InternalError_,
)
CHECK_FAULTS: tuple[type[Exception], ...] = (psycopg.Error, *TRANSIENT)
