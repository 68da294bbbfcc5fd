"""`riskd grants` renders the grants from the [schema] mapping (issue 10, point 5).

That the printed script is enough, and no more than enough, is proven on a real server by
tests/integration/test_least_privilege.py; here: the rendering itself, the one source the
script and the daemon's start-up probe share, and the refusal lines.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from riskd import grants, privileges
from riskd.cli import main
from riskd.config import SchemaMapping, Settings, TableName
from riskd.privileges import Grant, daemon_needs, refusal

DOCS = Path(__file__).resolve().parents[2] / "docs" / "grants.sql"


def settings(auto_close: str = "request", **schema: object) -> Settings:
    s = Settings()
    return dataclasses.replace(
        s,
        risk=dataclasses.replace(s.risk, auto_close=auto_close),
        schema=dataclasses.replace(s.schema, **schema),
    )


HOSTILE = settings(
    accounts_table=TableName("Trading Desk", "Account"),
    account_id="id",
    account_user='user"Id',
    account_balance="cash\nGRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC; --",
    positions_table=TableName("app", "Position"),
    position_id="positionId",
    position_account="accountRef",
    position_instrument="instrumentRef",
    position_quantity="netQty",
    position_pnl="netQty",  # two keys, one column
    instruments_table=TableName("app", "Instrument"),
    instrument_id="instrumentKey",
    instrument_price="lastPrice",
    instrument_margin_rate="initialMargin",
)


def test_docs_grants_sql_is_what_the_command_prints_for_the_reference_schema() -> None:
    assert DOCS.read_text() == grants.script(Settings(), flatten=True)


def test_the_command_prints_the_script_for_the_configured_mapping() -> None:
    env = {"RISKD_CONFIG": "", "RISKD_DSN": "", "DATABASE_URL": ""}
    env |= {"RISKD_SCHEMA_POSITIONS_TABLE": "app.Position", "RISKD_SCHEMA_POSITION_ID": "pid"}
    result = CliRunner().invoke(main, ["grants"], env=env)
    assert result.exit_code == 0 and result.stderr == "", result.output
    mapping = dataclasses.replace(
        SchemaMapping(), positions_table=TableName("app", "Position"), position_id="pid"
    )
    assert result.stdout == grants.script(dataclasses.replace(Settings(), schema=mapping))
    assert '"pid",' in result.stdout and '"app"."Position"' in result.stdout


def test_mapped_names_are_quoted_and_cannot_end_a_comment_or_a_statement() -> None:
    script = grants.script(HOSTILE, flatten=True)
    # the injected statement stays inside the quoted identifier
    assert '"cash\nGRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC; --"' in script
    # and the mapping comment at the top writes it as an escaped string
    assert '--   account_balance = "cash\\nGRANT ALL' in script
    assert 'ON "Trading Desk"."Account" TO :"daemon_role";' in script
    assert '"user""Id",' in script
    assert 'GRANT USAGE ON SCHEMA "Trading Desk", "app" TO :"daemon_role";' in script
    # a column two keys name is granted once, with both keys
    assert '"netQty"            -- [schema] position_quantity, position_pnl' in script


def test_flatten_writes_only_with_flatten_or_a_flattening_configuration() -> None:
    flatten_grant = "GRANT EXECUTE ON FUNCTION\n    riskd.flatten(riskd.check_result[]"
    assert flatten_grant not in grants.script(settings())
    assert "`riskd grants --flatten`" in grants.script(settings())  # says how to add them
    assert flatten_grant in grants.script(settings(), flatten=True)
    assert flatten_grant in grants.script(settings("flatten"))
    assert grants.script(settings("flatten")) == grants.script(settings(), flatten=True)


@pytest.mark.parametrize("auto_close", ["request", "flatten"])
def test_every_privilege_the_daemon_probes_is_a_statement_of_the_script(auto_close: str) -> None:
    """One source: each probed privilege comes from a Grant, and each Grant is printed."""
    s = dataclasses.replace(HOSTILE, risk=settings(auto_close).risk)
    script = grants.script(s)
    granted = privileges.daemon_grants(s)
    assert {n for g in granted for n in g.needs()} == set(daemon_needs(s))
    for grant in granted:
        assert grants.statement(grant, grants.DAEMON_ROLE).as_string(None) in script, grant.name
    for grant in privileges.MONITOR_GRANTS:
        assert grants.statement(grant, grants.MONITOR_ROLE).as_string(None) in script


def test_a_grant_the_template_has_no_place_for_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extra = Grant("new_thing", ("SELECT",), "table", ("riskd.new_thing",))
    monkeypatch.setattr(privileges, "RISKD_GRANTS", (*privileges.RISKD_GRANTS, extra))
    with pytest.raises(RuntimeError, match="new_thing"):
        grants.script(Settings())


def test_the_probe_asks_for_schemas_first() -> None:
    needs = daemon_needs(HOSTILE)
    kinds = [n.kind for n in needs]
    assert kinds[:3] == ["schema"] * 3 and "schema" not in kinds[3:]


# --- refusals: each points where its fix is --------------------------------------------------

PREFIX = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: '


@pytest.mark.parametrize(
    ("reason", "says", "hint"),
    [
        (
            'FATAL:  password authentication failed for user "riskd"',
            "refused the password",
            "PGPASSFILE",
        ),
        ("fe_sendauth: no password supplied", "wants a password", "PGPASSFILE"),
        ('FATAL:  Peer authentication failed for user "riskd"', "refused this role", "pg_hba.conf"),
        (
            'FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "riskd"',
            "refused",
            "pg_hba.conf",
        ),
        ('FATAL:  role "riskd" is not permitted to log in', "refused", "`riskd grants`"),
        ('FATAL:  permission denied for database "trading"', "refused", "`riskd grants`"),
        ('FATAL:  role "riskd" does not exist', "refused this role", "`riskd grants`"),
        ('FATAL:  database "tradnig" does not exist', "refused", "check the DSN"),
    ],
    ids=["password", "no-password", "peer", "hba", "nologin", "connect", "role", "database"],
)
def test_a_refused_connection_is_one_line_pointing_at_its_fix(
    reason: str, says: str, hint: str
) -> None:
    line = refusal(PREFIX + reason)
    assert line is not None
    assert "\n" not in line and says in line and hint in line, line
    assert "connection to server" not in line, line  # the server's words, not libpq's frame
    if "password" in says:
        assert "grant" not in line, line


@pytest.mark.parametrize(
    "reason",
    [
        "Connection refused Is the server running on that host and accepting TCP/IP connections?",
        "FATAL:  the database system is starting up",
        "FATAL:  terminating connection due to administrator command",
        "server closed the connection unexpectedly",
    ],
)
def test_an_outage_is_no_refusal(reason: str) -> None:
    assert refusal(PREFIX + reason) is None
