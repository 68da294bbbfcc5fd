"""``riskd run``: the assembly of the loop — builds the parts, starts every task in one place,
stops, and maps a crash to an exit code. Each part is a module of this package, named after its
step of DESIGN §2: listen, drain, debounce, checker, sweep, report (with metrics and sdnotify).

SIGTERM / SIGINT: stop taking work, finish the batch in flight within ``shutdown_timeout``, hand
what is left back to the dirty set, remove the heartbeat, exit 0 (I6). A second signal exits at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from riskd import __version__, privileges
from riskd import check as checks
from riskd.config import Settings, effective
from riskd.daemon.checker import Checker
from riskd.daemon.deliver import Deliverer
from riskd.daemon.drain import Drainer
from riskd.daemon.faults import SCHEMA_GONE
from riskd.daemon.listen import PING_TIMEOUT, Listener
from riskd.daemon.preflight import preflight, schema_moved_or
from riskd.daemon.report import Reporter
from riskd.daemon.sdnotify import SdNotifier
from riskd.daemon.shared import Shared
from riskd.daemon.stats import Stats
from riskd.daemon.sweep import Sweeper
from riskd.db import apool, session_values
from riskd.errors import ConfigError, reason
from riskd.sqlfiles import CHANGES_CHANNEL, query

log = logging.getLogger("riskd.daemon")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What an embedding program (the demo) reads of a running daemon."""

    stats: Stats  # a copy; lag and dirty as of the call
    latencies: tuple[float, ...]  # change-to-check seconds of the latest checks, oldest first


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
        self.handle_signals = handle_signals
        self.shared = shared = Shared(
            settings,
            instance or checks.default_instance(),
            notifier or SdNotifier(),
            clock,
            probe_ok=lambda: self.reporter.probe_ok(),
        )
        self.deliverer = Deliverer(shared)
        self.checker = Checker(shared, on_events=self.deliverer.wake)
        self.drainer = Drainer(shared, on_found=self.checker.wake)
        self.listener = Listener(shared, on_connect=self._on_connect, on_wakeup=self._on_wakeup)
        self.sweeper = Sweeper(
            shared, self.checker, self.listener.ready, on_request=self.drainer.drawn
        )
        self.reporter = Reporter(shared, self.listener, started_at=datetime.now(UTC))

    # the listener's news, for the parts that act on it

    def _on_connect(self) -> None:
        """LISTENing again: sweep (what a notification missed meanwhile), and drain."""
        self.sweeper.reconnected.set()
        self.sweeper.poke.set()
        self.drainer.now.set()

    def _on_wakeup(self) -> None:
        self.drainer.wake()
        self.sweeper.poke.set()  # a sweep request draws the wake-up too

    # what an embedding program uses

    def snapshot(self) -> Snapshot:
        stats = self.shared.current_stats()
        copy = dataclasses.replace(
            stats,
            capture_problems=list(stats.capture_problems),
            events_by_level=dict(stats.events_by_level),
            risk=dict(stats.risk),
        )
        return Snapshot(copy, tuple(self.shared.latencies))

    def request_stop(self) -> None:
        """Stop the daemon as SIGTERM does (for an embedding program: the demo)."""
        log.info("stop.requested")
        self.shared.request_stop()

    # the run

    async def run(self) -> int:
        if self.handle_signals:
            self._handle_signals()
        self._log_start()
        if not await self._preflight():
            return 0  # stopped before the loop began
        workers, checkers, ready = await self._start()
        stopping = asyncio.create_task(self.shared.stopping.wait(), name="stop")
        done, _ = await asyncio.wait(
            {stopping, *checkers, *workers.values()}, return_when=asyncio.FIRST_COMPLETED
        )
        crashed = [t for t in done if t is not stopping and not t.cancelled() and t.exception()]
        code = 1 if crashed else 0
        for task in crashed:
            code = max(code, await self._crashed(task))
        return await self._shutdown(workers, checkers, ready, code=code, reported=set(crashed))

    def _log_start(self) -> None:
        shared = self.shared
        running = effective(shared.settings)  # the DSN in it is masked
        log.info(
            "daemon.starting",
            extra={
                "version": __version__,
                "schema_revision": shared.stats.schema_revision,
                "instance": shared.instance,
                **running,
            },
        )

    async def _preflight(self) -> bool:
        """The database checked (a ConfigError ends the run with its one line), or False
        when the stop came first."""
        shared = self.shared
        shared.notifier.status("starting: connecting to the database")
        checked = asyncio.create_task(preflight(shared))
        stop = asyncio.create_task(shared.stopping.wait())
        await asyncio.wait({checked, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not checked.done():
            checked.cancel()
            with contextlib.suppress(BaseException):
                await checked
            shared.notifier.stopping()
            return False
        stop.cancel()
        checked.result()
        return True

    async def _start(
        self,
    ) -> tuple[dict[str, asyncio.Task[None]], list[asyncio.Task[None]], asyncio.Task[None]]:
        """Every task of the loop, started here and nowhere else."""
        shared = self.shared
        shared.pool = apool(shared.dsn, PING_TIMEOUT, session_values(shared.settings))
        daemon_settings = shared.settings.daemon
        if daemon_settings.metrics_port:
            await shared.metrics.serve(daemon_settings.metrics_host, daemon_settings.metrics_port)
        await shared.pool.open(wait=False)
        workers = {
            "listener": asyncio.create_task(self.listener.run(), name="listener"),
            "drainer": asyncio.create_task(self.drainer.run(), name="drainer"),
            "sweeper": asyncio.create_task(self.sweeper.run(), name="sweeper"),
            "reporter": asyncio.create_task(self.reporter.run(), name="reporter"),
            "watchdog": asyncio.create_task(self.reporter.watchdog(), name="watchdog"),
        }
        if shared.settings.webhook.url:
            workers["deliverer"] = asyncio.create_task(self.deliverer.run(), name="deliverer")
        checkers = [
            asyncio.create_task(self.checker.run(), name="checker"),
            asyncio.create_task(self.checker.run(risk_lane=True), name="risk lane"),
        ]
        ready = asyncio.create_task(self._announce_ready(), name="ready")
        return workers, checkers, ready

    def _handle_signals(self) -> None:
        signals = 0

        def on_signal(signum: int) -> None:
            nonlocal signals
            signals += 1
            if signals > 1:
                log.warning(
                    "signal.again", extra={"signal": signal.Signals(signum).name, "exit": 1}
                )
                os._exit(1)
            log.info("signal.received", extra={"signal": signal.Signals(signum).name})
            self.shared.request_stop()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)

    async def _crashed(self, task: asyncio.Task[Any]) -> int:
        """Say why a task ended the run; the exit code (1 a fault, 2 a configuration)."""
        exc = task.exception()
        assert exc is not None
        if isinstance(exc, SCHEMA_GONE):
            # riskd's own objects vanished under a worker: the schema was moved (migrate to
            # another revision or to base); say so in the fence's words, exit 2
            exc = await schema_moved_or(self.shared, exc)
        if isinstance(exc, ConfigError):
            log.error("daemon.refused", extra={"error": str(exc)})
            return 2
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            # a grant revoked while running: not an outage to ride out, nor a bug
            log.error(
                "privilege.lost",
                extra={
                    "task": task.get_name(),
                    "error": exc.diag.message_primary or reason(exc),
                    "hint": privileges.GRANTS_HINT,
                },
            )
            return 2
        log.error(
            "task.failed", extra={"task": task.get_name(), "reason": reason(exc)}, exc_info=exc
        )
        return 1

    async def _announce_ready(self) -> None:
        await self.listener.ready.wait()
        await self.sweeper.swept_once.wait()
        self.shared.stats.state = "running"
        self.reporter.ready.set()
        self.shared.notifier.ready(self.reporter.summary())
        log.info("daemon.ready", extra={"channel": CHANGES_CHANNEL})

    async def _shutdown(
        self,
        workers: dict[str, asyncio.Task[None]],
        checkers: list[asyncio.Task[None]],
        ready: asyncio.Task[None],
        code: int,
        reported: set[asyncio.Task[Any]],
    ) -> int:
        shared = self.shared
        shared.stats.state = "stopping"
        shared.notifier.stopping("stopping: finishing the checks in flight")
        shared.request_stop()
        deadline = shared.clock() + shared.settings.daemon.shutdown_timeout
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
            log.error("task.stuck", extra={"task": task.get_name(), "where": where})
        _report_failed_while_stopping(set(workers.values()) - reported)
        self.checker.wake()
        in_flight = [a for batch in self.checker.in_flight.values() for a, _ in batch]
        timeout = max(0.0, deadline - shared.clock())
        try:
            await asyncio.wait_for(asyncio.gather(*checkers), timeout)
            in_flight = []
        except TimeoutError:
            log.warning("shutdown.timeout", extra={"checks": "abandoned, handed back"})
        except Exception as exc:  # noqa: BLE001 - already counted; the stop goes on
            log.warning("shutdown.checker_failed", extra={"reason": reason(exc)})
        left = sorted({*in_flight, *shared.debouncer.drain_all()})
        handed_back = await self._hand_back(left)
        await self._leave()
        await shared.metrics.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(shared.pool.close(timeout=1.0), 2.0)
        _log_stopped(len(left), handed_back)
        shared.notifier.close()
        return code

    async def _hand_back(self, accounts: list[str]) -> bool:
        """Give the accounts still to check back to the dirty set, for whichever instance
        drains next; whether they are there now (True when there were none)."""
        if not accounts:
            return True
        rows = json.dumps([{"account_id": a} for a in accounts])
        try:
            async with self.shared.pool.connection(timeout=2.0) as conn:
                await asyncio.wait_for(conn.execute(query("requeue"), {"rows": rows}), 5.0)
        except Exception as exc:  # noqa: BLE001 - the next sweep finds them anyway
            log.warning("handback.failed", extra={"accounts": len(accounts), "reason": reason(exc)})
            return False
        return True

    async def _leave(self) -> None:
        try:
            async with self.shared.pool.connection(timeout=2.0) as conn:
                await asyncio.wait_for(
                    conn.execute(query("leave"), {"instance": self.shared.instance}), 5.0
                )
        except Exception as exc:  # noqa: BLE001
            log.warning("heartbeat.not_removed", extra={"reason": reason(exc)})


def _report_failed_while_stopping(tasks: Iterable[asyncio.Task[None]]) -> None:
    """A worker that failed once the stop had begun (as a rule on the cause already reported:
    riskd removed under the daemon) is said in one line, not left to asyncio's "exception was
    never retrieved" traceback at exit."""
    for task in tasks:
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            log.warning(
                "task.failed_stopping", extra={"task": task.get_name(), "reason": reason(exc)}
            )


def _log_stopped(accounts: int, handed_back: bool) -> None:
    """The last line of a run says where the unchecked accounts went, and only what is true:
    a hand-back that failed (riskd removed under the daemon, say) leaves them to the next
    sweep."""
    if not accounts:
        log.info("daemon.stopped", extra={"left": 0})
    elif handed_back:
        log.info("daemon.stopped", extra={"left": accounts, "handed_back": True})
    else:
        log.warning(
            "daemon.stopped",
            extra={"left": accounts, "handed_back": False, "then": "the next sweep checks them"},
        )


def run(settings: Settings) -> int:
    """Run the daemon until SIGTERM / SIGINT; the exit code."""
    return asyncio.run(Daemon(settings).run())
