"""Per-account debounce (DESIGN §2.3): pure, clock-injected, one entry per dirty account.

An account becomes due ``debounce`` seconds after its last change, but never later than
``max_delay`` after its first unchecked change, so an account that changes every 100 ms is
still checked every ``max_delay``. And an account is checked at most once per ``max_delay``
while it keeps changing: an account that changes every 1.5 s would otherwise pass a 1 s quiet
period each time and cost a check per change; its next check waits until ``max_delay`` after
the previous one, which still acts on any change within ``max_delay`` of it (I2). With
``debounce = 0`` coalescing is off, by request: every change is due at once.

Memory holds one entry per distinct dirty account whatever the update rate (I5): a mark of an
account already waiting only moves its last-change time; the time of each account's last check
is kept for ``max_delay`` only.

An account whose check could not be made for now (a flatten that met a trade's row lock) is
deferred: held back until a time of the caller's choosing, keeping its first unchecked change,
while every other account goes on being checked. ``busy_delay`` is how long, growing with each
attempt up to a cap, so a hot account whose rows are always locked costs a check now and then,
not one per pass of the checker.

Risk first (DESIGN §1, safety rails): when more accounts are due than a batch holds, those
with the highest priority (the caller's: their last recorded utilisation, so accounts over or
nearest a threshold) are taken first, earliest deadline first among equals; the rest wait for
the next batch — but never past ``max_delay`` after their first unchecked change: an account
overdue so goes ahead of any priority (oldest first), so that a steady stream of risky
accounts cannot starve the others (I2). An account keeps the highest priority it was marked
with until it is checked, and one handed back (``mark`` without a priority, ``defer``) keeps
the one it was taken with.

Deadlines only ever move later, so one heap entry per account suffices: an entry is keyed by
the deadline it had when pushed, which is never after its real deadline; when it reaches the top
too early it is pushed again with the real one. Due entries move to a second heap ordered by
priority; one whose deadline moved later meanwhile (a new change restarted its quiet period)
goes back.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


def busy_delay(attempt: int, initial: float, cap: float) -> float:
    """How long to hold back an account whose check met a lock for the ``attempt``-th time in a
    row (1 for the first): ``initial``, doubling, never more than ``cap``."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    return min(cap, initial * 2.0 ** min(attempt - 1, 62))


@dataclass(slots=True)
class _Entry:
    first: float  # when the first unchecked change happened
    last: float  # when the latest change was seen
    not_before: float  # max_delay after the account's previous check
    priority: float = 0.0  # the highest it was marked with: higher is checked first
    key: float = 0.0  # its item in the deadline heap: the deadline it was pushed with
    ready: bool = False  # due: in the priority heap (its item keyed by -priority)
    ready_key: float = 0.0


class Debouncer:
    def __init__(self, debounce: float, max_delay: float) -> None:
        if debounce < 0 or max_delay <= 0:
            raise ValueError("debounce must be >= 0 and max_delay > 0")
        self.debounce = debounce
        self.max_delay = max_delay
        self.min_interval = max_delay if debounce > 0 else 0.0
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, str]] = []
        self._ready: list[tuple[float, float, str]] = []  # (-priority, deadline, account)
        self._overdue: list[tuple[float, str]] = []  # (first, account) of the ready entries
        self._taken: dict[str, float] = {}  # account -> its priority, from pop to check
        self._checked: dict[str, float] = {}  # account -> its last check, for min_interval
        self._checked_order: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def _deadline(self, entry: _Entry) -> float:
        return max(min(entry.last + self.debounce, entry.first + self.max_delay), entry.not_before)

    def _forget_checks_before(self, when: float) -> None:
        while self._checked_order and self._checked_order[0][0] < when:
            at, account = self._checked_order.popleft()
            if self._checked.get(account) == at:
                del self._checked[account]

    def checked(self, accounts: Iterable[str], now: float) -> None:
        """These accounts were checked at ``now``: their next check waits for min_interval."""
        accounts = list(accounts)
        for account in accounts:
            self._taken.pop(account, None)
        if self.min_interval <= 0:
            return
        self._forget_checks_before(now - self.min_interval)
        for account in accounts:
            self._checked[account] = now
            self._checked_order.append((now, account))

    def forget(self, accounts: Iterable[str]) -> None:
        """These accounts, taken by ``pop_due``, will be neither checked nor handed back."""
        for account in accounts:
            self._taken.pop(account, None)

    def mark(
        self,
        account: str,
        now: float,
        changed_at: float | None = None,
        priority: float | None = None,
    ) -> None:
        """Record a change of ``account`` seen at ``now``; ``changed_at`` (<= now) is when the
        change was made, if known, and starts the ``max_delay`` bound from there; ``priority``
        orders the due accounts (None: the one it was taken with, if it is handed back)."""
        first = now if changed_at is None else min(changed_at, now)
        if priority is None:
            priority = self._taken.pop(account, 0.0)
        entry = self._entries.get(account)
        if entry is None:
            self._forget_checks_before(now - self.min_interval)
            previous = self._checked.get(account)
            not_before = previous + self.min_interval if previous is not None else first
            entry = _Entry(first=first, last=now, not_before=not_before, priority=priority)
            self._entries[account] = entry
            self._push(account, entry)
        else:
            if first < entry.first and entry.ready:
                heapq.heappush(self._overdue, (first, account))
            entry.first = min(entry.first, first)
            entry.last = max(entry.last, now)
            if priority > entry.priority:
                entry.priority = priority
                if entry.ready:
                    self._push_ready(account, entry)
            if not entry.ready and self._deadline(entry) < entry.key:
                # an older change came to light (handed back, or fanned out from a price):
                # max_delay runs from it, so the account falls due earlier than its heap item
                # says. A new item; the old one is skipped when it surfaces.
                self._push(account, entry)

    def defer(self, account: str, now: float, changed_at: float, until: float) -> None:
        """Hold ``account`` back until ``until``: its check was tried and could not be made for
        now. Its first unchecked change (``changed_at``, or an earlier one already held) is
        kept, for max_delay and the latency it reports; a failed check is not a change, so the
        quiet period does not start again. It is never due before ``until``, nor before it
        already was, whatever marks follow."""
        first = min(changed_at, now)
        entry = self._entries.get(account)
        if entry is None:
            priority = self._taken.pop(account, 0.0)
            entry = _Entry(first=first, last=first, not_before=until, priority=priority)
            self._entries[account] = entry
            self._push(account, entry)
            return
        entry.not_before = max(self._deadline(entry), until)
        if first < entry.first and entry.ready:
            heapq.heappush(self._overdue, (first, account))
        entry.first = min(entry.first, first)
        entry.priority = max(entry.priority, self._taken.pop(account, 0.0))
        # the deadline only moved later: the heap item, keyed at or before it, still stands

    def _push(self, account: str, entry: _Entry) -> None:
        entry.key = self._deadline(entry)
        entry.ready = False
        heapq.heappush(self._heap, (entry.key, account))

    def _push_ready(self, account: str, entry: _Entry) -> None:
        if not entry.ready:
            heapq.heappush(self._overdue, (entry.first, account))
        entry.ready = True
        entry.ready_key = -entry.priority
        heapq.heappush(self._ready, (entry.ready_key, entry.key, account))

    def next_deadline(self) -> float | None:
        """A time at or before which the next account falls due (None when empty)."""
        if self._ready:
            return float("-inf")  # some are due already
        return self._heap[0][0] if self._heap else None

    def _promote(self, now: float) -> None:
        """Every account due at ``now`` from the deadline heap to the priority heap."""
        while self._heap:
            key, account = self._heap[0]
            if key > now:
                return
            entry = self._entries.get(account)
            if entry is None or entry.ready or entry.key != key:
                heapq.heappop(self._heap)  # superseded by an earlier item of the account
                continue
            deadline = self._deadline(entry)
            if deadline > now:
                entry.key = deadline
                heapq.heapreplace(self._heap, (deadline, account))
                continue
            heapq.heappop(self._heap)
            self._push_ready(account, entry)

    def pop_due(
        self,
        now: float,
        limit: int,
        min_priority: float | None = None,
        early: float = 0.0,
    ) -> list[tuple[str, float]]:
        """Up to ``limit`` accounts due at ``now``, highest priority first (earliest deadline
        first among equals), removed from the debouncer, each with the time of its first
        unchecked change. With ``min_priority``, only accounts of at least that priority (the
        daemon's risk lane), and no overdue rule: the other lane serves those. ``early``: take
        too the accounts that fall due within that many seconds, so that the accounts of a
        busy spell are checked in batches rather than one round trip each (a batch of one
        costs several times what each account of a batch of a hundred does)."""
        horizon = now + early
        self._promote(horizon)
        due: list[tuple[str, float]] = []
        while (
            min_priority is None
            and self._overdue
            and len(due) < limit
            and self._overdue[0][0] + self.max_delay <= now
        ):
            first, account = heapq.heappop(self._overdue)
            entry = self._entries.get(account)
            if entry is None or not entry.ready or entry.first != first:
                continue  # taken, back to waiting, or an older change came to light
            if self._deadline(entry) > horizon:
                self._push(account, entry)
                continue
            del self._entries[account]
            self._taken[account] = entry.priority
            due.append((account, entry.first))
        while self._ready and len(due) < limit:
            if min_priority is not None and -self._ready[0][0] < min_priority:
                break
            ready_key, _, account = heapq.heappop(self._ready)
            entry = self._entries.get(account)
            if entry is None or not entry.ready or entry.ready_key != ready_key:
                continue  # superseded by a higher priority, or taken
            if self._deadline(entry) > horizon:
                self._push(account, entry)  # a change since restarted its quiet period
                continue
            del self._entries[account]
            self._taken[account] = entry.priority
            due.append((account, entry.first))
        return due

    def oldest(self) -> float | None:
        """The time of the oldest unchecked change held here (None when empty)."""
        return min((e.first for e in self._entries.values()), default=None)

    def drain_all(self) -> list[str]:
        """Every account held, removed (used at shutdown to hand the work back)."""
        accounts = list(self._entries)
        self._entries.clear()
        self._heap.clear()
        self._ready.clear()
        self._overdue.clear()
        self._taken.clear()
        self._checked.clear()
        self._checked_order.clear()
        return accounts
