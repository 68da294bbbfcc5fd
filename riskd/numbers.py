"""How riskd prints a number, one format per kind (the one home for them).

In text: a utilisation (or a threshold, a ratio) as a percentage with two decimals
(``84.18 %``), money (equity, used margin, a balance, a PnL) with two decimals, an age as whole
seconds, minutes, hours or days (``3 s ago``, ``2 min ago``). Rounding is half away from zero,
as riskd's SQL rounds, and exact whatever the magnitude. In JSON: money and ratios as strings
of the exact decimal the database holds (never a float, which would round them), so a reader
parses them with its own decimal type.
"""

from __future__ import annotations

import decimal
import json
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

MONEY_PLACES = 2
PERCENT_PLACES = 2
NOT_A_RATIO = "n/a (equity <= 0)"
# for the steps that must not round at all (a shift of the decimal point)
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def _round(value: Decimal, places: int) -> Decimal:
    """``value`` to ``places`` decimals, half away from zero, exactly (no context precision
    limit: a large figure is never rounded to fewer digits than it has before the point)."""
    exponent = Decimal(1).scaleb(-places)
    digits = max(value.adjusted() + places + 2, 1)
    with decimal.localcontext(prec=digits, rounding=ROUND_HALF_UP):
        return value.quantize(exponent)


def _fixed(value: Decimal, places: int) -> str:
    if not value.is_finite():
        return str(value)  # NaN, Infinity: shown as they are, never as a number
    rounded = _round(value, places)
    if rounded.is_zero():
        rounded = rounded.copy_abs()  # -0.00 reads as a loss that is not there
    return f"{rounded:f}"


def money(value: Decimal | int | None) -> str:
    """Money in text: two decimals (``368.85``); ``-`` for a missing figure."""
    if value is None:
        return "-"
    return _fixed(Decimal(value), MONEY_PLACES)


def percent(ratio: Decimal | int | None, missing: str = NOT_A_RATIO) -> str:
    """A utilisation or a threshold (a ratio: 0.8418…) in text: ``84.18 %``. ``None`` is a
    utilisation that has no value (equity at or below zero with positions open)."""
    if ratio is None:
        return missing
    return f"{_fixed(Decimal(ratio).scaleb(2, _EXACT), PERCENT_PLACES)} %"


def points(ratio_difference: Decimal) -> str:
    """A difference between two ratios, in percentage points: ``1.50 points``."""
    return f"{_fixed(ratio_difference.copy_abs().scaleb(2, _EXACT), PERCENT_PLACES)} points"


def duration(seconds: float | None) -> str:
    """An age or a span in text, in whole units: ``3 s``, ``2 min``, ``5 h``, ``4 d``."""
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 86400:
        return f"{whole // 3600} h"
    return f"{whole // 86400} d"


def ago(seconds: float | None) -> str:
    """How long ago: ``3 s ago``, ``2 min ago``."""
    return "-" if seconds is None else f"{duration(seconds)} ago"


def json_decimal(value: Decimal | int | None) -> str | None:
    """Money or a ratio in JSON: the exact decimal as a string; ``None`` stays null."""
    return None if value is None else str(value)


def json_exact(value: Any) -> Any:
    """A JSON value (a jsonb column riskd wrote: an event's or a close request's detail) with
    every number a string of its exact decimal, as :func:`json_decimal` writes them."""
    if isinstance(value, dict):
        return {k: json_exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_exact(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, Decimal | int):
        return str(value)
    if isinstance(value, float):  # decoded elsewhere with floats: the shortest exact repr
        return repr(value)
    return value


def loads_exact(text: str | bytes) -> Any:
    """Decode JSON text keeping every number exact (a :class:`~decimal.Decimal`), for
    :func:`psycopg.types.json.set_json_loads`: jsonb holds numerics, a float would round them."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)
