"""The daemon's decisions, as plain functions: which batch next, what to do with a failed batch,
when to re-arm the wake-up, the listener's ping, the dropped-payload log rate, the health
window, the schema revision a daemon runs against."""

from __future__ import annotations

from collections import deque

import pytest

from riskd import migrate
from riskd.daemon.checker import next_batch, on_failure
from riskd.daemon.debounce import Debouncer
from riskd.daemon.drain import Arming
from riskd.daemon.faults import SchemaMoved
from riskd.daemon.listen import PING_TIMEOUT, DropCount, Ping, ping_step
from riskd.daemon.preflight import revision_error
from riskd.daemon.report import HEALTH_WINDOW, healthy
from riskd.errors import ConfigError, reason


def test_a_due_account_goes_before_sweep_work() -> None:
    debouncer = Debouncer(0.0, 5.0)
    sweep = deque(f"s{i}" for i in range(1000))
    debouncer.mark("hot", now=1.0)
    batch, from_sweep = next_batch(debouncer, sweep, 1.0, 500)
    assert (batch, from_sweep) == ([("hot", 1.0)], False)
    batch, from_sweep = next_batch(debouncer, sweep, 1.0, 500)
    assert from_sweep and [a for a, _ in batch] == [f"s{i}" for i in range(500)]
    assert len(sweep) == 500


def test_the_risk_lane_takes_only_risky_accounts_and_never_sweep_work() -> None:
    debouncer = Debouncer(0.0, 5.0)
    sweep = deque(["s1"])
    debouncer.mark("calm", now=1.0, priority=0.3)
    debouncer.mark("edge", now=1.0, priority=0.75)
    batch, from_sweep = next_batch(debouncer, sweep, 1.0, 500, risk_floor=0.7)
    assert (batch, from_sweep) == ([("edge", 1.0)], False)
    assert next_batch(debouncer, sweep, 1.0, 500, risk_floor=0.7) == ([], False)
    assert next_batch(debouncer, sweep, 1.0, 500) == ([("calm", 1.0)], False)
    assert next_batch(debouncer, sweep, 1.0, 500) == ([("s1", 1.0)], True)


def test_the_main_lane_takes_accounts_falling_due_within_early() -> None:
    debouncer = Debouncer(1.0, 5.0)
    debouncer.mark("a", now=0.0)
    debouncer.mark("b", now=0.05)
    assert next_batch(debouncer, deque(), 1.0, 500) == ([("a", 0.0)], False)
    debouncer.mark("a", now=0.0)
    assert [a for a, _ in next_batch(debouncer, deque(), 1.0, 500, early=0.1)[0]] == ["a", "b"]


@pytest.mark.parametrize(
    ("size", "busy", "transient", "expected"),
    [
        (10, True, False, "split"),  # a row lock met: find whose
        (10, False, False, "split"),  # a fault of one account: isolate it
        (10, False, True, "requeue"),  # the connection: every account waits
        (1, True, False, "defer"),  # the busy account alone waits
        (1, False, True, "requeue"),
        (1, False, False, "drop"),  # until its next mark or the next sweep
    ],
)
def test_what_a_failed_batch_becomes(size: int, busy: bool, transient: bool, expected: str) -> None:
    assert on_failure(size, busy=busy, transient=transient) == expected


def test_the_wake_up_is_rearmed_once_after_marks_then_left_armed() -> None:
    arming = Arming()
    # a first drain that finds nothing re-arms (nothing says it is armed)
    assert arming.needs_rearm(0, arming.take_woken())
    arming.drained(0, rearmed=True)
    # armed and idle: timer drains re-arm nothing
    assert not arming.needs_rearm(0, arming.take_woken())
    arming.drained(0, rearmed=False)
    # marks found: the wake-up was drawn; the next empty drain re-arms it
    assert not arming.needs_rearm(5, arming.take_woken())
    arming.drained(5, rearmed=False)
    assert arming.needs_rearm(0, arming.take_woken())
    arming.drained(0, rearmed=True)
    # drawn without a mark (a sweep request, or marks another instance took): re-arm
    arming.woken = True
    assert arming.needs_rearm(0, arming.take_woken())
    assert not arming.woken


def test_the_ping_is_sent_when_due_and_the_listener_stalls_when_it_is_not_answered() -> None:
    assert ping_step(1.0, None, 2.0) == ("wait", 2.0)
    assert ping_step(2.0, None, 2.0) == ("send", 2.0)
    ping = Ping("t", sent_at=2.0)
    assert ping_step(2.5, ping, 4.0) == ("wait", 2.0 + PING_TIMEOUT)
    assert ping_step(2.0 + PING_TIMEOUT, ping, 4.0)[0] == "stalled"


def test_dropped_payloads_are_said_at_most_once_a_minute_counted_whole() -> None:
    dropped = DropCount(every=60.0)
    assert dropped.due(0.0) == 0
    for pid in range(3):
        dropped.drop(pid, 10)
    assert dropped.due(0.0) == 3 and dropped.latest == (2, 10)
    dropped.drop(7, 8000)
    assert dropped.due(59.9) == 0
    dropped.drop(8, 9)
    assert dropped.due(60.0) == 2 and dropped.due(200.0) == 0


def test_the_listener_is_healthy_within_the_window_of_its_last_progress() -> None:
    assert healthy(100.0, 100.0 - HEALTH_WINDOW + 0.1)
    assert not healthy(100.0, 100.0 - HEALTH_WINDOW)


def test_a_daemon_runs_only_against_its_own_schema_revision() -> None:
    head = migrate.head()
    assert revision_error(head, head) is None
    older = revision_error("0001", head)
    assert isinstance(older, ConfigError) and "run `riskd migrate`" in str(older)
    newer = revision_error("9999", head)
    assert isinstance(newer, ConfigError) and not isinstance(newer, SchemaMoved)
    moved = revision_error("0001", head, running=True)
    assert isinstance(moved, SchemaMoved) and "under this daemon" in str(moved)


def test_an_exception_is_one_line() -> None:
    assert reason(OSError("a\n  b")) == "OSError: a b"
    assert reason(TimeoutError()) == "TimeoutError"
