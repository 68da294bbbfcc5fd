"""An independent model of the risk model (DESIGN §1), for differential tests.

Written from the prose of DESIGN §1, not from riskd's SQL: sums and products are exact
``Fraction`` arithmetic, the level is decided on the exact ratio ``used / equity``, and only
the displayed utilisation is rounded (half away from zero, 10 decimal places — riskd's
documented display rounding). No float anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Literal

Level = Literal["ok", "warning", "critical"]

# Lowest first: a level's rank is its index.
LEVELS: tuple[Level, ...] = ("ok", "warning", "critical")

DEFAULT_WARNING = Decimal("0.80")
DEFAULT_AUTO_CLOSE = Decimal("0.90")
DEFAULT_HYSTERESIS = Decimal("0.02")
UTILIZATION_PLACES = 10


def rank(level: Level) -> int:
    return LEVELS.index(level)


@dataclass(frozen=True, slots=True)
class Position:
    """One position as the check sees it: its own quantity and PnL, its instrument's figures."""

    quantity: Decimal
    price: Decimal | None = None
    margin_rate: Decimal | None = None
    pnl: Decimal | None = None

    @property
    def is_open(self) -> bool:
        return self.quantity != 0


@dataclass(frozen=True, slots=True)
class Limits:
    """A row of riskd.account_limits; None means "use the default"."""

    warning: Decimal | None = None
    auto_close: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Thresholds:
    warning: Decimal = DEFAULT_WARNING
    auto_close: Decimal = DEFAULT_AUTO_CLOSE
    hysteresis: Decimal = DEFAULT_HYSTERESIS

    def for_account(self, limits: Limits | None) -> Thresholds:
        if limits is None:
            return self
        return Thresholds(
            warning=self.warning if limits.warning is None else limits.warning,
            auto_close=self.auto_close if limits.auto_close is None else limits.auto_close,
            hysteresis=self.hysteresis,
        )

    def of(self, level: Level) -> Fraction:
        """The threshold at which ``level`` starts (only warning and critical have one)."""
        if level == "warning":
            return Fraction(self.warning)
        if level == "critical":
            return Fraction(self.auto_close)
        raise ValueError("ok has no threshold")


@dataclass(frozen=True, slots=True)
class Risk:
    """What a check decides for one account."""

    level: Level
    previous_level: Level
    equity: Decimal
    used_margin: Decimal
    utilization: Decimal | None  # rounded for display; None when equity <= 0 with positions
    ratio: Fraction | None  # the exact used / equity the level was decided on

    @property
    def transition(self) -> bool:
        return self.level != self.previous_level


def to_decimal(value: Fraction) -> Decimal:
    """The exact Decimal of a Fraction that has a finite decimal expansion."""
    rest, twos, fives = value.denominator, 0, 0
    while rest % 2 == 0:
        rest, twos = rest // 2, twos + 1
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:
        raise ValueError(f"{value} has no finite decimal expansion")
    places = max(twos, fives)
    digits = value * 10**places
    assert digits.denominator == 1
    # the string constructor is exact, whatever the context's precision
    return Decimal(f"{digits.numerator}E-{places}")


def round_half_away(value: Fraction, places: int) -> Decimal:
    """``value`` rounded to ``places`` decimal places, ties away from zero."""
    scaled = abs(value) * 10**places
    units = int(scaled + Fraction(1, 2))  # int() truncates; the operand is >= 0, so floor
    sign = "-" if value < 0 else ""
    return Decimal(f"{sign}{units}E-{places}")


def raw_level(ratio: Fraction, thresholds: Thresholds) -> Level:
    if ratio >= thresholds.of("critical"):
        return "critical"
    if ratio >= thresholds.of("warning"):
        return "warning"
    return "ok"


def decide(ratio: Fraction, previous: Level, thresholds: Thresholds) -> Level:
    """The level for a positive equity: the raw level, held up by hysteresis on the way down.

    Going down from ``previous``, the account keeps the highest level L above the raw one (and
    not above ``previous``) that it is still within ``hysteresis`` of: ratio >= thr(L) - h.
    """
    raw = raw_level(ratio, thresholds)
    if rank(raw) >= rank(previous):
        return raw
    h = Fraction(thresholds.hysteresis)
    for level in reversed(LEVELS):
        if rank(raw) < rank(level) <= rank(previous) and ratio >= thresholds.of(level) - h:
            return level
    return raw


def builtin_margin(quantity: Fraction, price: Fraction, margin_rate: Fraction) -> Fraction:
    """DESIGN §1: |quantity| × price × margin rate."""
    return abs(quantity) * price * margin_rate


# One position's margin from its quantity, price and margin rate (all known).
Margin = Callable[[Fraction, Fraction, Fraction], Fraction]

# The tiered maintenance margin the tests give riskd as the platform's own model
# (tests/integration/test_model.py, TIERED_SQL): the rate rises with the position's notional.
TIERS = ((Fraction(5000), Fraction(1)), (Fraction(20000), Fraction(3, 2)))
TOP_TIER = Fraction(2)


def tiered_margin(quantity: Fraction, price: Fraction, margin_rate: Fraction) -> Fraction:
    notional = abs(quantity) * price
    factor = next((f for limit, f in TIERS if notional < limit), TOP_TIER)
    return notional * margin_rate * factor


def assess(
    balance: Decimal | None,
    positions: list[Position],
    previous: Level = "ok",
    thresholds: Thresholds | None = None,
    margin: Margin = builtin_margin,
) -> Risk:
    """Check one account: its balance (None counts 0), its positions, its previous level."""
    thresholds = thresholds or Thresholds()
    open_positions = [p for p in positions if p.is_open]
    equity = Fraction(balance or 0) + sum(
        (Fraction(p.pnl) for p in open_positions if p.pnl is not None), Fraction(0)
    )
    used = sum(
        (
            margin(Fraction(p.quantity), Fraction(p.price), Fraction(p.margin_rate))
            for p in open_positions
            if p.price is not None and p.margin_rate is not None
        ),
        Fraction(0),
    )
    level: Level
    ratio: Fraction | None
    utilization: Decimal | None
    if not open_positions:
        level, ratio, utilization = "ok", Fraction(0), Decimal(0)
    elif equity <= 0:
        level, ratio, utilization = "critical", None, None
    else:
        ratio = used / equity
        level = decide(ratio, previous, thresholds)
        utilization = round_half_away(ratio, UTILIZATION_PLACES)
    return Risk(
        level=level,
        previous_level=previous,
        equity=to_decimal(equity),
        used_margin=to_decimal(used),
        utilization=utilization,
        ratio=ratio,
    )


@dataclass(slots=True)
class AccountHistory:
    """One account checked again and again: the model carries its own previous level.

    An account never checked counts as ok; every check whose level differs from the previous
    one is a transition, and each transition is exactly one event.
    """

    thresholds: Thresholds = field(default_factory=Thresholds)
    level: Level = "ok"
    transitions: list[tuple[Level, Level]] = field(default_factory=list)
    margin: Margin = builtin_margin

    def check(self, balance: Decimal | None, positions: list[Position]) -> Risk:
        risk = assess(balance, positions, self.level, self.thresholds, self.margin)
        if risk.transition:
            self.transitions.append((risk.previous_level, risk.level))
        self.level = risk.level
        return risk
