"""docs/webhooks.md's Python recipe, run as written against signed deliveries on a real server:
a delivery acts once, its repeat does nothing, a forged one is refused."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conftest import Db
from standardwebhooks import Webhook

from riskd import webhooks
from riskd.config import webhook_key

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
SECRET = "whsec_" + base64.b64encode(b"riskd-recipe-test-key-0123456789").decode()


def recipe() -> Callable[..., int]:
    """The recipe's code block, executed as a module."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    (code,) = [b for b in blocks if "def receive(" in b]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    receive: Callable[..., int] = namespace["receive"]
    return receive


def tables() -> str:
    (ddl,) = [b for b in re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S) if "seen" in b]
    return ddl + "CREATE TABLE risk_tasks (account_id text NOT NULL);"


def delivery(event_id: int, to_level: str) -> tuple[bytes, dict[str, str]]:
    data = {"account_id": "acc-1", "from_level": "ok", "to_level": to_level}
    body = webhooks.body("event", event_id, datetime.now(UTC), data)
    msg_id = webhooks.message_id("event", event_id)
    return body, webhooks.headers(webhook_key(SECRET), msg_id, int(time.time()), body, "test")


def test_the_python_recipe_acts_once_and_refuses_a_forgery(db: Db) -> None:
    db.conn.execute(tables())  # type: ignore[arg-type]
    receive = recipe()
    webhook = Webhook(SECRET)
    with db.connect() as conn:
        body, headers = delivery(7, "critical")
        assert receive(webhook, conn, body, headers) == 204
        assert receive(webhook, conn, body, headers) == 204  # riskd delivered it again
        assert receive(webhook, conn, *delivery(8, "warning")) == 204
        forged = body.replace(b"acc-1", b"acc-2")
        assert receive(webhook, conn, forged, headers) == 400
    assert db.scalar("SELECT count(*) FROM risk_tasks") == 1
    assert db.scalar("SELECT count(*) FROM risk_webhooks_seen") == 2
