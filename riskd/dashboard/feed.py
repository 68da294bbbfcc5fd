"""The live feed: one LISTEN on ``riskd_events`` serves every open browser.

A notification is only a hint (I4): on one, and on a timer (a NOTIFY skipped under a full queue,
one lost while reconnecting), the feed reads the events and alerts after its cursor once and
hands each to every subscriber. A browser that lost the stream comes back with the cursor of
the last message it had (Last-Event-ID) and is first given what it missed, from the tables.
Rows commit in another order than their ids: at a gap below a row it has, the feed waits a
moment (GAP_WAIT) for the row missing, so that its cursor does not pass it for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from riskd.dashboard import reads
from riskd.dashboard.present import Cursor, settled
from riskd.errors import reason
from riskd.sqlfiles import EVENTS_CHANNEL, query

log = logging.getLogger(__name__)

POLL = 2.0  # seconds: reads on this timer too, whatever the notifications say
RECONNECT = 2.0
GAP_WAIT = 3.0  # seconds the feed waits for a row missing below one it has (present.settled)
QUEUE = 1000  # messages a slow browser may fall behind before it is cut off (it reconnects)

Message = tuple[dict[str, Any], Cursor]


class Feed:
    def __init__(self, connect: Callable[[], Any]) -> None:
        self.connect = connect  # an autocommit AsyncConnection, the monitoring role's
        self.cursor: Cursor | None = None
        self.subscribers: set[Subscription] = set()
        self.listening = False
        self.closed = False
        self._gaps: dict[str, dict[int, float]] = {"event": {}, "alert": {}}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        """Until cancelled: LISTEN, then read on every hint and every POLL seconds."""
        self._loop = asyncio.get_running_loop()
        while True:
            try:
                async with await self.connect() as conn:
                    await conn.execute(
                        query("listen").format(channel=sql.Identifier(EVENTS_CHANNEL))
                    )
                    self.listening = True
                    if self.cursor is None:
                        self.cursor = await reads.cursors(conn)
                    await self._read(conn)  # what came while not listening
                    while True:
                        async for _ in conn.notifies(timeout=POLL, stop_after=1):
                            pass
                        await self._read(conn)
            except (psycopg.Error, OSError) as exc:
                log.warning("dashboard.feed_lost", extra={"reason": reason(exc)})
            except Exception:  # a bug must not end the feed for good: log it, start again
                log.exception("dashboard.feed_failed")
            finally:
                self.listening = False
            await asyncio.sleep(RECONNECT)

    async def _read(self, conn: psycopg.AsyncConnection[Any]) -> None:
        assert self.cursor is not None
        while True:
            events, alerts = await reads.feed_tables(conn, self.cursor)
            full = max(len(events), len(alerts)) >= reads.FEED_BATCH
            now = time.monotonic()
            # what may have a row still to commit below it waits a moment (present.settled)
            take_events = settled(
                self.cursor.event_id, [r["id"] for r in events], self._gaps["event"], now, GAP_WAIT
            )
            take_alerts = settled(
                self.cursor.alert_id, [r["id"] for r in alerts], self._gaps["alert"], now, GAP_WAIT
            )
            held = take_events < len(events) or take_alerts < len(alerts)
            for message, cursor in reads.feed_merge(
                self.cursor, events[:take_events], alerts[:take_alerts]
            ):
                self.cursor = cursor
                self._publish((message, cursor))
            if held or not full:
                return  # the held ones at the next read (on a hint, or POLL seconds on)

    def _publish(self, message: Message) -> None:
        for subscription in list(self.subscribers):
            try:
                subscription.queue.put_nowait(message)
            except asyncio.QueueFull:  # too far behind: cut off; its EventSource reconnects
                subscription.cut = True
                self.subscribers.discard(subscription)

    def close(self) -> None:
        """The server is stopping: every stream ends now (an event stream never ends by
        itself, and the server waits for every response before it stops)."""
        self.closed = True
        for subscription in list(self.subscribers):
            subscription.end()
        self.subscribers.clear()

    def close_threadsafe(self) -> None:
        """close(), from a signal handler or another thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.close)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        subscription = Subscription(asyncio.Queue(QUEUE))
        if self.closed:
            subscription.end()
        self.subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self.subscribers.discard(subscription)


@dataclass(eq=False, slots=True)
class Subscription:
    """One browser's stream: what the feed published for it, and whether it fell too far
    behind (then its stream ends and the browser comes back with its cursor)."""

    queue: asyncio.Queue[Message | None]
    cut: bool = False

    def end(self) -> None:
        """End this stream: cut, and woken if it waits."""
        self.cut = True
        with contextlib.suppress(asyncio.QueueFull):  # full: it wakes on what it holds
            self.queue.put_nowait(None)

    async def next(self, timeout: float) -> Message | None:
        """The next message, or None after ``timeout`` seconds (time for a keep-alive) or
        when the stream ends (``cut``)."""
        if self.cut:
            return None
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None
