"""Drain (DESIGN §2.2): on a wake-up, and on a short timer (a wake-up can race a commit), take
the dirty set (``DELETE … RETURNING``: several instances share it without locks) and the holders
of the instruments marked since (riskd.drain_instruments) into the debouncer; while drains keep
finding marks, drain again after ``BUSY_DRAIN_INTERVAL``; after an empty one, re-arm the
wake-up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from riskd.daemon.shared import Shared
from riskd.sqlfiles import query

log = logging.getLogger("riskd.daemon")

DRAIN_INTERVAL = 0.1  # the timer drain, for wake-ups that raced a commit or were skipped
BUSY_DRAIN_INTERVAL = 0.005  # while drains keep finding marks
DRAIN_TIMEOUT = 30.0


@dataclass(slots=True)
class Arming:
    """Whether the wake-up needs re-arming after a drain. Re-arm only once after marks were
    found: a wake-up stays armed until a mark draws it, and a drawn one means marks that some
    drain will find (and then re-arm), so an idle daemon's timer drain is one statement, with no
    write to the wakeup sequence that every trading mark reads. A wake-up whose drain finds
    nothing was drawn without a mark (by a sweep request, or for marks another instance took):
    re-arm then too."""

    armed: bool = False
    woken: bool = False  # a wake-up came (or a sweep request drew one) since the last drain

    def take_woken(self) -> bool:
        """Whether a wake-up came since the last drain began (read as a drain begins)."""
        woken, self.woken = self.woken, False
        return woken

    def needs_rearm(self, found: int, woken: bool) -> bool:
        """After a drain that found ``found`` accounts: re-arm, then drain again?"""
        return not found and (woken or not self.armed)

    def drained(self, found: int, rearmed: bool) -> None:
        if rearmed:
            self.armed = True
        if found:
            self.armed = False


class Drainer:
    def __init__(self, shared: Shared, on_found: Callable[[], None]) -> None:
        self.shared = shared
        self.on_found = on_found  # the checkers have work
        self.arming = Arming()
        self.now = shared.event()  # drain without waiting for the timer

    def wake(self) -> None:
        """A wake-up came: drain now, and re-arm if that finds nothing."""
        self.arming.woken = True
        self.now.set()

    def drawn(self) -> None:
        """Something drew the wake-up without a mark (a sweep request): the next drain that
        finds nothing re-arms it."""
        self.arming.woken = True

    async def run(self) -> None:
        shared = self.shared
        while not shared.stopping.is_set():
            self.now.clear()
            woken = self.arming.take_woken()
            found = await shared.retry("drain", _bounded(self._drain))
            rearm = self.arming.needs_rearm(found, woken)
            if rearm:
                found = await shared.retry("drain", _bounded(self._rearm_and_drain))
            self.arming.drained(found, rearm)
            delay = BUSY_DRAIN_INTERVAL if found else DRAIN_INTERVAL
            await shared.pause(delay, None if found else self.now)

    async def _drain(self) -> int:
        async with self.shared.pool.connection() as conn:
            cur = await conn.execute(query("drain"))
            rows: list[tuple[str, float, float]] = await cur.fetchall()
        return self._take(rows)

    async def _rearm_and_drain(self) -> int:
        # Re-arm first, then drain: a mark made after the empty drain and before the re-arm
        # (which drew more than 1, so did not notify) is found by this second drain.
        async with self.shared.pool.connection() as conn:
            await conn.execute(query("rearm"))
            cur = await conn.execute(query("drain"))
            rows: list[tuple[str, float, float]] = await cur.fetchall()
        return self._take(rows)

    def _take(self, rows: Iterable[tuple[str, float, float]]) -> int:
        shared = self.shared
        now = shared.clock()
        n = 0
        for account, age, priority in rows:
            shared.debouncer.mark(account, now, now - max(0.0, age or 0.0), priority)
            n += 1
        shared.stats.drains += 1
        if n:
            shared.stats.drained_accounts += n
            self.on_found()
        return n


def _bounded(fn: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
    """A drain that hangs (a silently stalled connection) fails after DRAIN_TIMEOUT and is
    retried on another connection, instead of stopping every drain for good."""

    async def bounded() -> int:
        return await asyncio.wait_for(fn(), DRAIN_TIMEOUT)

    return bounded
