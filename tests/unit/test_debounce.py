"""The per-account debouncer against a plainly written model, plus the cases DESIGN §2.3 names."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.debounce import Debouncer

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
    model: dict[str, tuple[float, float]] = {}  # account -> (first, last)
    now = 0.0
    for advance, action, age in script:
        now += advance
        if action != "pop":
            first, last = model.get(action, (now - age, now))
            model[action] = (min(first, now - age), max(last, now))
            d.mark(action, now=now, changed_at=now - age)
            continue
        due = {a for a, (f, last) in model.items() if min(last + debounce, f + max_delay) <= now}
        popped = d.pop_due(now, limit=len(ACCOUNTS))
        assert {a for a, _ in popped} == due
        for account, first in popped:
            assert first == model[account][0]
            del model[account]
        if model:
            deadline = d.next_deadline()
            assert deadline is not None
            assert deadline <= min(
                min(last + debounce, f + max_delay) for f, last in model.values()
            )
        assert len(d) == len(model)
