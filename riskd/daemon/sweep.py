"""Sweep (DESIGN §2.5): the instance holding the sweep leader lock (a session advisory lock)
sweeps every ``sweep_interval``, right after every (re)connect of the listener, and as soon as it
finds a sweep request (a TRUNCATE of a mapped table); the others try for the lock meanwhile. A
sweep is one set-based pass (riskd.sweep) whose candidates — the accounts whose level would
change — go to the checker, which checks them after the due accounts; the sweep awaits that."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from riskd import check as checks
from riskd.daemon.checker import Checker
from riskd.daemon.faults import TRANSIENT
from riskd.daemon.preflight import check_capture
from riskd.daemon.shared import Shared
from riskd.db import aconnect
from riskd.errors import reason
from riskd.sqlfiles import SWEEP_LEADER_CLASS, SWEEP_LEADER_KEY, query

log = logging.getLogger("riskd.daemon")

SWEEP_REQUEST_POLL = 1.0
FOLLOWER_RETRY = 5.0  # a follower tries for the leader lock at least this often


class Sweeper:
    def __init__(
        self,
        shared: Shared,
        checker: Checker,
        listening: asyncio.Event,
        on_request: Callable[[], None],
    ) -> None:
        self.shared = shared
        self.checker = checker
        self.listening = listening  # LISTEN first, then read the state (DESIGN §6)
        self.on_request = on_request  # a sweep request drew the wake-up without a mark
        self.swept_once = asyncio.Event()  # the first sweep (or the first try, as a follower)
        self.reconnected = shared.event()  # the listener reconnected: sweep now
        self.poke = shared.event()  # look for sweep requests now

    async def run(self) -> None:
        shared = self.shared
        interval = shared.settings.daemon.sweep_interval
        await self.listening.wait()
        while not shared.stopping.is_set():
            conn = await shared.retry("sweep", lambda: aconnect(shared.dsn))
            try:
                shared.stats.leader = False
                while not shared.stopping.is_set():
                    if not shared.stats.leader:
                        shared.stats.leader = await self._try_lead(conn)
                    if shared.stats.leader:
                        self.reconnected.clear()
                        await self._take_requests(conn)  # this sweep honours them
                        await self._sweep(conn)
                    self.swept_once.set()
                    if shared.stats.leader:
                        await self._until_next(conn, interval)
                    else:  # only the leader sweeps; the others just retry the lock
                        await shared.pause(min(interval, FOLLOWER_RETRY))
            except TRANSIENT as exc:
                shared.stats.errors += 1
                log.warning("sweep.lost", extra={"reason": reason(exc)})
            finally:
                shared.stats.leader = False
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 1.0)

    async def _try_lead(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        cur = await conn.execute(
            query("try_sweep_leader"), {"lock_class": SWEEP_LEADER_CLASS, "key": SWEEP_LEADER_KEY}
        )
        row = await cur.fetchone()
        leader = bool(row and row[0])
        if leader:
            log.info("sweep.leader")
        return leader

    async def _until_next(self, conn: psycopg.AsyncConnection[Any], interval: float) -> None:
        """Wait until the next sweep is due: ``sweep_interval`` gone by, a reconnect, or a sweep
        request found (looked for on every wake-up and every ``SWEEP_REQUEST_POLL``)."""
        shared = self.shared
        due = shared.clock() + interval
        while not (shared.stopping.is_set() or self.reconnected.is_set()):
            left = due - shared.clock()
            if left <= 0:
                return
            self.poke.clear()
            if await self._take_requests(conn):
                return
            await shared.pause(min(left, SWEEP_REQUEST_POLL), self.poke)

    async def _take_requests(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Take the pending sweep requests (sql/capture.sql: a TRUNCATE of a mapped table asks
        for one); how many there were."""
        cur = await conn.execute(query("take_sweep_requests"))
        row = await cur.fetchone()
        requests, reasons = row if row else (0, None)
        if requests:
            log.info("sweep.requested", extra={"requests": requests, "reason": reasons})
            self.on_request()
        return int(requests)

    async def _sweep(self, conn: psycopg.AsyncConnection[Any]) -> None:
        shared = self.shared
        await check_capture(shared, conn)
        started = shared.clock()
        candidates = await checks.asweep_candidates(conn, shared.settings)
        await self.checker.check_sweep(candidates)
        took = shared.clock() - started
        shared.stats.sweeps += 1
        shared.stats.last_sweep_at = datetime.now(UTC).isoformat(timespec="seconds")
        shared.stats.last_sweep_duration = round(took, 3)
        shared.metrics.sweep.observe(took)
        log.info(
            "sweep.done",
            extra={"seconds": shared.stats.last_sweep_duration, "candidates": len(candidates)},
        )
