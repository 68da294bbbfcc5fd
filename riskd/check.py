"""The risk check and the sweep, as asked of the database (sql/check.sql, sql/sweep.sql).

Both go through ``riskd.check_accounts``: one round trip and one transaction per batch, under
per-account advisory locks. The sweep first finds, in one set-based pass, the accounts whose
level changes (bringing every other account's figures up to date in place), then checks only
those, in batches.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row

from riskd import numbers
from riskd.config import Settings
from riskd.errors import flat
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
    # on an autocommit connection the one statement is its own transaction: no BEGIN and
    # COMMIT round trips
    transaction = contextlib.nullcontext() if conn.autocommit else conn.transaction()
    with transaction, conn.cursor(row_factory=class_row(CheckResult)) as cur:
        cur.execute(query("check_accounts"), params)
        return cur.fetchall()


async def acheck_accounts(
    conn: psycopg.AsyncConnection[Any],
    settings: Settings,
    account_ids: Iterable[object],
    instance: str | None = None,
) -> list[CheckResult]:
    """check_accounts for the daemon's asyncio connections (autocommit: the one statement is
    its own transaction, one round trip per batch)."""
    params = _check_params(settings, account_ids, instance)
    if params is None:
        return []
    transaction = contextlib.nullcontext() if conn.autocommit else conn.transaction()
    async with transaction, conn.cursor(row_factory=class_row(CheckResult)) as cur:
        await cur.execute(query("check_accounts"), params)
        return await cur.fetchall()


async def asweep_candidates(conn: psycopg.AsyncConnection[Any], settings: Settings) -> list[str]:
    """The set-based pass of the sweep: the accounts a check must see (riskd.sweep)."""
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
    """One full pass over all accounts (their figures brought up to date in place); those whose
    level changes, and critical ones without a pending request, go through check_accounts in
    batches.

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


# --- riskd check: what each check did -------------------------------------------------------

# The action a check took on an account (`riskd check`, its --json "action").
REQUEST_OPENED = "request_opened"  # request mode: this check opened a close request
REQUEST_PENDING = "request_pending"  # one was already pending: the platform has not closed yet
FLATTENED = "flattened"  # flatten mode: this check closed positions (a `done` close request)
REQUEST_CANCELLED = "request_cancelled"  # the account left critical: its request is withdrawn
NO_ACTION = "none"


@dataclass(frozen=True, slots=True)
class RequestSeen:
    """A close request as the check's own transaction sees it after the check (its opening or
    completion stamped with that transaction's now(): this check did it)."""

    id: int
    account_id: str
    status: str
    mode: str | None
    flatten_failed: str | None  # a flatten riskd could not make, and asked for instead
    opened_now: bool
    completed_now: bool


@dataclass(frozen=True, slots=True)
class Checked:
    """One account as ``riskd check`` reports it: the check's result and the action taken.

    ``close_request_id`` is the request the action concerns (opened, still pending, flattened
    into, cancelled), not only one this check opened: a critical account whose request is
    pending names it. ``note`` says why a critical account got no action, or why a flatten
    became a close request.
    """

    result: CheckResult
    action: str
    close_request_id: int | None = None
    note: str | None = None

    def action_text(self) -> str | None:
        """The action in words; None when there is nothing to say (an account not critical
        that no request concerns)."""
        rid = self.close_request_id
        if self.action == REQUEST_OPENED:
            why = f" ({self.note})" if self.note else ""
            return f"close request {rid} opened{why}"
        if self.action == REQUEST_PENDING:
            return f"close request {rid} already pending"
        if self.action == FLATTENED:
            return f"flattened (close request {rid}, done)"
        if self.action == REQUEST_CANCELLED:
            return f"close request {rid} cancelled (no longer critical)"
        return f"none ({self.note})" if self.note else None

    def line(self) -> str:
        text = result_line(self.result, with_request=False)
        said = self.action_text()
        return f"{text}  action: {said}" if said else text

    def as_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "account_id": r.account_id,
            "user_id": r.user_id,
            "level": r.level,
            "previous_level": r.previous_level,
            "utilization": numbers.json_decimal(r.utilization),
            "equity": numbers.json_decimal(r.equity),
            "used_margin": numbers.json_decimal(r.used_margin),
            "event_id": r.event_id,
            "close_request_id": self.close_request_id,
            "action": self.action,
            "action_note": self.note,
        }


@dataclass(frozen=True, slots=True)
class CheckReport:
    """``riskd check``: the accounts checked, and the ids that named none — ``unknown`` (no
    such account) or ``invalid`` (cannot be an account id here: ``id_type`` says what one is)."""

    checked: list[Checked]
    unknown: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    id_type: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "results": [c.as_json() for c in self.checked],
            "unknown": self.unknown,
            "invalid": self.invalid,
        }


def result_line(r: CheckResult, *, with_request: bool = True) -> str:
    """One checked account in text (numbers as riskd.numbers prints them)."""
    moved = f"{r.previous_level} -> {r.level}" if r.transition else r.level
    extra = ""
    if r.event_id is not None:
        extra += f"  event {r.event_id}"
    if with_request and r.close_request_id is not None:
        extra += f"  close request {r.close_request_id}"
    return (
        f"{r.account_id}  {moved}  utilisation {numbers.percent(r.utilization)}  "
        f"equity {numbers.money(r.equity)}  used margin {numbers.money(r.used_margin)}{extra}"
    )


def check_now(
    conn: psycopg.Connection[Any],
    settings: Settings,
    account_ids: Iterable[str],
    instance: str | None = None,
) -> CheckReport:
    """``riskd check``: check these accounts now, and say what each check did.

    The ids are first read as account ids of this installation (``conn`` in autocommit): one
    that cannot be one (``not-a-uuid`` where accounts are keyed by uuid) is set apart, so the
    others are still checked; an id that names no account is ``unknown``. Then one transaction
    checks them and reads back their close requests, which tells the action each took.
    """
    given = sorted(set(account_ids))
    invalid: list[str] = []
    try:
        canonical = _canonical(conn, given)
    except psycopg.DataError:
        canonical = {}
        for text in given:
            try:
                canonical |= _canonical(conn, [text])
            except psycopg.DataError:
                invalid.append(text)
        if not invalid:
            raise
    checked = _check_and_report(conn, settings, sorted(set(canonical.values())), instance)
    found = {c.result.account_id for c in checked}
    unknown = [text for text, account in canonical.items() if account not in found]
    id_type = _account_id_type(conn) if invalid else None
    return CheckReport(checked=checked, unknown=unknown, invalid=invalid, id_type=id_type)


def _canonical(conn: psycopg.Connection[Any], texts: list[str]) -> dict[str, str]:
    """Each text as the account id it reads as (``A1…`` as a uuid prints ``a1…``)."""
    if not texts:
        return {}
    with conn.transaction():
        rows = conn.execute(query("canonical_account_ids"), {"ids": texts}).fetchall()
    return {given: canonical for given, canonical in rows}


def _account_id_type(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute(query("account_id_type")).fetchone()
    return None if row is None else str(row[0])


def _check_and_report(
    conn: psycopg.Connection[Any], settings: Settings, ids: list[str], instance: str | None
) -> list[Checked]:
    params = _check_params(settings, ids, instance)
    if params is None:
        return []
    accounts = json.dumps([{"account_id": a} for a in params["ids"]])
    with conn.transaction():
        before = {
            row[0] for row in conn.execute(query("check_pending_requests"), {"accounts": accounts})
        }
        with conn.cursor(row_factory=class_row(CheckResult)) as cur:
            cur.execute(query("check_accounts"), params)
            results = cur.fetchall()
        named = before | {r.close_request_id for r in results if r.close_request_id is not None}
        with conn.cursor(row_factory=class_row(RequestSeen)) as rcur:
            rcur.execute(
                query("check_close_requests"), {"ids": sorted(named), "accounts": accounts}
            )
            requests = rcur.fetchall()
        by_account: dict[str, list[RequestSeen]] = {}
        for req in requests:
            by_account.setdefault(req.account_id, []).append(req)
        # a critical account with no request either way: why (a setting, or data it distrusts)
        unexplained = [
            r.account_id
            for r in results
            if r.level == "critical" and not by_account.get(r.account_id)
        ]
        data_errors: set[str] = set()
        held: dict[str, str] = {}
        if unexplained:
            asked = json.dumps([{"account_id": a} for a in unexplained])
            with conn.cursor(row_factory=dict_row) as dcur:
                dcur.execute(query("check_data_errors"), {"accounts": asked})
                data_errors = {row["account_id"] for row in dcur.fetchall()}
                dcur.execute(query("check_held"), {"accounts": asked})
                held = {
                    row["account_id"]: why
                    for row in dcur.fetchall()
                    if (why := held_because(row, settings.risk.auto_close)) is not None
                }
    return [
        decide_action(
            r,
            settings.risk.auto_close,
            by_account.get(r.account_id, []),
            before,
            r.account_id in data_errors,
            held.get(r.account_id),
        )
        for r in results
    ]


def held_because(row: dict[str, Any], mode: str) -> str | None:
    """Why a critical account got no close, from the check_held query's row: its own mode,
    the kill switch, or what a rail held back (None: none of these)."""
    own = row["mode"]
    if (own or mode) == "off":
        return "auto_close = off" + (" (the account's limit)" if own else "")
    if row["paused"]:
        return "paused: no close until `riskd resume` (riskd status says who paused and why)"
    detail = row["held"] or {}
    if detail.get("reason") == "stale_price":
        return (
            f"close held: the price of {detail.get('instrument')} is "
            f"{detail.get('price_age')} s old, over [risk] max_price_age"
        )
    if detail.get("reason") == "data_error":
        return "close held: data riskd cannot trust (a NaN, infinite or NULL figure)"
    return None


def decide_action(
    r: CheckResult,
    mode: str,
    requests: list[RequestSeen],
    before: set[int],
    data_error: bool,
    held: str | None = None,
) -> Checked:
    """What a check did to one account, from the close requests its transaction sees after it:
    ``requests`` (the account's named or pending ones), ``before`` (the ids pending before)."""
    by_id = {q.id: q for q in requests}
    if r.close_request_id is not None:
        made = by_id.get(r.close_request_id)
        if made is not None and made.status == "done" and made.mode == "flatten":
            return Checked(r, FLATTENED, made.id)
        failed = made.flatten_failed if made is not None else None
        note = None if failed is None else f"flatten failed: {flat(failed)}"
        return Checked(r, REQUEST_OPENED, r.close_request_id, note=note)
    pending = [q for q in requests if q.status == "pending"]
    if pending:
        return Checked(r, REQUEST_PENDING, pending[0].id)
    withdrawn = [
        q for q in requests if q.status == "cancelled" and q.completed_now and q.id in before
    ]
    if withdrawn:
        return Checked(r, REQUEST_CANCELLED, withdrawn[0].id)
    if r.level != "critical":
        return Checked(r, NO_ACTION)
    if held is not None:  # the account's mode, the kill switch, a rail (check_held)
        return Checked(r, NO_ACTION, note=held)
    if mode == "off":
        return Checked(r, NO_ACTION, note="auto_close = off")
    if data_error:
        held = "close held: data riskd cannot trust (a NaN, infinite or NULL figure)"
        return Checked(r, NO_ACTION, note=held)
    finished = [q for q in requests if q.id in before and not q.completed_now]
    if finished:  # the platform finished it while this check ran; the next check asks again
        q = finished[0]
        return Checked(r, NO_ACTION, q.id, note=f"close request {q.id} {q.status} meanwhile")
    return Checked(r, NO_ACTION, note="no close made")
