"""Listen (DESIGN §2.2): a dedicated autocommit connection LISTENs on ``riskd_changes`` and on a
private ping channel. A ping NOTIFYed from the pool every ``PING_INTERVAL`` must come back
within ``PING_TIMEOUT``, else the connection counts as dead however healthy its socket looks (a
silently stalled network). Reconnects with capped exponential backoff and jitter.

A notification is a hint, never an instruction (I4): the triggers' wake-up carries no payload,
and anything else on the channel is counted and dropped, said at most once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from riskd.daemon.faults import LISTENER_FAULTS, ListenerStalled
from riskd.daemon.shared import BACKOFF_INITIAL, Shared
from riskd.db import aconnect
from riskd.errors import reason
from riskd.sqlfiles import CHANGES_CHANNEL, query

log = logging.getLogger("riskd.daemon")

PING_INTERVAL = 2.0  # seconds between self-pings on the listener
PING_TIMEOUT = 3.0  # a ping not back by then: the listener is dead
MALFORMED_LOG_EVERY = 60.0


@dataclass(slots=True)
class Ping:
    token: str
    sent_at: float


def ping_step(now: float, ping: Ping | None, next_ping: float) -> tuple[str, float]:
    """What the listener does next: ``("stalled", …)`` when the ping in flight is overdue,
    ``("send", now)`` when a ping is due, else ``("wait", until)``."""
    if ping is not None:
        deadline = ping.sent_at + PING_TIMEOUT
        return ("stalled", deadline) if now >= deadline else ("wait", deadline)
    if now >= next_ping:
        return "send", now
    return "wait", next_ping


@dataclass(slots=True)
class DropCount:
    """Payloads dropped since they were last said, said at most once every ``every`` seconds
    so that a flood costs one line a minute."""

    every: float = MALFORMED_LOG_EVERY
    since_said: int = 0
    said_at: float = float("-inf")
    latest: tuple[int, int] = (0, 0)  # the latest dropped payload: backend pid, bytes

    def drop(self, pid: int, size: int) -> None:
        self.since_said += 1
        self.latest = (pid, size)

    def due(self, now: float) -> int:
        """How many to say now (0: nothing to say yet); counted as said."""
        if not self.since_said or now - self.said_at < self.every:
            return 0
        dropped, self.since_said, self.said_at = self.since_said, 0, now
        return dropped


class Listener:
    def __init__(
        self,
        shared: Shared,
        *,
        on_connect: Callable[[], None],
        on_wakeup: Callable[[], None],
    ) -> None:
        self.shared = shared
        self.on_connect = on_connect  # after every (re)connect: drain, and sweep (DESIGN §6)
        self.on_wakeup = on_wakeup
        self.channel = f"riskd_ping_{uuid.uuid4().hex[:16]}"
        self.listening = False
        self.ready = asyncio.Event()  # listening for the first time
        self.progress = shared.clock()  # when the listener last showed it was alive
        self._ping: Ping | None = None
        self._dropped = DropCount()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        shared, first = self.shared, True
        while True:
            conn = await shared.retry("listener", self._connect)
            if not first:
                shared.stats.reconnects += 1
                log.info("listener.reconnected")
            first = False
            self.listening = True
            self.ready.set()
            self.progress = shared.clock()
            self.on_connect()
            try:
                await self._listen(conn)
            except LISTENER_FAULTS as exc:
                shared.stats.errors += 1
                log.warning(
                    "listener.lost", extra={"reason": reason(exc), "retry_in": BACKOFF_INITIAL}
                )
            finally:
                self.listening = False
                self._ping = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 1.0)
            await shared.pause(BACKOFF_INITIAL)  # then retry's own backoff, said as above

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        self.progress = self.shared.clock()
        conn = await aconnect(self.shared.dsn)
        try:
            for channel in (CHANGES_CHANNEL, self.channel):
                await conn.execute(query("listen").format(channel=sql.Identifier(channel)))
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        clock = self.shared.clock
        next_ping = clock() + PING_INTERVAL
        while True:
            self._say_dropped()
            now = clock()
            step, until = ping_step(now, self._ping, next_ping)
            if step == "stalled":
                raise ListenerStalled(f"no answer to the self-ping in {PING_TIMEOUT:.0f} s")
            if step == "send":
                token = uuid.uuid4().hex
                self._ping = Ping(token, now)
                ping = asyncio.create_task(self._send_ping(token))
                self._tasks.add(ping)  # a task nobody references may be collected mid-flight
                ping.add_done_callback(self._tasks.discard)
                continue
            async for notify in conn.notifies(timeout=max(0.0, until - now)):
                if self._on_notify(notify):
                    next_ping = clock() + PING_INTERVAL

    async def _send_ping(self, token: str) -> None:
        try:
            async with self.shared.pool.connection(timeout=PING_TIMEOUT) as conn:
                await asyncio.wait_for(
                    conn.execute(query("ping"), {"channel": self.channel, "payload": token}),
                    PING_TIMEOUT,
                )
        except Exception as exc:  # noqa: BLE001 - the listener judges by the missing answer
            log.debug("ping.failed", extra={"reason": reason(exc)})

    def _on_notify(self, notify: psycopg.Notify) -> bool:
        """Handle one notification; True when it answered our ping."""
        stats = self.shared.stats
        if notify.channel == self.channel:
            if self._ping is not None and notify.payload == self._ping.token:
                self._ping = None
                stats.pings += 1
                self.progress = self.shared.clock()
                return True
            return False
        # riskd_changes: the triggers' wake-up carries no payload. Anything else is not ours:
        # counted and dropped, never parsed into an action (I4).
        if notify.payload == "":
            stats.notifications += 1
            self.on_wakeup()
            return False
        stats.malformed_payloads += 1
        self._dropped.drop(notify.pid, len(notify.payload.encode("utf-8", "replace")))
        return False

    def _say_dropped(self) -> None:
        """After each wait for notifications, so that a burst is counted whole."""
        dropped = self._dropped.due(self.shared.clock())
        if not dropped:
            return
        pid, size = self._dropped.latest
        log.warning(
            "payloads.dropped",
            extra={"dropped": dropped, "channel": CHANGES_CHANNEL, "pid": pid, "bytes": size},
        )
