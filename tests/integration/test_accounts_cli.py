"""What an operator looks for without writing SQL (issue 10, finding 8): `riskd accounts` by
level or nearest a threshold, `riskd close-requests` oldest first with their age — run as the
read-only monitoring role of docs/grants.sql, in a database that grants PUBLIC nothing — with
one number format per kind in text and exact decimal strings in JSON.

One instrument priced 100 with a 10 % margin rate, balances of 1 000: a quantity of 85 is 85 %.
"""

from __future__ import annotations

import json
import re
from typing import Any

from click.testing import CliRunner, Result
from conftest import Db, settings_for
from test_check import setup_account
from test_least_privilege import Roles, apply_grants, harden, roles  # noqa: F401 (a fixture)

from riskd.check import check_accounts
from riskd.cli import main


def as_monitor(db: Db, r: Roles, *args: str) -> Result:
    env = {"RISKD_CONFIG": "", "DATABASE_URL": "", "RISKD_DSN": r.dsn(db, r.monitor_login)}
    result = CliRunner().invoke(main, list(args), env=env)
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    return result


def book(db: Db) -> None:
    """Accounts at every level; 'limited' has limits of its own (warning 50 %, critical 60 %);
    'flat' was flattened (a done close request) and is ok since."""
    for account, quantity in {
        "calm": "50",
        "near": "79",
        "warm": "85",
        "hot": "95",
        "limited": "57",
        "flat": "95",
    }.items():
        setup_account(db, account, quantity=quantity)
    setup_account(db, "broke", balance="100", quantity="1", pnl="-200")  # equity -100
    db.conn.execute("INSERT INTO riskd.account_limits VALUES ('limited', 0.5, 0.6)")
    flatten = settings_for(db.dsn, risk={"auto_close": "flatten"})
    check_accounts(db.conn, flatten, ["flat"])
    check_accounts(db.conn, db.settings, ["hot"])  # its request is the older one
    check_accounts(db.conn, db.settings, ["calm", "near", "warm", "limited", "flat", "broke"])


def leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in leaves(v)]
    return [value]


CHECKED = r"  figures as of \d+ s ago"


def test_accounts_by_level_and_nearest_a_threshold_as_the_monitoring_role(
    db: Db,
    roles: Roles,  # noqa: F811 (the fixture)
) -> None:
    harden(db)
    apply_grants(db, roles)
    book(db)

    lines = as_monitor(db, roles, "accounts").stdout.splitlines()
    assert [line.split("  ")[:2] for line in lines] == [
        ["broke", "critical"],  # equity gone first
        ["hot", "critical"],
        ["warm", "warning"],
        ["limited", "warning"],
    ]
    assert re.fullmatch(
        r"broke  critical  utilisation n/a \(equity <= 0\)  equity -100\.00  "
        r"used margin 10\.00" + CHECKED,
        lines[0],
    ), lines[0]
    assert re.fullmatch(
        r"hot  critical  utilisation 95\.00 %  equity 1000\.00  used margin 950\.00" + CHECKED,
        lines[1],
    ), lines[1]

    doc = json.loads(as_monitor(db, roles, "accounts", "--json").stdout)
    assert doc["total"] == 4
    rows = {row["account_id"]: row for row in doc["accounts"]}
    assert rows["hot"]["utilization"] == "0.9500000000"
    assert (rows["hot"]["equity"], rows["hot"]["used_margin"]) == ("1000", "950.0")
    assert rows["broke"]["utilization"] is None
    assert (rows["limited"]["warning_threshold"], rows["limited"]["auto_close_threshold"]) == (
        "0.5",
        "0.6",
    )
    assert (rows["hot"]["warning_threshold"], rows["hot"]["auto_close_threshold"]) == (
        "0.80",
        "0.90",
    )
    assert not any(
        isinstance(leaf, float)
        for row in doc["accounts"]
        for leaf in leaves({k: v for k, v in row.items() if k != "checked_age"})
    )

    # nearest: by the distance to the next threshold up, each account's own limits honoured
    nearest = as_monitor(db, roles, "accounts", "--nearest", "3").stdout.splitlines()
    assert [line.split("  ")[0] for line in nearest] == ["near", "limited", "warm"]
    assert re.fullmatch(
        r"near  ok  utilisation 79\.00 %  1\.00 points below warning \(80\.00 %\)  "
        r"equity 1000\.00  used margin 790\.00" + CHECKED,
        nearest[0],
    ), nearest[0]
    assert "3.00 points below critical (60.00 %)" in nearest[1]
    (near,) = json.loads(as_monitor(db, roles, "accounts", "--nearest", "1", "--json").stdout)[
        "accounts"
    ]
    assert (near["next_level"], near["next_threshold"], near["distance"]) == (
        "warning",
        "0.80",
        "0.0100000000",
    )

    ok = as_monitor(db, roles, "accounts", "--level", "ok").stdout.splitlines()
    assert [line.split("  ")[0] for line in ok] == ["near", "calm", "flat"]
    cut = as_monitor(db, roles, "accounts", "--limit", "1").stdout.splitlines()
    assert cut[-1] == "... and 3 more (--limit to show them)"


def test_close_requests_pending_oldest_first_with_their_age_as_the_monitoring_role(
    db: Db,
    roles: Roles,  # noqa: F811 (the fixture)
) -> None:
    harden(db)
    apply_grants(db, roles)
    book(db)
    ids = dict(db.conn.execute("SELECT account_id, id FROM riskd.close_requests").fetchall())

    pending = as_monitor(db, roles, "close-requests").stdout.splitlines()
    assert re.fullmatch(
        rf"{ids['hot']}  hot  pending  opened \d+ s ago  utilisation 95\.00 %  1 open position",
        pending[0],
    ), pending
    assert re.fullmatch(
        rf"{ids['broke']}  broke  pending  opened \d+ s ago  "
        r"utilisation n/a \(equity <= 0\)  1 open position",
        pending[1],
    ), pending
    assert len(pending) == 2

    done = as_monitor(db, roles, "close-requests", "--status", "done").stdout
    assert re.fullmatch(
        rf"{ids['flat']}  flat  done  opened \d+ s ago  done \d+ s ago  "
        r"utilisation 95\.00 %  flatten: closed 1 position, booked 0\.00\n",
        done,
    ), done

    doc = json.loads(as_monitor(db, roles, "close-requests", "--status", "all", "--json").stdout)
    assert [(r["account_id"], r["status"]) for r in doc["close_requests"]] == [
        ("hot", "pending"),
        ("broke", "pending"),
        ("flat", "done"),
    ]
    hot = doc["close_requests"][0]
    assert hot["utilization"] == "0.9500000000" and hot["completed_at"] is None
    assert hot["detail"]["equity"] == "1000" and hot["detail"]["used_margin"] == "950.0"
    assert hot["detail"]["positions"][0]["quantity"] == "95"
    # money, utilisation and every figure of the evidence: exact decimal strings, never numbers
    numbers = [
        leaf
        for r in doc["close_requests"]
        for leaf in leaves({"utilization": r["utilization"], "detail": r["detail"]})
    ]
    assert numbers and not any(isinstance(n, int | float) for n in numbers), numbers
    empty = as_monitor(db, roles, "close-requests", "--status", "cancelled").stdout
    assert empty == "no cancelled close request\n"

    # `riskd check` reads back what it did with the daemon's grants alone
    setup_account(db, "nan", quantity="95", pnl="NaN")
    env = {"RISKD_CONFIG": "", "DATABASE_URL": "", "RISKD_DSN": roles.dsn(db, roles.login)}
    checked = CliRunner().invoke(main, ["check", "--json", "hot", "nan"], env=env)
    assert (checked.exit_code, checked.stderr) == (0, ""), checked.output
    actions = {r["account_id"]: r for r in json.loads(checked.stdout)["results"]}
    assert (actions["hot"]["action"], actions["hot"]["close_request_id"]) == (
        "request_pending",
        ids["hot"],
    )
    assert actions["nan"]["action_note"].startswith("close held: data riskd cannot trust")
