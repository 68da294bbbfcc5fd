"""Per-account debounce (DESIGN §2.3): pure, clock-injected, one entry per dirty account.

An account becomes due ``debounce`` seconds after its last change, but never later than
``max_delay`` after its first unchecked change, so an account that changes every 100 ms is
still checked every ``max_delay``. Memory holds one entry per distinct dirty account whatever
the update rate (I5): a mark of an account already waiting only moves its last-change time.

Deadlines only ever move later, so one heap entry per account suffices: an entry is keyed by
the deadline it had when pushed, which is never after its real deadline; when it reaches the top
too early it is pushed again with the real one.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class _Entry:
    first: float  # when the first unchecked change happened
    last: float  # when the latest change was seen


class Debouncer:
    def __init__(self, debounce: float, max_delay: float) -> None:
        if debounce < 0 or max_delay <= 0:
            raise ValueError("debounce must be >= 0 and max_delay > 0")
        self.debounce = debounce
        self.max_delay = max_delay
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, account: object) -> bool:
        return account in self._entries

    def _deadline(self, entry: _Entry) -> float:
        return min(entry.last + self.debounce, entry.first + self.max_delay)

    def mark(self, account: str, now: float, changed_at: float | None = None) -> None:
        """Record a change of ``account`` seen at ``now``; ``changed_at`` (<= now) is when the
        change was made, if known, and starts the ``max_delay`` bound from there."""
        first = now if changed_at is None else min(changed_at, now)
        entry = self._entries.get(account)
        if entry is None:
            entry = _Entry(first=first, last=now)
            self._entries[account] = entry
            heapq.heappush(self._heap, (self._deadline(entry), account))
        else:
            entry.first = min(entry.first, first)
            entry.last = max(entry.last, now)

    def mark_many(self, accounts: Iterable[tuple[str, float | None]], now: float) -> None:
        for account, changed_at in accounts:
            self.mark(account, now, changed_at)

    def next_deadline(self) -> float | None:
        """A time at or before which the next account falls due (None when empty)."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float, limit: int) -> list[tuple[str, float]]:
        """Up to ``limit`` accounts due at ``now``, earliest deadline first, removed from the
        debouncer, each with the time of its first unchecked change."""
        due: list[tuple[str, float]] = []
        while self._heap and len(due) < limit:
            key, account = self._heap[0]
            if key > now:
                break
            entry = self._entries[account]
            deadline = self._deadline(entry)
            if deadline > now:
                heapq.heapreplace(self._heap, (deadline, account))
                continue
            heapq.heappop(self._heap)
            del self._entries[account]
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
        return accounts
