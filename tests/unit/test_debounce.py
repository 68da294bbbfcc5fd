"""The per-account debouncer against a plainly written model, plus the cases DESIGN §2.3 names."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.daemon.debounce import Debouncer, busy_delay

ACCOUNTS = [f"a{i}" for i in range(6)]


def test_quiet_period_after_last_change() -> None:
    d = Debouncer(debounce=1.0, max_delay=5.0)
    d.mark("a", now=0.0)
    d.mark("a", now=0.5)
    assert d.pop_due(1.4, 10) == []
    assert d.pop_due(1.5, 10) == [("a", 0.0)]
    assert len(d) == 0


def test_hot_account_is_not_starved() -> None:
    """An account changing every 100 ms is still due max_delay after its first change."""
    d = Debouncer(debounce=1.0, max_delay=5.0)
    checked: list[float] = []
    for tick in range(200):  # 20 s of changes every 100 ms
        now = tick * 0.1
        d.mark("hot", now=now)
        if d.pop_due(now, 10):
            checked.append(now)
    assert checked, "never checked"
    # each check within max_delay of the first change after the previous check (100 ms later)
    gaps = [b - a for a, b in zip([-0.1, *checked], checked, strict=False)]
    assert len(checked) >= 3 and max(gaps) <= 5.1 + 1e-9
    assert len(d) == 1  # one entry, however many updates


def test_changed_at_starts_the_max_delay_bound() -> None:
    d = Debouncer(debounce=1.0, max_delay=5.0)
    d.mark("a", now=10.0, changed_at=4.0)  # the change was made 6 s before it was seen
    assert d.pop_due(10.0, 10) == [("a", 4.0)]


def test_zero_debounce_is_due_at_once_and_limit_is_kept() -> None:
    d = Debouncer(debounce=0.0, max_delay=5.0)
    for a in ACCOUNTS:
        d.mark(a, now=1.0)
    first = d.pop_due(1.0, 4)
    second = d.pop_due(1.0, 4)
    assert len(first) == 4 and len(second) == 2
    assert {a for a, _ in first + second} == set(ACCOUNTS)


def test_memory_is_one_entry_per_account() -> None:
    d = Debouncer(debounce=1.0, max_delay=5.0)
    for i in range(100_000):
        d.mark(ACCOUNTS[i % 3], now=i * 1e-6)
    assert len(d) == 3
    assert len(d._heap) == 3


def test_a_warm_account_is_checked_at_most_once_per_max_delay() -> None:
    """Changes every 1.5 s pass the 1 s quiet period each time; the checks still keep
    max_delay apart, and each change is acted on within max_delay of it."""
    d = Debouncer(debounce=1.0, max_delay=5.0)
    checks: list[float] = []
    changes = [i * 1.5 for i in range(40)]  # 60 s
    pending: list[float] = []
    for tick in range(650):
        now = tick * 0.1
        if changes and changes[0] <= now:
            pending.append(changes.pop(0))
            d.mark("warm", now=now)
        if d.pop_due(now, 10):
            checks.append(now)
            assert all(now - c <= 5.0 + 0.1 for c in pending), (now, pending)
            pending.clear()
            d.checked(["warm"], now)
    gaps = [b - a for a, b in zip(checks, checks[1:], strict=False)]
    assert min(gaps) >= 5.0 - 1e-9
    assert len(checks) <= 60 / 5 + 1


def test_zero_debounce_does_not_space_checks() -> None:
    d = Debouncer(debounce=0.0, max_delay=5.0)
    d.mark("a", now=0.0)
    assert d.pop_due(0.0, 10) == [("a", 0.0)]
    d.checked(["a"], 0.0)
    d.mark("a", now=0.1)
    assert d.pop_due(0.1, 10) == [("a", 0.1)]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Debouncer(debounce=-1, max_delay=5)
    with pytest.raises(ValueError):
        Debouncer(debounce=1, max_delay=0)


def test_drain_all_and_oldest() -> None:
    d = Debouncer(debounce=1.0, max_delay=5.0)
    assert d.oldest() is None and d.next_deadline() is None
    d.mark("a", now=2.0)
    d.mark("b", now=3.0, changed_at=1.0)
    assert d.oldest() == 1.0
    assert sorted(d.drain_all()) == ["a", "b"]
    assert len(d) == 0 and d.next_deadline() is None


steps = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=2, allow_nan=False),  # time advance
        st.sampled_from(ACCOUNTS + ["pop"]),
        st.floats(min_value=0, max_value=3, allow_nan=False),  # how long before it was seen
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    debounce=st.sampled_from([0.0, 0.2, 1.0]),
    max_delay=st.sampled_from([0.5, 2.0, 5.0]),
    script=steps,
)
def test_against_model(
    debounce: float, max_delay: float, script: list[tuple[float, str, float]]
) -> None:
    d = Debouncer(debounce=debounce, max_delay=max_delay)
    spacing = max_delay if debounce > 0 else 0.0
    model: dict[str, tuple[float, float, float]] = {}  # account -> (first, last, not before)
    checked: dict[str, float] = {}
    now = 0.0

    def deadline(first: float, last: float, not_before: float) -> float:
        return max(min(last + debounce, first + max_delay), not_before)

    for advance, action, age in script:
        now += advance
        if action != "pop":
            not_before = checked[action] + spacing if action in checked else float("-inf")
            first, last, not_before = model.get(action, (now - age, now, not_before))
            model[action] = (min(first, now - age), max(last, now), not_before)
            d.mark(action, now=now, changed_at=now - age)
            continue
        due = {a for a, e in model.items() if deadline(*e) <= now}
        popped = d.pop_due(now, limit=len(ACCOUNTS))
        assert {a for a, _ in popped} == due
        for account, first in popped:
            assert first == model[account][0]
            del model[account]
            checked[account] = now
        d.checked([a for a, _ in popped], now)
        if model:
            next_due = d.next_deadline()
            assert next_due is not None
            assert next_due <= min(deadline(*e) for e in model.values())
        assert len(d) == len(model)


def test_an_older_change_seen_later_brings_the_deadline_forward() -> None:
    """Found by test_against_model: a mark whose change is older than the account's first
    (handed back, or fanned out from a price) starts max_delay from that change."""
    d = Debouncer(debounce=0.2, max_delay=0.5)
    d.mark("a", now=0.0, changed_at=0.0)
    assert d.pop_due(0.0, limit=10) == []
    d.mark("a", now=0.0, changed_at=-1.0)
    assert d.pop_due(0.0, limit=10) == [("a", -1.0)]
    assert d.pop_due(10.0, limit=10) == [] and len(d) == 0


def test_busy_delay_doubles_from_initial_up_to_the_cap() -> None:
    delays = [busy_delay(n, initial=0.2, cap=5.0) for n in range(1, 9)]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert busy_delay(10_000, initial=0.2, cap=5.0) == 5.0  # no overflow however long it lasts
    assert busy_delay(1, initial=0.2, cap=0.1) == 0.1  # a cap below initial wins
    with pytest.raises(ValueError):
        busy_delay(0, initial=0.2, cap=5.0)


@given(attempts=st.integers(min_value=1, max_value=200), cap=st.floats(0.01, 60))
def test_busy_delay_never_shrinks_and_never_passes_the_cap(attempts: int, cap: float) -> None:
    here, after = busy_delay(attempts, 0.2, cap), busy_delay(attempts + 1, 0.2, cap)
    assert 0 < here <= after <= cap


def test_a_deferred_account_waits_until_then_and_keeps_its_first_change() -> None:
    d = Debouncer(debounce=1.0, max_delay=5.0)
    d.defer("a", now=10.0, changed_at=4.0, until=10.2)
    assert d.pop_due(10.19, 10) == []
    assert d.pop_due(10.2, 10) == [("a", 4.0)]  # not 1 s later: a failed check is no change


def test_marks_never_bring_a_deferred_account_forward() -> None:
    """Its rows are locked: checking it again sooner would only fail again."""
    d = Debouncer(debounce=0.0, max_delay=1.0)
    d.defer("a", now=10.0, changed_at=9.0, until=12.0)
    d.mark("a", now=10.5, changed_at=3.0)  # even a change older than max_delay
    assert d.pop_due(11.99, 10) == []
    assert d.pop_due(12.0, 10) == [("a", 3.0)]


def test_deferring_never_makes_a_held_account_due_earlier() -> None:
    """Marked again while its check was in flight, then deferred for less than it already
    waits: it stays due when it was, with the older change kept."""
    d = Debouncer(debounce=1.0, max_delay=5.0)
    d.mark("a", now=0.0)
    d.defer("a", now=0.5, changed_at=-10.0, until=0.6)
    assert d.pop_due(0.99, 10) == []
    assert d.pop_due(1.0, 10) == [("a", -10.0)]


def test_deferring_keeps_one_entry_per_account() -> None:
    d = Debouncer(debounce=1.0, max_delay=5.0)
    now = 0.0
    for attempt in range(1, 2_001):  # a hot account, busy on every check, marked meanwhile
        d.mark("hot", now=now)
        d.defer("hot", now=now, changed_at=0.0, until=now + busy_delay(attempt, 0.2, 5.0))
        d.mark("cool", now=now)
        assert len(d) == 2 and len(d._heap) <= 4
        now += 0.1
        d.pop_due(now, limit=10)


defer_steps = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=2, allow_nan=False),  # time advance
        st.sampled_from(["mark", "defer", "pop"]),
        st.sampled_from(ACCOUNTS[:3]),
        st.floats(min_value=0, max_value=3, allow_nan=False),  # how long before: the change
        st.floats(min_value=0, max_value=3, allow_nan=False),  # how long after: the hold
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    debounce=st.sampled_from([0.0, 0.2, 1.0]),
    max_delay=st.sampled_from([0.5, 2.0, 5.0]),
    script=defer_steps,
)
def test_defer_against_model(
    debounce: float, max_delay: float, script: list[tuple[float, str, str, float, float]]
) -> None:
    """Marks and defers mixed: every account due exactly when the model says, never before a
    hold it was given, with its first unchecked change; one entry per account."""
    d = Debouncer(debounce=debounce, max_delay=max_delay)
    spacing = max_delay if debounce > 0 else 0.0
    model: dict[str, list[float]] = {}  # account -> [first, last, not before]
    held: dict[str, float] = {}  # account -> the latest hold it was given
    checked: dict[str, float] = {}
    now = 0.0

    def deadline(e: list[float]) -> float:
        return max(min(e[1] + debounce, e[0] + max_delay), e[2])

    for advance, action, account, age, hold in script:
        now += advance
        if action == "mark":
            not_before = checked[account] + spacing if account in checked else float("-inf")
            e = model.setdefault(account, [now - age, now, not_before])
            e[0], e[1] = min(e[0], now - age), max(e[1], now)
            d.mark(account, now=now, changed_at=now - age)
        elif action == "defer":
            until = now + hold
            if account in model:
                e = model[account]
                e[2] = max(deadline(e), until)
                e[0] = min(e[0], now - age)
            else:
                model[account] = [now - age, now - age, until]
            held[account] = max(held.get(account, until), until)
            d.defer(account, now=now, changed_at=now - age, until=until)
        else:
            due = {a for a, e in model.items() if deadline(e) <= now}
            popped = d.pop_due(now, limit=len(ACCOUNTS))
            assert {a for a, _ in popped} == due
            for a, first in popped:
                assert first == model.pop(a)[0]
                assert now >= held.pop(a, now)
                checked[a] = now
            d.checked([a for a, _ in popped], now)
            if model:  # each now due later than now, where the model's bounds are exact
                next_due = d.next_deadline()
                assert next_due is not None
                assert next_due <= min(deadline(e) for e in model.values())
        assert len(d) == len(model)


# --- risk first: the due accounts with the highest priority go first ---------------------


def test_when_more_are_due_than_a_batch_holds_the_riskiest_go_first() -> None:
    d = Debouncer(debounce=0.0, max_delay=5.0)
    for account, priority in [("a", 0.30), ("b", 0.95), ("c", 0.50), ("d", 0.79)]:
        d.mark(account, now=1.0, priority=priority)
    assert [a for a, _ in d.pop_due(1.0, limit=2)] == ["b", "d"]
    assert [a for a, _ in d.pop_due(1.0, limit=2)] == ["c", "a"]
    assert d.pop_due(1.0, limit=2) == []


def test_among_equals_the_earliest_deadline_goes_first() -> None:
    d = Debouncer(debounce=1.0, max_delay=5.0)
    d.mark("late", now=0.5, priority=0.5)
    d.mark("early", now=0.0, priority=0.5)
    assert [a for a, _ in d.pop_due(10.0, limit=1)] == ["early"]


def test_a_due_account_marked_riskier_moves_up() -> None:
    d = Debouncer(debounce=0.0, max_delay=5.0)
    d.mark("a", now=1.0, priority=0.1)
    d.mark("b", now=1.0, priority=0.5)
    assert d.next_deadline() is not None
    d.pop_due(1.0, limit=0)  # both due now, waiting in priority order
    d.mark("a", now=1.0, priority=0.9)
    assert [a for a, _ in d.pop_due(1.0, limit=1)] == ["a"]
    assert [a for a, _ in d.pop_due(1.0, limit=1)] == ["b"]


def test_an_account_handed_back_keeps_the_priority_it_was_taken_with() -> None:
    d = Debouncer(debounce=0.0, max_delay=5.0)
    d.mark("risky", now=1.0, priority=0.9)
    d.mark("calm", now=1.0, priority=0.2)
    ((account, first),) = d.pop_due(1.0, limit=1)
    assert account == "risky"
    d.mark(account, now=2.0, changed_at=first)  # a failed check hands it back
    d.mark("calmer", now=2.0, priority=0.1)
    assert [a for a, _ in d.pop_due(2.0, limit=3)] == ["risky", "calm", "calmer"]
    d.checked(["risky", "calm", "calmer"], now=2.0)
    d.mark("risky", now=3.0)  # checked since: its old priority is gone
    d.mark("other", now=3.0, priority=0.3)
    assert [a for a, _ in d.pop_due(3.0, limit=2)] == ["other", "risky"]


def test_a_due_account_whose_quiet_period_restarted_waits_again() -> None:
    d = Debouncer(debounce=1.0, max_delay=5.0)
    d.mark("a", now=0.0, priority=0.9)
    assert d.pop_due(1.0, limit=0) == []  # due at 1.0: waiting in priority order
    d.mark("a", now=1.0)  # another change: quiet until 2.0
    assert d.pop_due(1.5, limit=10) == []
    assert d.next_deadline() == 2.0
    assert [a for a, _ in d.pop_due(2.0, limit=10)] == ["a"]


def test_a_steady_stream_of_risky_accounts_cannot_starve_a_calm_one() -> None:
    """Past max_delay after its change, an account goes ahead of any priority (I2)."""
    d = Debouncer(debounce=0.0, max_delay=5.0)
    d.mark("calm", now=0.0, priority=0.0)
    taken_at = None
    for tick in range(100):  # every 0.1 s, two risky accounts; a batch holds one
        now = tick * 0.1
        d.mark(f"risky-{tick}-a", now=now, priority=0.95)
        d.mark(f"risky-{tick}-b", now=now, priority=0.95)
        batch = d.pop_due(now, limit=1)
        if batch and batch[0][0] == "calm":
            taken_at = now
            break
    assert taken_at is not None and 5.0 <= taken_at <= 5.1


def test_the_risk_lane_takes_only_the_accounts_at_or_over_its_floor() -> None:
    d = Debouncer(debounce=0.0, max_delay=5.0)
    for account, priority in [("calm", 0.30), ("near", 0.75), ("over", 0.85)]:
        d.mark(account, now=1.0, priority=priority)
    assert [a for a, _ in d.pop_due(1.0, limit=10, min_priority=0.7)] == ["over", "near"]
    assert d.pop_due(1.0, limit=10, min_priority=0.7) == []
    # an overdue calm account is the other lane's: the risk lane still passes it by
    assert d.pop_due(9.0, limit=10, min_priority=0.7) == []
    assert [a for a, _ in d.pop_due(9.0, limit=10)] == ["calm"]


def test_early_takes_the_accounts_about_to_fall_due_into_the_same_batch() -> None:
    d = Debouncer(debounce=1.0, max_delay=5.0)
    for i in range(10):
        d.mark(f"a{i}", now=i * 0.03)  # due at 1.00, 1.03, ... 1.27
    assert [a for a, _ in d.pop_due(1.0, limit=100, early=0.1)] == ["a0", "a1", "a2", "a3"]
    assert d.pop_due(1.05, limit=100) == []  # a4 is due at 1.12
    assert [a for a, _ in d.pop_due(1.12, limit=100, early=0.1)] == ["a4", "a5", "a6", "a7"]
