"""What ``riskd demo`` shows: the live screen on a terminal, a plain progress line otherwise.

Pure rendering: the functions here take plain values (a :class:`Frame`, a :class:`Sample`) and
return rich renderables or strings; they read no database, no clock and no console, so a frame
renders the same from fixed data (tests/unit/test_demo_view.py). riskd.demo takes the values
from its run and draws them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from riskd.demo.simulator import MarketStats
from riskd.levels import LEVELS

WIDE = 140  # columns from which the flattenings get a table of their own beside the events
LEVEL_STYLE = {"ok": "green", "warning": "yellow", "critical": "bold red"}


@dataclass(slots=True)
class FeedEvent:
    """One event as the platform sees it: a riskd_events notification."""

    at: float
    account_id: str
    from_level: str
    to_level: str
    utilization: Decimal | None
    close_request_id: int | None


@dataclass(slots=True)
class Flattened:
    account_id: str
    closed: int
    realised: Decimal
    before: Decimal | None
    after: Decimal | None


@dataclass(slots=True)
class Sample:
    """What the view shows, taken once a second."""

    elapsed: float = 0.0
    checks_per_second: float = 0.0
    p50: float | None = None
    p99: float | None = None
    levels: dict[str, int] = field(default_factory=dict)
    flattened_accounts: int = 0
    latest_flattened: list[Flattened] = field(default_factory=list)
    paused: str | None = None  # the kill switch, as `riskd status` says it; None: running
    alerts: list[str] = field(default_factory=list)  # the safety rails' latest, newest first


@dataclass(frozen=True, slots=True)
class Frame:
    """Everything one screen shows, as of the moment it is drawn."""

    major: int  # of PostgreSQL
    accounts: int
    positions: int
    duration: float  # seconds of market
    warning_threshold: Decimal
    auto_close_threshold: Decimal
    hysteresis: Decimal
    debounce: float  # seconds
    sample: Sample
    events: Mapping[str, int]  # the market's, by level reached
    initial: Mapping[str, int]  # the first sweep's, by level reached
    feed: Sequence[FeedEvent]  # newest first
    market: MarketStats
    traders: int
    dirty: int  # the daemon's, now
    lag: float  # seconds
    sell_off_due: float  # seconds into the market
    sell_off_at: float | None = None  # when it happened
    sell_off_instruments: int = 0
    sell_off_move: float = 0.0  # relative


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def pct(ratio: Decimal | None) -> str:
    return "equity <= 0" if ratio is None else f"{ratio * 100:.1f} %"


def _levels(counts: Mapping[str, int], *names: str) -> str:
    return ", ".join(f"{counts.get(name, 0):,} {name}" for name in names)


def progress_line(
    sample: Sample, events: Mapping[str, int], market: MarketStats, news: str = ""
) -> str:
    """One line a second when stdout is not a terminal; ``news``: what the market did just now
    (the sell-off), said once."""
    s, m = sample, market
    return (
        f"{s.elapsed:5.1f} s  accounts {_levels(s.levels, 'ok', 'warning', 'critical')}"
        f" | {s.checks_per_second:,.0f} checks/s, latency p50 {ms(s.p50)} p99 {ms(s.p99)}"
        f" | events {_levels(events, 'warning', 'critical', 'ok')}"
        f" | flattened {s.flattened_accounts:,} accounts"
        f" | {m.fills:,} fills, {m.price_moves:,} price moves"
        + (" | PAUSED" if s.paused else "")
        + (f" | {news}" if news else "")
    )


def render(frame: Frame, width: int, height: int) -> RenderableType:
    """The live screen: three panels over the event feed (and, when wide, the flattenings)."""
    f, s = frame, frame.sample
    clock = Text(f" {min(s.elapsed, f.duration):.0f} s of {f.duration:.0f} s", style="bold")
    header = Table.grid(expand=True)
    header.add_column(ratio=1)
    header.add_column(justify="right", no_wrap=True, min_width=len(clock))
    header.add_row(
        Text.from_markup(
            f"[bold]riskd demo[/] · PostgreSQL {f.major} · {f.accounts:,} accounts · "
            f"{f.positions:,} positions · warning {f.warning_threshold * 100:.0f} % · "
            f"flatten {f.auto_close_threshold * 100:.0f} % · debounce {f.debounce * 1000:.0f} ms"
        ),
        clock,
    )
    wide = width >= WIDE
    top = Table.grid(expand=True, padding=(0, 1))
    top.add_column()  # the accounts: as wide as its figures
    top.add_column(ratio=1)
    panels: list[RenderableType] = [_accounts_panel(f), _daemon_panel(f)]
    if wide:
        top.add_column(ratio=1)
        panels.append(Panel(_market(f), title="market", border_style="blue"))
    top.add_row(*panels)
    parts: list[RenderableType] = [header]
    if s.paused:  # across the top: nothing is closed until an operator resumes
        parts.append(Text(f" {s.paused} ", style="bold white on red"))
    parts.append(top)
    if s.alerts:
        parts.append(Text("\n".join(f"alert: {a}" for a in s.alerts[:3]), style="bold"))
    rows = max(3, height - (17 if wide else 23))
    if wide:
        bottom = Table.grid(expand=True, padding=(0, 1))
        bottom.add_column(ratio=1)
        bottom.add_column(ratio=1)
        bottom.add_row(_events_table(f.feed, rows), _flattened_table(s, rows))
        parts.append(bottom)
    else:
        parts += [
            Panel(_market(f), title="market", border_style="blue"),
            _events_table(f.feed, rows),
        ]
    parts.append(
        Text(
            f"a level is left only {f.hysteresis * 100:.0f} % below its threshold (hysteresis)"
            " · Ctrl-C stops the demo (then the summary)",
            style="dim",
        )
    )
    return Group(*parts)


def _accounts_panel(frame: Frame) -> Panel:
    s = frame.sample
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    for level in LEVELS:
        count = s.levels.get(level, 0)
        share = 100 * count / frame.accounts if frame.accounts else 0.0
        table.add_row(Text(level, style=LEVEL_STYLE[level]), f"{count:,}", f"{share:.1f} %")
    table.add_row(Text("flattened", style="magenta"), f"{s.flattened_accounts:,}", "")
    table.add_row(Text("traded by the market", style="dim"), f"{frame.traders:,}", "")
    return Panel(table, title="accounts", border_style="blue")


def _daemon_panel(frame: Frame) -> Panel:
    s = frame.sample
    table = _pairs(
        ("checks", f"{s.checks_per_second:,.0f} / s"),
        ("latency", f"p50 {ms(s.p50)} · p99 {ms(s.p99)}"),
        ("events", _colored_levels(frame.events)),
        ("dirty", f"{frame.dirty:,} · lag {frame.lag:.1f} s"),
        ("first sweep", first_sweep(frame.initial)[0]),
        ("", first_sweep(frame.initial)[1]),
    )
    return Panel(table, title="riskd daemon (last second)", border_style="blue")


def _market(frame: Frame) -> Table:
    s, m = frame.sample, frame.market
    if frame.sell_off_at is None:
        sell_off = f"in {max(0.0, frame.sell_off_due - s.elapsed):.0f} s"
    else:
        sell_off = (
            f"at {frame.sell_off_at:.0f} s: {frame.sell_off_instruments} instruments "
            f"{frame.sell_off_move * 100:+.0f} %"
        )
    return _pairs(
        ("price moves", f"{m.price_moves:,} · {m.positions_marked:,} positions marked"),
        ("fills", f"{m.fills:,}: {m.added:,} add · {m.reduced:,} reduce · {m.opened:,} new"),
        ("sell-off", sell_off),
        ("ticks", f"{m.ticks:,} · {m.conflicts:,} dropped on a deadlock"),
    )


def _pairs(*pairs: tuple[str, str | Text]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column(no_wrap=True, overflow="ellipsis")
    for key, value in pairs:
        table.add_row(key, value)
    return table


def first_sweep(initial: Mapping[str, int]) -> tuple[Text, str]:
    """What the first sweep found among the seeded accounts, and what became of those it took
    to critical: flattened, and most of them back to ok at their next check (its ok events)."""
    found = Text()
    found.append(f"{initial.get('warning', 0):,} warning", style=LEVEL_STYLE["warning"])
    found.append("  ")
    found.append(f"{initial.get('critical', 0):,} critical", style=LEVEL_STYLE["critical"])
    return found, f"flattened, {initial.get('ok', 0):,} back to ok"


def _colored_levels(counts: Mapping[str, int]) -> Text:
    text = Text()
    for i, level in enumerate(("warning", "critical", "ok")):
        if i:
            text.append("  ")
        text.append(f"{counts.get(level, 0):,} {level}", style=LEVEL_STYLE[level])
    return text


def _events_table(feed: Sequence[FeedEvent], rows: int) -> Table:
    table = Table(title="latest events (LISTEN riskd_events)", expand=True, title_justify="left")
    table.add_column("at", justify="right", style="dim", no_wrap=True)
    table.add_column("account", no_wrap=True)
    table.add_column("transition", no_wrap=True)
    table.add_column("utilisation", justify="right", no_wrap=True)
    table.add_column("action", no_wrap=True)
    for event in feed[:rows]:
        transition = Text()
        transition.append(event.from_level, style=LEVEL_STYLE.get(event.from_level, ""))
        transition.append(" -> ")
        transition.append(event.to_level, style=LEVEL_STYLE.get(event.to_level, ""))
        action = "flattened" if event.close_request_id is not None else ""
        table.add_row(
            f"{event.at:.1f} s",
            event.account_id,
            transition,
            pct(event.utilization),
            Text(action, style="magenta"),
        )
    return table


def _flattened_table(sample: Sample, rows: int) -> Table:
    table = Table(title="flattened by riskd (market)", expand=True, title_justify="left")
    table.add_column("account", no_wrap=True)
    table.add_column("closed", justify="right", no_wrap=True)
    table.add_column("realised PnL", justify="right", no_wrap=True)
    table.add_column("utilisation", justify="right", no_wrap=True)
    for f in sample.latest_flattened[:rows]:
        table.add_row(
            f.account_id,
            f"{f.closed}",
            f"{f.realised:,.2f}",
            f"{pct(f.before)} -> {pct(f.after)}",
        )
    return table
