"""What the parts of the daemon share, in one small explicit object: the settings, the instance,
the clock, the counters, the debouncer, the pool, and the stop.

The stop is an event every loop watches, plus the wake-up events of the parts (registered with
``event()``), which the stop sets too: every loop wakes, sees the stop and returns at a safe
point — never cancelled in the middle of a query, since psycopg then tries to cancel it on the
server, which can take seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity import wait_exponential_jitter as backoff

from riskd import migrate
from riskd.config import Settings, risk_fingerprint
from riskd.daemon.debounce import Debouncer
from riskd.daemon.faults import LISTENER_FAULTS
from riskd.daemon.metrics import Metrics
from riskd.daemon.sdnotify import SdNotifier
from riskd.daemon.stats import Stats
from riskd.db import require_dsn
from riskd.errors import reason

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("riskd.daemon")

BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 10.0

T = TypeVar("T")


class Shared:
    def __init__(
        self,
        settings: Settings,
        instance: str,
        notifier: SdNotifier,
        clock: Callable[[], float] = time.monotonic,
        *,
        probe_ok: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.dsn = require_dsn(settings)
        self.instance = instance
        self.notifier = notifier
        self.clock = clock
        self.stats = Stats(schema_revision=migrate.head(), risk=risk_fingerprint(settings.risk))
        self.debouncer = Debouncer(settings.daemon.debounce, settings.daemon.max_delay)
        # change-to-check latencies of the latest checks (seconds), for live views and metrics
        self.latencies: deque[float] = deque(maxlen=10_000)
        self.metrics = Metrics(self.current_stats, probe_ok)
        self.stopping = asyncio.Event()
        self._wakers: list[asyncio.Event] = []
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]  # set when the run starts

    def event(self) -> asyncio.Event:
        """A wake-up event for a part's loop; the stop sets it too."""
        event = asyncio.Event()
        self._wakers.append(event)
        return event

    def request_stop(self) -> None:
        """Stop taking work: every loop wakes up, sees the stop and returns at a safe point."""
        self.stopping.set()
        for event in self._wakers:
            event.set()

    async def pause(self, seconds: float, event: asyncio.Event | None = None) -> None:
        """Wait ``seconds``, less if ``event`` is set (the stop sets every event)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((event or self.stopping).wait(), seconds)

    def refresh(self) -> None:
        """The counters that are states, as of now: the dirty accounts held and the lag."""
        oldest = self.debouncer.oldest()
        self.stats.lag = round(max(0.0, self.clock() - oldest), 3) if oldest is not None else 0.0
        self.stats.dirty = len(self.debouncer)

    def current_stats(self) -> Stats:
        self.refresh()
        return self.stats

    def _retrying(self, what: str) -> AsyncRetrying:
        """Retry transient failures for ever, backing off exponentially with jitter up to a
        cap, each retry logged with its reason; the daemon's stop cancels the wait."""

        def before_sleep(state: RetryCallState) -> None:
            self.stats.errors += 1
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            said = reason(exc) if exc else "failed"
            log.warning(
                f"{what}.retry",
                extra={
                    "reason": said,
                    "retry_in": round(delay, 3),
                    "attempt": state.attempt_number,
                },
            )

        return AsyncRetrying(
            retry=retry_if_exception_type(LISTENER_FAULTS),
            wait=backoff(multiplier=BACKOFF_INITIAL, max=BACKOFF_MAX, jitter=1),
            before_sleep=before_sleep,
            reraise=True,
        )

    async def retry(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()``, retried through transient faults; each retry logged as ``<what>.retry``."""
        async for attempt in self._retrying(what):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")  # pragma: no cover
