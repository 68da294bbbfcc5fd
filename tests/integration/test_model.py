"""The platform's own margin model (DESIGN §1, issue 14): `[risk] model = "schema.function"`.

The tests define a tiered maintenance-margin model (TIERED_SQL: the rate rises with a position's
notional, as exchanges' liquidity tiers do; tests/model.py holds the same tiers in Python). riskd
must decide with its figures in the check, the sweep and `riskd check`, keep them as evidence,
refuse a function whose signature does not fit with one line, and flatten by asking the model
again after each close.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import Db, settings_for
from test_daemon import Start, start

from riskd import migrate
from riskd.check import check_accounts, sweep
from riskd.cli import main
from riskd.config import Settings
from riskd.db import set_session
from riskd.errors import SchemaMappingError

MODEL = "risk_model.tiered"
__all__ = ["start"]  # the fixture, shared with test_daemon

# tests/tiered_model.sql: margin tiered by notional (tests/model.py holds the same tiers)
TIERED_SQL = (Path(__file__).resolve().parents[1] / "tiered_model.sql").read_text()


def install_model(db: Db, **risk: Any) -> Settings:
    """The tiered model in the database, and riskd migrated to use it."""
    db.conn.execute(TIERED_SQL)
    settings = settings_for(db.dsn, risk={"model": MODEL, **risk})
    migrate.migrate(settings)
    return settings


@pytest.fixture
def tiered(db: Db) -> Iterator[Settings]:
    yield install_model(db)


def account(db: Db, account_id: str, balance: str, *positions: tuple[str, str, str]) -> None:
    """An account with positions (instrument, quantity, PnL); instruments i1 (price 100) and i2
    (price 1 000), margin rate 10 %."""
    db.conn.execute(
        'INSERT INTO instruments (id, symbol, price, "marginRate") VALUES'
        " ('i1', 'I1', 100, 0.1), ('i2', 'I2', 1000, 0.1) ON CONFLICT DO NOTHING"
    )
    db.conn.execute(
        'INSERT INTO trading_accounts (id, "userId", balance) VALUES (%s, %s, %s)',
        (account_id, f"u-{account_id}", Decimal(balance)),
    )
    for n, (instrument, quantity, pnl) in enumerate(positions):
        db.conn.execute(
            'INSERT INTO positions (id, "tradingAccountId", "instrumentId", quantity,'
            ' "unrealizedPnL") VALUES (%s, %s, %s, %s, %s)',
            (f"{account_id}-p{n}", account_id, instrument, Decimal(quantity), Decimal(pnl)),
        )


def test_the_check_decides_with_the_models_figures(db: Db, tiered: Settings) -> None:
    # 8 units of i2: notional 8 000, tier 1.5: margin 1 200 where the built-in model says 800
    account(db, "a1", "1400", ("i2", "8", "0"))
    (result,) = check_accounts(db.conn, tiered, ["a1"])
    assert (result.equity, result.used_margin) == (Decimal("1400"), Decimal("1200.0"))
    assert result.level == "warning"  # 85.7 %; the built-in model would say 57 %: ok
    detail = db.scalar("SELECT detail FROM riskd.risk_events WHERE account_id = 'a1'")
    assert detail["model"] == MODEL
    assert detail["positions"][0]["quantity"] == 8  # the evidence still lists the positions


def test_an_account_the_model_does_not_return_has_nothing_open(db: Db, tiered: Settings) -> None:
    account(db, "flat", "100", ("i1", "0", "0"))
    (result,) = check_accounts(db.conn, tiered, ["flat"])
    assert (result.level, result.utilization, result.equity) == ("ok", 0, Decimal("100"))


def test_the_sweep_and_riskd_check_use_the_model(db: Db, tiered: Settings) -> None:
    account(db, "a1", "1300", ("i2", "8", "0"))  # 1 200 / 1 300: 92 % by the model, critical
    account(db, "a2", "5000", ("i1", "10", "0"))  # 100 / 5 000: ok either way
    swept = sweep(db.conn, tiered)
    assert swept.accounts == 2
    level = db.scalar("SELECT level FROM riskd.account_state WHERE account_id = 'a1'")
    assert level == "critical"
    out = CliRunner().invoke(
        main, ["--dsn", db.dsn, "check", "a1", "--json"], env={"RISKD_RISK_MODEL": MODEL}
    )
    assert out.exit_code == 0, out.output
    assert "1200.0" in out.output


def test_figures_the_model_gets_wrong_hold_the_close_and_are_named(db: Db) -> None:
    db.conn.execute(
        """
        CREATE SCHEMA risk_model;
        CREATE FUNCTION risk_model.tiered(p_ids text[])
        RETURNS TABLE (account_id text, equity numeric, used_margin numeric)
        LANGUAGE sql STABLE AS $$ SELECT id, 'NaN'::numeric, 500::numeric
                                  FROM public.trading_accounts WHERE id = ANY (p_ids) $$;
        """
    )
    settings = settings_for(db.dsn, risk={"model": MODEL})
    migrate.migrate(settings)
    account(db, "a1", "1000", ("i1", "95", "0"))
    (result,) = check_accounts(db.conn, settings, ["a1"])
    # equity NaN counts 0: critical, and no close on it
    assert result.level == "critical" and result.close_request_id is None
    (error,) = db.scalar("SELECT detail -> 'data_errors' FROM riskd.risk_events")
    assert error == {"model": MODEL, "equity": "NaN", "used_margin": "500", "rows": 1}
    assert db.scalar("SELECT count(*) FROM riskd.close_requests") == 0
    assert db.scalar("SELECT detail ->> 'reason' FROM riskd.alerts") == "data_error"


@pytest.mark.parametrize(
    ("definition", "says"),
    [
        (None, "does not exist"),
        (
            "(p_ids bigint[]) RETURNS TABLE (account_id text, equity numeric,"
            " used_margin numeric) LANGUAGE sql STABLE AS $$ SELECT NULL::text, 0::numeric,"
            " 0::numeric $$",
            "tiered(bigint[]) does not take one array of account ids",
        ),
        (
            "(p_ids text[]) RETURNS TABLE (account_id text, equity numeric, margin numeric)"
            " LANGUAGE sql STABLE AS $$ SELECT NULL::text, 0::numeric, 0::numeric $$",
            "does not return TABLE (account_id, equity, used_margin)",
        ),
        (
            "(p_ids text[]) RETURNS TABLE (account_id text, equity text, used_margin numeric)"
            " LANGUAGE sql STABLE AS $$ SELECT NULL::text, ''::text, 0::numeric $$",
            "returns account_id or figures of other types",
        ),
        (
            "(p_ids text[]) RETURNS TABLE (account_id text, equity numeric,"
            " used_margin numeric) LANGUAGE sql VOLATILE AS $$ SELECT NULL::text, 0::numeric,"
            " 0::numeric $$",
            "is VOLATILE",
        ),
    ],
)
def test_a_model_that_does_not_fit_is_refused_with_one_line(
    db: Db, definition: str | None, says: str
) -> None:
    db.conn.execute("CREATE SCHEMA risk_model")
    if definition is not None:
        db.conn.execute(f"CREATE FUNCTION risk_model.tiered{definition}")  # type: ignore[arg-type]
    settings = settings_for(db.dsn, risk={"model": MODEL})
    with pytest.raises(SchemaMappingError) as refused:
        migrate.migrate(settings)
    line = str(refused.value)
    assert line.startswith("[risk] model: ") and says in line and "\n" not in line, line
    assert "(account_ids text[]) RETURNS TABLE (account_id text" in line
    out = CliRunner().invoke(main, ["--dsn", db.dsn, "migrate"], env={"RISKD_RISK_MODEL": MODEL})
    assert out.exit_code == 2 and out.output.count("\n") == 1 and says in out.output


def test_the_model_cannot_be_dropped_from_under_riskd(db: Db, tiered: Settings) -> None:
    with pytest.raises(Exception, match="riskd.model_figures"):
        db.conn.execute("DROP FUNCTION risk_model.tiered(text[])")


def test_switching_back_to_the_builtin_model_is_a_migrate(db: Db, tiered: Settings) -> None:
    builtin = settings_for(db.dsn)
    assert not migrate.mapping_matches(builtin)
    migrate.migrate(builtin)
    assert migrate.mapping_matches(builtin)
    account(db, "a1", "1400", ("i2", "8", "0"))
    (result,) = check_accounts(db.conn, builtin, ["a1"])
    assert result.used_margin == Decimal("800.0")
    db.conn.execute("DROP FUNCTION risk_model.tiered(text[])")  # no longer riskd's


def test_flatten_asks_the_model_again_after_each_close(db: Db) -> None:
    settings = install_model(db, auto_close="flatten")
    # By the model: i2 ×12 (notional 12 000, tier 1.5) 1 800, i1 ×30 300, i1 ×20 200: 2 300
    # on an equity of 2 100, critical (the built-in model says 1 700: 81 %, warning). Largest
    # loss first, asking the model after each: p1 (-50) leaves 2 000 on 2 100, p2 (-40) 1 800
    # on 2 100 (86 %), p0 (-10) nothing: all three closed, each loss booked.
    account(
        db,
        "a1",
        "2200",
        ("i2", "12", "-10"),
        ("i1", "30", "-50"),
        ("i1", "20", "-40"),
    )
    (result,) = check_accounts(db.conn, settings, ["a1"])
    assert result.level == "critical" and result.close_request_id is not None
    detail = db.scalar("SELECT detail FROM riskd.close_requests WHERE account_id = 'a1'")
    closed = [c["position"] for c in detail["closed"]]
    assert closed[:2] == ["a1-p1", "a1-p2"]
    assert detail["model"] == MODEL
    remaining = db.conn.execute(
        "SELECT id FROM positions WHERE \"tradingAccountId\" = 'a1' AND quantity <> 0"
    ).fetchall()
    assert [r[0] for r in remaining] == [p for p in ["a1-p0"] if p not in closed]
    balance = db.scalar("SELECT balance FROM trading_accounts WHERE id = 'a1'")
    assert balance == Decimal("2200") + sum(Decimal(str(c["pnl"])) for c in detail["closed"])


def test_flatten_stops_once_the_model_says_under_warning(db: Db) -> None:
    settings = install_model(db, auto_close="flatten")
    # By the model: i2 ×25 (notional 25 000, top tier ×2) 5 000, i1 ×10 100, on an equity of
    # 4 999: critical (the built-in model: 2 600, 52 %). i2 has the larger loss: closed first,
    # it leaves 100 on 4 999, 2 %: the model says enough, and i1 stays open.
    account(db, "a1", "5100", ("i2", "25", "-100"), ("i1", "10", "-1"))
    (result,) = check_accounts(db.conn, settings, ["a1"])
    detail = db.scalar("SELECT detail FROM riskd.close_requests WHERE account_id = 'a1'")
    assert [c["position"] for c in detail["closed"]] == ["a1-p0"]
    assert db.scalar("SELECT quantity FROM positions WHERE id = 'a1-p1'") == 10
    assert Decimal(str(detail["used_margin_after"])) == Decimal("100.0")
    assert result.close_request_id is not None


def test_the_model_and_the_breaker_together(db: Db) -> None:
    settings = install_model(db, max_closes_per_minute=1)
    account(db, "a1", "1300", ("i2", "8", "0"))
    account(db, "a2", "1250", ("i2", "8", "0"))
    conn = db.connect()
    set_session(conn, settings)
    with conn:
        results = {r.account_id: r for r in check_accounts(conn, settings, ["a1", "a2"])}
    assert results["a2"].close_request_id is not None  # the worse one, by the model
    assert results["a1"].close_request_id is None
    assert db.scalar("SELECT paused FROM riskd.controls") is True


def test_the_model_is_recorded_with_the_mapping(db: Db, tiered: Settings) -> None:
    recorded = db.scalar("SELECT mapping FROM riskd.installation")
    assert recorded["model"] == MODEL
    assert migrate.mapping_matches(tiered)
    assert not migrate.mapping_matches(dataclasses.replace(tiered, risk=settings_for("").risk))


def test_the_daemon_refuses_to_start_on_a_model_that_no_longer_fits(
    db: Db, tiered: Settings, start: Start
) -> None:
    """Its owner may alter the function after `riskd migrate`: the daemon says so in one line,
    exit 2, and so it does when the configuration names another model than the installed one."""
    db.conn.execute("ALTER FUNCTION risk_model.tiered(text[]) VOLATILE")
    daemon = start(extra_env={"RISKD_RISK_MODEL": MODEL})
    assert daemon.proc is not None and daemon.proc.wait(30) == 2
    assert "[risk] model: risk_model.tiered(text[]) is VOLATILE" in daemon.log()
    db.conn.execute("ALTER FUNCTION risk_model.tiered(text[]) STABLE")
    other = start()  # the built-in model configured, the platform's installed
    assert other.proc is not None and other.proc.wait(30) == 2
    assert "[risk] model differs from what `riskd migrate` installed riskd with" in other.log()
