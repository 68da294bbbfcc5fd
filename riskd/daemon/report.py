"""Report (DESIGN §2.6): the heartbeat row in riskd.daemons (the counters of ``stats.py``),
systemd STATUS=, and WATCHDOG=1 only while the loop and the listener are healthy; the health
that ``/healthz`` answers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from dataclasses import asdict
from datetime import datetime

import psycopg

from riskd import __version__
from riskd.daemon.faults import SchemaMoved
from riskd.daemon.listen import PING_INTERVAL, PING_TIMEOUT, Listener
from riskd.daemon.preflight import check_revision
from riskd.daemon.shared import BACKOFF_MAX, Shared
from riskd.daemon.stats import HEARTBEAT_INTERVAL, STALE_ROW_TTL
from riskd.db import CONNECT_TIMEOUT
from riskd.errors import reason
from riskd.sqlfiles import query

log = logging.getLogger("riskd.daemon")

# The listener counts as alive while it showed progress (a ping answered, a reconnect tried)
# within this window: what a reconnect through the longest backoff takes, and a ping.
HEALTH_WINDOW = CONNECT_TIMEOUT + BACKOFF_MAX + PING_INTERVAL + PING_TIMEOUT + 5


def healthy(now: float, listener_progress: float) -> bool:
    """The loop runs (whoever asks is in it) and the listener is alive or busy reconnecting."""
    return now - listener_progress < HEALTH_WINDOW


class Reporter:
    def __init__(self, shared: Shared, listener: Listener, started_at: datetime) -> None:
        self.shared = shared
        self.listener = listener
        self.started_at = started_at
        self.ready = asyncio.Event()  # start-up complete: systemd arms the watchdog then

    def healthy(self) -> bool:
        return healthy(self.shared.clock(), self.listener.progress)

    def probe_ok(self) -> bool:
        """What /healthz answers: listening now, and the loop alive."""
        return self.listener.listening and self.healthy()

    def summary(self) -> str:
        s, shared = self.shared.stats, self.shared
        paused = (
            f"PAUSED by {s.paused_by}" + (f" ({s.paused_reason})" if s.paused_reason else "") + "; "
            if s.paused
            else ""
        )
        return (
            f"{paused}{s.state}; {'listening' if self.listener.listening else 'not listening'}; "
            f"{len(shared.debouncer)} dirty; {s.checks} checks, {s.events} events; "
            f"lag {s.lag:.1f} s{'; sweep leader' if s.leader else ''}"
        )

    async def run(self) -> None:
        shared = self.shared
        host = socket.gethostname()
        while not shared.stopping.is_set():
            shared.refresh()
            params = {
                "instance": shared.instance,
                "host": host,
                "pid": os.getpid(),
                "version": __version__,
                "started_at": self.started_at,
                "stats": json.dumps(asdict(shared.stats)),
            }
            try:
                async with shared.pool.connection(timeout=HEARTBEAT_INTERVAL) as conn:
                    cur = await asyncio.wait_for(conn.execute(query("schema_revision")), 5.0)
                    row = await cur.fetchone()
                    check_revision(shared, row[0] if row else None, running=True)
                    cur = await asyncio.wait_for(conn.execute(query("daemon_controls")), 5.0)
                    self._switch(await cur.fetchone())
                    await asyncio.wait_for(conn.execute(query("heartbeat"), params), 5.0)
                    await asyncio.wait_for(
                        conn.execute(query("prune_daemons"), {"after": STALE_ROW_TTL}), 5.0
                    )
            except (psycopg.errors.InsufficientPrivilege, SchemaMoved):
                raise
            except psycopg.errors.UndefinedTable as exc:
                # riskd removed under the daemon (`riskd migrate --revision base`)
                raise SchemaMoved(
                    f"riskd was removed from this database under the daemon ({reason(exc)}): "
                    "stopping"
                ) from exc
            except Exception as exc:  # noqa: BLE001 - reported, never fatal
                shared.stats.errors += 1
                log.warning("heartbeat.failed", extra={"reason": reason(exc)})
            shared.notifier.status(self.summary())
            await shared.pause(HEARTBEAT_INTERVAL)

    def _switch(self, row: tuple[object, ...] | None) -> None:
        """The kill switch as this heartbeat read it; a change is logged once per instance."""
        s = self.shared.stats
        paused = bool(row and row[0])
        if paused != s.paused:
            event = "rails.paused" if paused else "rails.resumed"
            fields = {"by": row[1], "reason": row[2]} if row and paused else {}
            (log.warning if paused else log.info)(event, extra=fields)
        s.paused = paused
        s.paused_by = str(row[1]) if row and paused and row[1] is not None else None
        s.paused_reason = str(row[2]) if row and paused and row[2] is not None else None

    async def watchdog(self) -> None:
        shared = self.shared
        interval = shared.notifier.watchdog_interval()
        if interval is None:
            await asyncio.Event().wait()  # no watchdog configured: nothing to do, ever
            return
        await self.ready.wait()  # systemd arms the watchdog once the start-up is complete
        while True:
            if self.healthy():
                shared.notifier.watchdog()
            else:
                log.warning("watchdog.withheld", extra={"why": "listener unhealthy"})
            await asyncio.sleep(interval)
