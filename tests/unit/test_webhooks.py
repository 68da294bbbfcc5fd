"""riskd.webhooks (issue 13): the body, the Standard Webhooks signature (verified by the
``standardwebhooks`` package, the library platforms verify with), and what each answer of the
endpoint makes of a delivery; and the [webhook] configuration. Pure: no server, no clock."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from riskd import webhooks
from riskd.config import RETRY_SCHEDULE, load_settings, webhook_key
from riskd.errors import ConfigError
from riskd.webhooks import Answer, Step, after, retry_after

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
KEY = webhook_key(SECRET)
NOW = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
CREATED = datetime(2026, 12, 1, 3, 59, 58, 123456, tzinfo=UTC)
DATA = {
    "account_id": "acc-000017",
    "user_id": "usr-17",
    "from_level": "ok",
    "to_level": "critical",
    "utilization": Decimal("0.9310000000"),
    "equity": Decimal("10234.50"),
    "used_margin": Decimal("9528.32"),
    "close_request_id": 96,
}


def signed(payload: bytes, msg_id: str = "evt_812", key: bytes = KEY) -> dict[str, str]:
    return webhooks.headers(key, msg_id, int(time.time()), payload, "0.2.0")


def test_a_transition_body_keeps_money_exact() -> None:
    payload = webhooks.body("event", 812, CREATED, DATA)
    doc = json.loads(payload)
    assert doc == {
        "type": "risk.transition",
        "id": "evt_812",
        "created_at": "2026-12-01T03:59:58.123456+00:00",
        "data": {
            **DATA,
            "utilization": "0.9310000000",
            "equity": "10234.50",
            "used_margin": "9528.32",
        },
    }
    assert b" " not in payload.replace(b"T03", b"")  # compact: the signed bytes are these
    assert json.loads(webhooks.body("alert", 5, CREATED, {"kind": "paused"}))["id"] == "alr_5"
    assert json.loads(webhooks.body("alert", 5, CREATED, {}))["type"] == "risk.alert"


def test_the_signature_verifies_with_the_standard_library() -> None:
    payload = webhooks.body("event", 812, CREATED, DATA)
    sent = signed(payload)
    assert sent["webhook-id"] == "evt_812" and sent["content-type"] == "application/json"
    assert sent["user-agent"] == "riskd/0.2.0" and sent["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(payload, sent)["data"]["equity"] == "10234.50"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p, h: (p.replace(b"critical", b"warning!"), h),  # the body changed
        lambda p, h: (p, {**h, "webhook-id": "evt_813"}),  # another delivery's id
        lambda p, h: (p, {**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}),
        lambda p, h: (p, signed(p, key=bytes(32))),  # another key
    ],
)
def test_a_tampered_delivery_does_not_verify(tamper: object) -> None:
    payload = webhooks.body("event", 812, CREATED, DATA)
    changed_payload, changed_headers = tamper(payload, signed(payload))  # type: ignore[operator]
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(changed_payload, changed_headers)


@given(st.binary(min_size=24, max_size=64), st.binary(max_size=2000), st.integers(1, 2**62))
def test_any_key_and_body_verify(key: bytes, payload: bytes, row_id: int) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    text = payload.decode("latin-1").encode("utf-8")  # what a receiver reads is text
    msg_id = webhooks.message_id("event", row_id)
    Webhook(secret).verify(text, signed(text, msg_id, webhook_key(secret)), json_parse=False)


def test_2xx_is_delivered_and_410_stops() -> None:
    for status in (200, 201, 204, 299):
        assert after(Answer(status), 1, RETRY_SCHEDULE, NOW, 0.5) == Step("delivered")
    assert after(Answer(410), 1, RETRY_SCHEDULE, NOW, 0.5) == Step("failed", gone=True)


@pytest.mark.parametrize(
    "answer",
    [
        Answer(500),
        Answer(400),
        Answer(302),
        Answer(None, "ConnectTimeout"),
        Answer(None, "refused"),
    ],
)
def test_any_other_answer_waits_the_schedules_step(answer: Answer) -> None:
    for attempts, step in enumerate(RETRY_SCHEDULE, start=1):
        low = after(answer, attempts, RETRY_SCHEDULE, NOW, 0.0)
        high = after(answer, attempts, RETRY_SCHEDULE, NOW, 0.999999)
        assert low.status == high.status == "pending" and not low.gone
        assert low.next_attempt_at == NOW + timedelta(seconds=step * 0.9)
        assert high.next_attempt_at is not None
        assert abs((high.next_attempt_at - NOW).total_seconds() - step * 1.1) < step * 1e-5
    # the last step spent: the dead letter
    assert after(answer, len(RETRY_SCHEDULE) + 1, RETRY_SCHEDULE, NOW, 0.5) == Step("failed")


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_wait_what_retry_after_says(status: int) -> None:
    step = after(Answer(status, retry_after="120"), 1, RETRY_SCHEDULE, NOW, 0.5)
    assert step == Step("pending", NOW + timedelta(seconds=120))
    date = "Tue, 01 Dec 2026 04:10:00 GMT"  # an HTTP date: ten minutes from NOW
    assert after(Answer(status, retry_after=date), 1, RETRY_SCHEDULE, NOW, 0.5) == Step(
        "pending", NOW + timedelta(minutes=10)
    )
    # a year is capped at the schedule's longest step; garbage falls back on the schedule
    capped = after(Answer(status, retry_after="31536000"), 1, RETRY_SCHEDULE, NOW, 0.5)
    assert capped == Step("pending", NOW + timedelta(seconds=max(RETRY_SCHEDULE)))
    fallback = after(Answer(status, retry_after="soon"), 1, RETRY_SCHEDULE, NOW, 0.5)
    assert fallback == Step("pending", NOW + timedelta(seconds=RETRY_SCHEDULE[0]))


def test_retry_after() -> None:
    assert retry_after(None, NOW) is None
    assert retry_after(" 7 ", NOW) == 7.0
    assert retry_after("Tue, 01 Dec 2026 03:00:00 GMT", NOW) == 0.0  # in the past
    assert retry_after("-5", NOW) is None and retry_after("", NOW) is None


# --- [webhook] configuration ----------------------------------------------------------------


def test_webhooks_are_off_by_default() -> None:
    webhook = load_settings(env={}).webhook
    assert webhook.url == "" and webhook.secret == ""
    assert (webhook.timeout, webhook.retry_schedule, webhook.concurrency) == (
        15.0,
        (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0),
        4,
    )


def test_a_configured_webhook(tmp_path: Path) -> None:
    path = tmp_path / "riskd.toml"
    path.write_text(
        '[webhook]\nurl = "https://platform.example/api/risk?token=t0k"\ntimeout = "5s"\n'
        'retry_schedule = ["1s", "1m"]\nconcurrency = 8\n'
    )
    webhook = load_settings(path, env={"RISKD_WEBHOOK_SECRET": SECRET}).webhook
    assert webhook.url == "https://platform.example/api/risk?token=t0k"
    assert (webhook.secret, webhook.timeout, webhook.retry_schedule) == (SECRET, 5.0, (1.0, 60.0))
    assert webhook.concurrency == 8
    shown = repr(webhook)
    assert SECRET not in shown and base64.b64encode(bytes(range(32))).decode() not in shown
    env = {"RISKD_WEBHOOK_RETRY_SCHEDULE": "5s, 5m", "RISKD_WEBHOOK_URL": "http://127.0.0.1:9/x"}
    assert load_settings(env={**env, "RISKD_WEBHOOK_SECRET": SECRET}).webhook.retry_schedule == (
        5.0,
        300.0,
    )


def test_the_secret_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET + "\n")
    env = {
        "RISKD_WEBHOOK_URL": "https://x.example/h",
        "RISKD_WEBHOOK_SECRET_FILE": str(secret_file),
    }
    assert load_settings(env=env).webhook.secret == SECRET


def _refused(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env)
    line = str(caught.value)
    assert "\n" not in line and SECRET not in line
    return line


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"RISKD_WEBHOOK_URL": "https://x.example/h"}, "[webhook] secret: required once"),
        (
            {"RISKD_WEBHOOK_URL": "ftp://x.example/h", "RISKD_WEBHOOK_SECRET": SECRET},
            "[webhook] url:",
        ),
        ({"RISKD_WEBHOOK_URL": "x.example/h", "RISKD_WEBHOOK_SECRET": SECRET}, "[webhook] url:"),
        ({"RISKD_WEBHOOK_URL": "http://x.example:99999/h"}, "Port out of range"),
        ({"RISKD_WEBHOOK_SECRET": "whsec_not base64!"}, "[webhook] secret: expected whsec_"),
        (
            {"RISKD_WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"short").decode()},
            "24 to 64 bytes",
        ),
        ({"RISKD_WEBHOOK_TIMEOUT": "0s"}, "[webhook] timeout:"),
        ({"RISKD_WEBHOOK_CONCURRENCY": "0"}, "[webhook] concurrency:"),
        ({"RISKD_WEBHOOK_RETRY_SCHEDULE": ""}, "[webhook] retry_schedule:"),
        ({"RISKD_WEBHOOK_RETRY_SCHEDULE": "5s,never"}, "[webhook] retry_schedule:"),
        ({"RISKD_WEBHOOK_SECRET_FILE": "/nonexistent/riskd-secret"}, "cannot read"),
        ({"RISKD_WEBHOOK_SCRET": SECRET}, "did you mean RISKD_WEBHOOK_SECRET?"),
    ],
)
def test_bad_webhook_values_are_refused_in_one_line(env: dict[str, str], said: str) -> None:
    assert said in _refused(env)


def test_a_refused_url_never_shows_its_query() -> None:
    line = _refused({"RISKD_WEBHOOK_URL": "gopher://x.example/h?token=s3cr3t"})
    assert "s3cr3t" not in line and "gopher://x.example/h" in line
