"""The demo's view renders a frame from fixed data: no database, no terminal."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from decimal import Decimal

import pytest
from rich.console import Console

from riskd.demo.simulator import MarketStats
from riskd.demo.view import FeedEvent, Flattened, Frame, Sample, progress_line, render
from riskd.sqlfiles import queries, query

SAMPLE = Sample(
    elapsed=12.0,
    checks_per_second=1234.0,
    p50=0.25,
    p99=0.8,
    levels={"ok": 9_500, "warning": 400, "critical": 100},
    flattened_accounts=37,
    latest_flattened=[
        Flattened("acc-0000042", 3, Decimal("-1234.5"), Decimal("0.95"), Decimal(0)),
    ],
)
MARKET = MarketStats(ticks=48, price_moves=96, positions_marked=9_000, fills=480, added=300)


FRAME = Frame(
    major=18,
    accounts=10_000,
    positions=100_000,
    duration=30.0,
    warning_threshold=Decimal("0.80"),
    auto_close_threshold=Decimal("0.90"),
    hysteresis=Decimal("0.02"),
    debounce=0.2,
    sample=SAMPLE,
    events=Counter({"warning": 21, "critical": 5, "ok": 2}),
    initial=Counter({"warning": 400, "critical": 90, "ok": 71}),
    feed=[
        FeedEvent(11.5, "acc-0000042", "warning", "critical", Decimal("0.95"), 7),
        FeedEvent(11.0, "acc-0000007", "ok", "warning", None, None),
    ],
    market=MARKET,
    traders=500,
    dirty=12,
    lag=0.3,
    sell_off_due=12.0,
    sell_off_at=12.0,
    sell_off_instruments=20,
    sell_off_move=-0.10,
)


def _text(frame: Frame, width: int, height: int = 45) -> str:
    console = Console(width=width, height=height, color_system=None)
    with console.capture() as captured:
        console.print(render(frame, width, height))
    return captured.get()


@pytest.mark.parametrize("width", [160, 100])
def test_a_frame_shows_the_run_at_a_glance(width: int) -> None:
    text = _text(FRAME, width)
    assert "riskd demo · PostgreSQL 18 · 10,000 accounts · 100,000 positions" in text
    assert "warning 80 %" in text and "flatten 90 %" in text and "debounce 200 ms" in text
    # a level is left only below its threshold less the hysteresis: critical -> warning at
    # 79.9 % is no contradiction, and the screen says why
    assert "a level is left only 2 % below its threshold (hysteresis)" in text
    assert "traded by the market" in text
    # the first sweep's ok events are the flattened accounts coming back, said so
    assert "400 warning  90 critical" in text and "flattened, 71 back to ok" in text
    assert "12 s of 30 s" in text
    assert "9,500" in text and "95.0 %" in text  # ok accounts and their share
    assert "1,234 / s" in text and "p50 250 ms · p99 800 ms" in text
    assert "21 warning  5 critical  2 ok" in text  # the market's events
    assert "12 · lag 0.3 s" in text
    assert "at 12 s: 20 instruments -10 %" in text
    assert "warning -> critical" in text and "95.0 %" in text and "flattened" in text
    assert "ok -> warning" in text and "equity <= 0" in text
    assert "Ctrl-C stops the demo" in text


def test_a_wide_frame_lists_the_flattenings_beside_the_events() -> None:
    wide, narrow = _text(FRAME, 160), _text(FRAME, 100)
    assert "flattened by riskd (market)" in wide
    assert "-1,234.50" in wide and "95.0 % -> 0.0 %" in wide
    assert "flattened by riskd (market)" not in narrow


def test_before_the_sell_off_the_frame_counts_down_to_it() -> None:
    text = _text(replace(FRAME, sample=Sample(elapsed=4.0), sell_off_at=None), 160)
    assert "in 8 s" in text
    assert "0 s of 30 s" not in text and "4 s of 30 s" in text


def test_the_progress_line_without_a_terminal() -> None:
    line = progress_line(SAMPLE, Counter({"warning": 21, "critical": 5}), MARKET)
    assert line == (
        " 12.0 s  accounts 9,500 ok, 400 warning, 100 critical"
        " | 1,234 checks/s, latency p50 250 ms p99 800 ms"
        " | events 21 warning, 5 critical, 0 ok"
        " | flattened 37 accounts | 480 fills, 96 price moves"
    )
    news = progress_line(SAMPLE, Counter(), MARKET, "SELL-OFF: 20 instruments -10 %")
    assert news.endswith(" | SELL-OFF: 20 instruments -10 %")


def test_paused_says_so_across_the_top_with_the_alerts_and_in_the_progress_line() -> None:
    paused = replace(
        SAMPLE,
        paused="PAUSED by circuit breaker since 12:00:01 (3 s ago): 41 closes in a minute",
        alerts=["circuit_open: 41 closes in a minute would exceed [risk] max_closes_per_minute"],
    )
    text = _text(replace(FRAME, sample=paused), 160)
    first_lines = text.splitlines()[:4]
    assert any("PAUSED by circuit breaker" in line for line in first_lines), first_lines
    assert "alert: circuit_open: 41 closes" in text and "[risk] max_closes_per_minute" in text
    assert progress_line(paused, Counter(), MARKET).endswith(" | PAUSED")
    assert "PAUSED" not in _text(FRAME, 160)


def test_the_demo_queries_load_from_their_own_file() -> None:
    demo = queries(file="simulator.sql")
    assert {"mark_to_market", "fill", "open", "create_database", "latest_flattened"} <= set(demo)
    assert all(text and not text.startswith("-- name") for text in demo.values())
    assert "check_accounts" not in demo and "check_accounts" in queries()
    assert query("fill", file="simulator.sql").as_string(None).startswith("-- A fill")
