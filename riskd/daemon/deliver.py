"""Deliver (DESIGN §4 "Webhooks", issue 13): POST the outbox's due deliveries to the platform's
endpoint, signed per Standard Webhooks, and record what each attempt came to. Runs only with a
``[webhook] url``; never inside a check's transaction (a check only writes the outbox row).

Each pass claims up to ``concurrency`` due deliveries under a lease (sql/queries.sql,
claim_deliveries), POSTs them at once over one reused HTTP client, and records each outcome as
riskd.webhooks.after decides it. A daemon killed between a POST and its record leaves the
delivery leased: once the lease is over, an instance claims it again (at least once). The
checker wakes this task when it wrote events; a timer covers the retries and other instances'
events."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from riskd import __version__, numbers, webhooks
from riskd.config import url_shown as webhook_url_shown
from riskd.config import webhook_key
from riskd.daemon.shared import Shared
from riskd.errors import reason
from riskd.sqlfiles import query

log = logging.getLogger("riskd.daemon")

POLL_INTERVAL = 1.0  # due retries, and deliveries other instances' checks wrote
LEASE_MARGIN = 30.0  # a claimed delivery is another instance's only this long after its timeout
EVENT_KEYS = (
    "account_id",
    "user_id",
    "from_level",
    "to_level",
    "utilization",
    "equity",
    "used_margin",
    "close_request_id",
)


def payload_of(row: dict[str, Any]) -> tuple[webhooks.Kind, int, dict[str, object]]:
    """What a claimed delivery POSTs: a risk event's figures, or an alert's kind and detail."""
    if row["event_id"] is not None:
        return "event", int(row["event_id"]), {k: row[k] for k in EVENT_KEYS}
    data = {"kind": row["kind"], "account_id": row["account_id"], "detail": row["detail"]}
    return "alert", int(row["alert_id"]), data


class Deliverer:
    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.work = shared.event()  # the checker wrote events
        webhook = shared.settings.webhook
        self.url = webhook.url
        self.key = webhook_key(webhook.secret) if webhook.url else b""
        self.gone = False  # the endpoint answered 410: nothing more is sent until a restart
        self.alert_gone: str | None = None  # the delivery that met the 410, to record as an alert

    def wake(self) -> None:
        self.work.set()

    async def run(self) -> None:
        shared = self.shared
        webhook = shared.settings.webhook
        limits = httpx.Limits(max_connections=webhook.concurrency)
        async with httpx.AsyncClient(
            timeout=webhook.timeout, limits=limits, follow_redirects=False
        ) as client:
            while not shared.stopping.is_set():
                self.work.clear()
                claimed = [] if self.gone else await shared.retry("deliver", self._claim)
                if claimed:
                    await asyncio.gather(*(self._deliver(client, row) for row in claimed))
                    continue  # more may be due
                await shared.retry("deliver", self._count_backlog)
                await shared.pause(POLL_INTERVAL, self.work)

    async def _claim(self) -> list[dict[str, Any]]:
        webhook = self.shared.settings.webhook
        params = {"limit": webhook.concurrency, "lease": webhook.timeout + LEASE_MARGIN}
        async with (
            self.shared.pool.connection() as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            set_json_loads(numbers.loads_exact, cur)  # an alert's numbers, exact
            await cur.execute(query("claim_deliveries"), params)
            return await cur.fetchall()

    async def _count_backlog(self) -> None:
        async with self.shared.pool.connection() as conn:
            cur = await conn.execute(query("delivery_backlog"))
            row = await cur.fetchone()
        self.shared.stats.delivery_backlog = int(row[0]) if row else 0

    async def _deliver(self, client: httpx.AsyncClient, row: dict[str, Any]) -> None:
        shared = self.shared
        kind, row_id, data = payload_of(row)
        payload = webhooks.body(kind, row_id, row["created_at"], data)
        msg_id = webhooks.message_id(kind, row_id)
        headers = webhooks.headers(self.key, msg_id, int(time.time()), payload, __version__)
        started = time.monotonic()
        try:
            response = await client.post(self.url, content=payload, headers=headers)
            answer = webhooks.Answer(
                response.status_code, None, response.headers.get("retry-after")
            )
        except httpx.HTTPError as exc:
            answer = webhooks.Answer(None, reason(exc))
        attempts = row["attempts"] + 1
        step = webhooks.after(
            answer, attempts, shared.settings.webhook.retry_schedule, datetime.now(UTC),
            random.random(),
        )  # fmt: skip
        took = time.monotonic() - started
        shared.metrics.delivery.observe(took)
        self._said(msg_id, answer, step, attempts, took)
        params = {
            "id": row["id"],
            "status": step.status,
            "next_attempt_at": step.next_attempt_at,
            "last_status": answer.status,
            "last_error": answer.error,
        }
        try:
            await shared.retry("deliver", lambda: self._record(params))
            if self.alert_gone is not None:
                await shared.retry("deliver", self._record_gone)
        except psycopg.Error as exc:  # the lease runs out and the delivery is tried again
            log.warning("delivery.not_recorded", extra={"id": msg_id, "reason": reason(exc)})

    async def _record_gone(self) -> None:
        """An alert endpoint_gone, once per instance (riskd status and events --alerts say it)."""
        params = {
            "url": webhook_url_shown(self.url),
            "webhook_id": self.alert_gone,
            "instance": self.shared.instance,
        }
        async with self.shared.pool.connection() as conn:
            await conn.execute(query("endpoint_gone"), params)
        self.alert_gone = None

    async def _record(self, params: dict[str, Any]) -> None:
        async with self.shared.pool.connection() as conn:
            await conn.execute(query("record_delivery"), params)

    def _said(
        self,
        msg_id: str,
        answer: webhooks.Answer,
        step: webhooks.Step,
        attempts: int,
        took: float,
    ) -> None:
        stats = self.shared.stats
        fields = {
            "id": msg_id,
            "attempt": attempts,
            "status": answer.status,
            "error": answer.error,
            "seconds": round(took, 3),
        }
        if step.status == "delivered":
            stats.deliveries += 1
            log.info("delivery.delivered", extra=fields)
        elif step.gone:
            self.gone = True
            stats.delivery_failures += 1
            log.error("delivery.endpoint_gone", extra={**fields, "url": "answered 410"})
            self.alert_gone = msg_id
        elif step.status == "failed":
            stats.delivery_failures += 1
            log.error("delivery.failed", extra=fields)
        else:
            stats.delivery_retries += 1
            retry_in = step.next_attempt_at and (step.next_attempt_at - datetime.now(UTC))
            log.warning(
                "delivery.retry",
                extra={**fields, "retry_in": retry_in and round(retry_in.total_seconds(), 1)},
            )
