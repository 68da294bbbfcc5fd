"""Differential test: riskd.check_accounts against the independent model of DESIGN §1.

Hypothesis draws batches of accounts, each with a few successive states (balances, positions,
prices, margin rates, PnL — small, 8-place, huge and tiny numbers, zeros, negatives, NULLs
where the reference schema allows them), some with per-account limits; every state is checked
by riskd (auto-close ``off``, so nothing changes the data) and by ``tests/model.py``, which
carries its own previous level. Every disagreement is collected and reported with its inputs.
A few plain tests pin the exact boundaries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

import psycopg
import pytest
from conftest import Db, settings_for
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from model import (
    DEFAULT_AUTO_CLOSE,
    DEFAULT_HYSTERESIS,
    DEFAULT_WARNING,
    AccountHistory,
    Level,
    Limits,
    Margin,
    Position,
    Risk,
    Thresholds,
    builtin_margin,
    tiered_margin,
    to_decimal,
)
from test_model import MODEL, TIERED_SQL

from riskd import migrate
from riskd.check import CheckResult, check_accounts
from riskd.config import Settings

ACCOUNTS_PER_BATCH = 20
MAX_POSITIONS = 6
MAX_STATES = 4
UNKNOWN_ACCOUNT = "no-such-account"  # in every batch: riskd must skip it

# Children first; the dirty set is filled by riskd's triggers as we write.
RESET = (
    "DELETE FROM riskd.account_state",
    "DELETE FROM riskd.risk_events",
    "DELETE FROM riskd.account_limits",
    "DELETE FROM riskd.close_requests",
    "DELETE FROM public.positions",
    "DELETE FROM public.instruments",
    "DELETE FROM public.trading_accounts",
    "DELETE FROM riskd.dirty_accounts",
)
INSERT_ACCOUNT = 'INSERT INTO public.trading_accounts (id, "userId", balance) VALUES (%s, %s, %s)'
UPDATE_BALANCE = "UPDATE public.trading_accounts SET balance = %s WHERE id = %s"
DELETE_POSITIONS = 'DELETE FROM public.positions WHERE "tradingAccountId" = ANY (%s)'
INSERT_INSTRUMENT = (
    'INSERT INTO public.instruments (id, symbol, price, "marginRate") VALUES (%s, %s, %s, %s)'
)
INSERT_POSITION = (
    'INSERT INTO public.positions (id, "tradingAccountId", "instrumentId", quantity, '
    '"unrealizedPnL") VALUES (%s, %s, %s, %s, %s)'
)
INSERT_LIMITS = (
    "INSERT INTO riskd.account_limits (account_id, warning_threshold, auto_close_threshold) "
    "VALUES (%s, %s, %s)"
)
EVENTS = (
    "SELECT account_id::text, from_level, to_level, utilization, equity, used_margin "
    "FROM riskd.risk_events ORDER BY id"
)
ACCOUNT_STATES = (
    "SELECT account_id::text, level, utilization, equity, used_margin FROM riskd.account_state"
)
CLOSE_REQUESTS = "SELECT count(*) FROM riskd.close_requests"


# from_level, to_level, utilization, equity, used_margin
EventRow = tuple[Level, Level, Decimal | None, Decimal, Decimal]


@dataclass(frozen=True, slots=True)
class State:
    """What one account looks like at one check."""

    balance: Decimal
    positions: tuple[Position, ...]


@dataclass(frozen=True, slots=True)
class AccountCase:
    account_id: str
    limits: Limits | None
    states: tuple[State, ...]  # checked one after the other


@dataclass(frozen=True, slots=True)
class Batch:
    hysteresis: Decimal
    accounts: tuple[AccountCase, ...]

    @property
    def rounds(self) -> int:
        return max(len(a.states) for a in self.accounts)


# --- numbers ----------------------------------------------------------------------------


def _dec(units: int, places: int) -> Decimal:
    return Decimal(f"{units}E-{places}")  # exact: no context rounding in the constructor


def _exact_sum(values: Sequence[Decimal | Fraction]) -> Fraction:
    return sum((Fraction(v) for v in values), Fraction(0))


SIGNED: st.SearchStrategy[Decimal] = st.one_of(
    st.just(Decimal(0)),
    st.integers(-10, 10).map(Decimal),  # small integers
    st.builds(_dec, st.integers(-(10**10), 10**10), st.integers(0, 8)),  # up to 8 places
    st.sampled_from([Decimal("1e18"), Decimal("-1e18"), Decimal("1e-10"), Decimal("-1e-10")]),
    st.builds(_dec, st.integers(-(10**26), 10**26), st.integers(0, 8)),  # huge, up to 1e18
    st.builds(_dec, st.integers(-1000, 1000), st.just(10)),  # tiny
)
NON_NEGATIVE = SIGNED.map(abs)
POSITIVE = st.one_of(
    st.integers(1, 10).map(Decimal),
    st.builds(_dec, st.integers(1, 10**10), st.integers(0, 8)),
    st.sampled_from([Decimal("1e18"), Decimal("1e-10")]),
    st.builds(_dec, st.integers(1, 10**26), st.integers(0, 8)),
    st.builds(_dec, st.integers(1, 1000), st.just(10)),
)

# Quantities and margin rates whose product divides a decimal exactly (2^a 5^b), so that a
# price can be chosen to hit a ratio exactly.
EXACT_QUANTITIES = [Decimal(q) for q in ("1", "2", "4", "5", "8", "10", "25", "0.5", "1.25")]
EXACT_MARGIN_RATES = [Decimal(m) for m in ("1", "0.5", "0.25", "0.2", "0.1", "0.05", "0.01")]
# the 5e-11 ones are display-rounding ties: 0.80000000005 shows as 0.8000000001
DELTAS = [
    Decimal(d)
    for d in ("0", "1e-10", "-1e-10", "5e-11", "-5e-11", "1e-5", "-1e-5", "0.005", "-0.005")
]
SHARES = [(Fraction(1),), (Fraction(1, 2), Fraction(1, 2)), (Fraction(1, 5), Fraction(4, 5))]

# Every strategy is built once, here: the helpers below take ``draw`` and call one another
# directly, since building strategies inside each draw made generation the slow part.
MAYBE_SIGNED = st.none() | SIGNED
MAYBE_NON_NEGATIVE = st.none() | NON_NEGATIVE
EQUITY = st.one_of(POSITIVE, POSITIVE, POSITIVE, st.just(Decimal(0)), SIGNED)
ANCHOR = st.integers(0, 3)
DELTA = st.sampled_from(DELTAS)
ANYWHERE = st.builds(_dec, st.integers(0, 20000), st.just(4))  # 0 to 2, 4 places
NEAR = st.integers(0, 2)  # 0, 1: near a threshold; 2: anywhere
SHARE = st.sampled_from(SHARES)
EXACT_QUANTITY = st.sampled_from(EXACT_QUANTITIES)
EXACT_MARGIN_RATE = st.sampled_from(EXACT_MARGIN_RATES)
SIGN = st.sampled_from([1, -1])
COUNT = st.integers(0, MAX_POSITIONS)
FILLERS = st.integers(0, MAX_POSITIONS - 2)  # beside at most two margined positions
KIND = st.sampled_from(["balance", "pnl", "hover", "random"])
FILLER_KIND = st.sampled_from(["closed", "no price", "no margin rate", "zero price"])
FIRST_KIND = st.booleans()
STATE_COUNT = st.integers(1, MAX_STATES)
LIMITS_KIND = st.sampled_from(["none", "none", "none", "both", "warning", "auto_close"])
PER_MILLE = st.integers(1, 1500)
GAP = st.integers(1, 500)
HYSTERESIS = st.one_of(
    st.just(DEFAULT_HYSTERESIS),
    st.sampled_from([Decimal(h) for h in ("0", "0.005", "0.05", "0.15")]),
)


def target_ratio(draw: st.DrawFn, th: Thresholds) -> Decimal:
    """A ratio on, just around or between the account's thresholds and hysteresis bands."""
    if draw(NEAR) == 2:
        return draw(ANYWHERE)
    h = Fraction(th.hysteresis)
    anchors = [Fraction(th.warning), Fraction(th.auto_close)]
    anchors += [a - h for a in anchors]
    ratio = anchors[draw(ANCHOR)] + Fraction(draw(DELTA))
    return to_decimal(max(ratio, Fraction(0)))


def random_position(draw: st.DrawFn) -> Position:
    return Position(
        draw(SIGNED), draw(MAYBE_NON_NEGATIVE), draw(MAYBE_NON_NEGATIVE), draw(MAYBE_SIGNED)
    )


def filler_position(draw: st.DrawFn) -> Position:
    """A position that carries PnL (or not) but no margin."""
    kind = draw(FILLER_KIND)
    if kind == "closed":
        return Position(Decimal(0), draw(NON_NEGATIVE), draw(SIGNED), draw(MAYBE_SIGNED))
    quantity, price, rate = draw(SIGNED), draw(NON_NEGATIVE), draw(NON_NEGATIVE)
    if kind == "no price":
        return Position(quantity, None, rate, draw(MAYBE_SIGNED))
    if kind == "no margin rate":
        return Position(quantity, price, None, draw(MAYBE_SIGNED))
    return Position(quantity, Decimal(0), rate, draw(MAYBE_SIGNED))


def random_state(draw: st.DrawFn) -> State:
    balance = draw(SIGNED)
    return State(balance, tuple(random_position(draw) for _ in range(draw(COUNT))))


def hover_state(draw: st.DrawFn, th: Thresholds) -> State:
    """An account whose exact ratio is a drawn target near its thresholds (or equity <= 0)."""
    equity = draw(EQUITY)
    target = target_ratio(draw, th)
    shares = draw(SHARE)
    fillers = [filler_position(draw) for _ in range(draw(FILLERS))]
    margined: list[Position] = []
    for share in shares:
        quantity = draw(EXACT_QUANTITY) * draw(SIGN)
        rate = draw(EXACT_MARGIN_RATE)
        if equity > 0:
            margin = Fraction(target) * Fraction(equity) * share
            price = to_decimal(margin / (abs(Fraction(quantity)) * Fraction(rate)))
        else:
            price = draw(NON_NEGATIVE)
        margined.append(Position(quantity, price, rate, draw(MAYBE_SIGNED)))
    positions = margined + fillers
    shift = draw(COUNT) % len(positions)  # the margined positions are not always first
    positions = positions[shift:] + positions[:shift]
    open_pnl = _exact_sum([p.pnl for p in positions if p.is_open and p.pnl is not None])
    return State(to_decimal(Fraction(equity) - open_pnl), tuple(positions))


def next_state(draw: st.DrawFn, previous: State, th: Thresholds) -> State:
    """The account's next state: a new balance, new PnL, or something else entirely."""
    kind = draw(KIND)
    if kind == "balance":
        return State(draw(SIGNED), previous.positions)
    if kind == "pnl":
        positions = tuple(
            Position(p.quantity, p.price, p.margin_rate, draw(MAYBE_SIGNED))
            for p in previous.positions
        )
        return State(previous.balance, positions)
    if kind == "hover":
        return hover_state(draw, th)
    return random_state(draw)


def account_limits(draw: st.DrawFn, defaults: Thresholds) -> Limits | None:
    """None, or a riskd.account_limits row whose effective thresholds satisfy 0 < w < ac."""
    kind = draw(LIMITS_KIND)
    if kind == "none":
        return None
    per_mille = draw(PER_MILLE)
    if kind == "warning":  # below the default auto-close
        top = int(defaults.auto_close * 1000) - 1
        return Limits(warning=_dec(1 + per_mille % top, 3))
    if kind == "auto_close":  # above the default warning
        return Limits(auto_close=_dec(int(defaults.warning * 1000) + per_mille, 3))
    return Limits(_dec(per_mille, 3), _dec(per_mille + draw(GAP), 3))


def account_case(draw: st.DrawFn, account_id: str, defaults: Thresholds) -> AccountCase:
    limits = account_limits(draw, defaults)
    th = defaults.for_account(limits)
    states = [random_state(draw) if draw(FIRST_KIND) else hover_state(draw, th)]
    for _ in range(draw(STATE_COUNT) - 1):
        states.append(next_state(draw, states[-1], th))
    return AccountCase(account_id, limits, tuple(states))


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    hysteresis = draw(HYSTERESIS)
    defaults = Thresholds(DEFAULT_WARNING, DEFAULT_AUTO_CLOSE, hysteresis)
    accounts = tuple(
        account_case(draw, f"acc-{i:02d}", defaults) for i in range(ACCOUNTS_PER_BATCH)
    )
    return Batch(hysteresis, accounts)


# --- running a batch through riskd and the model ----------------------------------------


def _reset(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        for statement in RESET:
            conn.execute(statement)


def _write_states(
    conn: psycopg.Connection[Any], states: dict[str, State], round_no: int, first: bool
) -> None:
    """Give these accounts these states: balance, and a fresh instrument per position."""
    instruments: list[tuple[str, str, Decimal | None, Decimal | None]] = []
    positions: list[tuple[str, str, str, Decimal, Decimal | None]] = []
    for account_id, state in states.items():
        for k, p in enumerate(state.positions):
            ident = f"{account_id}.r{round_no}.{k}"
            instruments.append((ident, ident, p.price, p.margin_rate))
            positions.append((ident, account_id, ident, p.quantity, p.pnl))
    with conn.transaction(), conn.cursor() as cur:
        if first:
            cur.executemany(
                INSERT_ACCOUNT, [(a, f"user-{a}", s.balance) for a, s in states.items()]
            )
        else:
            cur.execute(DELETE_POSITIONS, (list(states),))
            cur.executemany(UPDATE_BALANCE, [(s.balance, a) for a, s in states.items()])
        cur.executemany(INSERT_INSTRUMENT, instruments)
        cur.executemany(INSERT_POSITION, positions)


def _describe(case: AccountCase, round_no: int) -> str:
    lines = [f"  limits={case.limits}"]
    for i, state in enumerate(case.states[: round_no + 1]):
        lines.append(f"  state {i}: balance={state.balance}")
        lines.extend(f"    {p}" for p in state.positions)
    return "\n".join(lines)


def _compare(expected: Risk, got: CheckResult | None) -> list[str]:
    if got is None:
        return ["missing from the results"]
    problems = []
    pairs: list[tuple[str, object, object]] = [
        ("level", expected.level, got.level),
        ("previous_level", expected.previous_level, got.previous_level),
        ("equity", expected.equity, got.equity),
        ("used_margin", expected.used_margin, got.used_margin),
        ("utilization", expected.utilization, got.utilization),
        ("event", expected.transition, got.event_id is not None),
        ("close_request", None, got.close_request_id),
    ]
    for name, want, have in pairs:
        if want != have:
            problems.append(f"{name}: model {want!r}, riskd {have!r}")
    return problems


def run_batch(
    db: Db, settings: Settings, batch: Batch, margin: Margin = builtin_margin
) -> list[str]:
    """Write and check every round of the batch; every disagreement, with its inputs. The
    model computes each position's margin with ``margin`` (riskd with [risk] model)."""
    conn = db.conn
    _reset(conn)
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            INSERT_LIMITS,
            [
                (a.account_id, a.limits.warning, a.limits.auto_close)
                for a in batch.accounts
                if a.limits is not None
            ],
        )
    # DESIGN's defaults, not riskd's: riskd runs on its own default thresholds
    defaults = Thresholds(DEFAULT_WARNING, DEFAULT_AUTO_CLOSE, batch.hysteresis)
    histories = {
        a.account_id: AccountHistory(defaults.for_account(a.limits), margin=margin)
        for a in batch.accounts
    }
    cases = {a.account_id: a for a in batch.accounts}
    last: dict[str, Risk] = {}
    events: dict[str, list[EventRow]] = defaultdict(list)
    problems: list[str] = []
    for round_no in range(batch.rounds):
        changed = {
            a.account_id: a.states[round_no] for a in batch.accounts if round_no < len(a.states)
        }
        _write_states(conn, changed, round_no, first=round_no == 0)
        ids = [*cases, UNKNOWN_ACCOUNT]
        results = {r.account_id: r for r in check_accounts(conn, settings, ids)}
        if UNKNOWN_ACCOUNT in results:
            problems.append(f"round {round_no}: unknown account {UNKNOWN_ACCOUNT} was checked")
        for account_id, case in cases.items():
            state = case.states[min(round_no, len(case.states) - 1)]
            expected = histories[account_id].check(state.balance, list(state.positions))
            last[account_id] = expected
            if expected.transition:
                events[account_id].append(_event_row(expected))
            for problem in _compare(expected, results.get(account_id)):
                problems.append(
                    f"{account_id} round {round_no}: {problem}\n"
                    f"{_describe(case, min(round_no, len(case.states) - 1))}"
                )
    problems.extend(_check_stored(conn, cases, events, last))
    return problems


def _event_row(risk: Risk) -> EventRow:
    return (risk.previous_level, risk.level, risk.utilization, risk.equity, risk.used_margin)


def _check_stored(
    conn: psycopg.Connection[Any],
    cases: dict[str, AccountCase],
    expected: dict[str, list[EventRow]],
    last: dict[str, Risk],
) -> list[str]:
    """riskd.risk_events holds one row per model transition; account_state the last check."""
    problems: list[str] = []
    events: dict[str, list[EventRow]] = defaultdict(list)
    for account_id, from_level, to_level, utilization, equity, used in conn.execute(EVENTS):
        events[account_id].append((from_level, to_level, utilization, equity, used))
    stored = {row[0]: row[1:] for row in conn.execute(ACCOUNT_STATES)}
    for account_id, case in cases.items():
        if events.get(account_id, []) != expected.get(account_id, []):
            problems.append(
                f"{account_id}: events (from, to, utilization, equity, used_margin)\n"
                f"  model {expected.get(account_id, [])}\n"
                f"  riskd {events.get(account_id, [])}\n"
                f"{_describe(case, len(case.states) - 1)}"
            )
        risk = last[account_id]
        want = (risk.level, risk.utilization, risk.equity, risk.used_margin)
        if stored.get(account_id) != want:
            problems.append(
                f"{account_id}: account_state model {want}, riskd {stored.get(account_id)}"
            )
    extra = set(events) - set(cases)
    if extra:
        problems.append(f"events for accounts never checked: {sorted(extra)}")
    row = conn.execute(CLOSE_REQUESTS).fetchone()
    if row is None or row[0] != 0:
        problems.append(f"auto_close off, yet close requests were written: {row}")
    return problems


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(batch=batches())
def test_check_accounts_matches_model(db: Db, batch: Batch) -> None:
    settings_ = settings_for(db.dsn, risk={"auto_close": "off", "hysteresis": batch.hysteresis})
    problems = run_batch(db, settings_, batch)
    note(f"hysteresis={batch.hysteresis}")
    if problems:
        print(f"{len(problems)} disagreement(s), hysteresis={batch.hysteresis}:")
        for problem in problems[:5]:
            print(problem)
    assert not problems, "\n".join(problems[:5])


_with_model: set[str] = set()  # the databases riskd was migrated to the tiered model in


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(batch=batches())
def test_check_accounts_matches_model_with_the_platforms_tiered_model(db: Db, batch: Batch) -> None:
    """The same, with `[risk] model` naming the tests' tiered maintenance-margin function and
    the Python model given the same tiers (tests/model.py tiered_margin)."""
    risk = {"auto_close": "off", "hysteresis": batch.hysteresis, "model": MODEL}
    settings_ = settings_for(db.dsn, risk=risk)
    if db.name not in _with_model:
        db.conn.execute(TIERED_SQL)
        migrate.migrate(settings_)
        _with_model.add(db.name)
    problems = run_batch(db, settings_, batch, tiered_margin)
    if problems:
        print(f"{len(problems)} disagreement(s), hysteresis={batch.hysteresis}:")
        for problem in problems[:5]:
            print(problem)
    assert not problems, "\n".join(problems[:5])


# --- exact boundaries -------------------------------------------------------------------


def _at_ratio(ratio: str, equity: str = "100") -> State:
    """One open position whose margin is exactly ``ratio`` × equity."""
    used = to_decimal(Fraction(Decimal(ratio)) * Fraction(Decimal(equity)))
    return State(Decimal(equity), (Position(Decimal(1), used, Decimal(1), None),))


ZERO_EQUITY = State(
    Decimal(50), (Position(Decimal(-3), Decimal(10), Decimal("0.1"), Decimal(-50)),)
)
NEGATIVE_BALANCE_FLAT = State(
    Decimal(-100), (Position(Decimal(0), Decimal(10), Decimal(1), Decimal(-5)),)
)

BOUNDARIES: list[tuple[str, list[State], list[Level], Limits | None]] = [
    ("exactly 0.80", [_at_ratio("0.80")], ["warning"], None),
    ("just below 0.80", [_at_ratio("0.79999999999")], ["ok"], None),
    ("exactly 0.90", [_at_ratio("0.90")], ["critical"], None),
    ("just below 0.90", [_at_ratio("0.8999999999")], ["warning"], None),
    ("0.88 after critical", [_at_ratio("0.95"), _at_ratio("0.88")], ["critical", "critical"], None),
    (
        "0.87999 after critical",
        [_at_ratio("0.95"), _at_ratio("0.87999")],
        ["critical", "warning"],
        None,
    ),
    ("0.78 after critical", [_at_ratio("0.95"), _at_ratio("0.78")], ["critical", "warning"], None),
    ("0.77999 after critical", [_at_ratio("0.95"), _at_ratio("0.77999")], ["critical", "ok"], None),
    ("0.78 after warning", [_at_ratio("0.85"), _at_ratio("0.78")], ["warning", "warning"], None),
    ("0.77999 after warning", [_at_ratio("0.85"), _at_ratio("0.77999")], ["warning", "ok"], None),
    ("0.88 first check", [_at_ratio("0.88")], ["warning"], None),
    ("equity exactly 0 with positions", [ZERO_EQUITY], ["critical"], None),
    (
        "critical at equity 0, then 0.88",
        [ZERO_EQUITY, _at_ratio("0.88")],
        ["critical", "critical"],
        None,
    ),
    ("no positions, negative balance", [NEGATIVE_BALANCE_FLAT], ["ok"], None),
    ("no positions at all", [State(Decimal(-1), ())], ["ok"], None),
    (
        "own limits: exactly ac",
        [_at_ratio("0.6")],
        ["critical"],
        Limits(Decimal("0.5"), Decimal("0.6")),
    ),
    ("own warning only: exactly w", [_at_ratio("0.3")], ["warning"], Limits(Decimal("0.3"))),
]


@pytest.mark.parametrize(
    ("states", "levels", "limits"),
    [pytest.param(s, lv, lim, id=name) for name, s, lv, lim in BOUNDARIES],
)
def test_boundary(db: Db, states: list[State], levels: list[Level], limits: Limits | None) -> None:
    case = AccountCase("acc-edge", limits, tuple(states))
    settings_ = settings_for(db.dsn, risk={"auto_close": "off"})
    history = AccountHistory(Thresholds().for_account(limits))
    model_levels = [history.check(s.balance, list(s.positions)).level for s in states]
    assert model_levels == levels, "the model itself disagrees with DESIGN §1"
    problems = run_batch(db, settings_, Batch(DEFAULT_HYSTERESIS, (case,)))
    assert not problems, "\n".join(problems)
