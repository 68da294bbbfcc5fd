"""Check (DESIGN §2.4): due accounts from the debouncer, in batches of ``batch_size``, ahead of
sweep work; one round trip per batch (riskd.check_accounts, riskd/check.py). Two lanes: the
main one takes every due account; the risk lane only those within ``RISK_LANE_BELOW`` of the
warning threshold or over it (their last recorded utilisation), so that they never wait behind a
batch of calmer ones (DESIGN §1, risk first). An account whose flatten meets a trade's row lock
waits alone, longer each time (debounce.busy_delay), while the others go on being checked.

The check itself lives in riskd/check.py, which ``riskd check`` and ``riskd sweep`` share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Literal

import psycopg

from riskd import check as checks
from riskd.daemon.debounce import Debouncer, busy_delay
from riskd.daemon.faults import CHECK_FAULTS, TRANSIENT
from riskd.daemon.shared import BACKOFF_INITIAL, Shared
from riskd.errors import reason

log = logging.getLogger("riskd.daemon")

CHECK_TIMEOUT = 60.0  # a batch that takes longer is abandoned and retried
# The risk lane takes the accounts whose priority (last recorded utilisation) is at least the
# warning threshold less this; it looks again at least this often while calm accounts are due.
RISK_LANE_BELOW = 0.1
RISK_LANE_POLL = 0.01
# The main lane takes too the accounts falling due within this share of ``debounce`` (at most
# EARLY_CAP seconds), so that a busy spell is checked in batches, not a round trip per account.
EARLY_SHARE = 0.1
EARLY_CAP = 0.1

Batch = list[tuple[str, float]]  # accounts, each with the time of its first unchecked change
Failure = Literal["split", "defer", "requeue", "drop"]


def next_batch(
    debouncer: Debouncer,
    sweep_queue: deque[str],
    now: float,
    size: int,
    *,
    risk_floor: float | None = None,
    early: float = 0.0,
) -> tuple[Batch, bool]:
    """The next batch and whether it is sweep work: the due accounts first (with
    ``risk_floor``, the risk lane's, only those of at least that priority, and never sweep
    work), then the sweep's."""
    if risk_floor is not None:
        return debouncer.pop_due(now, size, risk_floor), False
    due = debouncer.pop_due(now, size, early=early)
    if due:
        return due, False
    batch: Batch = []
    while sweep_queue and len(batch) < size:
        batch.append((sweep_queue.popleft(), now))
    return batch, True


def on_failure(size: int, *, busy: bool, transient: bool) -> Failure:
    """What to do with a batch whose check failed. A flatten that met a trade's row lock
    (``busy``) fails for its own account only: like any failure that is not transient, it is
    isolated by splitting the batch, and the busy account alone waits (``defer``). Any other
    transient failure (connection lost, a timeout) concerns every account: the batch waits, and
    so does the checker, a moment (``requeue``). A lone account that fails for good is dropped
    until the next mark or sweep."""
    if size > 1 and (busy or not transient):
        return "split"
    if busy:
        return "defer"
    return "requeue" if transient else "drop"


def action(r: checks.CheckResult, auto_close: str) -> tuple[str, str | None]:
    """The action a check took with its event, as the result tells it: the close request it
    made, or none for a critical account (auto_close = off, data riskd cannot trust, a request
    already pending). In flatten mode the request may be a fallback (a generated balance cannot
    be booked, sql/check.sql): ``riskd events`` says which it was."""
    if r.close_request_id is not None:
        if auto_close == "flatten":
            return "flatten", f"flatten, close request {r.close_request_id}"
        return checks.REQUEST_OPENED, f"close request {r.close_request_id} opened"
    return checks.NO_ACTION, "none" if r.level == "critical" else None


class Checker:
    def __init__(self, shared: Shared, on_events: Callable[[], None] = lambda: None) -> None:
        self.shared = shared
        self.on_events = on_events  # events were written: the delivery task has work
        self.work = shared.event()  # due accounts or sweep work for the main lane
        self.risk_work = shared.event()
        self.sweep_queue: deque[str] = deque()
        self.in_flight: dict[str, Batch] = {}  # by lane
        # account -> checks in a row that met a trade's row lock; emptied as each is checked
        self._busy: dict[str, int] = {}
        self._sweep_left = 0
        self._swept = shared.event()

    def wake(self) -> None:
        """Accounts came in (a drain found some): both lanes look."""
        self.work.set()
        self.risk_work.set()

    async def check_sweep(self, accounts: list[str]) -> None:
        """Check a sweep's accounts after the due ones; return once every one was checked
        (or failed, or the stop came)."""
        if not accounts:
            return
        self._swept.clear()
        self._sweep_left += len(accounts)
        self.sweep_queue.extend(accounts)
        self.work.set()
        await self._swept.wait()

    async def run(self, risk_lane: bool = False) -> None:
        """Runs until the stop, then returns after the batch in flight."""
        shared = self.shared
        lane = "risk" if risk_lane else "checker"
        work = self.risk_work if risk_lane else self.work
        size = shared.settings.daemon.batch_size
        floor = float(shared.settings.risk.warning_threshold) - RISK_LANE_BELOW
        early = min(EARLY_CAP, shared.settings.daemon.debounce * EARLY_SHARE)
        while True:
            work.clear()
            if shared.stopping.is_set():
                return
            batch, from_sweep = next_batch(
                shared.debouncer,
                self.sweep_queue,
                shared.clock(),
                size,
                risk_floor=floor if risk_lane else None,
                early=early,
            )
            if batch:
                self.in_flight[lane] = batch
                try:
                    await self._check(batch)
                finally:
                    self.in_flight[lane] = []
                    if from_sweep:
                        self._sweep_left -= len(batch)
                        if self._sweep_left <= 0:
                            self._swept.set()
                continue
            deadline = shared.debouncer.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - shared.clock())
            if risk_lane and timeout is not None:
                # the next account due may be a calm one, the other lane's: look again a moment
                # later rather than spin until that lane has taken it
                timeout = max(timeout, RISK_LANE_POLL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(work.wait(), timeout)

    def requeue(self, batch: Batch) -> None:
        """Back into the debouncer, keeping each account's first unchecked change."""
        now = self.shared.clock()
        for account, first in batch:
            self.shared.debouncer.mark(account, now, first)

    async def _check(self, batch: Batch) -> None:
        shared = self.shared
        ids = [a for a, _ in batch]
        started = shared.clock()
        try:
            async with shared.pool.connection(timeout=CHECK_TIMEOUT) as conn:
                results = await asyncio.wait_for(
                    checks.acheck_accounts(conn, shared.settings, ids, shared.instance),
                    CHECK_TIMEOUT,
                )
        except psycopg.errors.InsufficientPrivilege:
            self.requeue(batch)  # handed back at the stop
            raise
        except CHECK_FAULTS as exc:
            await self._failed(batch, exc)
            return
        now = shared.clock()
        shared.debouncer.checked(ids, now)
        if self._busy:
            for account in ids:
                self._busy.pop(account, None)
        self._count(batch, results, started, now)

    def _count(
        self, batch: Batch, results: list[checks.CheckResult], started: float, now: float
    ) -> None:
        shared, stats = self.shared, self.shared.stats
        shared.metrics.check_batch.observe(now - started)
        for _, first in batch:
            shared.latencies.append(now - first)
            shared.metrics.latency.observe(now - first)
        stats.checks += len(results)
        stats.check_batches += 1
        stats.last_check_latency = max(now - first for _, first in batch)
        for r in results:
            if r.event_id is not None:
                stats.events += 1
                stats.events_by_level[r.level] = stats.events_by_level.get(r.level, 0) + 1
                what, said = action(r, shared.settings.risk.auto_close)
                log.info(
                    "account.transition",
                    extra={
                        "account": r.account_id,
                        "from_level": r.previous_level,
                        "to_level": r.level,
                        "utilization": str(r.utilization),
                        "event_id": r.event_id,
                        "action": what,
                        "close_request_id": r.close_request_id,
                        **({"outcome": said} if said else {}),
                    },
                )
            if r.close_request_id is not None:
                stats.close_requests += 1
        if any(r.event_id is not None for r in results):
            self.on_events()

    async def _failed(self, batch: Batch, exc: BaseException) -> None:
        shared = self.shared
        shared.stats.errors += 1
        ids = [a for a, _ in batch]
        busy = isinstance(exc, psycopg.errors.LockNotAvailable)
        what = on_failure(len(batch), busy=busy, transient=isinstance(exc, TRANSIENT))
        if what == "split":
            log.warning("check.split", extra={"accounts": len(ids), "reason": reason(exc)})
            half = len(batch) // 2
            await self._check(batch[:half])
            await self._check(batch[half:])
        elif what == "defer":
            account, first = batch[0]
            self._defer_busy(account, first, exc)
        elif what == "requeue":
            log.warning("check.requeued", extra={"accounts": len(ids), "reason": reason(exc)})
            self.requeue(batch)
            await shared.pause(BACKOFF_INITIAL)
        else:
            log.error("check.dropped", extra={"account": ids[0], "reason": reason(exc)})
            self._busy.pop(ids[0], None)  # not retried: the next sweep or mark starts afresh
            shared.debouncer.forget(ids)

    def _defer_busy(self, account: str, first: float, exc: BaseException) -> None:
        """Hold back an account whose rows a trade holds, longer each time in a row (up to
        ``max_delay``, so it is still tried that often, I2), and go on checking the others: a
        hot account whose rows are always locked must not stall every other check."""
        shared = self.shared
        attempt = self._busy.get(account, 0) + 1
        self._busy[account] = attempt
        delay = busy_delay(attempt, BACKOFF_INITIAL, shared.settings.daemon.max_delay)
        now = shared.clock()
        shared.debouncer.defer(account, now, first, now + delay)
        log.warning(
            "check.postponed",
            extra={
                "account": account,
                "reason": reason(exc),
                "retry_in": round(delay, 3),
                "attempt": attempt,
            },
        )
