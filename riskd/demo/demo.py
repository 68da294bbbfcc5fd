"""``riskd demo``: the whole loop on a throwaway PostgreSQL, in one process.

Set-up (synchronous): an embedded PostgreSQL in a fresh directory under the temporary
directory, the reference schema seeded (riskd.seed), riskd installed (riskd.migrate). Then, in
one asyncio loop: the daemon (flatten mode, 200 ms debounce, 1 s max delay, so that the view is
lively), the market simulator (riskd.demo.simulator), a LISTEN on ``riskd_events`` for the feed, and
the view (drawn by riskd.demo.view): a rich.Live screen on a terminal, one plain progress line
a second otherwise. The market opens once the daemon's first sweep is done, so the events of
the seeded accounts that start out over the thresholds are told apart from the ones the market
causes. The statements of the demo and the market are the named queries of ``sql/simulator.sql``.

Ctrl-C (or SIGTERM) stops the market and the daemon cooperatively, prints the summary and removes
the cluster (unless ``keep``); a second Ctrl-C skips the waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Console, RenderableType
from rich.live import Live
from rich.logging import RichHandler

from riskd import migrate
from riskd.check import sweep
from riskd.config import DaemonSettings, DatabaseSettings, RiskSettings, Settings
from riskd.daemon.daemon import Daemon
from riskd.db import require_dsn
from riskd.demo.board import Board
from riskd.demo.simulator import QUERY_FILE, Market, MarketStats
from riskd.demo.view import FeedEvent, Flattened, Frame, Sample, ms, progress_line, render
from riskd.rails import Switch, describe
from riskd.sandbox.cluster import ClusterError, PgCluster, find_bindirs
from riskd.sandbox.seed import seed
from riskd.sqlfiles import query

log = logging.getLogger(__name__)

DATABASE = "trading"
PREFERRED_MAJOR = 18
# Many instruments, so that one price move re-marks a few hundred positions rather than a tenth
# of the book: the market moves often and smoothly, and the daemon's work comes steadily.
INSTRUMENTS = 1000
DEBOUNCE = 0.2  # seconds: the view wants accounts checked soon after they change
MAX_DELAY = 1.0
SELL_OFF_AT = 0.4  # of the duration
SAMPLE_EVERY = 1.0  # seconds between samples (and progress lines without a terminal)
REFRESH_EVERY = 0.5  # seconds between redraws of the live view (a redraw blocks the loop)
READY_TIMEOUT = 120.0  # the first sweep of the seeded accounts
SETTLE_TIMEOUT = 5.0  # the daemon re-checks what its first sweep flattened
SETTLE_ROUNDS = 3
STOP_TIMEOUT = 30.0
DEMO_OPERATOR = "riskd demo"
OPENING = "the book opens: the first sweep records it, nothing is closed before review"
REVIEWED = "the book reviewed"
BREAKER_BUDGET = 20  # closes a minute beyond the seeded breaches, at least


@dataclass(frozen=True, slots=True)
class DemoOptions:
    accounts: int = 10_000
    positions: int = 100_000
    duration: float = 30.0
    keep: bool = False
    seed: int = 1
    live: bool | None = None  # None: when stdout is a terminal
    # the circuit breaker; None: sized for the demo (the seeded book's breaches, and a budget
    # the market's ordinary pace stays under and a flash crash does not); 0: off
    max_closes_per_minute: int | None = None


@dataclass(slots=True)
class Run:
    """The state of one demo, shared by the tasks of the loop."""

    options: DemoOptions
    major: int
    settings: Settings
    daemon: Daemon
    market: Market | None = None
    started: float = 0.0
    initial: Counter[str] = field(default_factory=Counter)
    first_market_event: int = 0
    first_market_close: int = 0
    checks_at_open: int = 0
    feed: deque[FeedEvent] = field(default_factory=lambda: deque(maxlen=40))
    events: Counter[str] = field(default_factory=Counter)
    sample: Sample = field(default_factory=Sample)
    latencies: list[float] = field(default_factory=list)
    sell_off_at: float | None = None
    interrupted: str = ""  # the signal that stopped the market early, if one did
    said: set[int] = field(default_factory=set)  # the alerts already taken in
    new_alerts: list[str] = field(default_factory=list)  # to print (no terminal), oldest first


def _query(name: str) -> sql.SQL:
    """One of the demo's named queries (sql/simulator.sql, with the market's)."""
    return query(name, file=QUERY_FILE)


# --------------------------------------------------------------------------- entry point


# What stops the demo cleanly, cluster removed: Ctrl-C, a `kill`, and the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _interrupt_on_stop_signals() -> None:
    """Outside the event loop (starting the server, seeding, the summary, the clean-up), a stop
    signal interrupts like Ctrl-C, so the cluster is removed; by default SIGTERM and SIGHUP
    would end the process at once and leave the server running."""
    for signum in STOP_SIGNALS[1:]:
        signal.signal(signum, _interrupt)


def run(options: DemoOptions, console: Console | None = None) -> int:
    """The demo from start to summary; the exit code (0 also after Ctrl-C, SIGTERM, SIGHUP)."""
    console = console or Console()
    live = console.is_terminal if options.live is None else options.live
    _configure_logging(console, live)
    cluster: PgCluster | None = None
    keep = False
    _interrupt_on_stop_signals()
    try:
        cluster = _new_cluster()
        settings = _set_up(cluster, options, console)
        run_ = Run(
            options=options,
            major=cluster.major,
            settings=settings,
            daemon=Daemon(settings, handle_signals=False),
        )
        code = asyncio.run(_main(run_, console, live))
        _interrupt_on_stop_signals()  # the event loop left them at their defaults
        _summary(run_, console)
        keep = options.keep
        if keep:
            _print_kept(cluster, settings, console)
        return code
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
            console.print("interrupted: stopping")
        return 0
    finally:
        if cluster is not None and not keep:
            with contextlib.suppress(KeyboardInterrupt):
                cluster.cleanup()
                with contextlib.suppress(OSError):
                    console.print(f"removed the cluster in {cluster.root}")


def _configure_logging(console: Console, live: bool) -> None:
    """Warnings only (the daemon logs every event at INFO, which the view already shows)."""
    handler: logging.Handler
    if live:
        handler = RichHandler(console=console, show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def _new_cluster() -> PgCluster:
    """A cluster of the newest PostgreSQL found (the embedded 18 first), not started yet."""
    found = find_bindirs()
    if not found:
        raise ClusterError(
            "no PostgreSQL server found: install the embedded one with pip install 'riskd[demo]'"
        )
    major = PREFERRED_MAJOR if PREFERRED_MAJOR in found else max(found)
    # deadlock_timeout: the market's mark-to-market and the daemon's flatten may meet (the
    # market's part of that tick is dropped); a short timeout keeps that from stalling the view.
    return PgCluster(found[major], settings={"deadlock_timeout": "100ms"})


def _set_up(cluster: PgCluster, options: DemoOptions, console: Console) -> Settings:
    """Start the cluster, seed the reference schema, install riskd; the daemon's settings."""
    began = time.monotonic()
    console.print(f"PostgreSQL {cluster.major} in {cluster.root}, port {cluster.port}")
    cluster.start()
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(_query("create_database").format(database=sql.Identifier(DATABASE)))
    dsn = cluster.dsn(DATABASE)
    console.print(f"started in {time.monotonic() - began:.1f} s")
    began = time.monotonic()
    instruments = max(INSTRUMENTS, -(-options.positions // options.accounts))
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed(conn, options.accounts, options.positions, instruments, options.seed)
    console.print(
        f"seeded {options.accounts:,} accounts, {options.positions:,} positions and "
        f"{instruments:,} instruments in {time.monotonic() - began:.1f} s"
    )
    settings = Settings(
        database=DatabaseSettings(dsn=dsn),
        risk=dataclasses.replace(RiskSettings(), auto_close="flatten"),
        daemon=dataclasses.replace(DaemonSettings(), debounce=DEBOUNCE, max_delay=MAX_DELAY),
    )
    migrate.migrate(settings)
    console.print("installed riskd (riskd migrate)")
    # The kill switch: the book opens paused, so that the first sweep records what the seed
    # holds and closes nothing until the operator (the demo) resumes.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query("pause"), {"by": DEMO_OPERATOR, "reason": OPENING})
        sweep(conn, settings)
        row = conn.execute(_query("critical_accounts")).fetchone()
    breaches = int(row[0]) if row else 0
    cap = options.max_closes_per_minute
    if cap is None:
        cap = breaches + max(BREAKER_BUDGET, options.accounts // 200)
    console.print(
        f"riskd pause: the first sweep found {breaches:,} seeded accounts critical and closed "
        f"none; circuit breaker at {cap:,} closes a minute"
        if cap
        else "circuit breaker off",
        soft_wrap=True,
    )
    return dataclasses.replace(
        settings, risk=dataclasses.replace(settings.risk, max_closes_per_minute=cap)
    )


# --------------------------------------------------------------------------- the loop


async def _main(run_: Run, console: Console, live: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    signals = 0

    def on_signal(signum: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        run_.interrupted = signum.name
        stop.set()
        if signals > 1 and main_task is not None:
            main_task.cancel()  # a second Ctrl-C: no more waiting; the cluster still goes

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)

    daemon = run_.daemon
    daemon_task = asyncio.create_task(daemon.run(), name="daemon")
    stack = contextlib.ExitStack()  # the dashboard, once started
    try:
        console.print("daemon started: first sweep over the seeded accounts", soft_wrap=True)
        if not await _wait_ready(daemon, daemon_task, stop):
            return await _stop_daemon(daemon, daemon_task)
        board = await asyncio.to_thread(Board(run_.settings).start)
        stack.callback(board.stop)
        console.print(f"dashboard: {board.url}", soft_wrap=True)
        dsn = require_dsn(run_.settings)
        async with (
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as reader,
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener,
            await psycopg.AsyncConnection.connect(dsn) as trader,
        ):
            await _settle(daemon, reader, stop)
            # the operator has seen the book: resume, and the critical accounts are flattened
            await reader.execute(query("resume"), {"by": DEMO_OPERATOR, "reason": REVIEWED})
            console.print("riskd resume: the seeded breaches are flattened, worst first")
            await _flattened_all(reader, stop)
            await _settle(daemon, reader, stop)
            await _initial(run_, reader)
            if not stop.is_set():  # else Ctrl-C before the market opened
                await _trade(run_, console, live, stop, daemon_task, (reader, listener, trader))
        return await _stop_daemon(daemon, daemon_task)
    finally:
        stack.close()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        if not daemon_task.done():  # something failed, or a second Ctrl-C: stop it anyway
            if signals < 2:
                daemon.request_stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(daemon_task), STOP_TIMEOUT)
            daemon_task.cancel()
            with contextlib.suppress(BaseException):
                await daemon_task


async def _trade(
    run_: Run,
    console: Console,
    live: bool,
    stop: asyncio.Event,
    daemon_task: asyncio.Task[int],
    conns: tuple[psycopg.AsyncConnection[Any], ...],
) -> None:
    """The market open: trades, the event feed and the view, until the view ends or a stop."""
    reader, listener, trader = conns
    console.print(
        f"first sweep: {run_.initial['critical']} seeded accounts over the auto-close"
        f" threshold flattened, {run_.initial['warning']} in warning; the market opens",
        soft_wrap=True,
    )
    await listener.execute(_query("listen_events"))
    run_.market = Market(trader, seed=run_.options.seed)
    await run_.market.load()
    market_stop = asyncio.Event()
    run_.started = asyncio.get_running_loop().time()
    run_.checks_at_open = run_.daemon.snapshot().stats.checks
    tasks = [
        asyncio.create_task(run_.market.run(market_stop), name="market"),
        asyncio.create_task(_listen(run_, listener, market_stop), name="feed"),
        asyncio.create_task(_sampler(run_, reader, market_stop), name="sampler"),
    ]
    view = asyncio.create_task(_view(run_, console, live, stop, daemon_task), name="view")
    await asyncio.wait([view, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    market_stop.set()
    await view
    for task in tasks:
        await task


async def _wait_ready(daemon: Daemon, task: asyncio.Task[int], stop: asyncio.Event) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    while daemon.snapshot().stats.state != "running":
        if task.done() or stop.is_set():
            return False
        if time.monotonic() > deadline:
            raise ClusterError(f"the daemon was not ready after {READY_TIMEOUT:.0f} s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
    return True


async def _settle(daemon: Daemon, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
    """Let the daemon take in what its first sweep's flattening changed (those accounts are
    checked again after the debounce), so that the market's events are its own."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    checks, quiet = -1, 0
    while time.monotonic() < deadline and not stop.is_set():
        cur = await conn.execute(_query("dirty_accounts_exist"))
        row = await cur.fetchone()
        stats = daemon.snapshot().stats
        idle = not (row and row[0]) and not stats.dirty
        # quiet for a few rounds: a batch in flight is in neither place (the daemon does not
        # say what it has in flight), but it moves the check counter when it is done
        quiet = quiet + 1 if idle and stats.checks == checks else 0
        if quiet >= SETTLE_ROUNDS:
            return
        checks = stats.checks
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), DEBOUNCE)


async def _flattened_all(conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
    """Wait (a while at most) until no account is left critical: the resume's flattening."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and not stop.is_set():
        cur = await conn.execute(_query("critical_accounts"))
        row = await cur.fetchone()
        if not (row and row[0]):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), DEBOUNCE)


async def _stop_daemon(daemon: Daemon, task: asyncio.Task[int]) -> int:
    if not task.done():
        daemon.request_stop()
    code = await asyncio.wait_for(task, STOP_TIMEOUT)
    if code != 0:
        log.error("the daemon exited with code %d", code)
    return code


async def _initial(run_: Run, conn: psycopg.AsyncConnection[Any]) -> None:
    """What the first sweep found; every later event is the market's doing."""
    cur = await conn.execute(_query("first_sweep_events"))
    for level, count, last in await cur.fetchall():
        run_.initial[level] = count
        run_.first_market_event = max(run_.first_market_event, last + 1)
    cur = await conn.execute(_query("next_close_request"))
    row = await cur.fetchone()
    run_.first_market_close = row[0] if row else 0


async def _listen(run_: Run, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        async for notify in conn.notifies(timeout=0.2):
            event = _parse_event(notify.payload, loop.time() - run_.started)
            if event is not None:
                run_.feed.appendleft(event)
                run_.events[event.to_level] += 1


def _parse_event(payload: str, at: float) -> FeedEvent | None:
    """A riskd_events payload, or None when it is not one of ours (anyone may NOTIFY)."""
    try:
        data = json.loads(payload)
        utilization = data.get("utilization")
        close_request = data.get("close_request_id")
        return FeedEvent(
            at=at,
            account_id=str(data["account_id"]),
            from_level=str(data["from_level"]),
            to_level=str(data["to_level"]),
            utilization=None if utilization is None else Decimal(str(utilization)),
            close_request_id=None if close_request is None else int(close_request),
        )
    except (ValueError, KeyError, TypeError, InvalidOperation, AttributeError):
        return None


async def _sampler(run_: Run, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    daemon = run_.daemon
    checks_before = daemon.snapshot().stats.checks
    taken = loop.time()
    await _read_levels(run_, conn, run_.sample)
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
        now = loop.time()
        snapshot = daemon.snapshot()
        checks = snapshot.stats.checks
        new = min(checks - checks_before, len(snapshot.latencies))
        recent = sorted(snapshot.latencies[-new:]) if new > 0 else []
        run_.latencies.extend(recent)
        sample = Sample(
            elapsed=now - run_.started,
            checks_per_second=(checks - checks_before) / max(now - taken, 1e-6),
            p50=_percentile(recent, 0.50),
            p99=_percentile(recent, 0.99),
        )
        await _read_levels(run_, conn, sample)
        run_.sample = sample
        checks_before, taken = checks, now
        if stop.is_set():
            return


async def _read_levels(run_: Run, conn: psycopg.AsyncConnection[Any], sample: Sample) -> None:
    cur = await conn.execute(query("level_counts"))  # the CLI's own query
    levels = {level: count for level, count in await cur.fetchall()}
    checked_not_ok = levels.get("warning", 0) + levels.get("critical", 0)
    levels["ok"] = run_.options.accounts - checked_not_ok  # never checked counts as ok
    sample.levels = levels
    cur = await conn.execute(_query("flattened_accounts"))
    row = await cur.fetchone()
    sample.flattened_accounts = row[0] if row else 0
    cur = await conn.execute(_query("latest_flattened"), {"from_id": run_.first_market_close})
    sample.latest_flattened = [_flattened(*row) for row in await cur.fetchall()]
    cur = await conn.execute(query("controls"))
    switch = await cur.fetchone()
    sample.paused = Switch(*switch).line() if switch and switch[0] else None
    cur = await conn.execute(_query("demo_alerts"))
    alerts = [(row[0], f"{row[1]}: {describe(row[1], row[2])}") for row in await cur.fetchall()]
    sample.alerts = [text for _, text in alerts]
    run_.new_alerts += [text for n, text in reversed(alerts) if n not in run_.said]
    run_.said.update(n for n, _ in alerts)


def _flattened(
    account: str, closed: int, realised: str, equity: str, before: str, after: str
) -> Flattened:
    eq = Decimal(equity)
    return Flattened(
        account_id=account,
        closed=closed,
        realised=Decimal(realised),
        before=Decimal(before) / eq if eq > 0 else None,
        # with nothing left open the utilisation is 0, whatever the equity (DESIGN §1)
        after=Decimal(0) if Decimal(after) == 0 else Decimal(after) / eq if eq > 0 else None,
    )


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- the view


async def _view(
    run_: Run, console: Console, live: bool, stop: asyncio.Event, daemon: asyncio.Task[int]
) -> None:
    """The clock of the demo (duration, sell-off) and what the user sees meanwhile."""
    loop = asyncio.get_running_loop()
    duration = run_.options.duration
    printed = 0.0
    news = ""
    with contextlib.ExitStack() as stack:
        screen = None
        if live:
            screen = stack.enter_context(
                Live(_render(run_, console), console=console, auto_refresh=False)
            )
        while True:
            elapsed = loop.time() - run_.started
            if run_.sell_off_at is None and elapsed >= duration * SELL_OFF_AT and run_.market:
                run_.market.sell_off()
                run_.sell_off_at = elapsed
                news = (
                    f"SELL-OFF: {run_.market.sell_off_instruments} instruments"
                    f" {run_.market.config.sell_off_move * 100:+.0f} %"
                )
            if screen is not None:
                screen.update(_render(run_, console), refresh=True)
            elif run_.sample.elapsed > printed:
                printed = run_.sample.elapsed
                line = progress_line(run_.sample, run_.events, _market_stats(run_), news)
                news = ""
                console.print(line, highlight=False, soft_wrap=True)
                for alert in run_.new_alerts:
                    console.print(
                        f"        alert {alert}", highlight=False, markup=False, soft_wrap=True
                    )
                run_.new_alerts.clear()
            if elapsed >= duration or stop.is_set() or daemon.done():
                return
            wait = min(REFRESH_EVERY, max(0.0, duration - elapsed))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)


def _render(run_: Run, console: Console) -> RenderableType:
    return render(_frame(run_), console.width, console.height)


def _frame(run_: Run) -> Frame:
    """What the screen shows now, taken from the run (and the daemon's dirty set and lag)."""
    opts, risk, market = run_.options, run_.settings.risk, run_.market
    stats = run_.daemon.snapshot().stats  # dirty and lag as of now
    return Frame(
        major=run_.major,
        accounts=opts.accounts,
        positions=opts.positions,
        duration=opts.duration,
        warning_threshold=risk.warning_threshold,
        auto_close_threshold=risk.auto_close_threshold,
        hysteresis=risk.hysteresis,
        debounce=DEBOUNCE,
        sample=run_.sample,
        events=run_.events,
        initial=run_.initial,
        feed=list(run_.feed),
        market=_market_stats(run_),
        traders=len(market.traders) if market else 0,
        dirty=stats.dirty,
        lag=stats.lag,
        sell_off_due=opts.duration * SELL_OFF_AT,
        sell_off_at=run_.sell_off_at if market else None,
        sell_off_instruments=market.sell_off_instruments if market else 0,
        sell_off_move=market.config.sell_off_move if market else 0.0,
    )


def _market_stats(run_: Run) -> MarketStats:
    return run_.market.stats if run_.market else MarketStats()


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


# --------------------------------------------------------------------------- the end


def _summary(run_: Run, console: Console) -> None:
    """Told from the database (what riskd recorded), not from the view's counters."""
    with psycopg.connect(run_.settings.database.dsn or "", autocommit=True) as conn:
        market: Counter[str] = Counter()
        for level, count in conn.execute(
            _query("summary_events"), {"from_id": run_.first_market_event}
        ):
            market[level] = count
        row = conn.execute(
            _query("summary_close_requests"), {"from_id": run_.first_market_close}
        ).fetchone()
        rails = conn.execute(_query("summary_rails")).fetchone()
    done, accounts, by_market, closed, realised = row or (0, 0, 0, 0, Decimal(0))
    m = _market_stats(run_)
    checks = run_.daemon.snapshot().stats.checks - run_.checks_at_open
    elapsed = run_.sample.elapsed
    latencies = sorted(run_.latencies)
    how = {"": "full duration", "SIGINT": "stopped by Ctrl-C"}.get(
        run_.interrupted, f"stopped by {run_.interrupted}"
    )
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    worst = latencies[-1] if latencies else None
    lines = [
        f"\n[bold]Summary[/]: {elapsed:.1f} s of market ({how})",
        f"  events     {market['warning']:,} to warning, {market['critical']:,} to critical,"
        f" {market['ok']:,} back to ok (the market's)",
        f"             first sweep: {run_.initial['warning']:,} seeded accounts in warning,"
        f" {run_.initial['critical']:,} critical and flattened"
        f" ({run_.initial['ok']:,} of them back to ok once flattened)",
        f"  flattened  {by_market:,} accounts by the market, {accounts:,} in all",
        f"             {done:,} close requests done: {closed:,} positions closed,"
        f" realised PnL {realised:,.2f}"
        + (
            " (an account still critical after a close is flattened again)"
            if done > accounts
            else ""
        ),
        f"  checks     {checks:,} while the market ran"
        f" ({checks / max(elapsed, 1e-6):,.0f} a second)",
        f"  latency    change to check: p50 {ms(p50)}, p99 {ms(p99)}, max {ms(worst)}",
        f"  updates    {_n(m.ticks, 'tick')}: {_n(m.price_moves, 'price move')} marking"
        f" {m.positions_marked:,} positions to market",
        f"             {m.fills:,} fills: {m.added:,} added to, {m.reduced:,} reduced,"
        f" {m.opened:,} new positions; {m.sell_offs or 'no'} sell-off",
    ]
    lines += _rails_lines(run_, rails)
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _rails_lines(run_: Run, rails: tuple[Any, ...] | None) -> list[str]:
    """What the kill switch and the circuit breaker did."""
    paused, trips, first, critical = rails or (False, 0, None, 0)
    cap = run_.settings.risk.max_closes_per_minute
    lines = ["  rails      kill switch: the book opened paused; resumed after the first sweep"]
    if not cap:
        return [*lines, "             circuit breaker off"]
    if not trips:
        return [*lines, f"             circuit breaker ({cap:,} closes a minute): not tripped"]
    detail = first or {}
    lines.append(
        f"             circuit breaker ({cap:,} closes a minute): tripped {trips}x; the first"
        f" time {detail.get('closing', '?')} closed, {detail.get('held', '?')} held"
    )
    if paused:
        lines.append(
            f"             still paused: {critical:,} accounts critical, held;"
            " `riskd resume` closes them, worst first"
        )
    return lines


def _print_kept(cluster: PgCluster, settings: Settings, console: Console) -> None:
    dsn = settings.database.dsn
    as_user = "runuser -u nobody -- " if os.geteuid() == 0 else ""
    pg_ctl = Path(cluster.bindir) / "pg_ctl"
    console.print(
        "\nThe database keeps running (--keep); the daemon has stopped.\n"
        f"  DSN:    {dsn}\n"
        f"  look:   riskd --dsn {dsn} status   (or resume the daemon: riskd --dsn {dsn} run)\n"
        f"  page:   riskd --dsn {dsn} dashboard\n"
        f"  stop:   {as_user}{pg_ctl} stop -D {cluster.data_dir}\n"
        f"  remove: rm -rf {cluster.root}   (once stopped)",
        highlight=False,
        soft_wrap=True,
    )
