"""Errors an operator meets (issue 10, finding 6): each is one line on stderr that names what is
wrong, with the documented exit code.

- A mistyped column in [schema] is refused naming the key: `riskd run` at start and `riskd
  sweep` (exit 2), `riskd migrate --check` (exit 1); `riskd status` counts it as a reason to be
  unhealthy (exit 1).
- A command that needs riskd, on a database without it, says so in one line (exit 2).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner, Result
from conftest import Db

from riskd.cli import main

# the reference schema's column is "unrealizedPnL"
MISTYPED = {"RISKD_SCHEMA_POSITION_PNL": "unrealizedPnl"}
WRONG_KEY = "[schema] position_pnl: column 'unrealizedPnl' does not exist in public.positions"
NOT_INSTALLED = "riskd: riskd is not installed in this database (run `riskd migrate`)\n"


def environment(dsn: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"RISKD_CONFIG": "", "DATABASE_URL": "", "RISKD_DSN": dsn, **(extra or {})}


def cli(*args: str, dsn: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=environment(dsn, env))


def test_run_refuses_a_mistyped_column_at_start_naming_the_key(db: Db) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKD_")}
    env.update(environment(db.dsn, MISTYPED))
    done = subprocess.run(
        [sys.executable, "-m", "riskd", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (2, f"riskd: {WRONG_KEY}\n")


def test_sweep_refuses_a_mistyped_column_naming_the_key(db: Db) -> None:
    result = cli("sweep", dsn=db.dsn, env=MISTYPED)
    assert (result.exit_code, result.stderr) == (2, f"riskd: {WRONG_KEY}\n")


def test_migrate_check_fails_on_a_mistyped_column_naming_the_key(db: Db) -> None:
    result = cli("migrate", "--check", dsn=db.dsn, env=MISTYPED)
    assert (result.exit_code, result.stderr) == (1, f"riskd: {WRONG_KEY}\n")


def test_status_is_unhealthy_on_a_mistyped_column_naming_the_key(db: Db) -> None:
    result = cli("status", dsn=db.dsn, env=MISTYPED)
    assert result.exit_code == 1, result.output
    assert result.stderr == ""
    assert any(line.startswith(f"UNHEALTHY: {WRONG_KEY}") for line in result.stdout.splitlines()), (
        result.stdout
    )


@pytest.mark.parametrize("command", [("events",), ("events", "--json"), ("sweep",)])
def test_a_command_that_needs_riskd_says_it_is_not_installed(
    bare_db: Db, command: tuple[str, ...]
) -> None:
    result = cli(*command, dsn=bare_db.dsn)
    assert (result.exit_code, result.stderr) == (2, NOT_INSTALLED)
