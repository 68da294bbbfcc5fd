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
from click.testing import CliRunner
from conftest import Db
from daemonproc import wait_until
from standardwebhooks import Webhook
from test_daemon import Start, add_accounts, set_quantity, start
from test_metrics import free_port, get, sample

from riskd.cli import main

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
    # while set, each POST is recorded, then held unanswered until release is set
    hold: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra = endpoint.answers.pop(0) if endpoint.answers else (200, {})
                endpoint.received.append(Received(time.monotonic(), headers, body))
                if endpoint.hold.is_set():
                    endpoint.release.wait(60)
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
        found.release.set()
        server.shutdown()
        server.server_close()


def webhook_env(
    endpoint: Endpoint, schedule: str = "1s,1s,1s", timeout: str = "2s"
) -> dict[str, str]:
    return {
        "RISKD_WEBHOOK_URL": endpoint.url,
        "RISKD_WEBHOOK_SECRET": SECRET,
        "RISKD_WEBHOOK_RETRY_SCHEDULE": schedule,
        "RISKD_WEBHOOK_TIMEOUT": timeout,
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
    assert "HTTP Request:" not in daemon.log()  # httpx's own INFO line per request: left out


def test_a_failing_endpoint_is_tried_again_with_the_same_id(
    db: Db, start: Start, endpoint: Endpoint
) -> None:
    endpoint.answers = [(500, {}), (503, {"retry-after": "1"})]
    (account,) = add_accounts(db, 1)
    port = free_port()
    daemon = start(extra_env=webhook_env(endpoint), metrics_port=str(port))
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

    def scraped() -> str | None:  # the counters are the heartbeat's, read at scrape time
        text = get(port, "/metrics")[1]
        done = 'riskd_webhook_deliveries_total{outcome="delivered"} 1.0' in text
        return text if done and "riskd_webhook_backlog 0.0" in text else None

    text = wait_until(scraped, 10, "the metrics")
    assert sample(text, 'riskd_webhook_deliveries_total{outcome="retry"}') == 2
    assert sample(text, 'riskd_webhook_deliveries_total{outcome="failed"}') == 0
    assert sample(text, "riskd_webhook_delivery_seconds_count") == 3
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
    # 410 raises an alert, which riskd status and events --alerts show (and is not delivered)
    gone = wait_until(
        lambda: db.conn.execute(
            "SELECT detail FROM riskd.alerts WHERE kind = 'endpoint_gone'"
        ).fetchone(),
        10,
        "the endpoint_gone alert",
    )
    assert gone[0]["url"] == endpoint.url and gone[0]["webhook_id"].startswith("evt_")
    assert db.scalar("SELECT count(*) FROM riskd.deliveries WHERE alert_id IS NOT NULL") == 0
    assert daemon.stop() == 0


def test_an_alert_arrives_signed_as_risk_alert_in_order_with_its_account(
    db: Db, start: Start, endpoint: Endpoint
) -> None:
    """A rail's alert is delivered like an event (type risk.alert, id alr_<id>): the kill
    switch's, and that of a close held (data riskd cannot trust) after the account's
    transition."""
    (account,) = add_accounts(db, 1)
    daemon = start(extra_env=webhook_env(endpoint))
    daemon.wait_ready()
    paused = CliRunner().invoke(
        main, ["--dsn", db.dsn, "pause", "--reason", "drill"], env=webhook_env(endpoint)
    )
    assert paused.exit_code == 0, paused.output
    wait_until(lambda: endpoint.received, 10, "the pause's POST")
    db.conn.execute(
        """UPDATE positions SET "unrealizedPnL" = 'NaN' WHERE "tradingAccountId" = %s""",
        (account,),
    )
    set_quantity(db, account, "95")
    wait_until(lambda: len(endpoint.received) >= 3, 20, "three POSTs")
    docs = [Webhook(SECRET).verify(r.body, r.headers) for r in endpoint.received]
    alert_id = db.scalar("SELECT id FROM riskd.alerts WHERE kind = 'paused'")
    assert docs[0]["type"] == "risk.alert" and docs[0]["id"] == f"alr_{alert_id}"
    assert docs[0]["data"]["kind"] == "paused" and docs[0]["data"]["detail"]["reason"] == "drill"
    assert docs[0]["data"]["account_id"] is None
    # the account's transition first, then the alert that held its close
    assert [d["type"] for d in docs[1:]] == ["risk.transition", "risk.alert"]
    assert docs[2]["data"]["kind"] == "close_held" and docs[2]["data"]["account_id"] == account
    assert docs[2]["data"]["detail"]["reason"] == "data_error"
    assert daemon.stop() == 0


def by_id(endpoint: Endpoint) -> dict[str, int]:
    """How many times each webhook-id arrived."""
    seen: dict[str, int] = {}
    for got in endpoint.received:
        seen[got.headers["webhook-id"]] = seen.get(got.headers["webhook-id"], 0) + 1
    return seen


@pytest.mark.slow
def test_three_instances_deliver_every_event_once_in_order_per_account(
    db: Db, start: Start, endpoint: Endpoint
) -> None:
    accounts = add_accounts(db, 12)
    env = webhook_env(endpoint)
    daemons = [start(extra_env=env) for _ in range(3)]
    for daemon in daemons:
        daemon.wait_ready()
    for account in accounts:  # ok -> critical, then -> ok, then -> critical: 3 events each
        set_quantity(db, account, "95")
    wait_until(lambda: db.scalar("SELECT count(*) FROM riskd.risk_events") >= 12, 20, "12 events")
    for account in accounts:
        set_quantity(db, account, "10")
    wait_until(lambda: db.scalar("SELECT count(*) FROM riskd.risk_events") >= 24, 20, "24 events")
    for account in accounts:
        set_quantity(db, account, "95")
    wait_until(lambda: db.scalar("SELECT count(*) FROM riskd.risk_events") >= 36, 20, "36 events")
    wait_until(lambda: len(endpoint.received) >= 36, 30, "36 deliveries")
    events = db.conn.execute(
        "SELECT id, account_id::text FROM riskd.risk_events ORDER BY id"
    ).fetchall()
    assert len(events) == 36
    assert by_id(endpoint) == {f"evt_{e}": 1 for e, _ in events}  # each once, none lost
    arrived: dict[str, list[int]] = {}
    for got in endpoint.received:
        doc = json.loads(got.body)
        arrived.setdefault(doc["data"]["account_id"], []).append(int(doc["id"][4:]))
    assert all(ids == sorted(ids) for ids in arrived.values()), arrived  # in order per account
    wait_until(
        lambda: db.scalar("SELECT count(*) FROM riskd.deliveries WHERE status <> 'delivered'") == 0,
        10,
        "every delivery recorded",
    )
    assert db.scalar("SELECT count(*) FROM riskd.deliveries WHERE attempts <> 1") == 0
    for daemon in daemons:
        assert daemon.stop() == 0


def test_a_later_event_waits_while_an_earlier_one_of_its_account_is_pending(
    db: Db, start: Start, endpoint: Endpoint
) -> None:
    endpoint.answers = [(500, {})]  # the first event's first attempt fails
    (account,) = add_accounts(db, 1)
    daemon = start(extra_env=webhook_env(endpoint, schedule="2s"))
    daemon.wait_ready()
    set_quantity(db, account, "95")
    wait_until(lambda: endpoint.received, 10, "the first attempt")
    set_quantity(db, account, "10")  # the second event, written while the first waits
    wait_until(lambda: len(endpoint.received) >= 3, 20, "both delivered")
    ids = [got.headers["webhook-id"] for got in endpoint.received]
    assert ids[0] == ids[1] and ids[2] != ids[0]  # the retry came before the later event
    assert int(ids[2][4:]) > int(ids[0][4:])
    assert daemon.stop() == 0


@pytest.mark.slow
def test_a_daemon_killed_between_a_post_and_its_record_delivers_again_never_loses_it(
    db: Db, start: Start, endpoint: Endpoint
) -> None:
    """SIGKILL while the endpoint holds the POST: the delivery stays pending under its lease;
    once the lease is over (timeout + 30 s), another instance delivers it again. At least once,
    and the repeat is counted."""
    (account,) = add_accounts(db, 1)
    env = webhook_env(endpoint, timeout="1s")
    first = start(extra_env=env)
    first.wait_ready()
    endpoint.hold.set()
    set_quantity(db, account, "95")
    wait_until(lambda: endpoint.received, 10, "the POST")
    first.kill()  # between the POST and its record
    endpoint.release.set()
    endpoint.hold.clear()
    row = db.conn.execute(
        "SELECT status, attempts, next_attempt_at > now() FROM riskd.deliveries"
    ).fetchone()
    assert row == ("pending", 0, True)  # leased, not lost, not counted as an attempt
    second = start(extra_env=env)
    second.wait_ready()
    wait_until(lambda: len(endpoint.received) >= 2, 45, "the delivery made again")
    assert len(by_id(endpoint)) == 1 and list(by_id(endpoint).values()) == [2]  # one repeat
    (event_id,) = db.conn.execute("SELECT id FROM riskd.risk_events").fetchone() or (None,)
    assert recorded(db, event_id) == ("delivered", 1, 200, True)
    assert second.stop() == 0
