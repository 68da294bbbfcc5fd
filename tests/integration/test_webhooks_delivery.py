"""Webhook delivery (issue 13): `riskd run` POSTs each risk event to a real local HTTP server,
signed as the standardwebhooks package verifies it, within max_delay + 1 s; an endpoint that
fails is tried again on the schedule (Retry-After honoured) with the same webhook-id; 410 ends
the delivery as failed. The outbox row says what happened."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import Db
from daemonproc import wait_until
from standardwebhooks import Webhook
from test_daemon import Start, add_accounts, set_quantity, start

__all__ = ["start"]  # the fixture, shared with test_daemon

SECRET = "whsec_" + base64.b64encode(b"riskd-test-webhook-key-0123456789").decode()

DELIVERY = (
    "SELECT status, attempts, last_status, delivered_at IS NOT NULL FROM riskd.deliveries"
    " WHERE event_id = %s"
)


def recorded(db: Db, event_id: object) -> tuple[object, ...]:
    """The event's delivery row once an attempt has settled it (no longer pending)."""

    def settled() -> tuple[object, ...] | None:
        row = db.conn.execute(DELIVERY, (event_id,)).fetchone()
        return tuple(row) if row is not None and row[0] != "pending" else None

    return wait_until(settled, 10, "the delivery recorded")


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Endpoint:
    """A local HTTP server answering each POST with the next scripted answer (then 200)."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    url: str = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra = endpoint.answers.pop(0) if endpoint.answers else (200, {})
                endpoint.received.append(Received(time.monotonic(), headers, body))
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:  # quiet
                pass

        return Handler


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    found = Endpoint()
    server = ThreadingHTTPServer(("127.0.0.1", 0), found.handler())
    found.url = f"http://127.0.0.1:{server.server_address[1]}/api/risk"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


def webhook_env(endpoint: Endpoint, schedule: str = "1s,1s,1s") -> dict[str, str]:
    return {
        "RISKD_WEBHOOK_URL": endpoint.url,
        "RISKD_WEBHOOK_SECRET": SECRET,
        "RISKD_WEBHOOK_RETRY_SCHEDULE": schedule,
        "RISKD_WEBHOOK_TIMEOUT": "2s",
    }


def test_a_breach_arrives_signed_within_max_delay_and_a_second(
    db: Db, start: Start, endpoint: Endpoint
) -> None:
    (account,) = add_accounts(db, 1)
    daemon = start(extra_env=webhook_env(endpoint), max_delay="1s", debounce="200ms")
    daemon.wait_ready()
    changed = time.monotonic()
    set_quantity(db, account, "95")
    wait_until(lambda: endpoint.received, 10, "the POST")
    (got,) = endpoint.received
    assert got.at - changed <= 1.0 + 1.0, got.at - changed
    doc = Webhook(SECRET).verify(got.body, got.headers)
    event_id, request_id = db.conn.execute(
        "SELECT e.id, c.id FROM riskd.risk_events e JOIN riskd.close_requests c USING (account_id)"
    ).fetchone() or (None, None)
    assert doc["type"] == "risk.transition" and doc["id"] == f"evt_{event_id}"
    assert got.headers["webhook-id"] == f"evt_{event_id}"
    assert got.headers["user-agent"].startswith("riskd/")
    data = doc["data"]
    assert (data["account_id"], data["from_level"], data["to_level"]) == (account, "ok", "critical")
    assert data["utilization"] == "0.9500000000" and data["close_request_id"] == request_id
    assert data["equity"] == "1000"  # decimals as strings, exact
    row = recorded(db, event_id)
    assert row == ("delivered", 1, 200, True)
    assert daemon.stop() == 0
    assert SECRET.removeprefix("whsec_") not in daemon.log()


def test_a_failing_endpoint_is_tried_again_with_the_same_id(
    db: Db, start: Start, endpoint: Endpoint
) -> None:
    endpoint.answers = [(500, {}), (503, {"retry-after": "1"})]
    (account,) = add_accounts(db, 1)
    daemon = start(extra_env=webhook_env(endpoint))
    daemon.wait_ready()
    set_quantity(db, account, "95")
    wait_until(lambda: len(endpoint.received) >= 3, 20, "three attempts")
    ids = {r.headers["webhook-id"] for r in endpoint.received}
    assert len(ids) == 1  # the receiver's idempotency key holds across retries
    for got in endpoint.received:
        Webhook(SECRET).verify(got.body, got.headers)
    first, second, third = (r.at for r in endpoint.received[:3])
    assert second - first >= 0.85 and third - second >= 0.85  # the 1 s steps, ± 10 % jitter
    (event_id,) = db.conn.execute("SELECT id FROM riskd.risk_events").fetchone() or (None,)
    row = recorded(db, event_id)
    assert row == ("delivered", 3, 200, True)
    assert len(endpoint.received) == 3
    assert "delivery.retry" in daemon.log() and "delivery.delivered" in daemon.log()
    assert daemon.stop() == 0


def test_410_ends_the_delivery_and_the_last_step_makes_a_dead_letter(
    db: Db, start: Start, endpoint: Endpoint
) -> None:
    endpoint.answers = [(500, {}), (500, {})]  # the schedule has one step: two attempts
    accounts = add_accounts(db, 2)
    daemon = start(extra_env=webhook_env(endpoint, schedule="1s"))
    daemon.wait_ready()
    set_quantity(db, accounts[0], "95")
    wait_until(lambda: len(endpoint.received) >= 2, 20, "two attempts")
    first = json.loads(endpoint.received[0].body)["id"]
    failed = wait_until(
        lambda: db.conn.execute(
            "SELECT status, attempts, last_status FROM riskd.deliveries WHERE status = 'failed'"
        ).fetchone(),
        10,
        "the dead letter",
    )
    assert failed == ("failed", 2, 500)
    endpoint.answers = [(410, {})]
    set_quantity(db, accounts[1], "95")
    wait_until(lambda: len(endpoint.received) >= 3, 20, "the third POST")
    assert json.loads(endpoint.received[2].body)["id"] != first
    wait_until(
        lambda: db.scalar("SELECT count(*) FROM riskd.deliveries WHERE last_status = 410"),
        10,
        "the 410 recorded",
    )
    assert db.scalar("SELECT status FROM riskd.deliveries WHERE last_status = 410") == "failed"
    assert "delivery.endpoint_gone" in daemon.log()
    assert daemon.stop() == 0
