"""The risk check and the sweep, as asked of the database (sql/check.sql, sql/sweep.sql).

Both go through ``riskd.check_accounts``: one round trip and one transaction per batch, under
per-account advisory locks. The sweep first finds, in one set-based pass, the accounts whose
level changes, then checks only those, in batches.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import class_row

from riskd.config import Settings
from riskd.sqlfiles import query


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One checked account: its level now, the level recorded before, the figures."""

    account_id: str
    user_id: str | None
    level: str
    previous_level: str
    utilization: Decimal | None
    equity: Decimal
    used_margin: Decimal
    event_id: int | None
    close_request_id: int | None

    @property
    def transition(self) -> bool:
        return self.level != self.previous_level


@dataclass(slots=True)
class SweepResult:
    accounts: int = 0
    levels: dict[str, int] = field(default_factory=dict)
    transitions: list[CheckResult] = field(default_factory=list)
    duration: float = 0.0


def default_instance() -> str:
    """The name an instance writes into its events: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _params(settings: Settings) -> dict[str, Any]:
    risk = settings.risk
    return {
        "warning": risk.warning_threshold,
        "auto_close": risk.auto_close_threshold,
        "hysteresis": risk.hysteresis,
        "mode": risk.auto_close,
    }


def _check_params(
    settings: Settings, account_ids: Iterable[object], instance: str | None
) -> dict[str, Any] | None:
    """The parameters of one check_accounts call; None when there is no account to check."""
    ids = sorted({str(a) for a in account_ids})
    if not ids:
        return None
    return _params(settings) | {"ids": ids, "instance": instance or default_instance()}


def check_accounts(
    conn: psycopg.Connection[Any],
    settings: Settings,
    account_ids: Iterable[object],
    instance: str | None = None,
) -> list[CheckResult]:
    """Check these accounts now (one transaction, one round trip); unknown ids are skipped."""
    params = _check_params(settings, account_ids, instance)
    if params is None:
        return []
    with conn.transaction(), conn.cursor(row_factory=class_row(CheckResult)) as cur:
        cur.execute(query("check_accounts"), params)
        return cur.fetchall()


async def acheck_accounts(
    conn: psycopg.AsyncConnection[Any],
    settings: Settings,
    account_ids: Iterable[object],
    instance: str | None = None,
) -> list[CheckResult]:
    """check_accounts for the daemon's asyncio connections."""
    params = _check_params(settings, account_ids, instance)
    if params is None:
        return []
    async with conn.transaction(), conn.cursor(row_factory=class_row(CheckResult)) as cur:
        await cur.execute(query("check_accounts"), params)
        return await cur.fetchall()


async def asweep_candidates(conn: psycopg.AsyncConnection[Any], settings: Settings) -> list[str]:
    """The set-based pass of the sweep: the accounts whose level changes, to be checked."""
    params = _params(settings)
    async with conn.transaction():
        cur = await conn.execute(
            query("sweep"), {k: params[k] for k in ("warning", "auto_close", "hysteresis")}
        )
        return [row[0] for row in await cur.fetchall()]


def _batches(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sweep(
    conn: psycopg.Connection[Any],
    settings: Settings,
    instance: str | None = None,
    *,
    take_marks: bool = False,
) -> SweepResult:
    """One full pass over all accounts; transitions go through check_accounts in batches.

    ``take_marks``: first take the marks the pass covers (`riskd sweep`, which a deployment
    without a daemon runs from a timer: nothing else would ever drain them). They are taken in
    a transaction of their own, committed before the pass reads, so each was made before it.
    """
    started = time.monotonic()
    result = SweepResult()
    params = _params(settings)
    if take_marks:
        with conn.transaction():
            conn.execute(query("take_marks"))
    with conn.transaction():
        candidates = [
            row[0]
            for row in conn.execute(
                query("sweep"), {k: params[k] for k in ("warning", "auto_close", "hysteresis")}
            )
        ]
    for batch in _batches(candidates, settings.daemon.batch_size):
        result.transitions.extend(
            r for r in check_accounts(conn, settings, batch, instance) if r.transition
        )
    result.levels = {level: n for level, n in conn.execute(query("level_counts"))}
    result.accounts = sum(result.levels.values())
    result.duration = time.monotonic() - started
    return result
