"""``riskd run``: the loop of DESIGN §2 in one asyncio process.

Tasks, each owning its connection:

* listener: a dedicated autocommit connection LISTENs on ``riskd_changes`` and on a private ping
  channel; a ping NOTIFYed from the pool every ``PING_INTERVAL`` must come back within
  ``PING_TIMEOUT``, else the connection counts as dead however healthy its socket looks (a
  silently stalled network). Reconnects with capped exponential backoff and jitter.
* drainer: on a wake-up, and on a short timer (a wake-up can race a commit), takes the dirty set
  (``DELETE … RETURNING``: several instances share it without locks), and the holders of the
  instruments marked since (riskd.drain_instruments), into the debouncer; while drains keep
  finding marks it drains again after ``BUSY_DRAIN_INTERVAL``; after an empty one it re-arms the
  wake-up.
* checker: due accounts from the debouncer, in batches of ``batch_size``, ahead of sweep work;
  one round trip and one transaction per batch (riskd.check_accounts). An account whose flatten
  meets a trade's row lock waits alone, longer each time (debounce.busy_delay), while the others
  go on being checked.
* sweeper: the instance holding the sweep leader lock (a session advisory lock) sweeps every
  ``sweep_interval``, right after every (re)connect, and as soon as it finds a sweep request (a
  TRUNCATE of a mapped table); the others try for the lock meanwhile.
* reporter: the heartbeat row in riskd.daemons, systemd STATUS=, and WATCHDOG=1 only while the
  loop and the listener are healthy.

SIGTERM / SIGINT: stop taking work, finish the batch in flight within ``shutdown_timeout``, hand
what is left back to the dirty set, remove the heartbeat, exit 0 (I6). A second signal exits at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from riskd import __version__, capture, migrate, numbers, privileges
from riskd import check as checks
from riskd.config import Settings, effective, risk_fingerprint
from riskd.db import APPLICATION_NAME, require_dsn
from riskd.debounce import Debouncer, busy_delay
from riskd.errors import ConfigError
from riskd.mapping import as_json as mapping_json
from riskd.mapping import mapped_tables, rls_refusal
from riskd.metrics import Metrics
from riskd.sdnotify import SdNotifier
from riskd.sqlfiles import SWEEP_LEADER_CLASS, SWEEP_LEADER_KEY, query

log = logging.getLogger("riskd.daemon")

CHANGES_CHANNEL = "riskd_changes"
PING_INTERVAL = 2.0  # seconds between self-pings on the listener
PING_TIMEOUT = 3.0  # a ping not back by then: the listener is dead
DRAIN_INTERVAL = 0.1  # the timer drain, for wake-ups that raced a commit or were skipped
BUSY_DRAIN_INTERVAL = 0.005  # while drains keep finding marks
# The risk lane (DESIGN §1: risk first under overload): a checker of its own for the due
# accounts whose last recorded utilisation is within this of the warning threshold or over it,
# so that their checks never wait behind a batch of calmer accounts; it wakes on each drain
# that found marks and at the next deadline, but not more often than this.
RISK_LANE_BELOW = 0.1
RISK_LANE_POLL = 0.01
# The checker takes with the due accounts those that fall due within a tenth of the quiet
# period (at most 0.1 s): under a steady flow of changes each account falls due at its own
# moment, and one round trip per account costs several times what a batch does per account
# (bench/check_cost.py); an account checked that much early and changed again is checked
# again within max_delay (I2).
EARLY_SHARE = 0.1
EARLY_CAP = 0.1
# the sweep leader looks for sweep requests on every wake-up, and at least this often (a
# TRUNCATE that found a wake-up pending sends none)
SWEEP_REQUEST_POLL = 1.0
HEARTBEAT_INTERVAL = 2.0
DRAIN_TIMEOUT = 30.0
STALE_ROW_TTL = 300.0  # a dead instance's heartbeat row stays visible (stale) this long
CONNECT_TIMEOUT = 5
CHECK_TIMEOUT = 60.0  # a batch that takes longer is abandoned and retried
BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 10.0
MALFORMED_LOG_EVERY = 60.0

# Keepalives so that a dead peer is noticed by the kernel in seconds, not after two hours.
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}

# Errors a daemon rides out: connection loss, server restart, timeouts, a stalled listener.
TRANSIENT: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.errors.ReadOnlySqlTransaction,  # a standby, briefly, during a failover
    OSError,
    TimeoutError,
)

T = TypeVar("T")


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


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True)
class Stats:
    """The counters the heartbeat row carries (riskd.daemons.stats)."""

    notifications: int = 0
    pings: int = 0
    drains: int = 0
    drained_accounts: int = 0
    checks: int = 0
    check_batches: int = 0
    events: int = 0
    close_requests: int = 0
    errors: int = 0
    malformed_payloads: int = 0
    reconnects: int = 0
    sweeps: int = 0
    leader: bool = False
    last_sweep_at: str | None = None
    last_sweep_duration: float | None = None
    lag: float = 0.0
    dirty: int = 0
    last_check_latency: float | None = None
    state: str = "starting"
    # the revision this daemon runs: the version fence (sql/fence.sql) refuses the heartbeat
    # once the database holds another
    schema_revision: str = ""
    capture_problems: list[str] = field(default_factory=list)  # I8, riskd/capture.py
    events_by_level: dict[str, int] = field(default_factory=dict)
    # warning, auto-close, hysteresis, auto_close mode: `riskd status` compares instances
    risk: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Ping:
    token: str
    sent_at: float


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        instance: str | None = None,
        notifier: SdNotifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        handle_signals: bool = True,
    ) -> None:
        self.settings = settings
        self.dsn = require_dsn(settings)
        self.instance = instance or checks.default_instance()
        self.notifier = notifier or SdNotifier()
        self.clock = clock
        self.handle_signals = handle_signals
        self.stats = Stats(schema_revision=migrate.head(), risk=risk_fingerprint(settings.risk))
        # change-to-check latencies of the latest checks (seconds), for live views and metrics
        self.latencies: deque[float] = deque(maxlen=10_000)
        self.metrics = Metrics(self.current_stats, self.probe_ok)
        self.debouncer = Debouncer(settings.daemon.debounce, settings.daemon.max_delay)
        self.sweep_queue: deque[str] = deque()
        self.ping_channel = f"riskd_ping_{uuid.uuid4().hex[:16]}"
        self.started_at = datetime.now(UTC)
        self._ping: _Ping | None = None
        self._listener_progress = clock()
        self._listening = False
        self._malformed_logged_at = -MALFORMED_LOG_EVERY
        self._malformed_since_log = 0
        self._malformed_latest = (0, 0)  # the latest dropped payload: backend pid, bytes
        self._in_flight: dict[str, list[tuple[str, float]]] = {}  # by checker lane
        # account -> checks in a row that met a trade's row lock; emptied as each is checked
        self._busy: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweep_pending = 0
        # a wake-up came (or a sweep request drew one) since the drainer last looked
        self._woken = False
        # created in run(), inside the event loop
        self._stopping: asyncio.Event
        self._work: asyncio.Event
        self._risk_work: asyncio.Event
        self._drain_now: asyncio.Event
        self._reconnected: asyncio.Event
        self._swept_once: asyncio.Event
        self._listen_ready: asyncio.Event
        self._ready: asyncio.Event
        self._sweep_done: asyncio.Event
        self._sweep_poke: asyncio.Event
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]

    # ----------------------------------------------------------------- plumbing

    async def _connect(self, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.dsn,
            autocommit=True,
            application_name=APPLICATION_NAME,
            connect_timeout=CONNECT_TIMEOUT,
            **KEEPALIVES,
            **kwargs,
        )

    def _retrying(self, what: str) -> AsyncRetrying:
        """Retry transient failures for ever, backing off exponentially with jitter up to a
        cap, each retry logged with its reason; the daemon's stop cancels the wait."""

        def before_sleep(state: RetryCallState) -> None:
            self.stats.errors += 1
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "%s: %s; retrying in %.1f s (attempt %d)",
                what,
                _reason(exc) if exc else "failed",
                delay,
                state.attempt_number,
                extra={
                    "what": what,
                    "reason": _reason(exc) if exc else "failed",
                    "retry_in": round(delay, 3),
                    "attempt": state.attempt_number,
                },
            )

        return AsyncRetrying(
            retry=retry_if_exception_type(LISTENER_FAULTS),
            wait=wait_exponential_jitter(initial=BACKOFF_INITIAL, max=BACKOFF_MAX, jitter=1),
            before_sleep=before_sleep,
            reraise=True,
        )

    async def _retry(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        async for attempt in self._retrying(what):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")  # pragma: no cover

    # ----------------------------------------------------------------- start

    async def _connect_at_start(self) -> psycopg.AsyncConnection[Any]:
        """A connection, or ConfigError when the server refused this role for good (no
        point retrying a wrong password or a missing grant as if it were an outage)."""
        try:
            return await self._connect()
        except psycopg.OperationalError as exc:
            refused = privileges.refusal(str(exc))
            if refused is not None:
                raise ConfigError(refused) from exc
            raise

    async def _missing_privileges(
        self, conn: psycopg.AsyncConnection[Any], needs: list[privileges.Need]
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

    async def _check_privileges(self, conn: psycopg.AsyncConnection[Any]) -> None:
        needs = privileges.daemon_needs(self.settings)
        # schemas first: naming an object in a schema without USAGE is itself an error
        missing = await self._missing_privileges(conn, [n for n in needs if n.kind == "schema"])
        if not missing:
            missing = await self._missing_privileges(conn, [n for n in needs if n.kind != "schema"])
        if missing:
            raise ConfigError(
                f"the daemon's role lacks {', '.join(missing)} ({privileges.GRANTS_HINT})"
            )

    async def _preflight(self) -> None:
        """riskd installed, at the revision this code needs, with the configured mapping, and
        every privilege the daemon will use granted."""
        conn = await self._retry("database unreachable at start", self._connect_at_start)
        async with conn:
            cur = await conn.execute(query("riskd_schema_exists"))
            if not (await cur.fetchone() or (False,))[0]:
                raise ConfigError(
                    "riskd is not installed in this database: run `riskd migrate` first"
                )
            # the revision first: the privileges to probe are those of this riskd's schema
            try:
                cur = await conn.execute(query("schema_revision"))
                row = await cur.fetchone()
                cur = await conn.execute(query("installed_mapping"))
                installed = await cur.fetchone()
            except psycopg.errors.UndefinedTable as exc:
                raise ConfigError(
                    "riskd is not installed in this database: run `riskd migrate` first"
                ) from exc
            except psycopg.errors.InsufficientPrivilege as exc:
                raise ConfigError(
                    f"the daemon's role lacks a privilege it needs: "
                    f"{exc.diag.message_primary or _reason(exc)} ({privileges.GRANTS_HINT})"
                ) from exc
            self._check_revision(row[0] if row else None)
            wanted = mapping_json(self.settings.schema)
            if installed is None or installed[0] != wanted:
                raise ConfigError(
                    "[schema] differs from the mapping `riskd migrate` installed the triggers "
                    "with: run `riskd migrate` with this configuration, or fix [schema]"
                )
            await self._check_privileges(conn)
            # I8: every row of the mapped tables visible to this role, or no start
            cur = await conn.execute(
                query("rls_hidden"), {"tables": mapped_tables(self.settings.schema)}
            )
            hidden = [r[0] for r in await cur.fetchall()]
            if hidden:
                raise rls_refusal(hidden, str(conn.info.user))
            await self._check_capture(conn)
            log.info("riskd schema at revision %s, as this riskd needs", row[0] if row else None)

    def _check_revision(self, current: str | None, *, running: bool = False) -> None:
        """A daemon never runs against a schema newer or older than its own (I10)."""
        needs = self.stats.schema_revision
        if current == needs:
            return
        if running:
            raise SchemaMoved(
                f"riskd schema moved to revision {migrate.describe(current)} under this daemon "
                f"(riskd {__version__}, revision {needs}): stopping; start the riskd release "
                "that ran `riskd migrate`"
            )
        if current is not None and not migrate.known(current):
            raise ConfigError(str(migrate.newer_schema_error(current)))
        raise ConfigError(
            f"riskd schema is at revision {migrate.describe(current)}, riskd {__version__} "
            f"needs {needs}: run `riskd migrate`"
        )

    async def run(self) -> int:
        self._stopping = asyncio.Event()
        self._work = asyncio.Event()
        self._risk_work = asyncio.Event()
        self._drain_now = asyncio.Event()
        self._reconnected = asyncio.Event()
        self._swept_once = asyncio.Event()
        self._sweep_done = asyncio.Event()
        self._sweep_poke = asyncio.Event()
        self._listen_ready = asyncio.Event()
        self._ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal(signum: int) -> None:
            nonlocal signals
            signals += 1
            if signals > 1:
                log.warning("second %s: exiting at once", signal.Signals(signum).name)
                os._exit(1)
            log.info("%s: stopping", signal.Signals(signum).name)
            self._request_stop()

        if self.handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, on_signal, signum)

        running = effective(self.settings)  # the DSN in it is masked
        log.info(
            "riskd %s (schema revision %s) starting as %s on %s: %s",
            __version__,
            self.stats.schema_revision,
            self.instance,
            running["database"],
            " ".join(f"{k}={v}" for k, v in running.items() if k != "database"),
            extra={
                "version": __version__,
                "schema_revision": self.stats.schema_revision,
                "instance": self.instance,
                **running,
            },
        )
        self.notifier.status("starting: connecting to the database")
        preflight = asyncio.create_task(self._preflight())
        stop = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({preflight, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not preflight.done():
            preflight.cancel()
            with contextlib.suppress(BaseException):
                await preflight
            self.notifier.stopping()
            return 0
        stop.cancel()
        preflight.result()  # a ConfigError ends the run here, with its one line

        self._pool = AsyncConnectionPool(
            self.dsn,
            min_size=2,
            max_size=4,
            open=False,
            timeout=PING_TIMEOUT,
            kwargs={
                "autocommit": True,
                "application_name": APPLICATION_NAME,
                "connect_timeout": CONNECT_TIMEOUT,
                **KEEPALIVES,
            },
            check=AsyncConnectionPool.check_connection,
            name="riskd",
        )
        daemon_settings = self.settings.daemon
        if daemon_settings.metrics_port:
            await self.metrics.serve(daemon_settings.metrics_host, daemon_settings.metrics_port)
        await self._pool.open(wait=False)
        workers = {
            "listener": asyncio.create_task(self._listener(), name="listener"),
            "drainer": asyncio.create_task(self._drainer(), name="drainer"),
            "sweeper": asyncio.create_task(self._sweeper(), name="sweeper"),
            "reporter": asyncio.create_task(self._reporter(), name="reporter"),
            "watchdog": asyncio.create_task(self._watchdog(), name="watchdog"),
        }
        checkers = [
            asyncio.create_task(self._checker(), name="checker"),
            asyncio.create_task(self._checker(risk_lane=True), name="risk lane"),
        ]
        ready = asyncio.create_task(self._announce_ready(), name="ready")
        stopping = asyncio.create_task(self._stopping.wait(), name="stop")
        everything = {stopping, *checkers, *workers.values()}
        done, _ = await asyncio.wait(everything, return_when=asyncio.FIRST_COMPLETED)
        crashed = [t for t in done if t is not stopping and not t.cancelled() and t.exception()]
        code = 1 if crashed else 0
        for task in crashed:
            exc = task.exception()
            assert exc is not None
            if isinstance(exc, SCHEMA_GONE):
                # riskd's own objects vanished under a worker: the schema was moved (migrate
                # to another revision or to base); say so in the fence's words, exit 2
                exc = await self._schema_moved_or(exc)
            if isinstance(exc, ConfigError):
                code = 2
                log.error("%s", exc)
            elif isinstance(exc, psycopg.errors.InsufficientPrivilege):
                # a grant revoked while running: not an outage to ride out, nor a bug
                code = 2
                log.error(
                    "%s: the daemon's role lost a privilege: %s (%s); stopping",
                    task.get_name(),
                    exc.diag.message_primary or _reason(exc),
                    privileges.GRANTS_HINT,
                )
            else:
                log.error("%s failed: %s", task.get_name(), _reason(exc), exc_info=exc)
        return await self._shutdown(workers, checkers, ready, code=code, reported=set(crashed))

    async def _schema_moved_or(self, exc: BaseException) -> BaseException:
        """The revision check a heartbeat would have made, now: SchemaMoved if the schema
        moved, the error itself otherwise."""
        try:
            conn = await asyncio.wait_for(self._connect(), CONNECT_TIMEOUT)
            async with conn:
                cur = await conn.execute(query("schema_revision"))
                row = await cur.fetchone()
            self._check_revision(row[0] if row else None, running=True)
        except SchemaMoved as moved:
            return moved
        except psycopg.errors.UndefinedTable:
            return SchemaMoved("riskd was removed from this database under the daemon: stopping")
        except (psycopg.Error, OSError, TimeoutError):
            pass
        return exc

    def request_stop(self) -> None:
        """Stop the daemon as SIGTERM does (for an embedding program: the demo)."""
        log.info("stop requested")
        self._request_stop()

    def _request_stop(self) -> None:
        """Stop taking work: every loop wakes up, sees the stop and returns at a safe point
        (never cancelled in the middle of a query: psycopg then tries to cancel it on the
        server, which can take seconds)."""
        self._stopping.set()
        for event in (
            self._drain_now,
            self._reconnected,
            self._work,
            self._risk_work,
            self._sweep_done,
            self._sweep_poke,
        ):
            event.set()

    async def _pause(self, seconds: float, event: asyncio.Event | None = None) -> None:
        """Wait ``seconds``, less if ``event`` is set (the stop sets every event)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((event or self._stopping).wait(), seconds)

    async def _announce_ready(self) -> None:
        await self._listen_ready.wait()
        await self._swept_once.wait()
        self.stats.state = "running"
        self._ready.set()
        self.notifier.ready(self._summary())
        log.info("ready: listening on %s", CHANGES_CHANNEL)

    # ----------------------------------------------------------------- stop

    async def _shutdown(
        self,
        workers: dict[str, asyncio.Task[None]],
        checkers: list[asyncio.Task[None]],
        ready: asyncio.Task[None],
        code: int,
        reported: set[asyncio.Task[Any]],
    ) -> int:
        self.stats.state = "stopping"
        self.notifier.stopping("stopping: finishing the checks in flight")
        self._request_stop()
        deadline = self.clock() + self.settings.daemon.shutdown_timeout
        ready.cancel()
        for name in ("listener", "watchdog"):  # idle waits: safe to cancel
            workers[name].cancel()
        _, busy = await asyncio.wait(workers.values(), timeout=1.0)
        for task in busy:  # still retrying through an outage, or mid-query
            task.cancel()
        _, stuck = await asyncio.wait({*workers.values(), ready}, timeout=2.0)
        for task in stuck:  # a bug, not an outage: say where it hangs, and go on stopping
            where = "; ".join(
                f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in task.get_stack()
            )
            log.error("%s did not stop when asked: %s", task.get_name(), where)
        _report_failed_while_stopping(set(workers.values()) - reported)
        self._work.set()
        self._risk_work.set()
        in_flight = [a for batch in self._in_flight.values() for a, _ in batch]
        timeout = max(0.0, deadline - self.clock())
        try:
            await asyncio.wait_for(asyncio.gather(*checkers), timeout)
            in_flight = []
        except TimeoutError:
            log.warning("checks still running at shutdown_timeout: abandoned, handed back")
        except Exception as exc:  # noqa: BLE001 - already counted; the stop goes on
            log.warning("checker: %s", _reason(exc))
        left = sorted({*in_flight, *self.debouncer.drain_all()})
        handed_back = await self._hand_back(left)
        await self._leave()
        await self.metrics.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pool.close(timeout=1.0), 2.0)
        _log_stopped(len(left), handed_back)
        self.notifier.close()
        return code

    async def _hand_back(self, accounts: list[str]) -> bool:
        """Give the accounts still to check back to the dirty set, for whichever instance
        drains next; whether they are there now (True when there were none)."""
        if not accounts:
            return True
        rows = json.dumps([{"account_id": a} for a in accounts])
        try:
            async with self._pool.connection(timeout=2.0) as conn:
                await asyncio.wait_for(conn.execute(query("requeue"), {"rows": rows}), 5.0)
        except Exception as exc:  # noqa: BLE001 - the next sweep finds them anyway
            log.warning(
                "could not hand %d accounts back: %s",
                len(accounts),
                _reason(exc),
                extra={"accounts": len(accounts), "reason": _reason(exc)},
            )
            return False
        return True

    async def _leave(self) -> None:
        try:
            async with self._pool.connection(timeout=2.0) as conn:
                await asyncio.wait_for(
                    conn.execute(query("leave"), {"instance": self.instance}), 5.0
                )
        except Exception as exc:  # noqa: BLE001
            log.warning("could not remove the heartbeat row: %s", _reason(exc))

    # ----------------------------------------------------------------- listener

    async def _listener(self) -> None:
        first = True
        while True:
            conn = await self._retry("listener", self._listen_connection)
            if not first:
                self.stats.reconnects += 1
                log.info("listener reconnected")
            first = False
            self._listening = True
            self._listen_ready.set()
            self._listener_progress = self.clock()
            self._reconnected.set()
            self._sweep_poke.set()
            self._drain_now.set()
            try:
                await self._listen(conn)
            except LISTENER_FAULTS as exc:
                self.stats.errors += 1
                log.warning(
                    "listener lost: %s; retrying in %.1f s",
                    _reason(exc),
                    BACKOFF_INITIAL,
                    extra={"what": "listener", "reason": _reason(exc), "retry_in": BACKOFF_INITIAL},
                )
            finally:
                self._listening = False
                self._ping = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 1.0)
            await self._pause(BACKOFF_INITIAL)  # then _retry's own backoff, said as above

    async def _listen_connection(self) -> psycopg.AsyncConnection[Any]:
        self._listener_progress = self.clock()
        conn = await self._connect()
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANGES_CHANNEL)))
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.ping_channel)))
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        next_ping = self.clock() + PING_INTERVAL
        while True:
            self._log_dropped()
            now = self.clock()
            if self._ping is not None:
                if now >= self._ping.sent_at + PING_TIMEOUT:
                    raise ListenerStalled(f"no answer to the self-ping in {PING_TIMEOUT:.0f} s")
                wake = self._ping.sent_at + PING_TIMEOUT
            elif now >= next_ping:
                token = uuid.uuid4().hex
                self._ping = _Ping(token, now)
                ping = asyncio.create_task(self._send_ping(token))
                self._tasks.add(ping)  # a task nobody references may be collected mid-flight
                ping.add_done_callback(self._tasks.discard)
                continue
            else:
                wake = next_ping
            async for notify in conn.notifies(timeout=max(0.0, wake - now)):
                if self._on_notify(notify):
                    next_ping = self.clock() + PING_INTERVAL

    async def _send_ping(self, token: str) -> None:
        try:
            async with self._pool.connection(timeout=PING_TIMEOUT) as conn:
                await asyncio.wait_for(
                    conn.execute(query("ping"), {"channel": self.ping_channel, "payload": token}),
                    PING_TIMEOUT,
                )
        except Exception as exc:  # noqa: BLE001 - the listener judges by the missing answer
            log.debug("ping not sent: %s", _reason(exc))

    def _on_notify(self, notify: psycopg.Notify) -> bool:
        """Handle one notification; True when it answered our ping."""
        if notify.channel == self.ping_channel:
            if self._ping is not None and notify.payload == self._ping.token:
                self._ping = None
                self.stats.pings += 1
                self._listener_progress = self.clock()
                return True
            return False
        # riskd_changes: the triggers' wake-up carries no payload. Anything else is not ours:
        # counted and dropped, never parsed into an action (I4).
        if notify.payload == "":
            self.stats.notifications += 1
            self._woken = True
            self._drain_now.set()
            self._sweep_poke.set()
            return False
        self.stats.malformed_payloads += 1
        self._malformed_since_log += 1
        self._malformed_latest = (notify.pid, len(notify.payload.encode("utf-8", "replace")))
        return False

    def _log_dropped(self) -> None:
        """Say how many payloads were dropped since the last time it was said: after each
        wait for notifications, so that a burst is counted whole, and at most once every
        MALFORMED_LOG_EVERY seconds, so that a flood costs one line a minute."""
        now = self.clock()
        if not self._malformed_since_log or now - self._malformed_logged_at < MALFORMED_LOG_EVERY:
            return
        dropped, (pid, size) = self._malformed_since_log, self._malformed_latest
        log.warning(
            "dropped %d unexpected payload(s) on %s (latest from backend pid %d, %d bytes)",
            dropped,
            CHANGES_CHANNEL,
            pid,
            size,
            extra={"dropped": dropped, "channel": CHANGES_CHANNEL, "pid": pid, "bytes": size},
        )
        self._malformed_logged_at = now
        self._malformed_since_log = 0

    # ----------------------------------------------------------------- drainer

    async def _drainer(self) -> None:
        # Re-arm only once after marks were found: a wake-up stays armed until a mark draws
        # it, and a drawn one means marks that some drain will find (and then re-arm), so an
        # idle daemon's timer drain is one statement, with no write to the wakeup sequence
        # that every trading mark reads. A wake-up whose drain finds nothing was drawn without
        # a mark (by a sweep request, or for marks another instance took): re-arm then too.
        armed = False
        while not self._stopping.is_set():
            self._drain_now.clear()
            woken, self._woken = self._woken, False
            found = await self._retry("drain", self._bounded(self._drain_once))
            if not found and (woken or not armed):
                found = await self._retry("drain", self._bounded(self._rearm_and_drain))
                armed = True
            if found:
                armed = False
            delay = BUSY_DRAIN_INTERVAL if found else DRAIN_INTERVAL
            await self._pause(delay, None if found else self._drain_now)

    @staticmethod
    def _bounded(fn: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
        """A drain that hangs (a silently stalled connection) fails after DRAIN_TIMEOUT and
        is retried on another connection, instead of stopping every drain for good."""

        async def bounded() -> int:
            return await asyncio.wait_for(fn(), DRAIN_TIMEOUT)

        return bounded

    async def _drain_once(self) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute(query("drain"))
            rows: list[tuple[str, float, float]] = await cur.fetchall()
        return self._take(rows)

    async def _rearm_and_drain(self) -> int:
        # Re-arm first, then drain: a mark made after the empty drain and before the re-arm
        # (which drew more than 1, so did not notify) is found by this second drain.
        async with self._pool.connection() as conn:
            await conn.execute(query("rearm"))
            cur = await conn.execute(query("drain"))
            rows: list[tuple[str, float, float]] = await cur.fetchall()
        return self._take(rows)

    def _take(self, rows: Iterable[tuple[str, float, float]]) -> int:
        now = self.clock()
        n = 0
        for account, age, priority in rows:
            self.debouncer.mark(account, now, now - max(0.0, age or 0.0), priority)
            n += 1
        self.stats.drains += 1
        if n:
            self.stats.drained_accounts += n
            self._work.set()
            self._risk_work.set()
        return n

    # ----------------------------------------------------------------- checker

    def _next_batch(self, risk_lane: bool) -> tuple[list[tuple[str, float]], bool]:
        size = self.settings.daemon.batch_size
        if risk_lane:
            floor = float(self.settings.risk.warning_threshold) - RISK_LANE_BELOW
            return self.debouncer.pop_due(self.clock(), size, floor), False
        early = min(EARLY_CAP, self.settings.daemon.debounce * EARLY_SHARE)
        due = self.debouncer.pop_due(self.clock(), size, early=early)
        if due:
            return due, False
        now = self.clock()
        batch: list[tuple[str, float]] = []
        while self.sweep_queue and len(batch) < size:
            batch.append((self.sweep_queue.popleft(), now))
        return batch, True

    async def _checker(self, risk_lane: bool = False) -> None:
        """Due accounts first, sweep work when none is due; runs until the stop, then returns
        after the batch in flight. The risk lane takes only the riskiest due accounts (and no
        sweep work), so that they never wait behind a batch of calmer ones."""
        lane = "risk" if risk_lane else "checker"
        work = self._risk_work if risk_lane else self._work
        while True:
            work.clear()
            if self._stopping.is_set():
                return
            batch, from_sweep = self._next_batch(risk_lane)
            if batch:
                self._in_flight[lane] = batch
                try:
                    await self._check_batch(batch)
                finally:
                    self._in_flight[lane] = []
                    if from_sweep:
                        self._sweep_pending -= len(batch)
                        if self._sweep_pending <= 0:
                            self._sweep_done.set()
                continue
            deadline = self.debouncer.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            if risk_lane and timeout is not None:
                # the next account due may be a calm one, the other lane's: look again a moment
                # later rather than spin until that lane has taken it
                timeout = max(timeout, RISK_LANE_POLL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(work.wait(), timeout)

    def _requeue(self, batch: list[tuple[str, float]]) -> None:
        """Back into the debouncer, keeping each account's first unchecked change."""
        now = self.clock()
        for account, first in batch:
            self.debouncer.mark(account, now, first)

    async def _check_failed(self, batch: list[tuple[str, float]], exc: BaseException) -> None:
        """A flatten that met a trade's row lock (LockNotAvailable) fails for its own account
        only: like any failure that is not transient, it is isolated by splitting the batch,
        and the busy account alone waits (``_defer_busy``). Any other transient failure
        (connection lost, a timeout) concerns every account: the batch waits, and so does the
        checker, a moment."""
        self.stats.errors += 1
        ids = [a for a, _ in batch]
        busy = isinstance(exc, psycopg.errors.LockNotAvailable)
        transient = isinstance(exc, TRANSIENT)
        if len(batch) > 1 and (busy or not transient):
            log.warning("check of %d accounts failed: %s; splitting", len(ids), _reason(exc))
            half = len(batch) // 2
            await self._check_batch(batch[:half])
            await self._check_batch(batch[half:])
        elif busy:
            account, first = batch[0]
            self._defer_busy(account, first, exc)
        elif transient:
            log.warning("check of %d accounts failed: %s; will retry", len(ids), _reason(exc))
            self._requeue(batch)
            await self._pause(BACKOFF_INITIAL)
        else:
            log.error("check of account %s failed: %s", ids[0], _reason(exc))
            self._busy.pop(ids[0], None)  # not retried: the next sweep or mark starts afresh
            self.debouncer.forget(ids)

    def _defer_busy(self, account: str, first: float, exc: BaseException) -> None:
        """Hold back an account whose rows a trade holds, longer each time in a row (up to
        ``max_delay``, so it is still tried that often, I2), and go on checking the others: a
        hot account whose rows are always locked must not stall every other check."""
        attempt = self._busy.get(account, 0) + 1
        self._busy[account] = attempt
        delay = busy_delay(attempt, BACKOFF_INITIAL, self.settings.daemon.max_delay)
        now = self.clock()
        self.debouncer.defer(account, now, first, now + delay)
        log.warning(
            "check of account %s postponed: %s; retrying in %.1f s (attempt %d)",
            account,
            _reason(exc),
            delay,
            attempt,
            extra={
                "account": account,
                "reason": _reason(exc),
                "retry_in": round(delay, 3),
                "attempt": attempt,
            },
        )

    async def _check_batch(self, batch: list[tuple[str, float]]) -> None:
        ids = [a for a, _ in batch]
        started = self.clock()
        try:
            async with self._pool.connection(timeout=CHECK_TIMEOUT) as conn:
                results = await asyncio.wait_for(
                    checks.acheck_accounts(conn, self.settings, ids, self.instance),
                    CHECK_TIMEOUT,
                )
        except psycopg.errors.InsufficientPrivilege:
            self._requeue(batch)  # handed back at the stop
            raise
        except CHECK_FAULTS as exc:
            await self._check_failed(batch, exc)
            return
        now = self.clock()
        self.debouncer.checked(ids, now)
        if self._busy:
            for account in ids:
                self._busy.pop(account, None)
        self.metrics.check_batch.observe(now - started)
        for _, first in batch:
            self.latencies.append(now - first)
            self.metrics.latency.observe(now - first)
        self.stats.checks += len(results)
        self.stats.check_batches += 1
        self.stats.last_check_latency = max(now - first for _, first in batch)
        for r in results:
            if r.event_id is not None:
                self.stats.events += 1
                by_level = self.stats.events_by_level
                by_level[r.level] = by_level.get(r.level, 0) + 1
                action, said = self._action(r)
                log.info(
                    "account %s: %s -> %s (utilisation %s)%s",
                    r.account_id,
                    r.previous_level,
                    r.level,
                    numbers.percent(r.utilization),
                    f"; action: {said}" if said else "",
                    extra={
                        "account": r.account_id,
                        "from_level": r.previous_level,
                        "to_level": r.level,
                        "utilization": str(r.utilization),
                        "event_id": r.event_id,
                        "action": action,
                        "close_request_id": r.close_request_id,
                    },
                )
            if r.close_request_id is not None:
                self.stats.close_requests += 1

    def _action(self, r: checks.CheckResult) -> tuple[str, str | None]:
        """The action a check took with its event, as the result tells it: the close request
        it made, or none for a critical account (auto_close = off, data riskd cannot trust,
        a request already pending). In flatten mode the request may be a fallback (a generated
        balance cannot be booked, sql/check.sql): ``riskd events`` says which it was."""
        if r.close_request_id is not None:
            if self.settings.risk.auto_close == "flatten":
                return "flatten", f"flatten, close request {r.close_request_id}"
            return checks.REQUEST_OPENED, f"close request {r.close_request_id} opened"
        return checks.NO_ACTION, "none" if r.level == "critical" else None

    # ----------------------------------------------------------------- sweeper

    async def _sweeper(self) -> None:
        interval = self.settings.daemon.sweep_interval
        await self._listen_ready.wait()  # LISTEN first, then read the state (DESIGN §6)
        while not self._stopping.is_set():
            conn = await self._retry("sweep connection", self._connect)
            try:
                self.stats.leader = False
                while not self._stopping.is_set():
                    if not self.stats.leader:
                        cur = await conn.execute(
                            query("try_sweep_leader"),
                            {"lock_class": SWEEP_LEADER_CLASS, "key": SWEEP_LEADER_KEY},
                        )
                        row = await cur.fetchone()
                        self.stats.leader = bool(row and row[0])
                        if self.stats.leader:
                            log.info("this instance is the sweep leader")
                    if self.stats.leader:
                        self._reconnected.clear()
                        await self._take_sweep_requests(conn)  # this sweep honours them
                        await self._sweep(conn)
                    self._swept_once.set()
                    if self.stats.leader:
                        await self._until_next_sweep(conn, interval)
                    else:  # only the leader sweeps; the others just retry the lock
                        await self._pause(min(interval, 5.0))
            except TRANSIENT as exc:
                self.stats.errors += 1
                log.warning("sweep connection lost: %s; reconnecting", _reason(exc))
            finally:
                self.stats.leader = False
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 1.0)

    async def _until_next_sweep(self, conn: psycopg.AsyncConnection[Any], interval: float) -> None:
        """Wait until the next sweep is due: ``sweep_interval`` gone by, a reconnect, or a sweep
        request found (looked for on every wake-up and every ``SWEEP_REQUEST_POLL``)."""
        due = self.clock() + interval
        while not (self._stopping.is_set() or self._reconnected.is_set()):
            left = due - self.clock()
            if left <= 0:
                return
            self._sweep_poke.clear()
            if await self._take_sweep_requests(conn):
                return
            await self._pause(min(left, SWEEP_REQUEST_POLL), self._sweep_poke)

    async def _take_sweep_requests(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Take the pending sweep requests (sql/capture.sql: a TRUNCATE of a mapped table asks
        for one); how many there were."""
        cur = await conn.execute(query("take_sweep_requests"))
        row = await cur.fetchone()
        requests, reasons = row if row else (0, None)
        if requests:
            log.info(
                "sweep requested: %s", reasons, extra={"requests": requests, "reason": reasons}
            )
            self._woken = True  # they drew the wake-up without a mark: the drainer re-arms it
        return int(requests)

    async def _check_capture(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """I8: say which capture trigger is missing or disabled, at start and at every sweep
        (the sweep covers what they miss meanwhile); `riskd migrate` repairs."""
        found = await capture.aproblems(conn, self.settings.schema)
        if found != self.stats.capture_problems:
            for problem in found:
                log.error("%s: its changes wait for the sweep; run `riskd migrate`", problem)
            if not found:
                log.info("capture triggers in place again")
        self.stats.capture_problems = found

    async def _sweep(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await self._check_capture(conn)
        started = self.clock()
        candidates = await checks.asweep_candidates(conn, self.settings)
        if candidates:
            self._sweep_done.clear()
            self._sweep_pending += len(candidates)
            self.sweep_queue.extend(candidates)
            self._work.set()
            await self._sweep_done.wait()
        self.stats.sweeps += 1
        self.stats.last_sweep_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.stats.last_sweep_duration = round(self.clock() - started, 3)
        self.metrics.sweep.observe(self.clock() - started)
        log.info(
            "swept in %.2f s: %d accounts to check",
            self.stats.last_sweep_duration,
            len(candidates),
            extra={"duration": self.stats.last_sweep_duration, "checked": len(candidates)},
        )

    # ----------------------------------------------------------------- reporting

    def _summary(self) -> str:
        s = self.stats
        return (
            f"{s.state}; {'listening' if self._listening else 'not listening'}; "
            f"{len(self.debouncer)} dirty; {s.checks} checks, {s.events} events; "
            f"lag {s.lag:.1f} s{'; sweep leader' if s.leader else ''}"
        )

    def current_stats(self) -> Stats:
        self._refresh()
        return self.stats

    def _refresh(self) -> None:
        oldest = self.debouncer.oldest()
        self.stats.lag = round(max(0.0, self.clock() - oldest), 3) if oldest is not None else 0.0
        self.stats.dirty = len(self.debouncer)

    async def _reporter(self) -> None:
        host = socket.gethostname()
        while not self._stopping.is_set():
            self._refresh()
            params = {
                "instance": self.instance,
                "host": host,
                "pid": os.getpid(),
                "version": __version__,
                "started_at": self.started_at,
                "stats": json.dumps(asdict(self.stats)),
            }
            try:
                async with self._pool.connection(timeout=HEARTBEAT_INTERVAL) as conn:
                    cur = await asyncio.wait_for(conn.execute(query("schema_revision")), 5.0)
                    row = await cur.fetchone()
                    self._check_revision(row[0] if row else None, running=True)
                    await asyncio.wait_for(conn.execute(query("heartbeat"), params), 5.0)
                    await asyncio.wait_for(
                        conn.execute(query("prune_daemons"), {"after": STALE_ROW_TTL}), 5.0
                    )
            except (psycopg.errors.InsufficientPrivilege, SchemaMoved):
                raise
            except psycopg.errors.UndefinedTable as exc:
                # riskd removed under the daemon (`riskd migrate --revision base`)
                raise SchemaMoved(
                    f"riskd was removed from this database under the daemon ({_reason(exc)}): "
                    "stopping"
                ) from exc
            except Exception as exc:  # noqa: BLE001 - reported, never fatal
                self.stats.errors += 1
                log.warning("heartbeat not written: %s", _reason(exc))
            self.notifier.status(self._summary())
            await self._pause(HEARTBEAT_INTERVAL)

    def healthy(self) -> bool:
        """The loop runs (we are in it) and the listener is alive or busy reconnecting."""
        window = CONNECT_TIMEOUT + BACKOFF_MAX + PING_INTERVAL + PING_TIMEOUT + 5
        return self.clock() - self._listener_progress < window

    def probe_ok(self) -> bool:
        """What /healthz answers: listening now, and the loop alive."""
        return self._listening and self.healthy()

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            await asyncio.Event().wait()  # no watchdog configured: nothing to do, ever
            return
        await self._ready.wait()  # systemd arms the watchdog once the start-up is complete
        while True:
            if self.healthy():
                self.notifier.watchdog()
            else:
                log.warning("listener unhealthy: withholding the systemd watchdog ping")
            await asyncio.sleep(interval)


def _report_failed_while_stopping(tasks: Iterable[asyncio.Task[None]]) -> None:
    """A worker that failed once the stop had begun (as a rule on the cause already reported:
    riskd removed under the daemon) is said in one line, not left to asyncio's "exception was
    never retrieved" traceback at exit."""
    for task in tasks:
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("%s stopped on: %s", task.get_name(), _reason(exc))


def _log_stopped(accounts: int, handed_back: bool) -> None:
    """The last line of a run says where the unchecked accounts went, and only what is true:
    a hand-back that failed (riskd removed under the daemon, say) leaves them to the next
    sweep."""
    if not accounts:
        log.info("stopped", extra={"left": 0})
    elif handed_back:
        log.info(
            "stopped (%d accounts handed back to the dirty set)",
            accounts,
            extra={"left": accounts, "handed_back": True},
        )
    else:
        log.warning(
            "stopped (%d accounts could not be handed back: the next sweep checks them)",
            accounts,
            extra={"left": accounts, "handed_back": False},
        )


def run(settings: Settings) -> int:
    """Run the daemon until SIGTERM / SIGINT; the exit code."""
    return asyncio.run(Daemon(settings).run())
