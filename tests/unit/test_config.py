"""Configuration parsing: defaults, sources and their precedence, validation, DSN masking.

Pure tests: no database, no real environment (every call passes ``env=``), files in tmp_path.
"""

from __future__ import annotations

import json
import string
import tempfile
from dataclasses import fields
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd import config
from riskd.config import (
    DaemonSettings,
    DatabaseSettings,
    RiskSettings,
    SchemaMapping,
    Settings,
    TableName,
    load_settings,
    mask_dsn,
    parse_duration,
)
from riskd.errors import ConfigError

DESIGN_EXAMPLE = """\
[database]
dsn = "postgresql://riskd@localhost/trading"
[risk]
warning_threshold = 0.80
auto_close_threshold = 0.90
auto_close = "request"          # request | flatten | off
hysteresis = 0.02
[daemon]
debounce = "1s"
max_delay = "5s"
sweep_interval = "60s"
batch_size = 500
shutdown_timeout = "10s"
metrics_port = 0                # 0 = off
log_format = "text"             # text | json
[schema]
accounts_table = "public.trading_accounts"
account_id = "id"
account_user = "userId"
account_balance = "balance"
positions_table = "public.positions"
position_account = "tradingAccountId"
position_instrument = "instrumentId"
position_quantity = "quantity"
position_pnl = "unrealizedPnL"
instruments_table = "public.instruments"
instrument_id = "id"
instrument_price = "price"
instrument_margin_rate = "marginRate"
"""

KEYS = [
    (section, key)
    for section, cls in (
        ("database", DatabaseSettings),
        ("risk", RiskSettings),
        ("daemon", DaemonSettings),
        ("schema", SchemaMapping),
    )
    for key in (f.name for f in fields(cls))
]


@pytest.fixture(autouse=True)
def no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the machine's /etc/riskd/riskd.toml."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "etc-riskd-absent.toml")


def write(tmp_path: Path, text: str, name: str = "riskd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None = None, env: dict[str, str] | None = None) -> str:
    """The message of the ConfigError that loading raises; it must be one line."""
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={} if env is None else env)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, message
    return message


# --- defaults and file parsing ---------------------------------------------------------------


def test_defaults_match_design() -> None:
    loaded = load_settings(env={})
    assert loaded == Settings()
    assert loaded.config_path is None
    assert loaded.database.dsn is None
    assert loaded.risk == RiskSettings(Decimal("0.80"), Decimal("0.90"), "request", Decimal("0.02"))
    assert loaded.daemon == DaemonSettings(1.0, 5.0, 60.0, 500, 10.0, 0, "text")
    schema = loaded.schema
    assert schema.accounts_table == TableName("public", "trading_accounts")
    assert schema.positions_table == TableName("public", "positions")
    assert schema.instruments_table == TableName("public", "instruments")
    assert (schema.account_id, schema.account_user, schema.account_balance) == (
        "id",
        "userId",
        "balance",
    )
    assert (
        schema.position_account,
        schema.position_instrument,
        schema.position_quantity,
        schema.position_pnl,
    ) == ("tradingAccountId", "instrumentId", "quantity", "unrealizedPnL")
    assert (schema.instrument_id, schema.instrument_price, schema.instrument_margin_rate) == (
        "id",
        "price",
        "marginRate",
    )


def test_design_example_file_gives_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, DESIGN_EXAMPLE)
    loaded = load_settings(path, env={})
    assert loaded.config_path == path
    assert loaded.database.dsn == "postgresql://riskd@localhost/trading"
    assert (loaded.risk, loaded.daemon, loaded.schema) == (
        RiskSettings(),
        DaemonSettings(),
        SchemaMapping(),
    )


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [risk]
        warning_threshold = 0.7
        auto_close_threshold = "0.85"
        auto_close = "flatten"
        hysteresis = 0
        [daemon]
        debounce = "250ms"
        max_delay = 2
        sweep_interval = "1.5m"
        batch_size = 50
        shutdown_timeout = 0.5
        metrics_port = 9187
        log_format = "json"
        [schema]
        accounts_table = "Trading.Account"
        positions_table = "Position"
        position_pnl = "unrealised pnl"
        """,
    )
    loaded = load_settings(path, env={})
    assert loaded.risk == RiskSettings(Decimal("0.7"), Decimal("0.85"), "flatten", Decimal("0"))
    assert loaded.daemon == DaemonSettings(0.25, 2.0, 90.0, 50, 0.5, 9187, "json")
    assert loaded.schema.accounts_table == TableName("Trading", "Account")
    assert loaded.schema.positions_table == TableName("public", "Position")
    assert loaded.schema.position_pnl == "unrealised pnl"
    assert loaded.schema.account_id == "id"  # keys not in the file keep their default


def test_toml_floats_become_exact_decimals(tmp_path: Path) -> None:
    path = write(tmp_path, "[risk]\nwarning_threshold = 0.8\nauto_close_threshold = 0.9\n")
    risk = load_settings(path, env={}).risk
    assert risk.warning_threshold == Decimal("0.8")
    assert str(risk.warning_threshold) == "0.8"  # not 0.8000000000000000444...
    assert str(risk.auto_close_threshold) == "0.9"
    env = {"RISKD_RISK_HYSTERESIS": " 0.015 "}
    assert str(load_settings(env=env).risk.hysteresis) == "0.015"


def test_settings_are_frozen() -> None:
    loaded = load_settings(env={})
    with pytest.raises(AttributeError):
        loaded.daemon.batch_size = 1  # type: ignore[misc]  # the point: frozen


# --- which file ------------------------------------------------------------------------------


def test_file_from_riskd_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon]\nbatch_size = 7\n")
    loaded = load_settings(env={"RISKD_CONFIG": str(path)})
    assert loaded.daemon.batch_size == 7
    assert loaded.config_path == path


def test_explicit_path_beats_riskd_config(tmp_path: Path) -> None:
    explicit = write(tmp_path, "[daemon]\nbatch_size = 7\n", "explicit.toml")
    other = write(tmp_path, "[daemon]\nbatch_size = 8\n", "other.toml")
    assert load_settings(explicit, env={"RISKD_CONFIG": str(other)}).daemon.batch_size == 7


def test_default_path_read_only_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings(env={}).config_path is None
    path = write(tmp_path, "[daemon]\nbatch_size = 9\n", "system.toml")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", path)
    loaded = load_settings(env={})
    assert (loaded.config_path, loaded.daemon.batch_size) == (path, 9)


@pytest.mark.parametrize("how", ["argument", "RISKD_CONFIG"])
def test_missing_requested_file_is_an_error(tmp_path: Path, how: str) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml"):
        if how == "argument":
            load_settings(missing, env={})
        else:
            load_settings(env={"RISKD_CONFIG": str(missing)})


def test_directory_as_config_is_an_error(tmp_path: Path) -> None:
    assert str(tmp_path) in config_error(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        "[daemon\nbatch_size = 1\n",
        "[daemon]\nbatch_size = = 1\n",
        "[daemon]\nbatch_size = 1\nbatch_size = 2\n",
        "[daemon]\nbatch_size = " + "1" * 5000 + "\n",  # too long for int(): ValueError
        "a = " + "[" * 5000,  # RecursionError inside tomllib
    ],
)
def test_invalid_toml_names_the_file(tmp_path: Path, content: str) -> None:
    path = write(tmp_path, content, "broken.toml")
    message = config_error(path)
    assert "invalid TOML" in message and str(path) in message


def test_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[schema]\naccount_id = "\xe9"\n')
    assert str(path) in config_error(path)


# --- environment overrides -------------------------------------------------------------------


def test_env_overrides_every_section(tmp_path: Path) -> None:
    path = write(tmp_path, DESIGN_EXAMPLE)
    env = {
        "RISKD_DAEMON_MAX_DELAY": "2s",
        "RISKD_DAEMON_BATCH_SIZE": "1000",
        "RISKD_RISK_AUTO_CLOSE": "off",
        "RISKD_RISK_WARNING_THRESHOLD": "0.75",
        "RISKD_SCHEMA_POSITIONS_TABLE": "trading.Position",
        "RISKD_SCHEMA_POSITION_PNL": "pnl",
        "RISKD_DATABASE_DSN": "postgresql://other@db/x",
    }
    loaded = load_settings(path, env=env)
    assert loaded.daemon.max_delay == 2.0
    assert loaded.daemon.batch_size == 1000
    assert loaded.daemon.debounce == 1.0  # from the file
    assert loaded.risk.auto_close == "off"
    assert loaded.risk.warning_threshold == Decimal("0.75")
    assert loaded.schema.positions_table == TableName("trading", "Position")
    assert loaded.schema.position_pnl == "pnl"
    assert loaded.database.dsn == "postgresql://other@db/x"


def test_every_key_has_an_env_override() -> None:
    # An empty value is invalid for every key but the DSN (where it means "not set"), so an
    # error naming the key proves the variable reached that key.
    # An optional column is the exception: empty leaves it unmapped; a NUL byte is refused.
    for section, key in KEYS:
        if key != "dsn":
            value = "a\x00b" if key in config.OPTIONAL_COLUMNS else ""
            message = config_error(env={f"RISKD_{section.upper()}_{key.upper()}": value})
            assert message.startswith(f"[{section}] {key}: "), message


def test_unknown_env_key_in_a_known_section_names_the_variable() -> None:
    message = config_error(env={"RISKD_DAEMON_MAX_DELAYS": "2s"})
    assert "RISKD_DAEMON_MAX_DELAYS" in message
    assert "[daemon] max_delays" in message
    assert "did you mean RISKD_DAEMON_MAX_DELAY?" in message


def test_env_keys_are_upper_case() -> None:
    message = config_error(env={"RISKD_DAEMON_max_delay": "2s"})
    assert "RISKD_DAEMON_max_delay" in message and "RISKD_DAEMON_MAX_DELAY?" in message


def test_other_riskd_variables_are_not_errors() -> None:
    env = {
        "RISKD_CONFIG": "",
        "RISKD_TEST_DSN": "postgresql://t@localhost/t",
        "RISKD_LOG_LEVEL": "debug",
        "RISKD_DSN": "postgresql://a@b/c",
        "DATABASE_URL": "postgresql://x@y/z",
        "PATH": "/usr/bin",
    }
    assert load_settings(env=env) == Settings(DatabaseSettings("postgresql://a@b/c"))


# --- DSN precedence --------------------------------------------------------------------------

ALL_DSNS = {
    "flag": "postgresql://flag@h/d",
    "RISKD_DSN": "postgresql://riskd-dsn@h/d",
    "DATABASE_URL": "postgresql://database-url@h/d",
    "RISKD_DATABASE_DSN": "postgresql://riskd-database-dsn@h/d",
    "file": "postgresql://file@h/d",
}


@pytest.mark.parametrize(
    "present, expected",
    [
        (["flag", "RISKD_DSN", "DATABASE_URL", "RISKD_DATABASE_DSN", "file"], "flag"),
        (["RISKD_DSN", "DATABASE_URL", "RISKD_DATABASE_DSN", "file"], "RISKD_DSN"),
        (["DATABASE_URL", "RISKD_DATABASE_DSN", "file"], "DATABASE_URL"),
        (["RISKD_DATABASE_DSN", "file"], "RISKD_DATABASE_DSN"),
        (["file"], "file"),
        ([], None),
    ],
)
def test_dsn_precedence(tmp_path: Path, present: list[str], expected: str | None) -> None:
    path = write(tmp_path, f'[database]\ndsn = "{ALL_DSNS["file"]}"\n' if "file" in present else "")
    env = {name: ALL_DSNS[name] for name in present if name.isupper()}
    dsn = ALL_DSNS["flag"] if "flag" in present else None
    loaded = load_settings(path, env=env, dsn=dsn)
    assert loaded.database.dsn == (None if expected is None else ALL_DSNS[expected])


def test_empty_dsn_sources_are_skipped() -> None:
    env = {"RISKD_DSN": "", "DATABASE_URL": "postgresql://u@h/d"}
    assert load_settings(env=env, dsn="").database.dsn == "postgresql://u@h/d"


def test_dsn_of_wrong_type_is_an_error_without_echo(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "[database]\ndsn = 5\n"))
    assert "[database] dsn" in message and "expected a string" in message


@pytest.mark.parametrize(
    "source, label",
    [
        ("flag", "--dsn"),
        ("RISKD_DSN", "RISKD_DSN"),
        ("DATABASE_URL", "DATABASE_URL"),
        ("RISKD_DATABASE_DSN", "RISKD_DATABASE_DSN"),
        ("file", "[database] dsn (from file {path})"),
    ],
)
def test_an_invalid_dsn_is_refused_naming_its_source(
    tmp_path: Path, source: str, label: str
) -> None:
    """The message said "[database] dsn" whatever the source, and quoted the whole DSN."""
    bad = "mysql://u:s3cret@h/db"
    path = write(tmp_path, f'[database]\ndsn = "{bad}"\n' if source == "file" else "")
    env = {source: bad} if source.isupper() else {}
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=env, dsn=bad if source == "flag" else None)
    assert str(caught.value) == (
        f'{label.format(path=path)}: invalid DSN: scheme "mysql" is not postgresql:// or '
        "postgres://"
    )


def test_a_valid_dsn_records_its_source() -> None:
    loaded = load_settings(env={"DATABASE_URL": "postgresql://u@h/d"})
    assert (loaded.database.dsn, loaded.database.source) == ("postgresql://u@h/d", "DATABASE_URL")
    assert load_settings(env={}, dsn="host=h").database.source == "--dsn"


def test_only_the_dsn_in_use_is_checked() -> None:
    env = {"RISKD_DSN": "postgresql://u@h/d", "DATABASE_URL": "postgresql://u@h/d?schema=public"}
    assert load_settings(env=env).database.dsn == "postgresql://u@h/d"


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (" 5s ", 5.0),
        ("100ms", 0.1),
        ("0s", 0.0),
        ("10", 10.0),
        ("5 s", 5.0),
        (".5s", 0.5),
        (3, 3.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(value: str | int | float, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("-5s", "negative"),
        (-1, ">= 0"),
        (-0.5, ">= 0"),
        (float("inf"), "finite"),
        (float("nan"), "finite"),
        ("5x", "unknown unit"),
        ("5sec", "unknown unit"),
        ("5S", "unknown unit"),
        ("1h30m", "invalid duration"),
        ("s", "invalid duration"),
        ("five seconds", "invalid duration"),
        ("1e3s", "invalid duration"),
        (True, "expected a duration"),
    ],
)
def test_parse_duration_rejects(value: str | int | float, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as caught:
        parse_duration(value)
    assert "\n" not in str(caught.value)


# --- table names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("positions", TableName("public", "positions")),
        ("trading.positions", TableName("trading", "positions")),
        ("Trading.Position", TableName("Trading", "Position")),  # no case folding
        ('"Position"', TableName("public", '"Position"')),  # no quote stripping
    ],
)
def test_table_name_parse(text: str, expected: TableName) -> None:
    assert TableName.parse(text) == expected
    assert str(TableName.parse("a.b")) == "a.b"


@pytest.mark.parametrize("text", ["a.b.c", ".positions", "public.", ".", "", "a\x00b"])
def test_table_name_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        TableName.parse(text)


# --- invalid configuration: one line, naming the key ------------------------------------------

INVALID_FILES = [
    ('[daemon]\nbatch_size = "abc"\n', "[daemon] batch_size", "expected an integer"),
    ("[daemon]\nbatch_size = 1.5\n", "[daemon] batch_size", "expected an integer"),
    ("[daemon]\nbatch_size = true\n", "[daemon] batch_size", "expected an integer"),
    ("[daemon]\nbatch_size = 0\n", "[daemon] batch_size", "between 1 and 100000"),
    ("[daemon]\nbatch_size = 100001\n", "[daemon] batch_size", "between 1 and 100000"),
    ("[daemon]\nmetrics_port = 65536\n", "[daemon] metrics_port", "between 0 and 65535"),
    ("[daemon]\nmetrics_port = -1\n", "[daemon] metrics_port", "between 0 and 65535"),
    ('[daemon]\ndebounce = "-1s"\n', "[daemon] debounce", "negative"),
    ('[daemon]\ndebounce = "soon"\n', "[daemon] debounce", "invalid duration"),
    ('[daemon]\nmax_delay = "5parsecs"\n', "[daemon] max_delay", "unknown unit"),
    ('[daemon]\nmax_delay = "0s"\n', "[daemon] max_delay", "> 0"),
    ("[daemon]\nsweep_interval = 0\n", "[daemon] sweep_interval", "> 0"),
    ('[daemon]\nshutdown_timeout = "-2s"\n', "[daemon] shutdown_timeout", "negative"),
    ("[daemon]\nshutdown_timeout = [1]\n", "[daemon] shutdown_timeout", "expected a duration"),
    ('[daemon]\nlog_format = "xml"\n', "[daemon] log_format", "text | json"),
    ("[daemon]\nlog_format = 1\n", "[daemon] log_format", "expected a string"),
    ('[daemon]\nmax_dealy = "2s"\n', "[daemon] max_dealy", "unknown key"),
    ('[risk]\nauto_close = "sell"\n', "[risk] auto_close", "request | flatten | off"),
    ("[risk]\nwarning_threshold = 0\n", "[risk] warning_threshold", "> 0"),
    ("[risk]\nauto_close_threshold = -0.9\n", "[risk] auto_close_threshold", "> 0"),
    ('[risk]\nwarning_threshold = "high"\n', "[risk] warning_threshold", "expected a number"),
    ("[risk]\nwarning_threshold = nan\n", "[risk] warning_threshold", "expected a number"),
    ("[risk]\nwarning_threshold = inf\n", "[risk] warning_threshold", "expected a number"),
    ("[risk]\nhysteresis = -0.01\n", "[risk] hysteresis", ">= 0"),
    ("[schema]\naccounts_table = 5\n", "[schema] accounts_table", "expected a string"),
    ('[schema]\npositions_table = "a.b.c"\n', "[schema] positions_table", "schema.table"),
    ('[schema]\npositions_table = "public."\n', "[schema] positions_table", "empty"),
    ('[schema]\naccount_id = ""\n', "[schema] account_id", "empty identifier"),
    ('[schema]\naccount_id = "a\\u0000b"\n', "[schema] account_id", "NUL"),
    ('[schema]\naccount_id = "' + "x" * 64 + '"\n', "[schema] account_id", "63 bytes"),
    ("[schema]\naccount_id = { a = 1 }\n", "[schema] account_id", "expected a string"),
    ("[schema.extra]\na = 1\n", "[schema] extra", "unknown key"),
    ('[databse]\ndsn = "x"\n', "[databse]", "unknown section"),
    ("top_level = 1\n", "[top_level]", "unknown section"),
    ("daemon = 5\n", "[daemon]", "expected a table"),
]


@pytest.mark.parametrize("content, key, fragment", INVALID_FILES)
def test_invalid_file_value(tmp_path: Path, content: str, key: str, fragment: str) -> None:
    path = write(tmp_path, content)
    message = config_error(path)
    assert message.startswith(key), message
    assert fragment in message
    assert str(path) in message


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("RISKD_DAEMON_BATCH_SIZE", "abc", "expected an integer"),
        ("RISKD_DAEMON_BATCH_SIZE", "1.0", "expected an integer"),
        ("RISKD_DAEMON_METRICS_PORT", "70000", "between 0 and 65535"),
        ("RISKD_DAEMON_DEBOUNCE", "", "empty"),
        ("RISKD_RISK_AUTO_CLOSE", "OFF", "request | flatten | off"),
        ("RISKD_RISK_HYSTERESIS", "two", "expected a number"),
        ("RISKD_RISK_WARNING_THRESHOLD", "NaN", "expected a number"),
        ("RISKD_SCHEMA_INSTRUMENTS_TABLE", "a..b", "schema.table"),
        ("RISKD_SCHEMA_INSTRUMENT_PRICE", "", "empty identifier"),
        ("RISKD_SCHEMA_INSTRUMENT_PRICE", "pri\x00ce", "NUL"),
    ],
)
def test_invalid_env_value(name: str, value: str, fragment: str) -> None:
    message = config_error(env={name: value})
    section, key = name.removeprefix("RISKD_").lower().split("_", 1)
    assert message.startswith(f"[{section}] {key}:"), message
    assert fragment in message and name in message


def test_warning_must_be_below_auto_close_names_both(tmp_path: Path) -> None:
    path = write(tmp_path, "[risk]\nwarning_threshold = 0.95\n")
    message = config_error(path)
    assert "[risk] warning_threshold (0.95, from file" in message
    assert "[risk] auto_close_threshold (0.90, default)" in message
    equal = config_error(env={"RISKD_RISK_WARNING_THRESHOLD": "0.9"})
    assert "[risk] warning_threshold (0.9, from env RISKD_RISK_WARNING_THRESHOLD)" in equal


def test_hysteresis_must_be_below_warning() -> None:
    wide = {"RISKD_RISK_WARNING_THRESHOLD": "0.3", "RISKD_RISK_AUTO_CLOSE_THRESHOLD": "0.95"}
    message = config_error(env=wide | {"RISKD_RISK_HYSTERESIS": "0.3"})
    assert "[risk] hysteresis (0.3," in message and "[risk] warning_threshold (0.3," in message
    ok = load_settings(env=wide | {"RISKD_RISK_HYSTERESIS": "0.29"})
    assert ok.risk.hysteresis == Decimal("0.29")


# --- plain mistakes: a percentage for a fraction, a hysteresis wider than its band ----------


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "[risk]\nwarning_threshold = 80\n",
            "[risk] warning_threshold: 80 is not a fraction between 0 and 1 (did you mean 0.80?)",
        ),
        (
            "[risk]\nauto_close_threshold = 90\n",
            "[risk] auto_close_threshold: 90 is not a fraction between 0 and 1 "
            "(did you mean 0.90?)",
        ),
        (
            "[risk]\nwarning_threshold = 80.0\nauto_close_threshold = 90.0\n",
            "[risk] warning_threshold: 80.0 is not a fraction between 0 and 1 (did you mean 0.80?)",
        ),
        (
            "[risk]\nwarning_threshold = 85.5\n",
            "[risk] warning_threshold: 85.5 is not a fraction between 0 and 1 "
            "(did you mean 0.855?)",
        ),
        (
            '[risk]\nwarning_threshold = "80%"\n',
            "[risk] warning_threshold: 80% is not a fraction between 0 and 1 (did you mean 0.80?)",
        ),
        (
            "[risk]\nauto_close_threshold = 150\n",
            "[risk] auto_close_threshold: 150 is not a fraction between 0 and 1",
        ),
        (
            "[risk]\nhysteresis = 2\n",
            "[risk] hysteresis: 2 is not a fraction between 0 and 1 (did you mean 0.02?)",
        ),
    ],
)
def test_a_percentage_for_a_fraction_is_refused(tmp_path: Path, content: str, message: str) -> None:
    """warning_threshold = 80 started a daemon that saw every account as ok (issue 10)."""
    path = write(tmp_path, content)
    assert config_error(path) == f"{message} (from file {path})"


def test_a_percentage_in_the_environment_is_refused_naming_the_variable() -> None:
    message = config_error(env={"RISKD_RISK_WARNING_THRESHOLD": "80"})
    assert message == (
        "[risk] warning_threshold: 80 is not a fraction between 0 and 1 (did you mean 0.80?) "
        "(from env RISKD_RISK_WARNING_THRESHOLD)"
    )


def test_thresholds_up_to_one_are_fractions() -> None:
    env = {"RISKD_RISK_WARNING_THRESHOLD": "0.95", "RISKD_RISK_AUTO_CLOSE_THRESHOLD": "1"}
    risk = load_settings(env=env).risk
    assert (risk.warning_threshold, risk.auto_close_threshold) == (Decimal("0.95"), 1)


@pytest.mark.parametrize("hysteresis", ["0.5", "0.1", "0.10"])
def test_hysteresis_must_fit_inside_the_gap_between_the_thresholds(hysteresis: str) -> None:
    """Wider, a critical account would stay critical under the warning threshold: with the
    defaults (0.80, 0.90) hysteresis 0.5 kept one critical down to 40 %."""
    message = config_error(env={"RISKD_RISK_HYSTERESIS": hysteresis})
    assert message == (
        f"[risk] hysteresis ({hysteresis}, from env RISKD_RISK_HYSTERESIS) must be below the gap "
        "between [risk] warning_threshold (0.80, default) and [risk] auto_close_threshold "
        "(0.90, default), 0.10: a wider one keeps a critical account critical under the "
        "warning threshold"
    )
    assert load_settings(env={"RISKD_RISK_HYSTERESIS": "0.09"}).risk.hysteresis == Decimal("0.09")
    assert load_settings(env={"RISKD_RISK_HYSTERESIS": "0"}).risk.hysteresis == 0


def test_the_gap_is_the_configured_one(tmp_path: Path) -> None:
    path = write(tmp_path, "[risk]\nwarning_threshold = 0.5\nhysteresis = 0.3\n")
    assert load_settings(path, env={}).risk.hysteresis == Decimal("0.3")
    narrow = write(tmp_path, "[risk]\nwarning_threshold = 0.88\n", "narrow.toml")
    message = config_error(narrow)
    assert message.startswith("[risk] hysteresis (0.02, default) must be below the gap between ")
    assert (
        f"[risk] warning_threshold (0.88, from file {narrow})" in message and ", 0.02: " in message
    )


def test_the_effective_settings_hold_what_a_daemon_runs_with_and_no_password() -> None:
    env = {
        "RISKD_DSN": "postgresql://riskd:hunter2@db/trading",
        "RISKD_RISK_WARNING_THRESHOLD": "0.7",
        "RISKD_RISK_HYSTERESIS": "0.05",
        "RISKD_RISK_AUTO_CLOSE": "flatten",
        "RISKD_DAEMON_DEBOUNCE": "250ms",
        "RISKD_DAEMON_BATCH_SIZE": "100",
    }
    loaded = load_settings(env=env)
    assert config.effective(loaded) == {
        "database": "postgresql://riskd:***@db/trading",
        "warning_threshold": "0.7",
        "auto_close_threshold": "0.90",
        "hysteresis": "0.05",
        "auto_close": "flatten",
        "model": "builtin",
        "max_closes_per_minute": "0",
        "max_price_age": "0s",
        "debounce": "0.25s",
        "max_delay": "5s",
        "sweep_interval": "60s",
        "batch_size": 100,
    }
    assert config.risk_fingerprint(loaded.risk) == {
        "warning_threshold": "0.7",
        "auto_close_threshold": "0.90",
        "hysteresis": "0.05",
        "auto_close": "flatten",
        "model": "builtin",
        "max_closes_per_minute": "0",
        "max_price_age": "0s",
    }


def test_the_stale_price_guard_needs_the_price_time_mapped() -> None:
    message = config_error(env={"RISKD_RISK_MAX_PRICE_AGE": "30s"})
    assert message.startswith("[risk] max_price_age (30s, from env RISKD_RISK_MAX_PRICE_AGE)")
    assert "[schema] instrument_price_time" in message
    env = {"RISKD_RISK_MAX_PRICE_AGE": "30s", "RISKD_SCHEMA_INSTRUMENT_PRICE_TIME": "pricedAt"}
    loaded = load_settings(env=env)
    assert loaded.risk.max_price_age == 30.0
    assert loaded.schema.instrument_price_time == "pricedAt"


def test_the_circuit_breaker_takes_a_whole_number_of_closes() -> None:
    assert (
        load_settings(env={"RISKD_RISK_MAX_CLOSES_PER_MINUTE": "5"}).risk.max_closes_per_minute == 5
    )
    for bad in ("-1", "2.5", "many"):
        message = config_error(env={"RISKD_RISK_MAX_CLOSES_PER_MINUTE": bad})
        assert message.startswith("[risk] max_closes_per_minute: "), message


def test_debounce_must_not_exceed_max_delay() -> None:
    message = config_error(env={"RISKD_DAEMON_DEBOUNCE": "6s"})
    assert "[daemon] debounce" in message and "[daemon] max_delay" in message
    equal = load_settings(env={"RISKD_DAEMON_DEBOUNCE": "5s"}).daemon
    assert equal.debounce == equal.max_delay == 5.0


def test_non_printable_names_stay_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, '["a\\nb"]\nx = 1\n')
    assert "unknown section" in config_error(path)
    assert "unknown key" in config_error(env={"RISKD_DAEMON_A\nB": "1"})


_toml_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=20)
_toml_scalar = (
    st.booleans().map(lambda b: str(b).lower())
    | st.integers().map(str)
    | st.floats().map(repr)  # repr gives valid TOML floats: 1e+16, inf, -inf, nan
    | (_toml_text | st.sampled_from(["5s", "0.5", "ms", "-1", "public.x", "a.b.c", ""])).map(
        lambda t: json.dumps(t, ensure_ascii=False)
    )
)
_toml_values = st.recursive(
    _toml_scalar, lambda inner: st.lists(inner, max_size=3).map(lambda v: f"[{', '.join(v)}]")
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), st.text(max_size=12), max_size=6))
def test_any_env_gives_settings_or_one_config_error(env_values: dict[tuple[str, str], str]) -> None:
    env = {
        f"RISKD_{s.upper()}_{k.upper()}": v.replace("\x00", "") for (s, k), v in env_values.items()
    }
    try:
        load_settings(env=env)
    except ConfigError as exc:
        # a DSN is named by its source: the variable, when it came from one
        assert "\n" not in str(exc) and str(exc).startswith(("[", "RISKD_DATABASE_DSN: "))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), _toml_values, max_size=6))
def test_any_file_gives_settings_or_one_config_error(values: dict[tuple[str, str], str]) -> None:
    sections: dict[str, list[str]] = {}
    for (section, key), value in values.items():
        sections.setdefault(section, []).append(f"{key} = {value}\n")
    document = "".join(f"[{section}]\n" + "".join(lines) for section, lines in sections.items())
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "riskd.toml")
        path.write_text(document, encoding="utf-8")
        try:
            load_settings(path, env={})
        except ConfigError as exc:
            assert "\n" not in str(exc), str(exc)


# --- DSN masking -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn, masked",
    [
        ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
        ("postgres://user:secret@host:5432/db", "postgres://user:***@host:5432/db"),
        ("postgresql://user:p@ss:w@host/db", "postgresql://user:***@host/db"),
        ("postgresql://:secret@host/db", "postgresql://:***@host/db"),
        (
            "postgresql://host/db?user=u&password=secret&sslmode=require",
            "postgresql://host/db?user=u&password=***&sslmode=require",
        ),
        ("postgresql:///db?password=secret", "postgresql:///db?password=***"),
        ("host=x password=secret user=y", "host=x password=*** user=y"),
        ("password=secret host=x", "password=*** host=x"),
        ("host=x password = secret user=y", "host=x password=*** user=y"),
        ("host=x password='quoted secret' user=y", "host=x password=*** user=y"),
        (r"host=x password='it\'s secret' user=y", "host=x password=*** user=y"),
        ("host=x password='never closed secret", "host=x password=***"),
        ("host=x sslpassword=keypass", "host=x sslpassword=***"),
        # each of these showed some of the secret before issue 10
        ("postgresql://u:sec#re?t@h/db", "postgresql://u:***@h/db"),  # libpq's user info
        (r"host=x password=a\ secret user=y", "host=x password=*** user=y"),  # escaped space
        ("host=x password=two secret words", "host=x password=***"),  # not quoted
        ("host=x passwrod=secret", "host=x passwrod=***"),  # misspelt, unknown
        ("mysql://u:secret@h/db", "mysql:***@h/db"),
        ("u://secret@h/db", "u:***@h/db"),  # user "u", password "//secret", no scheme
        ("postgresql:/u:secret@h/db", "postgresql:***@h/db"),  # one slash
        ("u:secret@h/db", "u:***@h/db"),  # no scheme at all
        ("postgresql://u:sec/ret@h/db", "postgresql://u:***@h/db"),  # "/" not written %2F
        ("postgresql://u:secret@[::1/db", "postgresql://u:***@[::1/db"),
        ("postgresql://h/db?password=sec&ret", "postgresql://h/db?password=***"),
        ("postgresql://h/db?pass%77ord=secret", "postgresql://h/db?pass%77ord=***"),
    ],
)
def test_mask_dsn(dsn: str, masked: str) -> None:
    assert mask_dsn(dsn) == masked
    assert "secret" not in mask_dsn(dsn)


@pytest.mark.parametrize(
    "dsn",
    [
        "",
        "postgresql://user@host/db",
        "postgresql://host:5432/db",
        "postgresql://host:5432/db?sslmode=require&application_name=a@b",
        "postgresql:///db",
        "host=x user=y dbname=z",
        "host=x application_name=mypassword_hint",
        "host=x  user=y\tdbname='a b'",
        "not a dsn at all",
    ],
)
def test_mask_dsn_without_password_is_unchanged(dsn: str) -> None:
    assert mask_dsn(dsn) == dsn


_password = st.text(string.ascii_letters + string.digits + "!$%*+,;~", min_size=4).map(
    lambda text: "ZQ" + text  # a marker no DSN below contains
)


@given(_password)
def test_mask_dsn_hides_any_url_password(password: str) -> None:
    for dsn in (
        f"postgresql://u:{password}@h/d",
        f"postgresql://h/d?password={password}",
        f"host=h password={password} user=u",
        f"host=h password='{password} x' user=u",
    ):
        assert password not in mask_dsn(dsn)


@given(st.text())
def test_mask_dsn_never_raises(dsn: str) -> None:
    assert isinstance(mask_dsn(dsn), str)


def test_settings_repr_masks_the_password() -> None:
    loaded = load_settings(env={"RISKD_DSN": "postgresql://u:hunter2@h/d"})
    assert loaded.database.dsn == "postgresql://u:hunter2@h/d"
    assert "hunter2" not in repr(loaded)
    assert "postgresql://u:***@h/d" in repr(loaded)
