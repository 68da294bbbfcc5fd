"""The market of ``riskd demo``: prices that move, traders that fill, on the reference schema.

It writes what a trading platform writes, through plain SQL, so that riskd sees nothing but
its capture triggers do:

* prices: a random walk, a few instruments per tick, each move marking the positions in that
  instrument to market (the unrealised PnL follows the price) in the same statement;
* fills: a set of active traders who mostly add to their positions (and sometimes open new
  ones or take some off), each fill also booked in ``executions`` and, when it reduces a
  position, realising that part of its PnL into the balance;
* a sell-off: once, a handful of instruments drop several percent at once.

Why breaches happen reliably: a fill is sized as a share of the trader's equity in margin
(``size``), so every added fill raises that account's utilisation by ``size`` (5-20 points)
whatever its positions; a trader who fills a few times walks through 80 % and 90 %. The
seeded accounts already in the warning band need one push, and the sell-off tips over the
leveraged holders of the falling instruments. Load is bounded: a fixed number of statements
per tick, whatever the number of accounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from riskd.sqlfiles import query

log = logging.getLogger(__name__)

# The statements, one round trip each, are the named queries of sql/simulator.sql; the names
# there are those of the reference schema.
QUERY_FILE = "simulator.sql"


def _query(name: str) -> sql.SQL:
    return query(name, file=QUERY_FILE)


@dataclass(frozen=True, slots=True)
class MarketConfig:
    """How busy the market is; the defaults keep a 2-core machine responsive."""

    tick: float = 0.25  # seconds between ticks
    # Re-pricing an instrument re-marks every position in it (and dirties all its holders), so
    # its rate follows from a budget of positions marked per second, whatever the seed's shape.
    marks_per_second: float = 500.0
    max_moves_per_second: float = 8.0
    volatility: float = 0.015  # standard deviation of one price move (relative)
    fills_per_second: float = 40.0
    trader_share: float = 0.05  # of the accounts, the ones that trade
    min_traders: int = 50
    max_traders: int = 500
    add_share: float = 0.85  # fills that add to a position; the rest take some off
    open_share: float = 0.2  # of the adding fills, those that open a new position
    add_size: tuple[float, float] = (0.05, 0.2)  # margin added, as a share of equity
    reduce_size: tuple[float, float] = (0.05, 0.3)
    sell_off_share: float = 0.02  # of the instruments; each re-marks all its holders at once
    sell_off_move: float = -0.10


@dataclass(slots=True)
class MarketStats:
    ticks: int = 0
    price_moves: int = 0
    positions_marked: int = 0
    fills: int = 0
    added: int = 0
    reduced: int = 0
    opened: int = 0
    sell_offs: int = 0
    conflicts: int = 0  # a tick that met a deadlock or serialization failure and was dropped


class Market:
    """The simulator; ``run()`` until the stop event, one ``tick()`` every ``config.tick``."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        config: MarketConfig | None = None,
        seed: int = 1,
    ) -> None:
        self.conn = conn
        self.config = config or MarketConfig()
        self.rng = random.Random(seed)
        self.stats = MarketStats()
        self.instruments: list[str] = []
        self.traders: list[str] = []
        self.moves_per_second = 0.0
        self._opened_ids = 0
        self._sell_off_pending = False

    async def load(self) -> None:
        """Read the instruments and choose the traders (a seeded sample of the accounts)."""
        cur = await self.conn.execute(_query("market_instruments"))
        self.instruments = [row[0] for row in await cur.fetchall()]
        cur = await self.conn.execute(_query("market_accounts"))
        accounts = [row[0] for row in await cur.fetchall()]
        await self.conn.rollback()
        cfg = self.config
        wanted = round(len(accounts) * cfg.trader_share)
        count = min(len(accounts), max(cfg.min_traders, min(cfg.max_traders, wanted)))
        self.traders = self.rng.sample(accounts, count)
        cur = await self.conn.execute(_query("market_open_positions"))
        row = await cur.fetchone()
        await self.conn.rollback()
        per_instrument = (row[0] if row else 0) / max(1, len(self.instruments))
        self.moves_per_second = min(
            cfg.max_moves_per_second, cfg.marks_per_second / max(1.0, per_instrument)
        )

    @property
    def sell_off_instruments(self) -> int:
        return max(1, round(len(self.instruments) * self.config.sell_off_share))

    def sell_off(self) -> None:
        """Ask for the sell-off at the next tick."""
        self._sell_off_pending = True

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while not stop.is_set():
            await self.tick()
            next_tick = max(next_tick + self.config.tick, loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), next_tick - loop.time())

    async def tick(self) -> None:
        self.stats.ticks += 1
        if self._sell_off_pending:
            self._sell_off_pending = False
            count = self.sell_off_instruments
            falling = self.rng.sample(self.instruments, count)
            if await self._guarded(self._move, falling, [self.config.sell_off_move] * count):
                self.stats.sell_offs += 1
        count = min(self._per_tick(self.moves_per_second), len(self.instruments))
        if count:
            moving = self.rng.sample(self.instruments, count)
            steps = [self.rng.gauss(0.0, self.config.volatility) for _ in moving]
            await self._guarded(self._move, moving, steps)
        await self._guarded(self._fills)

    def _per_tick(self, per_second: float) -> int:
        """How many of something happen in this tick, ``per_second`` on average."""
        expected = per_second * self.config.tick
        whole = int(expected)
        return whole + (self.rng.random() < expected - whole)

    async def _guarded(self, action: Any, *args: Any) -> bool:
        """Run one transaction; a deadlock with the daemon's flatten drops this tick's part."""
        try:
            async with self.conn.transaction():
                await action(*args)
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
            self.stats.conflicts += 1
            log.debug("market tick dropped: %s", exc)
            return False
        return True

    async def _move(self, instruments: list[str], steps: list[float]) -> None:
        decimal_steps = [Decimal(f"{step:.6f}") for step in steps]
        cur = await self.conn.execute(
            _query("mark_to_market"), {"ids": instruments, "steps": decimal_steps}
        )
        row = await cur.fetchone()
        if row is not None:
            self.stats.price_moves += row[0]
            self.stats.positions_marked += row[1]

    async def _fills(self) -> None:
        cfg = self.config
        count = min(len(self.traders), self._per_tick(cfg.fills_per_second))
        if count == 0:
            return
        scale: list[str] = []
        sizes: list[Decimal] = []
        picks: list[float] = []
        opens: list[tuple[str, str, str, Decimal, int]] = []
        for account in self.rng.sample(self.traders, count):
            if self.rng.random() < cfg.add_share:
                size = Decimal(f"{self.rng.uniform(*cfg.add_size):.4f}")
                if self.rng.random() < cfg.open_share:
                    self._opened_ids += 1
                    position = f"pos-sim-{self._opened_ids:07d}"
                    instrument = self.rng.choice(self.instruments)
                    opens.append((position, account, instrument, size, self.rng.choice((1, -1))))
                    continue
            else:
                size = -Decimal(f"{self.rng.uniform(*cfg.reduce_size):.4f}")
            scale.append(account)
            sizes.append(size)
            picks.append(self.rng.random())
        if scale:
            cur = await self.conn.execute(
                _query("fill"), {"accounts": scale, "sizes": sizes, "picks": picks}
            )
            row = await cur.fetchone()
            if row is not None:
                self.stats.added += row[0]
                self.stats.reduced += row[1]
                self.stats.fills += row[0] + row[1]
        if opens:
            columns = ("ids", "accounts", "instruments", "sizes", "sides")
            params = {name: [order[i] for order in opens] for i, name in enumerate(columns)}
            cur = await self.conn.execute(_query("open"), params)
            row = await cur.fetchone()
            if row is not None:
                self.stats.opened += row[0]
                self.stats.fills += row[0]
