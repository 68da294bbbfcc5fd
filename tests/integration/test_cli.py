"""The CLI as a user meets it: output, --json, exit codes, one-line errors."""

from __future__ import annotations

import json

from click.testing import CliRunner, Result
from conftest import Db
from test_check import setup_account

from riskd.cli import main


def cli(*args: str, dsn: str | None = None, env: dict[str, str] | None = None) -> Result:
    environment = {"RISKD_CONFIG": "", "DATABASE_URL": "", "RISKD_DSN": dsn or ""}
    environment.update(env or {})
    return CliRunner().invoke(main, list(args), env=environment)


def test_check_prints_levels_and_reports_unknown_accounts(db: Db) -> None:
    setup_account(db, "a1", quantity="95")
    result = cli("check", "a1", "ghost", dsn=db.dsn)
    assert result.exit_code == 1, result.output  # an unknown account: one line each, exit 1
    assert "a1  ok -> critical  utilisation 95.00 %" in result.stdout
    assert "riskd: check: 'ghost': no such account" in result.stderr
    as_json = json.loads(cli("check", "--json", "a1", dsn=db.dsn).stdout)
    assert as_json["unknown"] == []
    (row,) = as_json["results"]
    assert (row["level"], row["previous_level"], row["utilization"]) == (
        "critical",
        "critical",
        "0.9500000000",
    )


def test_sweep_json_summarises_levels_and_transitions(db: Db) -> None:
    setup_account(db, "a1", quantity="50")
    setup_account(db, "a2", quantity="85")
    result = cli("sweep", "--json", dsn=db.dsn)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["accounts"] == 2 and doc["levels"] == {"ok": 1, "warning": 1}
    assert [(t["account_id"], t["level"]) for t in doc["transitions"]] == [("a2", "warning")]
    human = cli("sweep", dsn=db.dsn)
    assert human.stdout.startswith("swept 2 accounts in ")


def test_a_password_on_the_command_line_is_refused() -> None:
    result = cli("--dsn", "postgresql://u:s3cret@localhost/db", "sweep")
    assert result.exit_code == 2
    assert "process list" in result.stderr


def test_bad_configuration_is_one_line_exit_2(tmp_path: object) -> None:
    result = cli(
        "sweep", dsn="postgresql://x@127.0.0.1:1/x", env={"RISKD_RISK_WARNING_THRESHOLD": "0.95"}
    )
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "warning_threshold" in result.stderr


def test_unreachable_database_is_one_line_exit_2_and_masks_the_password() -> None:
    result = cli("sweep", dsn="postgresql://u:s3cret@127.0.0.1:1/db")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "s3cret" not in result.stderr and "cannot connect" in result.stderr
