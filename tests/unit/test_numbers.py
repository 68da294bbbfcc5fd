"""One number format per kind (issue 10, finding 8): riskd.numbers, without a database."""

from __future__ import annotations

import decimal
import json
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import given
from hypothesis import strategies as st

from riskd import numbers


def test_utilisation_is_a_percentage_with_two_decimals() -> None:
    assert numbers.percent(Decimal("0.8418056120")) == "84.18 %"
    assert numbers.percent(Decimal("0.95")) == "95.00 %"
    assert numbers.percent(Decimal("1.0416666667")) == "104.17 %"
    assert numbers.percent(0) == "0.00 %"
    assert numbers.percent(None) == "n/a (equity <= 0)"
    # half away from zero, as riskd's SQL rounds
    assert numbers.percent(Decimal("0.84185")) == "84.19 %"
    assert numbers.percent(Decimal("-0.00001")) == "0.00 %"


def test_money_has_two_decimals_whatever_scale_the_database_kept() -> None:
    # the finding: equity 368.85000000 beside used margin 378.900
    assert numbers.money(Decimal("368.85000000")) == "368.85"
    assert numbers.money(Decimal("378.900")) == "378.90"
    assert numbers.money(Decimal("1000")) == "1000.00"
    assert numbers.money(Decimal("-0.005")) == "-0.01"
    assert numbers.money(Decimal("0.005")) == "0.01"
    assert numbers.money(Decimal("-0.004")) == "0.00"  # never "-0.00"
    assert numbers.money(Decimal("1E+3")) == "1000.00"  # never in exponent notation
    assert numbers.money(None) == "-"
    assert numbers.money(Decimal("NaN")) == "NaN"


def test_large_figures_keep_every_digit() -> None:
    big = Decimal("123456789012345678901234567890123.456")
    assert numbers.money(big) == "123456789012345678901234567890123.46"
    assert numbers.percent(Decimal("12345678901234567890123456789.123456")) == (
        "1234567890123456789012345678912.35 %"
    )


def test_ages_in_whole_units() -> None:
    assert numbers.ago(3.7) == "3 s ago"
    assert numbers.ago(0) == "0 s ago"
    assert numbers.ago(-1.0) == "0 s ago"  # a clock a hair behind never prints a negative age
    assert numbers.ago(59.99) == "59 s ago"
    assert numbers.ago(120.5) == "2 min ago"
    assert numbers.ago(3 * 3600 + 5) == "3 h ago"
    assert numbers.ago(2 * 86400) == "2 d ago"
    assert numbers.ago(None) == "-"


def test_points_between_ratios() -> None:
    assert numbers.points(Decimal("0.015")) == "1.50 points"
    assert numbers.points(Decimal("-0.005")) == "0.50 points"


def test_json_money_is_the_exact_decimal_as_a_string() -> None:
    assert numbers.json_decimal(Decimal("368.85000000")) == "368.85000000"
    assert numbers.json_decimal(None) is None
    detail = numbers.loads_exact(
        '{"equity": 368.85000000, "positions": [{"quantity": 95,'
        ' "price": 0.1, "instrument": "i1", "bad": null, "x": true}]}'
    )
    assert numbers.json_exact(detail) == {
        "equity": "368.85000000",
        "positions": [
            {"quantity": "95", "price": "0.1", "instrument": "i1", "bad": None, "x": True}
        ],
    }
    assert '"368.85000000"' in json.dumps(numbers.json_exact(detail))


finite = st.decimals(allow_nan=False, allow_infinity=False, places=None) | st.from_regex(
    r"-?[0-9]{1,60}\.[0-9]{0,40}", fullmatch=True
).map(Decimal)  # long figures too: no step may round them to a context's 28 digits


def _exact(value: Decimal, places: int) -> Decimal:
    with decimal.localcontext(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN):
        return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


@given(finite)
def test_money_is_the_value_rounded_half_away_from_zero(value: Decimal) -> None:
    text = numbers.money(value)
    assert "E" not in text and text.count(".") == 1 and len(text.split(".")[1]) == 2
    assert Decimal(text) == _exact(value, 2)


@given(finite)
def test_percent_is_the_ratio_times_100_rounded(value: Decimal) -> None:
    text = numbers.percent(value)
    assert text.endswith(" %")
    # scaleb in a context as wide as the value: the default one (28 digits) would round it
    hundredfold = value.scaleb(2, decimal.Context(prec=decimal.MAX_PREC))
    assert Decimal(text.removesuffix(" %")) == _exact(hundredfold, 2)
