"""Webhooks (DESIGN §4, Standard Webhooks 1.0): what riskd POSTs for a risk event or an alert,
how it is signed, and what each answer of the endpoint makes of the delivery.

Pure: plain values in, decisions out, no I/O and no clock of its own (the caller passes ``now``
and the jitter), so that every answer the endpoint can give is tested without a server. The
delivery task sends what this builds and records what it decides.

The receiver's side of the contract: ``webhook-id`` is the same on every attempt of a delivery
(its idempotency key); ``webhook-timestamp`` is the attempt's; ``webhook-signature`` is
``v1,<base64 HMAC-SHA256 over "id.timestamp.body">`` with the secret's key, as the
``standardwebhooks`` libraries verify it.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

Kind = Literal["event", "alert"]
TYPES: dict[Kind, str] = {"event": "risk.transition", "alert": "risk.alert"}
PREFIXES: dict[Kind, str] = {"event": "evt_", "alert": "alr_"}

JITTER = 0.1  # a retry waits its step ± this share, so that a backlog does not come back at once
GONE = 410


def message_id(kind: Kind, row_id: int) -> str:
    """The delivery's ``webhook-id`` and the body's ``id``: ``evt_<event id>``, ``alr_<alert
    id>``, the same on every attempt."""
    return f"{PREFIXES[kind]}{row_id}"


def _json_value(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)  # money and ratios as strings: a JSON number would round them
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def body(kind: Kind, row_id: int, created_at: datetime, data: Mapping[str, object]) -> bytes:
    """The POST's body: ``{"type", "id", "created_at", "data"}``, decimals as strings, compact,
    keys in a fixed order (what is signed is these exact bytes)."""
    document = {
        "type": TYPES[kind],
        "id": message_id(kind, row_id),
        "created_at": created_at.isoformat(),
        "data": dict(data),
    }
    text = json.dumps(document, default=_json_value, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def signature(key: bytes, msg_id: str, timestamp: int, payload: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "msg_id.timestamp.payload">``."""
    signed = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(
    key: bytes, msg_id: str, timestamp: int, payload: bytes, version: str
) -> dict[str, str]:
    """The headers of one attempt (Standard Webhooks 1.0)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, payload),
        "content-type": "application/json",
        "user-agent": f"riskd/{version}",
    }


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None when it
    is absent or unreadable (the schedule decides then). A date in the past is 0."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; a date without a zone is read as such
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True, slots=True)
class Answer:
    """What one attempt got: an HTTP status, or none (a timeout, a refused or broken
    connection: ``error`` says which), and the ``Retry-After`` header if any."""

    status: int | None
    error: str | None = None
    retry_after: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """What becomes of a delivery after an attempt: ``delivered``; ``pending`` again at
    ``next_attempt_at``; or ``failed`` (the dead letter, kept for ``riskd deliveries retry``).
    ``gone``: the endpoint answered 410 — stop delivering to it and raise an alert."""

    status: Literal["delivered", "pending", "failed"]
    next_attempt_at: datetime | None = None
    gone: bool = False


def after(
    answer: Answer, attempts: int, schedule: Sequence[float], now: datetime, jitter: float
) -> Step:
    """The delivery's next step, after its ``attempts``-th attempt got ``answer``.

    2xx: delivered. 410: failed, the endpoint gone. 429 and 503 wait what their ``Retry-After``
    says (at most the schedule's longest step: an endpoint cannot park a delivery for a year),
    else the schedule's step. Anything else — another status, a timeout, a refused connection —
    waits the schedule's step for this attempt, ± JITTER (``jitter`` in [0, 1) picks where).
    After the last step, failed. 3xx counts as a failure: riskd never follows a redirect with a
    signed body.
    """
    if answer.status is not None and 200 <= answer.status < 300:
        return Step("delivered")
    if answer.status == GONE:
        return Step("failed", gone=True)
    if attempts > len(schedule):
        return Step("failed")
    wait = schedule[attempts - 1] * (1 - JITTER + 2 * JITTER * jitter)
    if answer.status in (429, 503):
        asked = retry_after(answer.retry_after, now)
        if asked is not None and math.isfinite(asked):
            wait = min(asked, max(schedule))
    return Step("pending", now + timedelta(seconds=wait))
